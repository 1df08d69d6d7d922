"""The report's PNG plots, from a summary (``report.summarise``).

``timeline.png``: offered, sent and committed transfers (and heartbeats committed, with a
population) per second over the run, and commit latency p50/p95/p99 per second below it;
``steps.png`` (step campaigns): committed throughput against p95 and p99 latency, one point
per step, the knee marked.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def _caption(summary: dict) -> str:
    m = summary["machine"]
    return (
        f"{summary['campaign']['name']} on {summary['node_count']} node(s), "
        f"commit {m['commit']}, {m['cores']} cores {m['cpu']}"
    )


def timeline(summary: dict, path: Path) -> None:
    rows = summary["per_second"]
    t = [r["t"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    top.plot(t, [r["offered"] for r in rows], label="offered", color="tab:gray", ls="--")
    top.plot(t, [r["sent"] for r in rows], label="sent", color="tab:blue", alpha=0.7)
    top.plot(t, [r["committed"] for r in rows], label="committed (block time)", color="tab:green")
    if any(r["heartbeats"] for r in rows):
        beats = [r["heartbeats"] for r in rows]
        top.plot(t, beats, label="heartbeats committed", color="tab:purple", alpha=0.8)
    top.set_ylabel("transactions per second")
    top.set_ylim(bottom=0)
    top.set_title(f"Offered, sent and committed load - {_caption(summary)}", fontsize=10)
    for p, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        values = [r[f"{p}_ms"] for r in rows]
        bottom.plot(t, [v if v is not None else float("nan") for v in values], label=p, c=color)
    bottom.set_ylim(bottom=0)  # after the lines: before them it would fix the top at 1
    bottom.set_ylabel("commit latency (ms)\nfrom intended send time")
    bottom.set_xlabel("seconds from the start of the run (commit second for latency)")
    for axis in (top, bottom):
        for stage in summary["campaign"]["stages"]:
            if stage["start_s"] < len(rows):  # the stages the run reached
                axis.axvline(stage["start_s"], color="lightgray", lw=0.8)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def steps(summary: dict, path: Path) -> None:
    stages = [s for s in summary["stages"] if s["latency"]["p95_ms"] is not None]
    fig, axis = plt.subplots(figsize=(8, 5))
    x = [s["committed_tps"] for s in stages]
    for p, color in (("p95", "tab:orange"), ("p99", "tab:red")):
        y = [s["latency"][f"{p}_ms"] for s in stages]
        axis.plot(x, [v if v is not None else float("nan") for v in y], "o-", c=color, label=p)
    knee = summary["knee"]
    label = "knee" if summary["knee_found"] else "last step (knee not reached)"
    for s in stages:
        if knee and s["name"] == knee["stage"]:
            axis.annotate(
                label,
                (s["committed_tps"], s["latency"]["p95_ms"]),
                xytext=(-40, -40),
                ha="right",
                textcoords="offset points",
                arrowprops={"arrowstyle": "->"},
            )
    highest = max((s["latency"]["p99_ms"] or s["latency"]["p95_ms"] for s in stages), default=1)
    axis.set_ylim(0, highest * 1.15)
    axis.set_xlim(0, max(x, default=1) * 1.1)
    axis.set_xlabel("committed transactions per second (per step)")
    axis.set_ylabel("commit latency (ms)")
    axis.set_title(f"Throughput against latency per step - {_caption(summary)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw(summary: dict, directory: Path) -> list[Path]:
    paths = [directory / "timeline.png"]
    timeline(summary, paths[0])
    if summary["campaign"]["shape"] == "step":
        paths.append(directory / "steps.png")
        steps(summary, paths[-1])
    return paths
