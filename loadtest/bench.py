"""Committed-throughput benchmark of one node or a network of validators (``make bench``).

Per run: fresh node processes (one, or N validators meshed on loopback) with a genesis
funding many senders, the same genesis in every run (same validator keys), so the transfers
signed once for its network before the first timed window are valid in each; they are sent
through the batch endpoint at a requested rate; committed TPS is read from the chain (block
contents over block times) over the measured window.
The same run measures one core's PyNaCl verifications per second, the node's ceiling per
core. Each run is made with the mempool journal on and off (``--journal``), so the cost of
keeping every accepted transaction across a crash shows beside the figures without it;
with it on, the nodes' journal metrics give the fsyncs per second, the transactions each
fsync covers and the time an fsync takes. Prints a table and writes JSON with the machine,
commit and settings.
"""

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qnet import crypto, loadgen
from qnet.genesis import Genesis, Params
from qnet.load.report import machine
from qnet.localnode import LocalNode, http, local_genesis, validator_nodes

FEE = 1_000
FUNDS = 10**15


def verify_rate(seconds: float = 2.0) -> float:
    key = crypto.KeyPair.generate()
    msg = b"q" * 120
    sig = key.sign(msg)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            crypto.verify(key.public_key, sig, msg)
        n += 1000
    return n / (time.perf_counter() - start)


# Where a sample's time goes: the first of these, in this order, found in its stack.
STAGES = (
    ("crypto_sign_open", "signature verification (threads)"),
    ("commit_block", "durable block write (SQLite)"),
    ("apply_transactions", "ledger apply"),
    ("select", "block building: mempool selection"),
    ("on_committed", "mempool cleanup after commit"),
    ("admit", "mempool admission"),
    ("decode", "transaction decoding"),
    ("split_batch", "transaction decoding"),
    ("submit", "admission bookkeeping"),
    ("commit", "state merge after commit"),
    ("build_block", "block building: header, signature"),
    ("_carry_out", "consensus driver"),
    ("_serve", "peer-to-peer transport"),
    ("_handle_request", "HTTP API"),
)


# Where a thread waits for work: a thread pool's idle worker, the event loop's poll. py-spy
# samples them like any other stack; they are not the node's busy time.
IDLE_LEAVES = ("_worker", "EpollSelector.select")


def profile_summary(raw: Path) -> list[tuple[str, float]]:
    """Share of the node's busy samples per stage from a py-spy ``--format raw`` profile."""
    shares: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if frames[-1] in IDLE_LEAVES:
            continue
        names = [f.rsplit(".", 1)[-1] for f in frames]
        stage = next((label for key, label in STAGES if key in names), None)
        stage = stage or "event loop and the rest"
        shares[stage] = shares.get(stage, 0) + int(count)
        total += int(count)
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    return [(name, round(100 * n / total, 1)) for name, n in ranked] if total else []


def delta_mean(before: dict, after: dict, name: str) -> float:
    """Mean of a histogram over the run, from its _sum and _count before and after."""
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return round(total / count, 3) if count else 0.0


def metric_sums(text: str) -> dict[str, float]:
    """``*_sum`` and ``*_count`` of the node's stage histograms and its ``*_total``
    counters without labels."""
    out = {}
    for m in re.finditer(r"^(qnet_\w+_(?:sum|count|total)) (\S+)$", text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def all_metric_sums(nodes: list[LocalNode]) -> dict[str, float]:
    """``metric_sums`` added up over the nodes."""
    out: dict[str, float] = {}
    for node in nodes:
        for name, value in metric_sums(http("GET", node.url + "/metrics")[1]).items():
            out[name] = out.get(name, 0) + value
    return out


def journal_figures(before: dict, after: dict, seconds: float) -> dict:
    """Fsyncs per second, transactions per fsync and time per fsync, over all nodes."""
    fsyncs = after.get("qnet_journal_fsyncs_total", 0) - before.get("qnet_journal_fsyncs_total", 0)
    records = after.get("qnet_journal_records_total", 0) - before.get(
        "qnet_journal_records_total", 0
    )
    return {
        "fsyncs": int(fsyncs),
        "fsyncs_per_second": round(fsyncs / seconds, 1) if seconds else 0.0,
        "mean_records_per_fsync": round(records / fsyncs, 1) if fsyncs else 0.0,
        "mean_fsync_ms": round(1000 * delta_mean(before, after, "qnet_journal_fsync_seconds"), 3),
    }


def bench_genesis(args, senders, validators: list[crypto.KeyPair]) -> Genesis:
    funded = {k.address: FUNDS for k in senders}
    params = Params(
        block_interval_ms=args.block_interval_ms, max_block_txs=args.max_block_txs, min_fee=FEE
    )
    return local_genesis(validators, funded, params)


def start_network(
    args, genesis: Genesis, validators: list[crypto.KeyPair], workdir: Path, journal: bool
) -> list[LocalNode]:
    config = {"mempool_capacity": args.mempool, "journal": journal}
    nodes = validator_nodes(workdir, genesis, validators, config)
    for node in nodes:
        node.start()
    deadline = time.monotonic() + 30
    while not all(node.status()["peers"] == len(nodes) - 1 for node in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError("the validators did not connect to each other within 30 s")
        time.sleep(0.1)  # waiting for the mesh to form before the timed window
    return nodes


async def one_run(
    args, genesis: Genesis, validators: list[crypto.KeyPair], txs, workdir: Path, journal: bool
) -> dict:
    nodes = start_network(args, genesis, validators, workdir, journal)
    node = nodes[0]  # the chain is read, the commit watched and the profile taken here
    profiler = None
    watcher = loadgen.CommitWatcher(node.url)
    try:
        before = metric_sums(http("GET", node.url + "/metrics")[1])
        journal_before = all_metric_sums(nodes)
        if args.profile:
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "--pid",
                    str(node.proc.pid),
                    "--rate",
                    "50",
                    "--output",
                    str(workdir / "profile.txt"),
                    "--duration",
                    str(int(args.duration)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        watcher.start()
        report = await loadgen.send_at_rate([n.url for n in nodes], txs, args.rate, args.batch)
        journal_after = all_metric_sums(nodes)
        # Let the mempools drain so late commits count toward latency, not toward the window.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(n.status()["mempool_size"] for n in nodes):
            await asyncio.sleep(0.2)
        await watcher.stop()
        after = metric_sums(http("GET", node.url + "/metrics")[1])
        head = node.status()["height"]
        blocks = await loadgen.fetch_blocks(node.url, 1, head)
    finally:
        await watcher.stop()
        if profiler is not None:
            profiler.wait(30)
        for n in nodes:
            n.stop()
    profile = profile_summary(workdir / "profile.txt") if args.profile else []
    t0 = report.started + args.warmup
    figures = loadgen.chain_figures(blocks, t0, t0 + args.duration, report.send_times, watcher.seen)
    window = figures.per_second[:-1] or figures.per_second
    stages = {
        name: round(
            after.get(f"qnet_{name}_seconds_sum", 0) - before.get(f"qnet_{name}_seconds_sum", 0), 2
        )
        for name in ("tx_verify", "block_build", "block_commit")
    }
    send_wall_s = report.finished - report.started
    return {
        "journal": journal,
        "requested_rate": args.rate,
        "achieved_send_rate": round(report.achieved_rate, 1),
        "reached_send_rate": report.reached_rate,
        "accepted": report.accepted,
        "accepted_tps": round(report.accepted / send_wall_s, 1) if send_wall_s else 0.0,
        "rejected": report.rejected,
        "http_errors": report.http_errors,
        "committed_in_window": figures.committed,
        "window_s": figures.window_s,
        "committed_tps": figures.committed_tps,
        "min_committed_per_second": min(window),
        "blocks_in_window": figures.blocks,
        "latency_ms": {
            "p50": figures.latency_p50_ms,
            "p95": figures.latency_p95_ms,
            "p99": figures.latency_p99_ms,
        },
        "node_stage_seconds": stages,
        "rounds_per_height": delta_mean(before, after, "qnet_consensus_rounds_per_height"),
        "proposal_to_commit_ms": round(
            1000 * delta_mean(before, after, "qnet_commit_latency_seconds"), 1
        ),
        "send_wall_s": round(send_wall_s, 2),
        "journal_fsyncs": journal_figures(journal_before, journal_after, send_wall_s)
        if journal
        else None,
        "profile_inclusive_percent": profile,
    }


def print_run(number: int, run: dict) -> None:
    lat = run["latency_ms"]
    print(
        f"run {number}, journal {'on' if run['journal'] else 'off'}: committed "
        f"{run['committed_tps']:>9,.1f} tx/s (min {run['min_committed_per_second']:,}/s), "
        f"accepted {run['accepted_tps']:,.0f}/s, sent {run['achieved_send_rate']:,.0f}/s"
        f"{'' if run['reached_send_rate'] else ' (requested rate NOT reached)'}, "
        f"latency p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']} ms, "
        f"rejected {run['rejected'] or 0}, rounds/height {run['rounds_per_height']}, "
        f"proposal-to-commit mean {run['proposal_to_commit_ms']} ms"
    )
    if run["journal_fsyncs"]:
        j = run["journal_fsyncs"]
        print(
            f"    journal: {j['fsyncs_per_second']:,.1f} fsyncs/s, "
            f"{j['mean_records_per_fsync']:,.1f} transactions per fsync, "
            f"{j['mean_fsync_ms']} ms per fsync"
        )
    for name, pct in run["profile_inclusive_percent"]:
        print(f"    {pct:5.1f}%  {name}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--validators", type=int, default=1, help="validator processes")
    p.add_argument("--senders", type=int, default=2000)
    p.add_argument("--rate", type=float, default=12_000, help="requested sends per second")
    p.add_argument("--target", type=float, default=10_000, help="committed TPS to reach")
    p.add_argument("--duration", type=float, default=30, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--block-interval-ms", type=int, default=200)
    p.add_argument("--max-block-txs", type=int, default=20_000)
    p.add_argument("--mempool", type=int, default=400_000)
    p.add_argument(
        "--journal",
        choices=("both", "on", "off"),
        default="both",
        help="run with the mempool journal on, off, or both ways in each run (default)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the node with py-spy and print where its time goes",
    )
    p.add_argument("--out", type=Path, help="JSON report (default bench-results/<n>v.json)")
    args = p.parse_args()
    args.out = args.out or Path(f"bench-results/{args.validators}-validator.json")
    label = f"{args.validators}-validator" if args.validators > 1 else "single-node"

    print(
        f"QNet {label} benchmark: {args.senders} senders, {args.rate:.0f} tx/s requested, "
        f"{args.duration:.0f} s window after {args.warmup:.0f} s warm-up, {args.runs} runs"
    )
    ceiling = verify_rate()
    print(f"PyNaCl Ed25519 verifications per second, one core: {ceiling:,.0f}")
    senders = [crypto.KeyPair.generate() for _ in range(args.senders)]
    validators = [crypto.KeyPair.generate() for _ in range(args.validators)]
    genesis = bench_genesis(args, senders, validators)
    count = int(args.rate * (args.duration + args.warmup + 1))
    started = time.perf_counter()
    sink = crypto.KeyPair.generate().address
    txs = loadgen.presign(senders, genesis.network, count, FEE, sink)
    print(
        f"signed {count:,} transfers before the timed window in "
        f"{time.perf_counter() - started:.1f} s"
    )
    settings = {"both": (True, False), "on": (True,), "off": (False,)}[args.journal]
    runs = []
    for i in range(args.runs):
        for journal in settings:
            with tempfile.TemporaryDirectory(prefix="qnet-bench-") as tmp:
                run = asyncio.run(one_run(args, genesis, validators, txs, Path(tmp), journal))
            runs.append(run)
            print_run(i + 1, run)
    by_journal = {}
    for journal in settings:
        chosen = [r for r in runs if r["journal"] == journal]
        by_journal["on" if journal else "off"] = {
            "median_committed_tps": loadgen.median([r["committed_tps"] for r in chosen]),
            "median_accepted_tps": loadgen.median([r["accepted_tps"] for r in chosen]),
            "median_latency_p99_ms": loadgen.median([r["latency_ms"]["p99"] or 0 for r in chosen]),
        }
    main_setting = by_journal["on" if settings[0] else "off"]
    summary = {
        "benchmark": f"{label} committed throughput",
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "verify_per_second_one_core": round(ceiling),
        "median_committed_tps": main_setting["median_committed_tps"],
        "median_latency_p99_ms": main_setting["median_latency_p99_ms"],
        "journal": by_journal,
        "runs": runs,
    }
    for setting, figures in by_journal.items():
        print(
            f"{label}, journal {setting}: median committed TPS over {args.runs} runs "
            f"{figures['median_committed_tps']:,.1f} (target {args.target:,.0f}), accepted "
            f"{figures['median_accepted_tps']:,.1f}/s, median p99 commit latency "
            f"{figures['median_latency_p99_ms']} ms"
        )
    print(f"verify ceiling one core {ceiling:,.0f}/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
