"""The figures of a run, from its plan, what it sent and what the chain committed.

Latency is commit time (when the tracker first saw the transaction's block) minus the
transaction's *intended* send time, so a generator that falls behind cannot hide it.
Percentiles come from an HDR histogram (three significant digits) over every transaction
*offered*: one that never committed counts as slower than every committed one, so a
percentile that falls among them is reported as ``None`` (not committed), never as the
latency of the lucky ones. The live knee check and the report's knee use ``step_verdict``
on the same inputs, so the run stops where its report says the knee is.
"""

import bisect
import math
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from .campaign import Campaign, Knee, Stage

HIGHEST_US = 24 * 3600 * 1_000_000
PERCENTILES = (50.0, 95.0, 99.0)


class Latencies:
    """Commit latencies of the transactions offered in a span, in an HDR histogram."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(1, HIGHEST_US, 3)
        self.offered = 0  # committed ones are in hist; the rest never committed

    def add(self, seconds: float) -> None:
        self.hist.record_value(min(HIGHEST_US, max(1, round(seconds * 1e6))))

    @property
    def committed(self) -> int:
        return self.hist.get_total_count()

    def percentile_ms(self, p: float) -> float | None:
        """The ``p``-th percentile over everything offered; None when it is not committed."""
        rank = math.ceil(p / 100 * self.offered)
        if rank == 0 or rank > self.committed:
            return None
        return round(self.hist.get_value_at_percentile(100 * rank / self.committed) / 1000, 1)

    def max_ms(self) -> float | None:
        return round(self.hist.get_max_value() / 1000, 1) if self.committed else None

    def to_json(self) -> dict:
        return {
            "offered": self.offered,
            "committed": self.committed,
            **{f"p{p:g}_ms": self.percentile_ms(p) for p in PERCENTILES},
            "max_ms": self.max_ms(),
        }


@dataclass(frozen=True)
class Verdict:
    stage: str
    offered: int
    committed: int
    ratio: float
    p95_ms: float | None
    good: bool
    reason: str


def step_verdict(
    stage: Stage, latencies: Latencies, first_p95_ms: float | None, knee: Knee
) -> Verdict:
    """Whether a step is below the knee: enough of what it offered committed, soon enough."""
    ratio = latencies.committed / latencies.offered if latencies.offered else 0.0
    p95 = latencies.percentile_ms(95)
    if latencies.offered == 0:
        good, reason = False, "offered nothing"
    elif ratio < knee.min_committed_ratio:
        good, reason = False, f"committed {ratio:.1%} of offered (< {knee.min_committed_ratio:.0%})"
    elif p95 is None:
        good, reason = False, "p95 not committed"
    elif first_p95_ms is not None and p95 > knee.max_p95_factor * first_p95_ms:
        good = False
        reason = f"p95 {p95:g} ms > {knee.max_p95_factor:g} x first step's {first_p95_ms:g} ms"
    else:
        good, reason = True, "below the knee"
    return Verdict(stage.name, latencies.offered, latencies.committed, ratio, p95, good, reason)


def stage_latencies(
    offsets: list[float] | tuple[float, ...],
    commit_offsets: dict[int, float],
    stage: Stage,
    until: float = math.inf,
    stop: float = math.inf,
) -> Latencies:
    """Latencies of the transactions due in ``stage`` (before the run stopped at ``stop``)
    that committed before ``until`` (offsets in seconds from the start; ``commit_offsets``
    maps a transaction's index to when it was seen committed)."""
    lat = Latencies()
    lo = bisect.bisect_left(offsets, stage.start_s)
    hi = bisect.bisect_left(offsets, min(stage.end_s, stop))
    lat.offered = hi - lo
    for i in range(lo, hi):
        seen = commit_offsets.get(i)
        if seen is not None and seen <= until:
            lat.add(seen - offsets[i])
    return lat


def evaluation_time(stage: Stage) -> float:
    """When a step is judged: a while after it ends, so that its last transactions can commit
    (the run goes on meanwhile; the judgement only looks at what the step offered)."""
    return stage.end_s + min(stage.seconds, 5.0)


def knee_verdicts(
    campaign: Campaign, offsets, commit_offsets: dict[int, float], stop_s: float
) -> tuple[list[Verdict], Verdict | None]:
    """Every measured step that was judged before ``stop_s`` (or ended before it, when the
    run ran to its end), and the knee: the last good step before the first bad one."""
    verdicts: list[Verdict] = []
    knee = None
    first_p95 = None
    for stage in campaign.measured:
        if stage.end_s > stop_s + 1e-9:
            break
        lat = stage_latencies(offsets, commit_offsets, stage, evaluation_time(stage))
        verdict = step_verdict(stage, lat, first_p95, campaign.knee)
        if first_p95 is None:
            first_p95 = verdict.p95_ms
        verdicts.append(verdict)
        if not verdict.good:
            break
        knee = verdict
    return verdicts, knee


@dataclass
class Accounting:
    """Where every offered transaction went. ``offered = sent + backlog`` and
    ``sent = committed + rejected + pending + never_arrived + lost``; ``lost`` (accepted by a
    node, then neither committed, pending nor rejected) is what must be zero."""

    offered: int = 0
    sent: int = 0
    backlog: int = 0
    accepted: int = 0
    committed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by reason, at submit or later
    pending: int = 0
    never_arrived: int = 0  # the request failed and the node does not know the transaction
    lost: int = 0
    committed_readback: int = 0  # the same count, from the blocks read back after the run

    @property
    def unaccounted(self) -> int:
        terms = self.committed + sum(self.rejected.values()) + self.pending + self.never_arrived
        return self.sent - terms

    @property
    def closes(self) -> bool:
        return (
            self.offered == self.sent + self.backlog
            and self.unaccounted == 0
            and self.lost == 0
            and self.committed == self.committed_readback
        )

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def to_json(self) -> dict:
        return {
            "offered": self.offered,
            "sent": self.sent,
            "generator_backlog": self.backlog,
            "accepted": self.accepted,
            "committed": self.committed,
            "committed_readback": self.committed_readback,
            "rejected": dict(sorted(self.rejected.items())),
            "pending_at_end": self.pending,
            "never_arrived": self.never_arrived,
            "lost": self.lost,
            "unaccounted": self.unaccounted,
            "closes": self.closes,
        }
