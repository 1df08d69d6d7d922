"""The decision engine of qnet-recovery: what to do with each alert, and when.

Pure and deterministic: it is given the time, the alerts and the health of the validators,
and returns decisions; it never acts, sleeps or reads a clock. Its whole state is plain data
(``Engine.to_dict`` / ``Engine.from_dict``), saved after every event, so a restarted service
continues exactly where it stopped.

The rules, in the order they are checked for a firing alert:

1. a delivery seen before (same fingerprint and start time, also from a second
   Alertmanager or a repeated notification) is a duplicate: nothing more happens;
2. the chain-halted alert is never acted on: a human decides (escalate);
3. an alert that does not match the configured labels, or names no known node, is recorded;
4. a node whose budget is spent is blocked until ``reset``;
5. one action at a time per node: an alert for a node with an action queued or running
   joins it;
6. while the chain-halted alert fires, nothing is restarted (escalate);
7. the budget: at most ``max_actions`` actions per ``window`` seconds; the action that
   would exceed it blocks the node and escalates, once;
8. the quorum guard: a validator is acted on only if the others that are healthy hold
   more than 2/3 of the voting power (the target counts as down while it is acted on);
9. the backoff: an attempt on a node waits ``backoff_initial``, doubling up to
   ``backoff_max``, after the previous one ended; the count resets after ``healthy_reset``
   seconds without an alert.

Queued actions are checked again (halt, quorum, budget) when they become due, and a
resolved alert cancels the queued action it caused. An alert refused for the halt or the
quorum is deferred, not forgotten: once the chain moves and the quorum allows it, and it
still fires, it is planned again (``replan``), without a second escalation. The outcome of
an action (verified or not) comes back through ``finish``; a failed one is retried after
the backoff while its alert still fires, within the budget. Every outcome counts against
the budget.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

ACTIONS = ("restart", "resync")
DEFAULT_MATCH = {"severity": "critical", "action": "restart|resync"}
SEEN_TTL_S = 24 * 3600.0
MAX_SEEN = 20_000  # deliveries remembered for deduplication (oldest forgotten first)


@dataclass(frozen=True)
class Budget:
    max_actions: int = 3
    window_s: float = 1800.0
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 300.0
    healthy_reset_s: float = 600.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th consecutive attempt."""
        if attempts <= 0:
            return 0.0
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempts - 1, 30))


@dataclass(frozen=True)
class NodeInfo:
    validator: bool
    power: int = 1


@dataclass(frozen=True)
class Policy:
    nodes: dict[str, NodeInfo]
    match: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MATCH))
    chain_halted_alert: str = "QNetChainHalted"
    budget: Budget = field(default_factory=Budget)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(re.fullmatch(rx, labels.get(k, "")) for k, rx in self.match.items())


@dataclass(frozen=True)
class Alert:
    """One alert of an Alertmanager webhook (version 4)."""

    fingerprint: str
    status: str  # firing | resolved
    starts_at: str
    labels: dict[str, str]

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def node(self) -> str:
        return self.labels.get("node", "")

    @property
    def action(self) -> str:
        return self.labels.get("action", "")


@dataclass
class Action:
    id: int
    node: str
    kind: str  # restart | resync
    fingerprint: str
    alertname: str
    due: float
    started: float | None = None


@dataclass
class NodeState:
    attempts: list[float] = field(default_factory=list)  # start times inside the window
    consecutive: int = 0  # attempts since the node was last healthy for healthy_reset_s
    next_allowed: float = 0.0
    quiet_since: float = 0.0  # when its last alert resolved or action ended
    blocked: bool = False
    queued: Action | None = None
    running: Action | None = None


@dataclass
class Decision:
    """One line of the audit log (``outcome`` and durations are filled by the service)."""

    time: float
    decision: str  # act | queue | start | skip | escalate | cancel | finish | reset | healthy
    reason: str
    node: str = ""
    alertname: str = ""
    fingerprint: str = ""
    action: str = ""
    action_id: int = 0
    guards: dict = field(default_factory=dict)
    outcome: str = ""

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0, {}) or k == "time"}


class Engine:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.nodes: dict[str, NodeState] = {}
        self.seen: dict[str, float] = {}  # fingerprint@startsAt -> forget after
        self.firing: dict[str, Alert] = {}  # fingerprint -> the matching alert that fires
        self.halted: set[str] = set()  # fingerprints of the chain-halted alert that fire
        self.deferred: set[str] = set()  # firing alerts refused for the halt or the quorum
        self.next_id = 1

    # ---- events ------------------------------------------------------------------------

    def receive(self, alert: Alert, now: float, healthy: dict[str, bool]) -> list[Decision]:
        """A delivered alert; ``healthy`` says which validators run (by node name)."""
        base = {"alertname": alert.name, "fingerprint": alert.fingerprint, "node": alert.node}
        key = f"{alert.fingerprint}@{alert.starts_at}@{alert.status}"
        if key in self.seen:
            return [Decision(now, "skip", "duplicate", **base)]
        self._remember(key, now)
        if alert.status == "resolved":
            return self._resolved(alert, now, base)
        if alert.name == self.policy.chain_halted_alert:
            self.halted.add(alert.fingerprint)
            return [self._escalate(now, "chain_halted", base)]
        if not self.policy.matches(alert.labels) or alert.action not in ACTIONS:
            return [Decision(now, "skip", "no_match", **base)]
        if alert.node not in self.policy.nodes:
            return [Decision(now, "skip", "unknown_node", **base)]
        self.firing[alert.fingerprint] = alert
        node = self._node(alert.node)
        if node.blocked:
            return [Decision(now, "skip", "blocked", **base)]
        if node.running or node.queued:
            reason = "running" if node.running else "queued"
            return [Decision(now, "skip", reason, action_id=(node.running or node.queued).id,
                             **base)]  # fmt: skip
        action = Action(self.next_id, alert.node, alert.action, alert.fingerprint, alert.name, now)
        return self._plan(action, now, healthy, base)

    def due(self, now: float, healthy: dict[str, bool]) -> tuple[list[Action], list[Decision]]:
        """Queued actions whose time has come, checked again; the ones to start now."""
        start, out = [], []
        for name in sorted(self.nodes):
            node = self.nodes[name]
            action = node.queued
            if action is None or node.running or action.due > now:
                continue
            node.queued = None
            base = {"alertname": action.alertname, "fingerprint": action.fingerprint,
                    "node": name, "action": action.kind, "action_id": action.id}  # fmt: skip
            refused = self._refusal(name, now, healthy, base)
            if refused:
                out.append(refused)
                continue
            action.started = now
            node.running = action
            node.attempts.append(now)
            node.consecutive += 1
            out.append(Decision(now, "start", "due", guards=self._guards(name, now, healthy),
                                **base))  # fmt: skip
            start.append(action)
        return start, out

    def replan(self, now: float, healthy: dict[str, bool]) -> list[Decision]:
        """Plan again the deferred alerts that still fire, once nothing refuses them."""
        out: list[Decision] = []
        if self.halted:
            return out
        for fp in sorted(self.deferred):
            alert = self.firing.get(fp)
            node = self.nodes.get(alert.node) if alert else None
            if alert is None or node is None or node.blocked:
                self.deferred.discard(fp)
                continue
            base = {"alertname": alert.name, "fingerprint": fp, "node": alert.node}
            if healthy.get(alert.node):  # back by itself or by a human, maybe unheard of
                self.deferred.discard(fp)  # (a resolution Alertmanager inhibited)
                out.append(Decision(now, "skip", "healthy_now", **base))
                continue
            if node.running or node.queued or not self._quorum_ok(alert.node, healthy):
                continue
            self.deferred.discard(fp)
            action = Action(self.next_id, alert.node, alert.action, fp, alert.name, now)
            out += self._plan(action, now, healthy, base, reason="deferred")
        return out

    def finish(self, action_id: int, outcome: str, now: float) -> list[Decision]:
        """The running action ``action_id`` ended: ``succeeded`` or ``failed``."""
        node_name, node = next(
            ((n, s) for n, s in self.nodes.items() if s.running and s.running.id == action_id),
            (None, None),
        )
        if node is None:
            return [Decision(now, "skip", "unknown_action", action_id=action_id)]
        action = node.running
        node.running = None
        node.quiet_since = now
        # The backoff counts from the end of an attempt: its verification may take minutes.
        node.next_allowed = now + self.policy.budget.backoff(node.consecutive)
        base = {"alertname": action.alertname, "fingerprint": action.fingerprint,
                "node": node_name, "action": action.kind, "action_id": action.id}  # fmt: skip
        out = [Decision(now, "finish", outcome, outcome=outcome, **base)]
        still = self._firing_on(node_name)
        if outcome != "succeeded" and still:
            retry = max(still, key=lambda a: (a.action == "resync", a.starts_at))
            out += self._plan(
                Action(self.next_id, node_name, retry.action, retry.fingerprint, retry.name, now),
                now,
                None,
                {"alertname": retry.name, "fingerprint": retry.fingerprint, "node": node_name},
                retry_of=action.id,
            )
        return out

    def tick(self, now: float) -> list[Decision]:
        """Bookkeeping that depends on time alone: forget old deliveries, and reset the
        backoff of nodes that have been healthy for ``healthy_reset``."""
        for key in [k for k, until in self.seen.items() if until <= now]:
            del self.seen[key]
        out = []
        for name in sorted(self.nodes):
            node = self.nodes[name]
            if (
                node.consecutive
                and not (node.running or node.queued or node.blocked)
                and not self._firing_on(name)
                and now - node.quiet_since >= self.policy.budget.healthy_reset_s
            ):
                node.consecutive, node.next_allowed = 0, 0.0
                out.append(Decision(now, "healthy", "healthy_reset", node=name))
        return out

    def reset(self, name: str, now: float) -> Decision:
        if name not in self.policy.nodes:
            raise KeyError(name)
        node = self._node(name)
        running = node.running
        self.nodes[name] = NodeState(running=running, quiet_since=now)
        return Decision(now, "reset", "operator", node=name)

    def next_due(self) -> float | None:
        """When the next queued action becomes due (for the service's timer)."""
        dues = [n.queued.due for n in self.nodes.values() if n.queued and not n.running]
        return min(dues) if dues else None

    # ---- inside --------------------------------------------------------------------------

    def _plan(
        self,
        action: Action,
        now: float,
        healthy: dict[str, bool] | None,
        base: dict,
        retry_of: int = 0,
        reason: str = "matched",
    ) -> list[Decision]:
        """Queue ``action`` for its node if the guards allow it now (``healthy`` None: the
        quorum is checked when it becomes due)."""
        self.next_id += 1
        base = {**base, "action": action.kind, "action_id": action.id}
        refused = self._refusal(action.node, now, healthy, base)
        if refused:
            return [refused]
        node = self._node(action.node)
        action.due = max(now, node.next_allowed)
        node.queued = action
        guards = self._guards(action.node, now, healthy)
        if retry_of:
            guards["retry_of"] = retry_of
        if action.due > now:
            guards["backoff_s"] = round(action.due - now, 3)
            return [Decision(now, "queue", "backoff", guards=guards, **base)]
        return [Decision(now, "act", "retry" if retry_of else reason, guards=guards, **base)]

    def _refusal(
        self, name: str, now: float, healthy: dict[str, bool] | None, base: dict
    ) -> Decision | None:
        node = self._node(name)
        if node.blocked:
            return Decision(now, "skip", "blocked", **base)
        if self.halted:
            self.deferred.add(base["fingerprint"])
            return self._escalate(now, "chain_halted", base)
        if self._left(name, now) <= 0:
            node.blocked = True
            return self._escalate(now, "budget_exhausted", base)
        if healthy is not None and not self._quorum_ok(name, healthy):
            self.deferred.add(base["fingerprint"])
            return self._escalate(now, "quorum", {**base}, self._guards(name, now, healthy))
        return None

    def _escalate(self, now: float, reason: str, base: dict, guards: dict | None = None):
        return Decision(now, "escalate", reason, guards=guards or {}, **base)

    def _power(self, name: str, healthy: dict[str, bool]) -> tuple[int, int]:
        """The voting power of the healthy validators other than ``name``, and the total."""
        validators = {v: n.power for v, n in self.policy.nodes.items() if n.validator}
        running = sum(p for v, p in validators.items() if v != name and healthy.get(v, False))
        return running, sum(validators.values())

    def _quorum_ok(self, name: str, healthy: dict[str, bool]) -> bool:
        if not self.policy.nodes[name].validator:
            return True
        running, total = self._power(name, healthy)
        return 3 * running > 2 * total

    def _guards(self, name: str, now: float, healthy: dict[str, bool] | None) -> dict:
        guards = {"budget_left": self._left(name, now)}
        if self.policy.nodes[name].validator and healthy is not None:
            running, total = self._power(name, healthy)
            guards["quorum"] = f"{running}/{total} power running without {name}"
        return guards

    def _left(self, name: str, now: float) -> int:
        node = self._node(name)
        node.attempts = [t for t in node.attempts if now - t < self.policy.budget.window_s]
        return self.policy.budget.max_actions - len(node.attempts)

    def budget_left(self, name: str, now: float) -> int:
        return max(0, self._left(name, now))

    def _resolved(self, alert: Alert, now: float, base: dict) -> list[Decision]:
        self.halted.discard(alert.fingerprint)
        self.deferred.discard(alert.fingerprint)
        known = self.firing.pop(alert.fingerprint, None)
        node = self.nodes.get(alert.node)
        if node is not None and known is not None:
            node.quiet_since = max(node.quiet_since, now)
        if node is not None and node.queued and node.queued.fingerprint == alert.fingerprint:
            action, node.queued = node.queued, None
            return [Decision(now, "cancel", "resolved", action=action.kind,
                             action_id=action.id, **base)]  # fmt: skip
        return [Decision(now, "skip", "resolved", **base)]

    def _firing_on(self, name: str) -> list[Alert]:
        return [a for a in self.firing.values() if a.node == name]

    def _node(self, name: str) -> NodeState:
        return self.nodes.setdefault(name, NodeState())

    def _remember(self, key: str, now: float) -> None:
        self.seen[key] = now + SEEN_TTL_S  # one TTL: insertion order is expiry order
        while len(self.seen) > MAX_SEEN:
            del self.seen[next(iter(self.seen))]

    # ---- state -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "version": 1,
            "next_id": self.next_id,
            "seen": dict(self.seen),
            "halted": sorted(self.halted),
            "deferred": sorted(self.deferred),
            "firing": {fp: asdict(a) for fp, a in self.firing.items()},
            "nodes": {name: asdict(n) for name, n in self.nodes.items()},
        }

    @classmethod
    def from_dict(cls, policy: Policy, data: dict) -> Engine:
        if data.get("version") != 1:
            raise ValueError(f"state of version {data.get('version')!r}, expected 1")
        engine = cls(policy)
        engine.next_id = int(data["next_id"])
        # Oldest first, as they were remembered (the file is written with sorted keys).
        engine.seen = dict(sorted(((str(k), float(v)) for k, v in data["seen"].items()),
                                  key=lambda kv: kv[1]))  # fmt: skip
        engine.halted = set(data["halted"])
        engine.deferred = set(data["deferred"])
        # Nodes no longer in the configuration are forgotten, with their alerts and actions.
        engine.firing = {
            fp: Alert(**a) for fp, a in data["firing"].items() if a["labels"].get("node") in
            policy.nodes
        }  # fmt: skip
        engine.deferred &= set(engine.firing)
        for name, n in data["nodes"].items():
            if name not in policy.nodes:
                continue
            state = NodeState(**{**n, "queued": None, "running": None})
            state.queued = Action(**n["queued"]) if n["queued"] else None
            state.running = Action(**n["running"]) if n["running"] else None
            engine.nodes[name] = state
        return engine

    def running(self) -> list[Action]:
        return [replace(n.running) for n in self.nodes.values() if n.running]
