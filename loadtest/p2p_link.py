"""Throughput of one peer link (``.venv/bin/python loadtest/p2p_link.py``).

Two PeerNetworks in this process, connected on loopback; one sends frames of each size to
the other as fast as its queue takes them, and the receiver's handler counts them. Prints
frames/s and MB/s per frame size: the cost of the transport (websocket framing, and since
protocol 3 the sealed records) without any consensus work. One process and one event loop
serve both ends, so the figures are what one core moves through a link in both directions'
work, a floor for two machines.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from types import ModuleType

from qnet import crypto, p2p, wire
from qnet.localnode import free_port

SIZES = (256, 4 * 1024, 64 * 1024, 1024 * 1024)


async def measure(module: ModuleType, size: int, seconds: float) -> dict:
    """Frames/s and MB/s of ``size``-byte frames from one PeerNetwork to another."""
    got = asyncio.Event()
    received = [0, 0]  # frames, bytes
    target = [0]

    async def on_message(info, kind: int, payload: bytes) -> None:
        received[0] += 1
        received[1] += 1 + len(payload)
        if received[0] >= target[0]:
            got.set()

    def network(seeds: list[str]):
        return module.PeerNetwork(
            key=crypto.KeyPair.generate(),
            chain_id="bench",
            genesis_hash=bytes(32),
            node_type="super",
            region="eu",
            listen_host="127.0.0.1",
            listen_port=free_port(),
            seeds=seeds,
            on_message=on_message,
            rate_limit_per_s=1e9,
            burst=10**9,
            heartbeat_s=30.0,
        )

    receiver = network([])
    await receiver.start()
    sender = network([receiver.listen])
    await sender.start()
    try:
        while not sender.peers():
            await asyncio.sleep(0.01)
        peer = sender.peers()[0].node_id
        payload = bytes(size - 1)
        window = max(1, 4 * 2**20 // size)  # frames in flight: well inside the queue limit
        started = time.perf_counter()
        sent = 0
        while time.perf_counter() - started < seconds:
            for _ in range(window):
                if not await sender.send(peer, wire.FIRST_APP_KIND, payload):
                    raise RuntimeError("the receiver was dropped")
            sent += window
            target[0] = sent - window
            got.clear()
            if received[0] < target[0]:
                await asyncio.wait_for(got.wait(), 60)
        target[0] = sent
        got.clear()
        if received[0] < sent:
            await asyncio.wait_for(got.wait(), 60)
        elapsed = time.perf_counter() - started
    finally:
        await sender.stop()
        await receiver.stop()
    return {
        "frame_bytes": size,
        "frames_per_s": round(received[0] / elapsed),
        "mb_per_s": round(received[1] / elapsed / 1e6, 1),
    }


async def run(module: ModuleType, seconds: float) -> list[dict]:
    return [await measure(module, size, seconds) for size in SIZES]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per frame size")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = asyncio.run(run(p2p, args.seconds))
    print(f"protocol {p2p.PROTOCOL_VERSION}")
    print(f"{'frame bytes':>12} {'frames/s':>10} {'MB/s':>8}")
    for row in rows:
        print(f"{row['frame_bytes']:>12} {row['frames_per_s']:>10} {row['mb_per_s']:>8}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
