"""A run's report: the accounting closed against the chain, TPS from block contents over block
times, latency from intended send times, the knee, generator validity, plots.

``summarise`` is pure: it takes the plan, the master's ``run.json``, the blocks read back
after the run, the nodes' answers about the transactions that neither committed nor were
refused at once, and (with a population) the simulated nodes' records;
``loadtest/campaign.py`` fetches those and writes what it returns. The headline figures are
the transfers'; every stream has its own accounting.
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
from .plan import Key, Plan, StreamPlan

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


def outcomes(run: dict, name: str) -> list[list]:
    """The outcomes of a stream's batches: [k, free, sent, status, rejected]."""
    return [o[1:] for o in run["outcomes"] if o[0] == name]


def unsettled(plan: Plan, run: dict, committed: set[Key]) -> dict[Key, int]:
    """Transactions that were sent and neither committed nor refused in the reply: key ->
    the plan-wide lane that sent them (the caller asks that lane's node about each)."""
    out = {}
    for name, sp in plan.streams.items():
        bounds = sp.schedule.bounds
        for k, _free, _sent, status, rejected in outcomes(run, name):
            refused = {bounds[k] + i for i, _ in rejected} if status == 200 else set()
            lane = sp.first_lane + sp.lane_of(k)
            for i in range(bounds[k], bounds[k + 1]):
                if (name, i) not in committed and i not in refused:
                    out[name, i] = lane
    return out


def readback(plan: Plan, blocks: list[dict]) -> dict[Key, dict]:
    """The plan's transactions in ``blocks``: key -> the header of the block holding it."""
    ids = plan.ids
    found = {}
    for block in blocks:
        for tx_id in block["transactions"]:
            key = ids.get(bytes.fromhex(tx_id))
            if key is not None:
                found[key] = block["header"]
    return found


def accounting(
    sp: StreamPlan,
    run: dict,
    committed: dict[int, dict],
    statuses: dict[int, dict | None],
) -> Accounting:
    """One stream's accounting; ``committed`` and ``statuses`` (the node's answer about each
    unsettled transaction, None when it knows nothing) by index in the stream."""
    bounds, offsets, stop = sp.schedule.bounds, sp.schedule.offsets, run["stop_at"]
    acc = Accounting()
    acc.offered = sp.schedule.offered_before(stop)
    acc.committed = int(run["tracker"]["committed"].get(sp.stream.name, 0))
    acc.committed_readback = len(committed)
    sent = outcomes(run, sp.stream.name)
    for k, _free, _sent, status, rejected in sent:
        n = bounds[k + 1] - bounds[k]
        acc.sent += n
        # Sent before the stop reached its lane, though due after it: offered all the same.
        acc.offered += sum(1 for i in range(bounds[k], bounds[k + 1]) if offsets[i] >= stop)
        if status == 200:
            acc.accepted += n - len(rejected)
            for _i, code in rejected:
                acc.reject(code)
    acc.backlog = acc.offered - acc.sent
    batch_status = {o[0]: o[3] for o in sent}
    for i, found in statuses.items():
        state = found["status"] if found else None
        if state in ("pending", "committed"):  # committed after the run's last height
            acc.pending += 1
        elif state == "rejected":
            acc.reject(found["reason"])
        elif batch_status[bisect.bisect_right(bounds, i) - 1] == 200:
            acc.lost += 1  # accepted, and now the node knows nothing of it
        else:
            acc.never_arrived += 1
    return acc


def commit_offsets(run: dict, committed: dict[Key, dict]) -> dict[Key, float]:
    """When each read-back transaction was seen committed (seconds from t0), by the tracker's
    first sighting of its height; a height it never saw has no time."""
    seen = {int(h): t for h, t in run["tracker"]["seen"].items()}
    return {key: seen[h["height"]] for key, h in committed.items() if h["height"] in seen}


def by_stream(mapping: dict[Key, object], name: str) -> dict[int, object]:
    return {i: v for (s, i), v in mapping.items() if s == name}


def per_second(plan: Plan, run: dict, committed: dict[Key, dict], commits: dict[Key, float]):
    """Per second of the run: transfers offered, sent and committed, commit latency, and
    heartbeats committed; committed counts by block time (the chain's clock), latency by
    commit time."""
    seconds = max(1, math.ceil(run["stop_at"]))
    rows = [
        {"t": s, "offered": 0, "sent": 0, "committed": 0, "heartbeats": 0, "lat": Latencies()}
        for s in range(seconds)
    ]

    def row(t: float) -> dict | None:
        s = math.floor(t)
        return rows[s] if 0 <= s < seconds else None

    sp = plan.transfers
    offsets, bounds = sp.schedule.offsets, sp.schedule.bounds
    for t in offsets:
        if (r := row(t)) is not None:
            r["offered"] += 1
    for k, _free, sent, _status, _rejected in outcomes(run, "transfer"):
        if (r := row(sent)) is not None:
            r["sent"] += bounds[k + 1] - bounds[k]
    t0_ms = run["t0"] * 1000
    for (name, _i), header in committed.items():
        if (r := row((header["time_ms"] - t0_ms) / 1000)) is not None:
            r["committed" if name == "transfer" else "heartbeats"] += 1
    for i, seen in by_stream(commits, "transfer").items():
        if (r := row(seen)) is not None:
            r["lat"].add(seen - offsets[i])
    out = []
    for r in rows:
        lat: Latencies = r.pop("lat")
        lat.offered = lat.committed
        out.append({**r, **{f"p{p}_ms": lat.percentile_ms(p) for p in (50, 95, 99)}})
    return out


def window_latencies(
    sp: StreamPlan, commits: dict[int, float], window: tuple[float, float], sent_at=None
) -> Latencies:
    """Latencies of the stream's transactions due in ``window``; from the intended send time,
    or with ``sent_at`` (batch -> when it left) from the actual send, over the committed."""
    offsets = sp.schedule.offsets
    lo, hi = bisect.bisect_left(offsets, window[0]), bisect.bisect_left(offsets, window[1])
    lat = Latencies()
    batch_of = sp.batch_of() if sent_at is not None else None
    for i in range(lo, hi):
        if i in commits:
            start = offsets[i] if batch_of is None else sent_at[batch_of[i]]
            lat.add(commits[i] - start)
    lat.offered = hi - lo if sent_at is None else lat.committed
    return lat


def summarise(
    plan: Plan,
    run: dict,
    blocks: list[dict],
    statuses: dict[Key, dict | None],
    settings: dict,
    nodes: dict[str, dict | None] | None = None,
) -> dict:
    """``nodes``: with a population, each simulated node's record (None: unknown)."""
    campaign = plan.campaign
    committed = readback(plan, blocks)
    commits = commit_offsets(run, committed)
    stop = run["stop_at"]
    measured = [s for s in campaign.measured if s.start_s < stop]
    window = (measured[0].start_s, min(stop, measured[-1].end_s)) if measured else (0.0, 0.0)
    span = window[1] - window[0]
    t0_ms = run["t0"] * 1000

    def committed_in(name: str, start: float, end: float) -> int:
        return sum(
            1
            for (s, _i), h in committed.items()
            if s == name and start <= (h["time_ms"] - t0_ms) / 1000 < end
        )

    streams = {}
    for name, sp in plan.streams.items():
        acc = accounting(sp, run, by_stream(committed, name), by_stream(statuses, name))
        lat = window_latencies(sp, by_stream(commits, name), window)
        n = committed_in(name, *window)
        streams[name] = {
            "accounting": acc.to_json(),
            "closes": acc.closes,
            "committed_per_second": round(n / span, 1) if span > 0 else 0.0,
            "latency": lat.to_json(),
        }
    sp = plan.transfers
    transfer_commits = by_stream(commits, "transfer")
    # What a closed-loop tool reports: from when the request actually left. It hides every
    # stall that held a request back; it is shown beside the honest figure, never instead.
    sent_at = {o[0]: o[2] for o in outcomes(run, "transfer")}
    from_sent = window_latencies(sp, transfer_commits, window, sent_at)
    # How late each transfer left: what a closed-loop tool leaves out of its latency.
    delays = Latencies()
    batch_of = sp.batch_of()
    lo, hi = (bisect.bisect_left(sp.schedule.offsets, w) for w in window)
    late = 0
    for i in range(lo, hi):
        if batch_of[i] in sent_at:
            delay = sent_at[batch_of[i]] - sp.schedule.offsets[i]
            delays.add(max(0.0, delay))
            late += delay >= 1.0
    delays.offered = delays.committed
    stages = []
    for stage in measured:
        lat = stage_latencies(sp.schedule.offsets, transfer_commits, stage, stop=stop)
        end = min(stage.end_s, stop)
        seconds = end - stage.start_s
        stages.append(
            {
                "name": stage.name,
                "offered_rate": stage.rate if stage.rate == stage.to_rate else None,
                "offered_tps": round(lat.offered / seconds, 1) if seconds > 0 else 0.0,
                "committed_tps": round(committed_in("transfer", stage.start_s, end) / seconds, 1)
                if seconds > 0
                else 0.0,
                "latency": lat.to_json(),
            }
        )
    verdicts, knee = ([], None)
    if campaign.shape == "step":
        verdicts, knee = knee_verdicts(campaign, sp.schedule.offsets, transfer_commits, stop)
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
        "committed_tps": streams["transfer"]["committed_per_second"],
        "latency": streams["transfer"]["latency"],
        "latency_from_actual_send": from_sent.to_json(),
        "send_delay": {**delays.to_json(), "sent_a_second_late_or_more": late},
        "accounting": streams["transfer"]["accounting"],
        "streams": streams,
        "closes": all(s["closes"] for s in streams.values()),
        "stages": stages,
        "knee": _knee(knee, stages),
        "knee_found": any(not v.good for v in verdicts),
        "verdicts": [vars(v) for v in verdicts],
        "population": population(plan, committed, nodes),
        "generators": run["generators"],
        "valid": not problems,
        "invalid_because": problems,
        "per_second": per_second(plan, run, committed, commits),
    }


def population(plan: Plan, committed: dict[Key, dict], nodes: dict | None) -> dict | None:
    """How many simulated nodes heartbeated (their heartbeat is on chain) and how many of
    those the chain counts as eligible in the epoch of it."""
    beats = plan.meta.get("heartbeat")
    if beats is None:
        return None
    ids = beats["nodes"]
    heartbeated = [ids[i] for (s, i) in committed if s == "heartbeat"]
    epochs = (beats["epoch"], beats["epoch"] + 1)  # the heartbeats were signed for these
    eligible = [
        n
        for n in heartbeated
        if nodes and nodes.get(n) and any(e["epoch"] in epochs for e in nodes[n]["epochs"])
    ]
    return {
        "nodes": len(ids),
        "node_type": beats["node_type"],
        "epoch": beats["epoch"],
        "heartbeated": len(heartbeated),
        "eligible": len(eligible),
        "not_eligible": sorted(set(heartbeated) - set(eligible))[:20],
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
    processes = {f"worker {w}": h for w, h in generators["workers"].items()}
    if generators["master"] is not None:  # None: one process, the worker "local"
        processes["master"] = generators["master"]
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
