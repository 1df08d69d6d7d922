"""The recovery decision engine over generated alert sequences (hypothesis): the budget is
never exceeded, the quorum guard never lets an action through below 2/3, nothing starts
while the chain is halted, duplicates act once, and a restart of the engine at any point
(its state saved and loaded as JSON) changes no decision."""

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from qnet_recovery.engine import Alert, Budget, Engine, NodeInfo, Policy

NODES = {
    "v1": NodeInfo(True),
    "v2": NodeInfo(True),
    "v3": NodeInfo(True),
    "v4": NodeInfo(True),
    "f1": NodeInfo(False),
}
BUDGET = Budget(max_actions=3, window_s=1800, backoff_initial_s=10, backoff_max_s=300,
                healthy_reset_s=600)  # fmt: skip
POLICY = Policy(nodes=NODES, budget=BUDGET)
HALTED = "QNetChainHalted"


def alert(fp: int, status: str, node: str, starts: int, action: str = "restart", **labels):
    return Alert(
        fingerprint=f"{fp:04x}",
        status=status,
        starts_at=f"2026-11-30T00:{starts:02d}:00Z",
        labels={"alertname": labels.pop("alertname", "QNetNodeDown"), "node": node,
                "severity": labels.pop("severity", "critical"), "action": action, **labels},
    )  # fmt: skip


node_names = st.sampled_from(["v1", "v1", "f1", "f1", *sorted(NODES), "stranger"])
alerts = st.builds(
    lambda fp, status, node, starts, action, severity: ("alert",
        alert(fp, status, node, starts, action, severity=severity)),
    st.integers(0, 6), st.sampled_from(["firing"] * 3 + ["resolved"]), node_names,
    st.integers(0, 3), st.sampled_from(["restart"] * 3 + ["resync", "none"]),
    st.sampled_from(["critical"] * 4 + ["warning"]),
)  # fmt: skip
halts = st.builds(
    lambda status, starts: ("alert", alert(99, status, "", starts, "none", alertname=HALTED)),
    st.sampled_from(["firing", "resolved", "resolved"]),
    st.integers(0, 3),
)
events = st.lists(
    st.one_of(
        alerts,
        alerts,
        alerts,
        halts,
        st.tuples(st.just("advance"), st.sampled_from([1, 5, 10, 30, 120, 400, 700, 1900])),
        st.tuples(st.just("health"), st.sampled_from(["v1", "v2", "v3", "v4"]), st.booleans()),
        st.tuples(st.just("finish"), st.sampled_from(["succeeded", "failed"])),
        st.just(("cycle",)),  # an attempt fails and its backoff passes
        st.tuples(st.just("reset"), st.sampled_from(sorted(NODES))),
    ),
    min_size=10,
    max_size=80,
)


class Run:
    """Drives an engine through events as the service would; records every decision and
    the world at each start."""

    def __init__(self, restart_each_step: bool = False, deliver_twice: bool = False):
        self.engine = Engine(POLICY)
        self.now = 1_000_000.0
        self.healthy = {n: True for n in NODES if NODES[n].validator}
        self.running: list[int] = []
        self.log: list[dict] = []
        self.starts: list[tuple[float, str, dict, bool]] = []  # time, node, health, halted
        self.resets: dict[str, int] = {}  # node -> how many starts came before its last reset
        self.escalated_at_reset: dict[str, int] = {}
        self.restart_each_step, self.deliver_twice = restart_each_step, deliver_twice

    def _take(self, decisions) -> None:
        self.log += [d.record() for d in decisions]

    def _due(self) -> None:
        halted = bool(self.engine.halted)
        self._take(self.engine.replan(self.now, dict(self.healthy)))  # the service's tick
        started, decisions = self.engine.due(self.now, dict(self.healthy))
        self._take(decisions)
        for action in started:
            self.starts.append((self.now, action.node, dict(self.healthy), halted))
            self.running.append(action.id)

    def step(self, event) -> None:
        kind = event[0]
        if kind == "alert":
            for _ in range(2 if self.deliver_twice else 1):
                self._take(self.engine.receive(event[1], self.now, dict(self.healthy)))
        elif kind == "advance":
            self.now += event[1]
            self._take(self.engine.tick(self.now))
        elif kind == "health":
            self.healthy[event[1]] = event[2]
        elif kind == "finish" and self.running:
            self._take(self.engine.finish(self.running.pop(0), event[1], self.now))
        elif kind == "cycle":
            self.step(("finish", "failed"))
            self.step(("advance", 45))
            return
        elif kind == "reset":
            self._take([self.engine.reset(event[1], self.now)])
            self.resets[event[1]] = len(self.starts)
            self.escalated_at_reset[event[1]] = len(self.log)
        self._due()
        if self.restart_each_step:
            saved = json.loads(json.dumps(self.engine.to_dict()))
            self.engine = Engine.from_dict(POLICY, saved)

    def run(self, evs) -> "Run":
        for e in evs:
            self.step(e)
        return self


@settings(max_examples=300, deadline=None)
@given(events)
def test_budget_is_never_exceeded(evs):
    run = Run().run(evs)
    for node in NODES:
        since = run.resets.get(node, 0)
        times = [t for t, n, _, _ in run.starts[since:] if n == node]
        for t in times:
            inside = [u for u in times if t - BUDGET.window_s < u <= t]
            assert len(inside) <= BUDGET.max_actions, (node, times)
        # spaced by the backoff: the second attempt at least backoff_initial after the first
        for a, b in itertools.pairwise(times):
            assert b - a >= BUDGET.backoff_initial_s


@settings(max_examples=300, deadline=None)
@given(events)
def test_quorum_guard_and_halt(evs):
    run = Run().run(evs)
    total = sum(n.power for n in NODES.values() if n.validator)
    for _, node, healthy, halted in run.starts:
        assert not halted, "an action started while the chain-halted alert fired"
        if NODES[node].validator:
            others = sum(NODES[v].power for v, ok in healthy.items() if ok and v != node)
            assert 3 * others > 2 * total, (node, healthy)


@settings(max_examples=300, deadline=None)
@given(events)
def test_one_action_at_a_time_and_one_budget_escalation(evs):
    run = Run().run(evs)
    assert len(run.running) == len(set(run.running))
    for node in NODES:
        since = run.escalated_at_reset.get(node, 0)
        escalations = [
            r
            for r in run.log[since:]
            if r.get("node") == node
            and r["decision"] == "escalate"
            and r["reason"] == "budget_exhausted"
        ]
        assert len(escalations) <= 1  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(events)
def test_duplicate_deliveries_act_once(evs):
    once = Run().run(evs)
    twice = Run(deliver_twice=True).run(evs)

    def acted(run):
        return [r for r in run.log if r["reason"] != "duplicate"]

    assert acted(twice) == acted(once)
    assert twice.starts == once.starts


@settings(max_examples=200, deadline=None)
@given(events)
def test_state_survives_a_restart_at_any_point(evs):
    assert Run(restart_each_step=True).run(evs).log == Run().run(evs).log


def test_a_node_that_keeps_failing_gets_the_budget_then_one_escalation():
    run = Run()
    run.step(("alert", alert(1, "firing", "v1", 0)))
    for _ in range(10):  # each attempt fails; the alert keeps firing
        run.step(("advance", 400))
        run.step(("finish", "failed"))
    run.step(("alert", alert(1, "firing", "v1", 1)))  # fires again later: blocked
    decisions = [(r["decision"], r["reason"]) for r in run.log]
    assert decisions.count(("start", "due")) + decisions.count(("act", "matched")) >= 3
    assert len(run.starts) == 3
    assert decisions.count(("escalate", "budget_exhausted")) == 1
    assert decisions[-1] == ("skip", "blocked")
    run.step(("reset", "v1"))
    run.step(("alert", alert(1, "firing", "v1", 2)))
    assert len(run.starts) == 4


def test_backoff_doubles_and_a_resolved_alert_cancels_the_queued_action():
    run = Run()
    run.step(("alert", alert(1, "firing", "f1", 0)))
    run.step(("finish", "succeeded"))
    run.step(("alert", alert(1, "firing", "f1", 1)))  # fails again at once: waits 10 s
    assert run.log[-1]["decision"] == "queue" and run.log[-1]["guards"]["backoff_s"] == 10
    run.step(("advance", 10))
    run.step(("finish", "succeeded"))
    run.step(("alert", alert(1, "firing", "f1", 2)))
    assert run.log[-1]["guards"]["backoff_s"] == 20
    run.step(("alert", alert(1, "resolved", "f1", 2)))
    assert run.log[-1]["decision"] == "cancel"
    run.step(("advance", 30))
    assert len(run.starts) == 2
    run.step(("advance", 700))  # ten minutes of health: the backoff starts over
    assert run.log[-1]["decision"] == "healthy"
    run.step(("alert", alert(1, "firing", "f1", 3)))
    assert [r["decision"] for r in run.log[-2:]] == ["act", "start"]


def test_two_of_four_validators_down_escalates_and_does_nothing():
    run = Run()
    run.step(("health", "v1", False))
    run.step(("health", "v2", False))
    run.step(("alert", alert(1, "firing", "v1", 0)))
    assert run.log[-1]["decision"] == "escalate" and run.log[-1]["reason"] == "quorum"
    run.step(("alert", alert(2, "firing", "f1", 0)))  # a full node is not guarded by quorum
    assert run.starts and run.starts[-1][1] == "f1"


def test_an_alert_refused_for_the_quorum_is_acted_on_once_the_quorum_allows_it():
    run = Run()
    for down in ("v1", "v2", "v3"):
        run.step(("health", down, False))
    run.step(("alert", alert(1, "firing", "v1", 0)))
    run.step(("advance", 30))
    assert (run.log[-1]["decision"], run.log[-1]["reason"]) == ("escalate", "quorum")
    assert not run.starts
    run.step(("health", "v3", True))  # v3 and v4 hold 2 of 4 without v1: still no
    assert not run.starts
    run.step(("health", "v2", True))
    assert [n for _, n, _, _ in run.starts] == ["v1"]
    decisions = [(r["decision"], r["reason"]) for r in run.log]
    assert decisions.count(("escalate", "quorum")) == 1 and ("act", "deferred") in decisions


def test_a_deferred_alert_of_a_node_that_came_back_is_dropped():
    run = Run()
    for down in ("v1", "v2", "v3"):
        run.step(("health", down, False))
    run.step(("alert", alert(1, "firing", "v1", 0)))
    run.step(("health", "v1", True))  # a human started it; its resolution was inhibited
    assert (run.log[-1]["decision"], run.log[-1]["reason"]) == ("skip", "healthy_now")
    run.step(("health", "v2", True))
    run.step(("health", "v3", True))
    assert not run.starts and not run.engine.deferred


def test_chain_halted_escalates_and_stops_everything():
    run = Run()
    run.step(("alert", alert(99, "firing", "", 0, "none", alertname=HALTED)))
    assert (run.log[-1]["decision"], run.log[-1]["reason"]) == ("escalate", "chain_halted")
    run.step(("alert", alert(1, "firing", "f1", 0)))
    assert (run.log[-1]["decision"], run.log[-1]["reason"]) == ("escalate", "chain_halted")
    run.step(("alert", alert(99, "resolved", "", 0, "none", alertname=HALTED)))
    assert run.starts and run.starts[-1][1] == "f1"  # deferred, then planned again
    run.step(("alert", alert(1, "firing", "f1", 1)))
    assert (run.log[-1]["decision"], run.log[-1]["reason"]) == ("skip", "running")


def test_alerts_that_do_not_match_are_only_recorded():
    run = Run()
    run.step(("alert", alert(1, "firing", "v1", 0, severity="warning")))
    run.step(("alert", alert(2, "firing", "v1", 0, action="none")))
    run.step(("alert", alert(3, "firing", "stranger", 0)))
    assert [r["reason"] for r in run.log] == ["no_match", "no_match", "unknown_node"]
    assert not run.starts
