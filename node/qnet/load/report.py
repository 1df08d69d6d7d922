"""A run's report: the accounting closed against the chain, TPS from block contents over block
times, latency from intended send times, the knee, generator validity, plots.

``summarise`` is pure: it takes the plan, the master's ``run.json``, the blocks read back
after the run and the nodes' answers about the transactions that neither committed nor were
refused at once; ``loadtest/campaign.py`` fetches those and writes what it returns.
"""

import bisect
import math
import os
import platform
import subprocess
from pathlib import Path

from .. import __version__
from .campaign import Campaign
from .figures import Accounting, Latencies, knee_verdicts, stage_latencies
from .plan import Plan

INVALID_EXIT = 2  # the generator measured itself: the figures are not the network's
UNCLOSED_EXIT = 3  # transactions the accounting cannot place


def machine() -> dict:
    """What the figures were measured on, and from which commit."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "qnet": __version__,
    }


def sent_batches(plan: Plan, run: dict) -> dict[int, list]:
    """The outcome of each batch that was sent: [k, free, sent, status, rejected]."""
    return {o[0]: o for o in run["outcomes"]}


def unsettled(plan: Plan, run: dict, committed: set[int]) -> dict[int, int]:
    """Transactions that were sent and neither committed nor refused in the reply: index ->
    the batch they went in (the caller asks the batch's target node about each)."""
    bounds = plan.schedule.bounds
    out = {}
    for k, _free, _sent, status, rejected in run["outcomes"]:
        refused = {bounds[k] + i for i, _ in rejected} if status == 200 else set()
        for i in range(bounds[k], bounds[k + 1]):
            if i not in committed and i not in refused:
                out[i] = k
    return out


def readback(plan: Plan, blocks: list[dict]) -> dict[int, dict]:
    """The plan's transactions in ``blocks``: index -> the header of the block holding it."""
    ids = plan.tx_ids()
    found = {}
    for block in blocks:
        for tx_id in block["transactions"]:
            i = ids.get(bytes.fromhex(tx_id))
            if i is not None:
                found[i] = block["header"]
    return found


def accounting(
    plan: Plan, run: dict, committed: dict[int, dict], statuses: dict[int, dict | None]
) -> Accounting:
    """``statuses``: for each unsettled transaction, the node's answer (None: unknown)."""
    bounds = plan.schedule.bounds
    acc = Accounting()
    acc.offered = plan.schedule.offered_before(run["stop_at"])
    acc.committed = int(run["tracker"]["committed"])
    acc.committed_readback = len(committed)
    for k, _free, _sent, status, rejected in run["outcomes"]:
        n = bounds[k + 1] - bounds[k]
        acc.sent += n
        if status == 200:
            acc.accepted += n - len(rejected)
            for _i, code in rejected:
                acc.reject(code)
    acc.backlog = acc.offered - acc.sent
    batch_status = {o[0]: o[3] for o in run["outcomes"]}
    accepted_unknown = 0
    for i, found in statuses.items():
        state = found["status"] if found else None
        if state in ("pending", "committed"):  # committed after the run's last height
            acc.pending += 1
        elif state == "rejected":
            acc.reject(found["reason"])
        elif batch_status[bisect.bisect_right(bounds, i) - 1] == 200:
            accepted_unknown += 1
        else:
            acc.never_arrived += 1
    acc.lost = accepted_unknown
    return acc


def commit_offsets(run: dict, committed: dict[int, dict]) -> dict[int, float]:
    """When each read-back transaction was seen committed (seconds from t0), by the tracker's
    first sighting of its height; a height it never saw has no time."""
    seen = {int(h): t for h, t in run["tracker"]["seen"].items()}
    return {i: seen[h["height"]] for i, h in committed.items() if h["height"] in seen}


def per_second(
    plan: Plan, run: dict, committed: dict[int, dict], commits: dict[int, float]
) -> list[dict]:
    """Offered, sent and committed transactions and commit latency per second of the run;
    committed counts by block time (the chain's own clock), latency by commit time."""
    seconds = max(1, math.ceil(run["stop_at"]))
    rows = [
        {"t": s, "offered": 0, "sent": 0, "committed": 0, "lat": Latencies()}
        for s in range(seconds)
    ]

    def row(t: float) -> dict | None:
        s = math.floor(t)
        return rows[s] if 0 <= s < seconds else None

    offsets, bounds = plan.schedule.offsets, plan.schedule.bounds
    for t in offsets:
        r = row(t)
        if r is not None:
            r["offered"] += 1
    for k, _free, sent, _status, _rejected in run["outcomes"]:
        r = row(sent)
        if r is not None:
            r["sent"] += bounds[k + 1] - bounds[k]
    t0_ms = run["t0"] * 1000
    for header in committed.values():
        r = row((header["time_ms"] - t0_ms) / 1000)
        if r is not None:
            r["committed"] += 1
    for i, seen in commits.items():
        r = row(seen)
        if r is not None:
            r["lat"].add(seen - offsets[i])
    out = []
    for r in rows:
        lat: Latencies = r.pop("lat")
        lat.offered = lat.committed
        out.append({**r, **{f"p{p}_ms": lat.percentile_ms(p) for p in (50, 95, 99)}})
    return out


def summarise(
    plan: Plan,
    run: dict,
    blocks: list[dict],
    statuses: dict[int, dict | None],
    settings: dict,
) -> dict:
    campaign = plan.campaign
    offsets = plan.schedule.offsets
    committed = readback(plan, blocks)
    commits = commit_offsets(run, committed)
    acc = accounting(plan, run, committed, statuses)
    stop = run["stop_at"]
    measured = [s for s in campaign.measured if s.start_s < stop]
    window = (measured[0].start_s, min(stop, measured[-1].end_s)) if measured else (0.0, 0.0)
    overall = Latencies()
    lo, hi = bisect.bisect_left(offsets, window[0]), bisect.bisect_left(offsets, window[1])
    overall.offered = hi - lo
    for i in range(lo, hi):
        if i in commits:
            overall.add(commits[i] - offsets[i])
    # What a closed-loop tool reports: from when the request actually left. It hides every
    # stall that held a request back; it is shown beside the honest figure, never instead.
    sent_at = {o[0]: o[2] for o in run["outcomes"]}
    batch_of = plan.batch_of()
    from_sent = Latencies()
    for i in range(lo, hi):
        if i in commits:
            from_sent.add(commits[i] - sent_at[batch_of[i]])
    from_sent.offered = from_sent.committed
    t0_ms = run["t0"] * 1000
    in_window = sum(
        1 for h in committed.values() if window[0] <= (h["time_ms"] - t0_ms) / 1000 < window[1]
    )
    span = window[1] - window[0]
    stages = []
    for stage in measured:
        lat = stage_latencies(offsets, commits, stage, stop=stop)
        end = min(stage.end_s, stop)
        n = sum(
            1 for h in committed.values() if stage.start_s <= (h["time_ms"] - t0_ms) / 1000 < end
        )
        stages.append(
            {
                "name": stage.name,
                "offered_rate": stage.rate if stage.rate == stage.to_rate else None,
                "offered_tps": round(lat.offered / (end - stage.start_s), 1)
                if end > stage.start_s
                else 0.0,
                "committed_tps": round(n / (end - stage.start_s), 1)
                if end > stage.start_s
                else 0.0,
                "latency": lat.to_json(),
            }
        )
    verdicts, knee = (
        knee_verdicts(campaign, offsets, commits, stop) if campaign.shape == "step" else ([], None)
    )
    problems = generator_problems(campaign, run["generators"])
    return {
        "campaign": campaign.to_json(),
        "machine": machine(),
        "settings": settings,
        "chain_id": plan.chain_id,
        "targets": plan.urls,
        "node_count": settings.get("node_count"),
        "stop_reason": run["stop_reason"],
        "window_s": [round(window[0], 3), round(window[1], 3)],
        "committed_tps": round(in_window / span, 1) if span > 0 else 0.0,
        "latency": overall.to_json(),
        "latency_from_actual_send": from_sent.to_json(),
        "accounting": acc.to_json(),
        "stages": stages,
        "knee": _knee(knee, stages),
        "knee_found": any(not v.good for v in verdicts),
        "verdicts": [vars(v) for v in verdicts],
        "generators": run["generators"],
        "valid": not problems,
        "invalid_because": problems,
        "per_second": per_second(plan, run, committed, commits),
    }


def _knee(knee, stages: list[dict]) -> dict | None:
    """The knee step's figures: what it offered and committed, its latency."""
    if knee is None:
        return None
    stage = next(s for s in stages if s["name"] == knee.stage)
    return {
        "stage": knee.stage,
        "offered_rate": stage["offered_rate"],
        "committed_tps": stage["committed_tps"],
        "committed_ratio": round(knee.ratio, 4),
        "p95_ms": stage["latency"]["p95_ms"],
        "p99_ms": stage["latency"]["p99_ms"],
    }


def generator_problems(campaign: Campaign, generators: dict) -> list[str]:
    """Why a run measured its generators rather than the network (empty when it did not)."""
    limits = campaign.generator
    processes = {
        "master": generators["master"],
        **{f"worker {w}": h for w, h in generators["workers"].items()},
    }
    problems = []
    for name, h in processes.items():
        if h is None:
            problems.append(f"{name} never reported its health")
            continue
        if h["cpu_mean"] > limits.max_cpu:
            problems.append(
                f"{name} used {h['cpu_mean']:.0%} of a core (limit {limits.max_cpu:.0%})"
            )
        if h["loop_lag_p99_ms"] > limits.max_lag_ms:
            problems.append(
                f"{name} woke up {h['loop_lag_p99_ms']:g} ms late "
                f"(p99; limit {limits.max_lag_ms:g} ms)"
            )
    return problems
