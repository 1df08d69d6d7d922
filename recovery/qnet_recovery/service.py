"""The qnet-recovery service: Alertmanager's webhook in, decisions out, actions through the
functions of ``qnet-ops``, every decision in the audit log and in its metrics.

    POST /alerts               Alertmanager webhook (version 4)
    GET  /status               budgets, queued and running actions, recent decisions (JSON)
    POST /nodes/{name}/reset   give a blocked node its budget back
    GET  /metrics, /health

One asyncio loop owns the engine; every event (a delivery, a due action, an outcome, a
reset) is decided under one lock, the state saved and the decisions appended to the audit
log before anything is acted on. Actions run as tasks, one per node at most; the blocking
SSH work of ``qnet.ops`` runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from qnet import ops

from .config import Config, Node
from .engine import Action, Alert, Decision, Engine
from .store import AuditLog, iso, load_state, read_audit, save_state

log = logging.getLogger("qnet.recovery")

MAX_BODY = 1 << 20  # a webhook body larger than this is refused
MAX_ALERTS = 1000  # alerts in one webhook
HEALTH_TIMEOUT_S = 2.0
POLL_S = 1.0  # verification polls the node's status this often
TICK_S = 15.0  # time-only bookkeeping (healthy resets, forgetting old deliveries)
RECENT = 50  # decisions kept for /status
RUNBOOK = "monitoring/runbooks/recovery-escalated.md"  # as the rules give theirs
_FINGERPRINT = re.compile(r"[0-9a-f]{1,64}")


class BadPayload(ValueError):
    pass


def parse_webhook(body: object) -> list[Alert]:
    """The alerts of an Alertmanager webhook body, each checked; BadPayload otherwise."""
    if not isinstance(body, dict):
        raise BadPayload("the body is not a JSON object")
    if body.get("version") != "4":
        raise BadPayload(f"webhook version {body.get('version')!r}; version 4 is understood")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise BadPayload("alerts: a non-empty list is required")
    if len(alerts) > MAX_ALERTS:
        raise BadPayload(f"alerts: {len(alerts)} alerts; at most {MAX_ALERTS} per delivery")
    out = []
    for i, a in enumerate(alerts):
        if not isinstance(a, dict):
            raise BadPayload(f"alerts[{i}]: not an object")
        labels = a.get("labels")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= 1024 for k, v in labels.items()
        ):
            raise BadPayload(f"alerts[{i}].labels: a mapping of strings is required")
        status, fp, starts = a.get("status"), a.get("fingerprint"), a.get("startsAt")
        if status not in ("firing", "resolved"):
            raise BadPayload(f"alerts[{i}].status: {status!r} is not firing or resolved")
        if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
            raise BadPayload(f"alerts[{i}].fingerprint: {fp!r} is not a fingerprint")
        if not isinstance(starts, str) or not 0 < len(starts) <= 64:
            raise BadPayload(f"alerts[{i}].startsAt: {starts!r} is not a time")
        out.append(Alert(fp, status, starts, dict(labels)))
    return out


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.actions = Counter("qnet_recovery_actions", "Actions ended, by outcome.",
                               ["action", "outcome"], registry=r)  # fmt: skip
        self.decisions = Counter("qnet_recovery_decisions", "Decisions, by kind and reason.",
                                 ["decision", "reason"], registry=r)  # fmt: skip
        self.escalations = Counter("qnet_recovery_escalations", "Escalations to a human.",
                                   ["reason"], registry=r)  # fmt: skip
        self.budget = Gauge("qnet_recovery_budget_remaining",
                            "Actions the node may still get in the budget window.",
                            ["node"], registry=r)  # fmt: skip
        self.blocked = Gauge("qnet_recovery_node_blocked",
                             "1 when the node's budget is spent, until `qnet-recovery reset`.",
                             ["node"], registry=r)  # fmt: skip
        self.running = Gauge("qnet_recovery_action_running", "1 while an action runs.",
                             ["node"], registry=r)  # fmt: skip
        self.seconds = Histogram("qnet_recovery_action_seconds",
                                 "Time from the start of an action to its verified outcome.",
                                 ["action"], buckets=(5, 10, 20, 30, 60, 90, 120, 300, 600),
                                 registry=r)  # fmt: skip
        self.dry_run = Gauge("qnet_recovery_dry_run", "1 when decisions are not acted on.",
                             registry=r)  # fmt: skip


@dataclass
class Outcome:
    outcome: str
    detail: str
    act_s: float
    total_s: float


class Recovery:
    def __init__(self, config: Config, dry_run: bool | None = None):
        self.config = config
        self.dry_run = config.dry_run if dry_run is None else dry_run
        saved = load_state(config.state_file)
        policy = config.policy
        self.engine = Engine.from_dict(policy, saved) if saved else Engine(policy)
        self.audit = AuditLog(config.audit_log)
        self.recent: deque[dict] = deque(read_audit(config.audit_log, RECENT), maxlen=RECENT)
        self.metrics = Metrics()
        self.metrics.dry_run.set(1 if self.dry_run else 0)
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession | None = None
        self._refresh_gauges(time.time())

    # ---- events --------------------------------------------------------------------------

    async def deliver(self, alerts: list[Alert]) -> list[dict]:
        firing = any(a.status == "firing" for a in alerts)
        healthy = await self.validators_healthy() if firing else {}
        async with self.lock:
            now = time.time()
            decisions = []
            for alert in alerts:
                decisions += self.engine.receive(alert, now, healthy)
            records = self._commit(decisions, now)
        self.wake.set()
        return records

    async def reset(self, name: str) -> dict:
        async with self.lock:
            now = time.time()
            decision = self.engine.reset(name, now)
            (record,) = self._commit([decision], now)
        self.wake.set()
        return record

    async def run_due(self) -> None:
        """Start the queued actions that are due (the guards checked again)."""
        if self.engine.next_due() is None or self.engine.next_due() > time.time():
            return
        healthy = await self.validators_healthy()
        async with self.lock:
            now = time.time()
            start, decisions = self.engine.due(now, healthy)
            self._commit(decisions, now)
        for action in start:
            self._spawn(self._perform(action))

    async def _perform(self, action: Action, resumed: bool = False) -> None:
        node = self.config.nodes[action.node]
        self.metrics.running.labels(node.name).set(1)
        try:
            result = await self.perform(action, node, resumed)
        except Exception as exc:  # an action must end in an outcome, whatever happened
            log.exception("action %d on %s", action.id, node.name)
            result = Outcome("failed", f"{type(exc).__name__}: {exc}", 0.0, 0.0)
        finally:
            self.metrics.running.labels(node.name).set(0)
        outcome = "dry_run" if self.dry_run else result.outcome
        self.metrics.actions.labels(action.kind, outcome).inc()
        self.metrics.seconds.labels(action.kind).observe(result.total_s)
        async with self.lock:
            now = time.time()
            decisions = self.engine.finish(action.id, result.outcome, now)
            extra = {
                "detail": result.detail,
                "durations": {"act_s": round(result.act_s, 3), "total_s": round(result.total_s, 3)},
            }
            if resumed:
                extra["resumed"] = True
            self._commit(decisions, now, {decisions[0].action_id: extra})  # fmt: skip
        self.wake.set()

    def _commit(self, decisions: list[Decision], now: float, extra: dict | None = None):
        """Save the state, then append the decisions to the audit log and count them."""
        if not decisions:
            return []
        save_state(self.config.state_file, self.engine.to_dict())
        records = []
        for d in decisions:
            r = d.record()
            r["time"] = iso(d.time)
            r["rule"] = r.pop("alertname", "")
            if self.dry_run:
                r["dry_run"] = True
            if d.decision == "finish" and extra and d.action_id in extra:
                r.update(extra[d.action_id])
            records.append(r)
            self.metrics.decisions.labels(d.decision, d.reason).inc()
            if d.decision == "escalate":
                self.metrics.escalations.labels(d.reason).inc()
                self._spawn(self.escalate(d))
            log.info("%s %s %s %s", d.decision, d.reason, d.node, d.alertname)
        self.audit.append(records)
        self.recent.extend(records)
        self._refresh_gauges(now)
        return records

    def _refresh_gauges(self, now: float) -> None:
        for name in self.config.nodes:
            self.metrics.budget.labels(name).set(self.engine.budget_left(name, now))
            state = self.engine.nodes.get(name)
            self.metrics.blocked.labels(name).set(1 if state and state.blocked else 0)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- the world -----------------------------------------------------------------------

    async def node_status(self, node: Node) -> dict | None:
        try:
            async with self.session.get(
                f"{node.api_url}/api/v1/status",
                timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    return None
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        ok = (
            isinstance(data, dict)
            and isinstance(data.get("height"), int)
            and isinstance(data.get("sync_lag_blocks"), int)
        )
        return data if ok else None  # what does not look like a node's status is no answer

    async def statuses(self, nodes: list[Node]) -> dict[str, dict | None]:
        found = await asyncio.gather(*(self.node_status(n) for n in nodes))
        return {n.name: s for n, s in zip(nodes, found, strict=True)}

    async def validators_healthy(self) -> dict[str, bool]:
        """Validators that answer and are within two blocks of the head they report."""
        validators = [n for n in self.config.nodes.values() if n.validator]
        found = await self.statuses(validators)
        return {name: s is not None and s["sync_lag_blocks"] <= 2 for name, s in found.items()}

    async def perform(self, action: Action, node: Node, resumed: bool) -> Outcome:
        """Do ``action`` (not in a dry run, nor when resuming after a restart of this
        service: it may already have been done) and verify that the node advances again and
        reaches the network's head within the deadline."""
        started = time.monotonic()
        deadline = started + self.config.verify_deadline_s
        others = [n for n in self.config.nodes.values() if n.name != node.name]
        before = await self.node_status(node)
        heads = [s["height"] for s in (await self.statuses(others)).values() if s]
        head = max(heads, default=0)
        act_s = 0.0
        if not (self.dry_run or resumed):
            try:
                await asyncio.to_thread(self._act, action.kind, node, others)
            except ops.OpsError as exc:
                return Outcome("failed", str(exc), time.monotonic() - started,
                               time.monotonic() - started)  # fmt: skip
            act_s = time.monotonic() - started
        # It must advance past where it was (unknown when resuming: the action may have
        # been done already) and reach where the others were when the action began.
        floor = max(head, before["height"] + 1 if before and not resumed else 0)
        last = "no answer"
        while True:
            s = await self.node_status(node)
            if s is not None:
                if s["height"] >= floor and s.get("sync_lag_blocks") == 0:
                    total = time.monotonic() - started
                    return Outcome("succeeded", f"at height {s['height']} (head was {head})",
                                   act_s, total)  # fmt: skip
                last = f"height {s['height']}, {s.get('sync_lag_blocks')} behind"
            if time.monotonic() >= deadline:
                total = time.monotonic() - started
                return Outcome("failed", f"not caught up within the deadline ({last}; needs "
                               f"height {floor})", act_s, total)  # fmt: skip
            await asyncio.sleep(POLL_S)  # polling the node's status until the deadline

    def _act(self, kind: str, node: Node, others: list[Node]) -> None:
        """The action itself, through the functions qnet-ops uses (blocking: in a thread)."""
        host = node.host(self.config.ssh_key_file)
        timeout = self.config.verify_deadline_s
        if kind == "restart":
            with self._connect(host) as conn:
                ops.restart(conn, host, timeout=timeout)
            return
        archive, fetched = self._archive(others)
        try:
            with self._connect(host) as conn:
                ops.resync(conn, host, archive, timeout=timeout)
        finally:
            if fetched:
                archive.unlink(missing_ok=True)

    def _archive(self, others: list[Node]) -> tuple[Path, bool]:
        """The snapshot to resync from: the newest recent backup, else a fresh snapshot of a
        node of the same chain that answers and has caught up."""
        c = self.config
        if c.backup_dir is not None:
            found = ops.newest_backup(c.backup_dir, c.backup_max_age_s, time.time())
            if found is not None:
                return found, False
        for other in sorted(others, key=lambda n: (n.validator, n.name)):
            if other.node_type == "light":
                continue
            host = other.host(c.ssh_key_file)
            try:
                with self._connect(host) as conn:
                    return ops.snapshot_of_healthy(conn, host, c.work_dir), True
            except ops.OpsError as exc:
                log.warning("no snapshot from %s: %s", other.name, exc)
        raise ops.OpsError("no recent backup, and no healthy node to take a snapshot from")

    def _connect(self, host: ops.Host):
        conn = ops.connect(host)
        conn.client.load_host_keys(self.config.known_hosts)
        return conn

    async def escalate(self, d: Decision) -> None:
        """Tell a human, through Alertmanager: an alert routed to the human receiver. Not
        for the chain-halted alert (the human receiver has that one already), nor in a dry
        run (recorded in the audit log only)."""
        if not self.config.alertmanagers or d.reason == "chain_halted" or self.dry_run:
            return
        node = self.config.nodes.get(d.node)
        now = time.time()
        alert = {
            "labels": {
                "alertname": "QNetRecoveryEscalated",
                "node": d.node or "network",
                "reason": d.reason,
                "severity": "critical",
                "action": "none",
                "scope": "recovery",
                **({"region": node.region, "node_type": node.node_type} if node else {}),
            },
            "annotations": {
                "summary": f"qnet-recovery will not act on {d.node or 'the network'} "
                f"({d.reason}, after {d.alertname or 'an alert'}): a human must decide",
                "runbook_url": RUNBOOK,
            },
            "startsAt": iso(now),
            "endsAt": iso(now + 3600),
        }
        for url in self.config.alertmanagers:
            try:
                async with self.session.post(
                    f"{url.rstrip('/')}/api/v2/alerts",
                    json=[alert],
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    if resp.status >= 300:
                        log.error("escalation to %s: HTTP %d", url, resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.error("escalation to %s failed: %s", url, exc)

    # ---- the loop ------------------------------------------------------------------------

    async def scheduler(self) -> None:
        while True:
            try:
                await self._schedule()
            except Exception:  # a bug must not stop recovery for good: log it, go on
                log.exception("scheduler")
                self.metrics.decisions.labels("error", "scheduler").inc()
                await asyncio.sleep(TICK_S)  # not in a tight loop

    async def _schedule(self) -> None:
        last_tick = 0.0
        while True:
            now = time.time()
            if now - last_tick >= TICK_S:
                healthy = await self.validators_healthy() if self.engine.deferred else {}
                async with self.lock:
                    now = time.time()
                    decisions = self.engine.tick(now)
                    if self.engine.deferred:
                        decisions += self.engine.replan(now, healthy)
                    self._commit(decisions, now)
                last_tick = now
            await self.run_due()
            due = self.engine.next_due()
            wait = TICK_S if due is None else max(0.05, min(TICK_S, due - time.time()))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        for action in self.engine.running():  # interrupted by a restart of this service
            log.warning("resuming the verification of action %d on %s", action.id, action.node)
            self._spawn(self._perform(action, resumed=True))
        self._spawn(self.scheduler())

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session:
            await self.session.close()
        self.audit.close()

    def status(self) -> dict:
        now = time.time()
        nodes = {}
        for name, node in self.config.nodes.items():
            st = self.engine.nodes.get(name)
            nodes[name] = {
                "validator": node.validator,
                "budget_left": self.engine.budget_left(name, now),
                "blocked": bool(st and st.blocked),
                "attempts": st.consecutive if st else 0,
                "queued": _action(st.queued) if st else None,
                "running": _action(st.running) if st else None,
            }
        return {
            "dry_run": self.dry_run,
            "chain_halted": bool(self.engine.halted),
            "firing": sorted(f"{a.name} {a.node}" for a in self.engine.firing.values()),
            "nodes": nodes,
            "recent": list(self.recent),
        }


def _action(action: Action | None) -> dict | None:
    if action is None:
        return None
    started = iso(action.started) if action.started else None
    return {"id": action.id, "action": action.kind, "rule": action.alertname,
            "due": iso(action.due), "started": started}  # fmt: skip


# ---- HTTP ---------------------------------------------------------------------------------

RECOVERY = web.AppKey("recovery", Recovery)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def webhook(request: web.Request) -> web.Response:
    try:
        body = await request.read()  # at most client_max_size (MAX_BODY)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body larger than {MAX_BODY} bytes")
    try:
        alerts = parse_webhook(json.loads(body))
    except (ValueError, RecursionError) as exc:
        return _error(400, str(exc))
    records = await request.app[RECOVERY].deliver(alerts)
    return web.json_response({"decisions": records})


async def status_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECOVERY].status())


async def reset_handler(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        record = await request.app[RECOVERY].reset(name)
    except KeyError:
        return _error(404, f"no node {name!r} in the configuration")
    return web.json_response(record)


async def metrics_handler(request: web.Request) -> web.Response:
    data = generate_latest(request.app[RECOVERY].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def build(config: Config, dry_run: bool | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    recovery = Recovery(config, dry_run)
    app[RECOVERY] = recovery

    async def lifecycle(app: web.Application):
        await recovery.start()
        yield
        await recovery.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/alerts", webhook)
    app.router.add_get("/status", status_handler)
    app.router.add_post("/nodes/{name}/reset", reset_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/health", health)
    return app
