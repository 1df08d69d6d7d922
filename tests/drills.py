"""Fault drills on a testnet with Prometheus, Alertmanager and qnet-recovery, in the spirit of
CometBFT's e2e perturbations: a fault is put on one validator, and the drill measures how
long the network took to notice (recovery receives the alert), to act (recovery starts an
action) and to recover (the node answers at the network's head with no lag, past where it
was), and keeps recovery's audit records of it.

    python tests/drills.py --drills 20 --upgrades 10 [--out drill-results/] [--seed N]
                                                                  # make drill

The drill deploys its own testnet (tests/e2e_testnet.py: testbed hosts, testnet.yml) with
the test intervals (scrape and rule evaluation every 2 s, Alertmanager group_wait 2 s). It
first runs ``--upgrades`` rolling upgrades in a row under a steady load (upgrade.yml to the
next release and back, with the production ``for:``; every accepted transaction must be
committed). Then it makes QNetNodeDown's critical rung fire after 10 s instead of 10 min
(FAST_ALERTS), runs the fault drills one at a time on random validators, prints a table,
writes JSON and takes the testnet down.
tests/e2e/test_recovery.py uses the same functions on the shared e2e testnet.

Fault kinds:
  kill        SIGKILL to the node's processes (systemd restarts it by itself)
  pause       SIGSTOP to the node (it answers nothing, holds its port): recovery restarts it
  disconnect  the host's veth down for DISCONNECT_S, then up again
  corrupt     the node stopped, junk written over the middle of its chain database, started:
              it refuses its data (exit 3, QNetNodeDataDamaged), recovery resyncs it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import e2e_testnet  # noqa: E402
from e2e_testnet import (  # noqa: E402
    Load,
    Testnet,
    api,
    build_release,
    committed_ids,
    next_versions,
    set_version,
    status,
)
from qnet.localnode import http, wait_for  # noqa: E402

KINDS = ("kill", "pause", "disconnect", "corrupt")
DISCONNECT_S = 30.0
RECOVER_DEADLINE_S = 240.0  # after this, the drill needed a human
AUDIT = "/var/log/qnet-recovery/audit.jsonl"
MAIN_PID = "$(systemctl show --property MainPID --value qnet-node)"
RECOVERY_CLI = "/opt/qnet-recovery/current/bin/qnet-recovery"
# QNetNodeDown's critical rung (action restart) after 10 s of the node not answering instead
# of the production 10 min, so that a drill takes a minute; QNetNodeDataDamaged (resync) at
# once instead of after 1 min, so that it reaches recovery before QNetNodeDown does.
FAST_ALERTS = {
    "prometheus_alert_for_overrides": {
        "QNetNodeDown/critical": "10s",
        "QNetNodeDataDamaged/critical": "0s",
        # Drills restart nodes on purpose, several times in 15 minutes: QNetRestartLoop would
        # fire, and it inhibits the QNetNodeDown that recovery acts on.
        "QNetRestartLoop/critical": "1h",
    }
}
# A disk that damaged the chain at rest: the node stops (its database is checkpointed into
# chain.db as the last connection closes), junk goes over the middle of chain.db, and the
# node is started again: it refuses its data (exit 3) and stays down.
CORRUPT = (
    "systemctl stop qnet-node && test ! -s /var/lib/qnet/chain.db-wal && "
    'python3 -c \'import os,sys; p=sys.argv[1]; n=os.path.getsize(p); f=open(p,"r+b"); '
    "f.seek(n//4); f.write(os.urandom(max(4096, n//2))); f.close()' /var/lib/qnet/chain.db && "
    "systemctl start qnet-node"
)


@dataclass
class Drill:
    kind: str
    host: str
    started: float  # wall clock, when the fault was put on
    detect_s: float | None = None  # recovery received a firing alert for the host
    act_s: float | None = None  # recovery started an action on it
    recover_s: float | None = None  # the node answered at the head, caught up
    needed_human: bool = False
    note: str = ""
    audit: list[dict] = field(default_factory=list)


def status_of(address: str) -> dict | None:
    return e2e_testnet.testnet.node_status(address, timeout=2)


def audit_of(net: Testnet, host, since: float) -> list[dict]:
    """Recovery's audit records of ``host`` since ``since``."""
    return [r for r in audit_since(net, since) if r.get("node") == host.name]


def audit_since(net: Testnet, since: float) -> list[dict]:
    out = net.bed.ssh(net.monitor, f"cat {AUDIT} 2>/dev/null").stdout
    records = []
    for line in out.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if _wall(r["time"]) >= since:
            records.append(r)
    return records


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def recovery(net: Testnet, *args: str) -> str:
    return net.ssh(net.monitor, " ".join([RECOVERY_CLI, *args]))


def inject(net: Testnet, host, kind: str) -> threading.Timer | None:
    """Put the fault on; for a disconnect, the timer that heals it."""
    if kind == "kill":
        net.ssh(host, "systemctl kill --signal=KILL qnet-node")
    elif kind == "pause":
        net.ssh(host, f"kill -STOP {MAIN_PID}")
    elif kind == "disconnect":
        net.bed.cut(host)
        timer = threading.Timer(DISCONNECT_S, net.bed.heal, (host,))
        timer.start()
        return timer
    elif kind == "corrupt":
        net.ssh(host, CORRUPT)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return None


def head(net: Testnet, but) -> int:
    found = [status_of(h.address) for h in net.validators if h is not but]
    return max((s["height"] for s in found if s), default=0)


def run_drill(net: Testnet, host, kind: str, deadline_s: float = RECOVER_DEADLINE_S) -> Drill:
    """One drill: the fault on ``host``, then watch until it has recovered and its alerts
    have resolved (or the deadline passed: a human is needed)."""
    before = status_of(host.address)
    assert before is not None, f"{host.name} does not answer before the drill"
    drill = Drill(kind, host.name, time.time())
    timer = inject(net, host, kind)
    try:
        floor = before["height"] + 1
        while time.time() - drill.started < deadline_s:
            now = time.time()
            if drill.recover_s is None:
                s = status_of(host.address)
                if (
                    s is not None
                    and s["height"] >= max(floor, head(net, host))
                    and s["sync_lag_blocks"] == 0
                    and (kind != "disconnect" or timer is None or not timer.is_alive())
                ):
                    drill.recover_s = now - drill.started
            records = audit_of(net, host, drill.started)
            _times(drill, records)
            settled = not any(r["decision"] in ("act", "queue", "start") for r in records) or any(
                r["decision"] == "finish" for r in records
            )
            if drill.recover_s is not None and settled and not acting_alerts(net, host):
                break
            time.sleep(0.5)  # polling the node, the audit log and Alertmanager
        else:
            drill.needed_human = True
            drill.note = "not recovered within the deadline"
    finally:
        if timer is not None:
            timer.cancel()
            net.bed.heal(host)
    drill.audit = audit_of(net, host, drill.started)
    _times(drill, drill.audit)
    escalations = [r["reason"] for r in drill.audit if r["decision"] == "escalate"]
    if escalations:
        drill.needed_human = True
        drill.note = (
            (drill.note + "; " if drill.note else "") + "escalated: " + ", ".join(escalations)
        )
    return drill


def _times(drill: Drill, records: list[dict]) -> None:
    for r in records:
        t = _wall(r["time"]) - drill.started
        if drill.detect_s is None and r["decision"] not in ("reset", "healthy"):
            drill.detect_s = round(t, 1)
        if drill.act_s is None and r["decision"] == "start":
            drill.act_s = round(t, 1)
    if drill.recover_s is not None:
        drill.recover_s = round(drill.recover_s, 1)


def am_alerts(net: Testnet, inhibited: bool = True, **matchers: str) -> list[dict]:
    """Alertmanager's active alerts matching ``matchers`` (label="value", or "~regex")."""
    query = "&".join(
        "filter=" + urllib.parse.quote(f'{k}=~"{v[1:]}"' if v.startswith("~") else f'{k}="{v}"')
        for k, v in matchers.items()
    )
    code, alerts = http(
        "GET",
        f"{net.alertmanager}/api/v2/alerts?active=true&silenced=false"
        f"&inhibited={str(inhibited).lower()}&{query}",
        timeout=5,
    )
    return alerts if code == 200 else [{"error": code}]


def acting_alerts(net: Testnet, host) -> list[dict]:
    """``host``'s alerts that recovery acts on (action restart or resync), active and not
    inhibited: Alertmanager is the source of truth (recovery does not hear that an alert
    resolved while it was inhibited). Others may go on firing after a drill and are not
    its business: QNetRestartLoop, say, after several faults on one node in 15 minutes."""
    return am_alerts(net, inhibited=False, node=host.name, action="~restart|resync")


def active(net: Testnet, host, alertname: str) -> list[dict]:
    """``alertname``'s active alerts of ``host`` (inhibited ones too)."""
    return am_alerts(net, node=host.name, alertname=alertname)


def settle(net: Testnet, timeout: float = 120) -> None:
    """Drill hygiene, after the nodes are back: wait until no alert recovery acts on (nor the
    chain-halted one) fires any more, then give every node its full budget and backoff."""

    def quiet() -> bool:
        if am_alerts(net, alertname="QNetChainHalted") or any(
            acting_alerts(net, h) for h in net.validators
        ):
            return False
        # Recovery hears of the halt's end a moment after Alertmanager marks it resolved.
        asked = net.bed.ssh(net.monitor, f"{RECOVERY_CLI} status --json")
        return asked.returncode == 0 and not json.loads(asked.stdout)["chain_halted"]

    wait_for(quiet, timeout, "recovery's alerts to resolve")
    for host in net.validators:
        recovery(net, "reset", host.name)


def enable_fast_alerts(net: Testnet, timeout: float = 1000) -> None:
    """FAST_ALERTS on the monitoring host, then wait until no QNetRestartLoop that fired
    before is left (it resolves once its 15-minute window holds fewer than 3 starts)."""
    run = net.run("monitoring.yml", "-l", net.monitor.name, **FAST_ALERTS)
    assert run.returncode == 0, run.output[-4000:]
    started = time.monotonic()
    wait_for(lambda: not am_alerts(net, alertname="QNetRestartLoop"), timeout,
             "earlier QNetRestartLoop alerts to resolve")  # fmt: skip
    print(f"fast alerts on; no restart loop left after {time.monotonic() - started:.0f} s")


def blocks_match(net: Testnet, host, other) -> int:
    """Every header of ``host`` equals ``other``'s at the same height; the height compared."""
    top = min(status_of(host.address)["height"], status_of(other.address)["height"])
    first = 1
    while first <= top:
        a = e2e_testnet.get(f"{api(host)}/api/v1/blocks?from={first}&to={top}")["headers"]
        b = e2e_testnet.get(f"{api(other)}/api/v1/blocks?from={first}&to={top}")["headers"]
        assert a == b, f"{host.name} and {other.name} differ between {first} and {top}"
        assert a, f"no headers from {first}"
        first += len(a)
    return top


def upgrade_soak(net: Testnet, rounds: int) -> dict:
    """``rounds`` rolling upgrades in a row (upgrade.yml, one validator at a time, to the next
    release and back) under one steady load; every transaction a validator accepted must be
    committed. Run with the production ``for:``, as an operator upgrades."""
    base = net.version
    good, _ = next_versions(base)
    build_release(net.artifacts, good)
    watcher = net.validators[-1]
    first = status(watcher)["height"]
    per_round = []
    # 10 transactions a second per sender, for the rounds and some to spare.
    with Load([api(v) for v in net.validators], net.senders, net.network, 80 * rounds * 10) as load:
        wait_for(lambda: len(load.accepted) > 200, 30, "the load to be under way")
        for i in range(rounds):
            target = good if i % 2 == 0 else base
            set_version(net, target)
            run = net.run("upgrade.yml")
            assert run.returncode == 0, run.output[-4000:]
            per_round.append({"round": i + 1, "to": target, "seconds": round(run.seconds, 1)})
            print(f"upgrade {i + 1}/{rounds} to {target}: {run.seconds:.1f} s, "
                  f"{len(load.accepted)} accepted so far", flush=True)  # fmt: skip
    committed: set[str] = set()
    upto = first

    def lost() -> set[str]:
        nonlocal upto
        head = status(watcher)["height"]
        if head > upto:
            ids, _ = committed_ids(watcher, upto + 1, head)
            committed.update(ids)
            upto = head
        return load.accepted - committed

    with contextlib.suppress(AssertionError):  # what is missing then is reported as lost
        wait_for(lambda: not lost(), 120, "every accepted transaction to be committed")
    return {
        "rounds": per_round,
        "accepted": len(load.accepted),
        "lost": sorted(lost()),
        "refused_and_sent_again": dict(load.refused),
        "batches_no_validator_took": load.unsent,
    }


def summary(drills: list[Drill]) -> dict:
    out = {}
    for kind in KINDS:
        mine = [d for d in drills if d.kind == kind]
        if not mine:
            continue
        row = {"drills": len(mine), "needed_human": sum(d.needed_human for d in mine)}
        for what in ("detect_s", "act_s", "recover_s"):
            values = sorted(getattr(d, what) for d in mine if getattr(d, what) is not None)
            row[what] = (
                {
                    "n": len(values),
                    "p50": round(statistics.median(values), 1),
                    "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 1),
                    "max": values[-1],
                }
                if values
                else None
            )
        out[kind] = row
    return out


def table(result: dict) -> str:
    lines = [
        f"{'fault':<11} {'drills':>6} {'human':>5}  "
        f"{'detect p50/p95/max s':>22}  {'act p50/p95/max s':>20}  {'recover p50/p95/max s':>23}"
    ]
    for kind, row in result.items():

        def cell(x):
            return f"{x['p50']}/{x['p95']}/{x['max']} (n={x['n']})" if x else "-"

        lines.append(
            f"{kind:<11} {row['drills']:>6} {row['needed_human']:>5}  {cell(row['detect_s']):>22}"
            f"  {cell(row['act_s']):>20}  {cell(row['recover_s']):>23}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("drill-results"))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--name",
        default="qd",
        help="testbed name (hosts NAME-1..6); not the e2e tests' qt, which it would take down",
    )
    parser.add_argument("--subnet", default="10.79.2", help="the testbed's /24, first 3 octets")
    parser.add_argument(
        "--upgrades", type=int, default=10, help="rolling upgrades in a row under load, first"
    )
    args = parser.parse_args(argv)
    if args.drills < len(KINDS):
        parser.error(f"--drills: at least {len(KINDS)}, one of each kind")
    rng = random.Random(args.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(args.drills)]
    rng.shuffle(kinds)
    with tempfile.TemporaryDirectory(prefix="qnet-drill-") as home:
        net = e2e_testnet.deploy(Path(home), args.name, args.subnet)
        drills: list[Drill] = []
        soak = None
        try:
            if args.upgrades:
                soak = upgrade_soak(net, args.upgrades)
                print(f"{args.upgrades} rolling upgrades under load: {soak['accepted']} "
                      f"transactions accepted, {len(soak['lost'])} lost", flush=True)  # fmt: skip
            enable_fast_alerts(net)
            net.wait_advancing(net.validators, 3, 120)
            for i, kind in enumerate(kinds, 1):
                host = rng.choice(net.validators)
                drill = run_drill(net, host, kind)
                drills.append(drill)
                print(
                    f"[{i}/{len(kinds)}] {kind:<10} {host.name}: detect {drill.detect_s} s, "
                    f"act {drill.act_s} s, recovered {drill.recover_s} s"
                    + (f"  NEEDED A HUMAN ({drill.note})" if drill.needed_human else ""),
                    flush=True,
                )
                net.wait_advancing(net.validators, 2, 120)
                settle(net)
        finally:
            e2e_testnet.close(net)
    result = summary(drills)
    print(table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"drill-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    report = {"summary": result, "drills": [asdict(d) for d in drills], "upgrades": soak}
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    humans = sum(d.needed_human for d in drills if d.kind != "corrupt")
    return 1 if humans or (soak and soak["lost"]) else 0


if __name__ == "__main__":
    sys.exit(main())
