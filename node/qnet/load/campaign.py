"""Campaign files (``loadtest/campaigns/*.yml``) and the send schedule they describe.

A campaign is a shape of *offered* load over time: ``constant`` (one rate), ``step`` (a rate
raised by ``step_rate`` every ``step_seconds``) or ``ramp`` (from ``rate`` to ``to_rate``
linearly), after a warm-up at the first rate that the figures leave out. The schedule gives
every transaction the time it is *intended* to leave (open model: the time does not depend on
how fast earlier ones were answered), and groups consecutive transactions into the batches
the binary endpoint takes; a batch leaves when its last transaction is due, so the batching
delay is part of the measured latency.
"""

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SHAPES = ("constant", "step", "ramp")
MAX_RATE = 1_000_000  # transactions per second a campaign may ask for
MAX_SECONDS = 24 * 3600


class CampaignError(ValueError):
    """A campaign file that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class Stage:
    """``seconds`` of load from ``start_s`` whose rate goes linearly from ``rate`` to
    ``to_rate``; the warm-up is a stage that is not ``measured``."""

    name: str
    start_s: float
    seconds: float
    rate: float
    to_rate: float
    measured: bool = True

    @property
    def end_s(self) -> float:
        return self.start_s + self.seconds

    @property
    def count(self) -> int:
        """Transactions the stage offers: the integral of its rate, rounded down."""
        return math.floor((self.rate + self.to_rate) / 2 * self.seconds + 1e-9)

    def offset(self, j: int) -> float:
        """When the stage's ``j``-th transaction (from 0) is due, from the stage's start: the
        time at which the integral of the rate reaches ``j``."""
        slope = (self.to_rate - self.rate) / self.seconds
        if abs(slope) < 1e-12:
            return j / self.rate
        # rate * t + slope * t^2 / 2 = j, the root that is at least 0
        return (-self.rate + math.sqrt(self.rate**2 + 2 * slope * j)) / slope


@dataclass(frozen=True)
class Knee:
    """A step is past the knee when less than ``min_committed_ratio`` of what it offered
    commits, or its p95 commit latency exceeds ``max_p95_factor`` times the first step's."""

    min_committed_ratio: float = 0.95
    max_p95_factor: float = 2.0


@dataclass(frozen=True)
class Generator:
    """Limits beyond which a generator process measures itself rather than the network."""

    max_cpu: float = 0.8  # of one core
    max_lag_ms: float = 100.0  # how late its event loop may wake up


@dataclass(frozen=True)
class Population:
    """Simulated nodes, activated before the window: each sends one heartbeat in it, at
    times spread evenly over the measured window (the way a population's heartbeats spread
    over an epoch), carried by ``lanes`` lanes of their own."""

    nodes: int
    node_type: str = "light"
    owners: int = 10  # wallets that activate them and own their rewards
    lanes: int = 4


@dataclass(frozen=True)
class Wallets:
    """People using the wallet: each of ``users`` has a wallet of its own and, at ``rate``
    sends a second over all of them, reads its balance, sends one transfer as JSON and polls
    its status until it commits (or its next send is due), and asks for the node's status."""

    users: int = 4
    rate: float = 2.0


@dataclass(frozen=True)
class Stream:
    """One kind of traffic: its stages of offered rate, its batching and its lanes."""

    name: str  # "transfer", "heartbeat" or "wallet": the COMMIT request's name in Locust
    stages: tuple[Stage, ...]
    batch: int
    batch_window_ms: float
    lanes: int
    endpoint: str = "batch"  # "batch": binary batches; "json": one JSON transaction each


@dataclass(frozen=True)
class Targets:
    """Where the load goes: an Ansible inventory group, or URLs."""

    group: str | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Campaign:
    name: str
    shape: str
    stages: tuple[Stage, ...]
    description: str = ""
    batch: int = 100
    batch_window_ms: float = 50.0
    senders: int = 2000
    fee: int = 1000
    users: int = 32
    drain_seconds: float = 30.0
    targets: Targets = field(default_factory=Targets)
    knee: Knee = field(default_factory=Knee)
    generator: Generator = field(default_factory=Generator)
    population: Population | None = None
    wallets: Wallets | None = None

    @property
    def seconds(self) -> float:
        return self.stages[-1].end_s

    @property
    def measured(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.measured)

    @property
    def streams(self) -> tuple[Stream, ...]:
        """The transfers of the shape, a population's heartbeats, the wallets' sends."""
        out = [Stream("transfer", self.stages, self.batch, self.batch_window_ms, self.users)]
        if self.population is not None:
            start, end = self.measured[0].start_s, self.measured[-1].end_s
            rate = self.population.nodes / (end - start)
            beats = Stage("heartbeats", start, end - start, rate, rate)
            out.append(
                Stream(
                    "heartbeat", (beats,), self.batch, self.batch_window_ms, self.population.lanes
                )
            )
        if self.wallets is not None:
            rate = self.wallets.rate
            sends = Stage("wallet sends", 0.0, self.seconds, rate, rate)
            out.append(Stream("wallet", (sends,), 1, 1.0, self.wallets.users, "json"))
        return tuple(out)

    @property
    def lanes(self) -> int:
        return sum(s.lanes for s in self.streams)

    def to_json(self) -> dict:
        """The settings as the report records them."""
        return {
            "name": self.name,
            "description": self.description,
            "shape": self.shape,
            "stages": [
                {
                    "name": s.name,
                    "start_s": s.start_s,
                    "seconds": s.seconds,
                    "rate": s.rate,
                    "to_rate": s.to_rate,
                    "measured": s.measured,
                }
                for s in self.stages
            ],
            "batch": self.batch,
            "batch_window_ms": self.batch_window_ms,
            "senders": self.senders,
            "fee": self.fee,
            "users": self.users,
            "drain_seconds": self.drain_seconds,
            "targets": {"group": self.targets.group, "urls": list(self.targets.urls)},
            "knee": vars(self.knee),
            "generator": vars(self.generator),
            "population": None if self.population is None else vars(self.population),
            "wallets": None if self.wallets is None else vars(self.wallets),
        }


# ---- reading a campaign file -----------------------------------------------------------------

_TOP = {
    "name", "description", "shape", "rate", "to_rate", "step_rate", "steps", "step_seconds",
    "duration_seconds", "warmup_seconds", "drain_seconds", "batch", "batch_window_ms",
    "senders", "fee", "users", "targets", "knee", "generator", "population", "wallets",
}  # fmt: skip
_SHAPE_FIELDS = {
    "constant": {"rate", "duration_seconds"},
    "step": {"rate", "step_rate", "steps", "step_seconds"},
    "ramp": {"rate", "to_rate", "duration_seconds"},
}


class _Fields:
    """Typed reads of one mapping, each failure naming the file and the field."""

    def __init__(self, source: str, data: dict, where: str = ""):
        self.source, self.data, self.where = source, data, where

    def fail(self, name: str, message: str) -> CampaignError:
        return CampaignError(f"{self.source}: {self.where}{name} {message}")

    def number(self, name: str, default: float | None, low: float, high: float) -> float:
        value = self.data.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(name, f"must be a number, not {value!r}")
        if not low <= value <= high:
            raise self.fail(name, f"must be from {low:g} to {high:g}, not {value:g}")
        return float(value)

    def integer(self, name: str, default: int | None, low: int, high: int) -> int:
        value = self.data.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(name, f"must be a whole number, not {value!r}")
        if not low <= value <= high:
            raise self.fail(name, f"must be from {low} to {high}, not {value}")
        return value

    def text(self, name: str, default: str) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str):
            raise self.fail(name, f"must be text, not {value!r}")
        return value

    def mapping(self, name: str, allowed: set[str]) -> "_Fields":
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, "must be a mapping")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(name, f"has unknown field(s) {', '.join(map(str, unknown))}")
        return _Fields(self.source, value, f"{self.where}{name}.")


def _stages(f: _Fields, shape: str) -> tuple[Stage, ...]:
    rate = f.number("rate", None, 0.1, MAX_RATE)
    warmup = f.number("warmup_seconds", 5.0, 0, MAX_SECONDS)
    stages = [Stage("warm-up", 0.0, warmup, rate, rate, measured=False)] if warmup else []
    start = warmup
    if shape == "constant":
        seconds = f.number("duration_seconds", None, 1, MAX_SECONDS)
        stages.append(Stage(f"{rate:g}/s", start, seconds, rate, rate))
    elif shape == "ramp":
        to_rate = f.number("to_rate", None, 0.1, MAX_RATE)
        seconds = f.number("duration_seconds", None, 1, MAX_SECONDS)
        stages.append(Stage(f"{rate:g}/s to {to_rate:g}/s", start, seconds, rate, to_rate))
    else:
        step_rate = f.number("step_rate", None, 0.1, MAX_RATE)
        steps = f.integer("steps", None, 1, 1000)
        seconds = f.number("step_seconds", None, 1, MAX_SECONDS)
        if rate + (steps - 1) * step_rate > MAX_RATE:
            raise f.fail("steps", f"take the rate above {MAX_RATE:,}/s")
        for i in range(steps):
            r = rate + i * step_rate
            stages.append(Stage(f"step {i + 1} ({r:g}/s)", start + i * seconds, seconds, r, r))
    return tuple(stages)


def parse(data: object, source: str = "campaign") -> Campaign:
    """A campaign from the mapping of a campaign file; every default is here."""
    if not isinstance(data, dict):
        raise CampaignError(f"{source}: a campaign file is a mapping of settings")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise CampaignError(f"{source}: unknown field(s) {', '.join(map(str, unknown))}")
    f = _Fields(source, data)
    shape = f.text("shape", "")
    if shape not in SHAPES:
        raise f.fail("shape", f"must be one of {', '.join(SHAPES)}, not {shape!r}")
    foreign = sorted(set(data) & (set().union(*_SHAPE_FIELDS.values()) - _SHAPE_FIELDS[shape]))
    if foreign:
        raise CampaignError(f"{source}: {', '.join(foreign)} do(es) not apply to a {shape} shape")
    targets = f.mapping("targets", {"group", "urls"})
    group = targets.data.get("group")
    urls = targets.data.get("urls", [])
    if group is not None and not isinstance(group, str):
        raise targets.fail("group", "must be the name of an inventory group")
    if not isinstance(urls, list) or not all(
        isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls
    ):
        raise targets.fail("urls", "must be a list of http(s) URLs")
    population = f.mapping("population", {"nodes", "node_type", "owners", "lanes"})
    if population.data and population.data.get("node_type", "light") not in ("light", "full"):
        raise population.fail("node_type", "must be light or full")
    wallets = f.mapping("wallets", {"users", "rate"})
    knee = f.mapping("knee", {"min_committed_ratio", "max_p95_factor"})
    gen = f.mapping("generator", {"max_cpu", "max_lag_ms"})
    return Campaign(
        name=f.text("name", Path(source).stem),
        shape=shape,
        stages=_stages(f, shape),
        description=f.text("description", ""),
        batch=f.integer("batch", 100, 1, 20_000),
        batch_window_ms=f.number("batch_window_ms", 50.0, 1, 10_000),
        senders=f.integer("senders", 2000, 1, 1_000_000),
        fee=f.integer("fee", 1000, 0, 10**15),
        users=f.integer("users", 32, 1, 100_000),
        drain_seconds=f.number("drain_seconds", 30.0, 1, 3600),
        targets=Targets(group, tuple(urls)),
        knee=Knee(
            knee.number("min_committed_ratio", 0.95, 0.01, 1.0),
            knee.number("max_p95_factor", 2.0, 1.0, 1000.0),
        ),
        generator=Generator(
            gen.number("max_cpu", 0.8, 0.05, 1.0),
            gen.number("max_lag_ms", 100.0, 1, 60_000),
        ),
        population=Population(
            population.integer("nodes", None, 1, 1_000_000),
            population.text("node_type", "light"),
            population.integer("owners", 10, 1, 10_000),
            population.integer("lanes", 4, 1, 10_000),
        )
        if population.data
        else None,
        wallets=Wallets(
            wallets.integer("users", 4, 1, 10_000), wallets.number("rate", 2.0, 0.1, 10_000)
        )
        if wallets.data
        else None,
    )


def read(path: Path) -> object:
    """The mapping in a campaign file (a plan keeps it, so every process parses the same)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise CampaignError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path}: not YAML ({exc})") from None


def load(path: Path) -> Campaign:
    return parse(read(path), str(path))


# ---- the schedule -------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Intended send offsets (seconds from the start) of every transaction, in order, and
    the batches they leave in: batch ``k`` holds transactions ``bounds[k]:bounds[k + 1]``
    and is due when its last one is."""

    offsets: tuple[float, ...]
    bounds: tuple[int, ...]

    @property
    def batches(self) -> int:
        return len(self.bounds) - 1

    def due(self, k: int) -> float:
        return self.offsets[self.bounds[k + 1] - 1]

    def offered_before(self, t: float) -> int:
        """Transactions due before ``t`` seconds from the start."""
        return bisect.bisect_left(self.offsets, t)


def schedule(stream: Stream) -> Schedule:
    offsets: list[float] = []
    for stage in stream.stages:
        offsets += [stage.start_s + stage.offset(j) for j in range(stage.count)]
    window = stream.batch_window_ms / 1000
    bounds = [0]
    for i in range(1, len(offsets)):
        first = bounds[-1]
        if i - first >= stream.batch or offsets[i] - offsets[first] >= window:
            bounds.append(i)
    if offsets:
        bounds.append(len(offsets))
    return Schedule(tuple(offsets), tuple(bounds))


def stage_of(campaign: Campaign, offset: float) -> int:
    """Index of the stage an intended offset falls in."""
    starts = [s.start_s for s in campaign.stages]
    return max(0, bisect.bisect_right(starts, offset) - 1)
