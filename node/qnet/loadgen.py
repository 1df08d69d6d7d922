"""Load generation and throughput measurement shared by the benchmark and load tests.

Transactions are signed before the timed window. Throughput is read from the chain:
transactions in committed blocks over the blocks' own times, never from the send rate.
"""

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import aiohttp

from . import crypto
from .tx import Transaction, encode_batch, make_transfer


def presign(
    senders: list[crypto.KeyPair],
    network: crypto.Network,
    count: int,
    fee: int,
    recipient: bytes,
    amount: int = 1,
) -> list[Transaction]:
    """``count`` transfers for ``network`` round-robin over ``senders``, nonces from 0 in
    order."""
    n = len(senders)
    return [
        make_transfer(senders[i % n], network, i // n, fee, recipient, amount) for i in range(count)
    ]


@dataclass
class SendReport:
    requested_rate: float
    sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    http_errors: int = 0
    started: float = 0.0  # wall clock, seconds
    finished: float = 0.0
    send_times: dict[bytes, float] = field(default_factory=dict)  # tx id -> wall clock

    @property
    def achieved_rate(self) -> float:
        span = self.finished - self.started
        return self.sent / span if span > 0 else 0.0

    @property
    def reached_rate(self) -> bool:
        return self.achieved_rate >= 0.95 * self.requested_rate


async def send_at_rate(
    urls: list[str],
    txs: list[Transaction],
    rate: float,
    batch_size: int = 500,
    concurrency: int = 4,
) -> SendReport:
    """Open loop: batch k leaves at start + k*batch/rate for node k mod len(urls); late
    batches go as soon as they can."""
    report = SendReport(requested_rate=rate)
    batches = [txs[i : i + batch_size] for i in range(0, len(txs), batch_size)]
    bodies = [encode_batch(b) for b in batches]
    # A bounded queue: a node that cannot take the load shows up as a missed send rate.
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=concurrency)
    endpoints = [f"{url}/api/v1/transactions/batch" for url in urls]
    headers = {"Content-Type": "application/octet-stream"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            k = await queue.get()
            sent_at = time.time()
            for t in batches[k]:
                report.send_times[t.id] = sent_at
            try:
                endpoint = endpoints[k % len(endpoints)]
                async with session.post(endpoint, data=bodies[k], headers=headers) as resp:
                    body = await resp.json()
                if resp.status != 200:
                    report.http_errors += 1
                else:
                    report.accepted += body["accepted"]
                    for r in body["rejected"]:
                        report.rejected[r["code"]] = report.rejected.get(r["code"], 0) + 1
            except aiohttp.ClientError:
                report.http_errors += 1
            report.sent += len(batches[k])
            queue.task_done()

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        start = time.monotonic()
        report.started = time.time()
        for k in range(len(batches)):
            due = start + k * batch_size / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the open-loop send schedule
            await queue.put(k)
        await queue.join()
        report.finished = time.time()
        for w in workers:
            w.cancel()
    return report


async def fetch_blocks(url: str, first: int, last: int) -> list[dict]:
    """Full blocks (header and tx ids) from ``first`` to ``last`` inclusive."""
    async with aiohttp.ClientSession() as session:

        async def one(h: int) -> dict:
            async with session.get(f"{url}/api/v1/blocks/{h}") as resp:
                resp.raise_for_status()
                return await resp.json()

        out = []
        for start in range(first, last + 1, 32):
            out += await asyncio.gather(*(one(h) for h in range(start, min(last, start + 31) + 1)))
        return out


@dataclass
class ChainFigures:
    committed: int
    window_s: float
    committed_tps: float
    per_second: list[int]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    blocks: int


class CommitWatcher:
    """Records when each height is first seen committed on a node (polling its status), so
    commit latency is the time a client could learn of the commit minus the send time."""

    def __init__(self, url: str, every_s: float = 0.02):
        self.url = url
        self.every_s = every_s
        self.seen: dict[int, float] = {}
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        last = 0
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"{self.url}/api/v1/status") as resp:
                        height = (await resp.json())["height"]
                    now = time.time()
                    for h in range(last + 1, height + 1):
                        self.seen[h] = now
                    last = max(last, height)
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(self.every_s)  # the polling period is the resolution

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def chain_figures(
    blocks: list[dict],
    t0: float,
    t1: float,
    send_times: dict[bytes, float],
    commit_times: dict[int, float],
) -> ChainFigures:
    """Committed TPS from block contents over block times within [t0, t1] (wall seconds).

    Latency is, for every transaction we sent, the time its block was first seen committed
    (``commit_times`` by height) minus its send time.
    """
    per_second = [0] * max(1, int(t1 - t0 + 0.999))
    committed, latencies = 0, []
    in_window = 0
    for b in blocks:
        bt = b["header"]["time_ms"] / 1000
        seen = commit_times.get(b["header"]["height"])
        for tx_id in b["transactions"]:
            sent = send_times.get(bytes.fromhex(tx_id))
            if sent is not None and seen is not None:
                latencies.append((seen - sent) * 1000)
        if t0 <= bt < t1:
            n = b["header"]["tx_count"]
            committed += n
            in_window += 1
            per_second[min(len(per_second) - 1, int(bt - t0))] += n
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    span = t1 - t0
    return ChainFigures(
        committed,
        round(span, 3),
        round(committed / span, 1),
        per_second,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        in_window,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)
