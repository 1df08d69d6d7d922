"""A hostile peer: a process of its own, with its own node key, that attacks one node through
``qnet.p2p`` (the code the nodes run; it only answers peer exchange with lies and sends the
layer's own frames when it pleases) or, for handshake floods, raw websockets.

    python tests/hostile.py ATTACK --target HOST:PORT --genesis genesis.json --seconds S
        [--key SEED_HEX] [--wallet SEED_HEX] [--from-host ADDRESS] [--epoch N]

``--key`` is the attacker's node key (a fresh one by default), ``--wallet`` a funded wallet
it may spend from, ``--from-host`` the local address its raw connections come from,
``--epoch`` the current epoch (any node's API tells it) for heartbeats of its own. It
makes its forged messages, connects, prints one JSON line ``{"ready": ...}`` with its node
id and ``fingerprints`` (hex of bytes that would appear in the target's consensus.wal if it
kept anything of the attack), attacks for ``--seconds`` and prints one JSON line of what it
did: what it sent, its connections, and the close reasons the target gave (``banned``: a
redial refused while banned). ``ATTACKS`` names each attack and whether the protocol bans
for it; ``test_hostile_peers.py`` runs them against a network under load.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from qnet import crypto, p2p, tendermint, wire
from qnet.block import Block, Header, tx_root
from qnet.genesis import Genesis
from qnet.tx import encode_batch, frame_batch, make_heartbeat, make_transfer

# Consensus timeouts of the networks attacked in tests: short, so a stall shows at once.
FAST = {
    "timeout_propose_ms": 1000,
    "timeout_vote_ms": 500,
    "timeout_delta_ms": 250,
    "empty_block_interval_ms": 500,
}


@dataclass(frozen=True)
class Attack:
    title: str
    what: str
    banned: bool  # whether the protocol bans the attacker's key for it


ATTACKS = {
    "votes": Attack(
        "random-signer vote flood",
        "2,000 prevotes signed by random keys, half of them in the validators' names",
        True,
    ),
    "proposal": Attack(
        "oversized forged proposals",
        "3 proposals in a validator's name whose blocks are twice max_block_bytes",
        True,
    ),
    "status": Attack(
        "false STATUS height",
        "STATUS at height 2^64-1 without a certificate and with a garbage one",
        True,
    ),
    "blocks": Attack(
        "unsolicited BLOCKS",
        "forged blocks nobody asked for, 2 per frame, until the target stops taking them",
        True,
    ),
    "txs": Attack(
        "TXS of bad signatures",
        "transfers of a funded wallet and of random keys, each signature broken",
        True,
    ),
    "peers": Attack(
        "PEERS poisoning",
        "answers GET_PEERS moving every validator to a dead address and a new key to the "
        "target's own, then pushes the same PEERS unasked",
        True,
    ),
    "handshakes": Attack(
        "handshake flood",
        "from one address: 100 idle TCP connections, then websockets that never send HELLO "
        "or never AUTH, as fast as they are taken",
        False,
    ),
    "heartbeats": Attack(
        "heartbeat flood",
        "10,000 heartbeats/s: for 1,000 unactivated nodes, and 1,000 for its own activated "
        "node (the current epoch and the 9 around it, 100 nonces each)",
        False,
    ),
}


def forged_votes(n: int, genesis: Genesis, at_height: int) -> list[bytes]:
    """Prevotes signed by random keys, and in the validators' names with random signatures."""
    out = []
    names = [v.public_key for v in genesis.validators]
    for i in range(n):
        key = crypto.KeyPair.generate()
        kind = tendermint.VoteKind.PREVOTE
        value_id = crypto.digest(b"forged %d" % i)
        signed = tendermint.vote_signing_bytes(kind, genesis.network, at_height, 0, value_id)
        signer = names[i % len(names)] if i % 2 else key.public_key
        vote = tendermint.Vote(
            kind, genesis.chain_id, at_height, 0, value_id, signer, key.sign(signed)
        )
        out.append(vote.encode())
    return out


def forged_block(genesis: Genesis, height: int, body: bytes = b"", txs: int = 0) -> bytes:
    """An encoded block whose header decodes, signed by nobody in particular."""
    header = Header(
        genesis.chain_id,
        height,
        int(time.time() * 1000),
        os.urandom(32),
        tx_root([]),
        txs,
        os.urandom(32),
        crypto.KeyPair.generate().public_key,
    )
    return Block.encode_parts(header.encode(), os.urandom(64), body)


def broken(raw: bytes) -> bytes:
    """A transaction whose signature (its first 64 bytes) no longer verifies."""
    return bytes((raw[0] ^ 0x01,)) + raw[1:]


class Hostile(p2p.PeerNetwork):
    """A PeerNetwork that answers peer exchange with ``lies`` (when set) and sends the
    layer's own frames when told to."""

    def __init__(self, *, lies: list[wire.PeerRecord], **options) -> None:
        super().__init__(**options)
        self.lies = lies
        self.answers = 0  # GET_PEERS answered with lies

    def _records_for(self, asker: p2p.PeerInfo) -> list[wire.PeerRecord]:
        if not self.lies:
            return super()._records_for(asker)
        self.answers += 1
        return self.lies

    def push_layer_frame(self, node_id: str, kind: int, payload: bytes) -> bool:
        conn = self._peers.get(node_id)
        return conn is not None and self._enqueue(conn, p2p.frame(kind, payload))


class CloseReasons(logging.Handler):
    """Counts the reasons the target gave when it closed our connections (p2p logs them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%s closed the connection"):
            self.reasons[str(record.args[2]) or "none"] += 1


@dataclass
class Attacker:
    """One run: the target, what was sent and the evidence to look for afterwards."""

    genesis: Genesis
    target: str
    seconds: float
    key: crypto.KeyPair
    wallet: crypto.KeyPair | None
    from_host: str
    epoch: int
    deadline: float = float("inf")  # set when the attack starts
    lies: list[wire.PeerRecord] = field(default_factory=list)
    sent: Counter = field(default_factory=Counter)
    fingerprints: list[bytes] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def ready(self) -> None:
        """Prepared and connected: say so, and start the clock."""
        self.deadline = time.monotonic() + self.seconds
        line = {"ready": True, "node_id": self.key.node_id, "fingerprints": self.prints()}
        print(json.dumps(line), flush=True)

    def prints(self) -> list[str]:
        return [f.hex() for f in self.fingerprints]

    def left(self) -> float:
        return self.deadline - time.monotonic()


Burst = Callable[[Hostile, str], Awaitable[None]]


async def authenticated(a: Attacker, prepare: Callable[[], Burst], every_s: float = 0) -> None:
    """Connect as a full node with the attacker's key and send ``prepare()``'s burst on each
    new connection (and every ``every_s`` while it lasts, if set), until the deadline. The
    network keeps redialling the target, as a node does its seeds."""
    burst = prepare()
    connected: asyncio.Queue[str] = asyncio.Queue()

    async def on_peer(info: p2p.PeerInfo, up: bool) -> None:
        a.sent["connections" if up else "disconnections"] += 1
        if up:
            connected.put_nowait(info.node_id)

    async def ignore(info: p2p.PeerInfo, kind: int, payload: bytes) -> None:
        a.sent["frames_received"] += 1

    reasons = CloseReasons()
    p2p_log = logging.getLogger("qnet.p2p")
    p2p_log.addHandler(reasons)
    p2p_log.setLevel(logging.DEBUG)
    net = Hostile(
        key=a.key,
        chain_id=a.genesis.chain_id,
        genesis_hash=a.genesis.hash,
        node_type="full",
        region="eu",
        listen_host=None,
        listen_port=0,
        seeds=[a.target],
        on_message=ignore,
        on_peer=on_peer,
        lies=a.lies,
        max_peers=1,  # the target only: no dialling what peer exchange tells
    )
    await net.start()
    try:
        first = await asyncio.wait_for(connected.get(), 15)
        a.ready()
        await burst(net, first)
        while a.left() > 0:
            try:
                victim = await asyncio.wait_for(connected.get(), every_s or a.left())
            except TimeoutError:
                victim = next((p.node_id for p in net.peers()), "")
            if victim and a.left() > 0:
                await burst(net, victim)
    finally:
        await net.stop()
        a.extra["closed_by_target"] = dict(reasons.reasons)
        a.extra["peer_exchange_answers"] = net.answers


async def send_all(a: Attacker, net: Hostile, victim: str, frames: list[tuple[int, bytes]]):
    for kind, payload in frames:
        if await net.send(victim, kind, payload):
            a.sent[f"kind_{kind}"] += 1


async def votes(a: Attacker) -> None:
    def prepare() -> Burst:
        at = 1_000  # ahead of the chain: a height the core takes messages for is no matter
        forged = forged_votes(2_000, a.genesis, at)
        a.fingerprints = [v[-64:] for v in forged[:: len(forged) // 50]]
        frames = [(wire.KIND_CONSENSUS, v) for v in forged]
        return lambda net, victim: send_all(a, net, victim, frames)

    await authenticated(a, prepare)


async def proposal(a: Attacker) -> None:
    def prepare() -> Burst:
        size = 2 * a.genesis.params.max_block_bytes
        raws = [os.urandom(60_000) for _ in range(size // 60_000 + 1)]
        body = frame_batch(raws)
        frames = []
        for round_ in range(3):
            value = forged_block(a.genesis, 1_000, body, len(raws))
            signature = os.urandom(64)
            proposer = a.genesis.validators[round_ % len(a.genesis.validators)].public_key
            message = tendermint.Proposal(
                a.genesis.chain_id, 1_000, round_, -1, value, proposer, signature
            )
            a.fingerprints.append(signature)
            frames.append((wire.KIND_CONSENSUS, message.encode()))
        a.extra["proposal_bytes"] = len(frames[0][1])
        return lambda net, victim: send_all(a, net, victim, frames)

    await authenticated(a, prepare)


async def status(a: Attacker) -> None:
    def prepare() -> Burst:
        garbage = os.urandom(300)
        a.fingerprints = [garbage]
        top = 2**64 - 1
        frames = [
            (wire.KIND_STATUS, wire.Status(top, b"").encode()),
            (wire.KIND_STATUS, wire.Status(top, garbage).encode()),
        ]
        return lambda net, victim: send_all(a, net, victim, frames)

    await authenticated(a, prepare)


async def blocks(a: Attacker) -> None:
    def prepare() -> Burst:
        frames = []
        for i in range(6):
            pair = [(forged_block(a.genesis, 1_000 + 2 * i + j), os.urandom(200)) for j in (0, 1)]
            a.fingerprints.append(pair[0][0][2:66])  # the forged header signature
            frames.append((wire.KIND_BLOCKS, wire.Blocks(tuple(pair)).encode()))

        async def burst(net: Hostile, victim: str) -> None:
            for f in frames:  # one at a time: each counts against us on its own
                await send_all(a, net, victim, [f])
                await asyncio.sleep(0.05)

        return burst

    await authenticated(a, prepare)


async def txs(a: Attacker) -> None:
    def prepare() -> Burst:
        assert a.wallet is not None, "the TXS attack spends from --wallet"
        to = crypto.KeyPair.generate().address
        funded = [make_transfer(a.wallet, a.genesis.network, n, 10_000, to, 1) for n in range(500)]
        strangers = [
            make_transfer(crypto.KeyPair.generate(), a.genesis.network, 0, 10_000, to, 1)
            for _ in range(500)
        ]
        raws = [broken(t.raw) for t in funded + strangers]
        a.fingerprints = [r[:64] for r in raws[::20]]
        frames = [(wire.KIND_TXS, frame_batch(raws))]
        return lambda net, victim: send_all(a, net, victim, frames)

    await authenticated(a, prepare)


async def peers(a: Attacker) -> None:
    dead = [
        wire.PeerRecord(v.public_key, "super", "eu", f"127.0.0.1:{9 + i}")
        for i, v in enumerate(a.genesis.validators)
    ]
    squatter = wire.PeerRecord(crypto.KeyPair.generate().public_key, "super", "eu", a.target)
    lies = a.lies = [*dead, squatter]
    a.fingerprints = [squatter.public_key]

    def prepare() -> Burst:
        async def burst(net: Hostile, victim: str) -> None:
            # The target asks on connecting; answer that first, then push unasked.
            deadline = time.monotonic() + 5
            while not net.answers and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # polling for the answer the network sends itself
            if net.push_layer_frame(victim, wire.KIND_PEERS, wire.Peers(tuple(lies)).encode()):
                a.sent["unsolicited_peers"] += 1

        return burst

    await authenticated(a, prepare)


async def heartbeats(a: Attacker) -> None:
    def prepare() -> Burst:
        cid = a.genesis.network
        strangers = [make_heartbeat(crypto.KeyPair.generate(), cid, 0, 0) for _ in range(1_000)]
        # The current epoch first: the target reads a frame from its start, as far as the
        # link's budget lets it.
        epochs = [a.epoch, *(e for e in range(max(0, a.epoch - 4), a.epoch + 6) if e != a.epoch)]
        own = [make_heartbeat(a.key, cid, n, e) for e in epochs[:10] for n in range(100)]
        a.fingerprints = [t.raw[:64] for t in strangers[::20]]
        # Interleaved, so whatever part of a frame the target reads holds both.
        body = encode_batch([t for pair in zip(strangers, own, strict=True) for t in pair])

        async def burst(net: Hostile, victim: str) -> None:
            await send_all(a, net, victim, [(wire.KIND_TXS, body)])
            a.sent["heartbeats"] += len(strangers) + len(own)

        return burst

    await authenticated(a, prepare, every_s=0.2)


async def handshakes(a: Attacker) -> None:
    """Connections from one address that never authenticate: idle TCP, websockets that
    never send HELLO, and ones that send HELLO but never AUTH."""
    host, port = wire.split_address(a.target)
    url = f"http://{a.target}{p2p.PATH}"
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    waiting: set[asyncio.Task] = set()

    async def hold(ws: aiohttp.ClientWebSocketResponse) -> None:
        msg = await ws.receive()
        while msg.type is aiohttp.WSMsgType.BINARY:  # the target's HELLO
            msg = await ws.receive()
        a.sent[f"cut_{ws.close_code}"] += 1

    def hello() -> bytes:
        ephemeral, _ = p2p.ephemeral_keypair()
        key = crypto.KeyPair.generate()
        return p2p.frame(
            wire.KIND_HELLO,
            wire.Hello(
                p2p.PROTOCOL_VERSION,
                a.genesis.chain_id,
                a.genesis.hash,
                key.public_key,
                "full",
                "eu",
                "",
                0,
                ephemeral,
            ).encode(),
        )

    connector = aiohttp.TCPConnector(limit=0, local_addr=(a.from_host, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(100):
            idle.append(await asyncio.open_connection(host, port, local_addr=(a.from_host, 0)))
        a.sent["tcp_idle"] = len(idle)
        a.ready()
        attempt = 0
        while a.left() > 0:
            attempt += 1
            try:
                ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=1))
            except aiohttp.WSServerHandshakeError as exc:
                a.sent[f"refused_{exc.status}"] += 1
            except (aiohttp.ClientError, OSError) as exc:
                a.sent[f"failed_{type(exc).__name__}"] += 1
            else:
                a.sent["upgraded"] += 1
                if attempt % 2:
                    await ws.send_bytes(hello())
                    a.sent["hello_without_auth"] += 1
                task = asyncio.create_task(hold(ws))
                waiting.add(task)
                task.add_done_callback(waiting.discard)
            await asyncio.sleep(0.02)  # pacing: about 50 attempts a second
        a.sent["tcp_cut_by_target"] = sum(reader.at_eof() for reader, _ in idle)
        for task in list(waiting):
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for _, writer in idle:
            writer.close()


RUNS = {
    "votes": votes,
    "proposal": proposal,
    "status": status,
    "blocks": blocks,
    "txs": txs,
    "peers": peers,
    "handshakes": handshakes,
    "heartbeats": heartbeats,
}


async def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=sorted(RUNS))
    parser.add_argument("--target", required=True)
    parser.add_argument("--genesis", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--key")
    parser.add_argument("--wallet")
    parser.add_argument("--from-host", default="127.0.0.1")
    parser.add_argument("--epoch", type=int, default=0)
    args = parser.parse_args(argv)
    a = Attacker(
        genesis=Genesis.load(args.genesis),
        target=args.target,
        seconds=args.seconds,
        key=crypto.KeyPair(bytes.fromhex(args.key)) if args.key else crypto.KeyPair.generate(),
        wallet=crypto.KeyPair(bytes.fromhex(args.wallet)) if args.wallet else None,
        from_host=args.from_host,
        epoch=args.epoch,
    )
    await RUNS[args.attack](a)
    return {
        "attack": args.attack,
        "node_id": a.key.node_id,
        "sent": dict(a.sent),
        "seconds": round(time.monotonic() - a.deadline + a.seconds, 2),
        "fingerprints": a.prints(),
        **a.extra,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.root.handlers[0].setLevel(logging.INFO)  # not qnet.p2p's debug (CloseReasons)
    print(json.dumps(asyncio.run(main(sys.argv[1:]))), flush=True)
