"""qnet-recovery on the shared testnet (tests/e2e_testnet.py) with real Prometheus,
Alertmanager and the recovery service on the monitoring host, as testnet.yml deploys them,
with the test intervals, QNetNodeDown's critical rung after 10 s, QNetNodeDataDamaged at once
and QNetRestartLoop held back (tests/drills.py's FAST_ALERTS):

- a frozen validator (SIGSTOP) is detected, restarted, catches up, and its alert resolves;
- a validator whose chain database is corrupted is resynced from a healthy node, then
  matches the others block for block, and its old data is kept aside;
- a node that fails again after every restart gets exactly the budgeted attempts, then one
  escalation and no more actions;
- with two of four validators stopped, recovery does nothing and escalates;
- the same alert delivered three times leads to one action;
- qnet-recovery killed in the middle of an action and restarted repeats nothing.

Run alone (as root; ``-s`` prints the measured times):

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/e2e/test_recovery.py
"""

import itertools
import json
import shlex
import time

import pytest

import drills
from e2e_testnet import Testnet, status
from qnet.localnode import wait_for

pytestmark = pytest.mark.timeout(420)

DETECT_TARGET_S = 30
RECOVER_TARGET_S = 90


@pytest.fixture(scope="module")
def net(shared_net: Testnet):
    drills.enable_fast_alerts(shared_net)
    shared_net.wait_advancing(shared_net.validators, 3, 120)
    return shared_net


@pytest.fixture(autouse=True)
def healthy_after(net: Testnet):
    """Each test leaves every validator running and caught up, no alert of recovery's
    firing, and every budget full."""
    yield
    for host in net.validators:
        net.bed.heal(host)
        net.ssh(
            host,
            f"kill -CONT {drills.MAIN_PID} 2>/dev/null; systemctl reset-failed qnet-node; "
            "systemctl start qnet-node",
        )
    net.wait_advancing(net.validators, 2, 120)
    drills.settle(net)


def decisions(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["decision"], r["reason"]) for r in records]


def main_pid(net: Testnet, host) -> str:
    return net.ssh(host, "systemctl show --property MainPID --value qnet-node").strip()


@pytest.mark.timeout(600)  # the first: its fixture runs monitoring.yml
def test_a_frozen_validator_is_restarted_catches_up_and_its_alert_resolves(net):
    host = net.validators[1]
    drill = drills.run_drill(net, host, "pause")
    print(f"\nSIGSTOP {host.name}: detected after {drill.detect_s} s, restart started after "
          f"{drill.act_s} s, recovered after {drill.recover_s} s")  # fmt: skip
    assert not drill.needed_human, drill
    finished = [r for r in drill.audit if r["decision"] == "finish"]
    assert [(r["action"], r["outcome"]) for r in finished] == [("restart", "succeeded")]
    assert finished[0]["rule"] == "QNetNodeDown"
    assert drill.detect_s <= DETECT_TARGET_S, drill
    assert drill.recover_s <= RECOVER_TARGET_S, drill
    assert not drills.active(net, host, "QNetNodeDown")  # resolved


def test_a_corrupted_chain_database_is_resynced_and_matches_block_for_block(net):
    host, other = net.validators[2], net.validators[0]
    drill = drills.run_drill(net, host, "corrupt")
    print(f"\ncorrupted chain.db on {host.name}: detected after {drill.detect_s} s, resync "
          f"started after {drill.act_s} s, recovered after {drill.recover_s} s")  # fmt: skip
    finished = [r for r in drill.audit if r["decision"] == "finish"]
    assert [(r["action"], r["outcome"]) for r in finished] == [("resync", "succeeded")], drill
    assert finished[0]["rule"] == "QNetNodeDataDamaged"
    assert not drill.needed_human, drill
    net.wait_advancing([host], 3, 60)
    compared = drills.blocks_match(net, host, other)
    aside = net.ssh(host, "ls /var/lib/qnet/aside/*/chain.db").split()
    print(f"{host.name} matches {other.name} for all {compared} blocks; old data kept: {aside}")
    assert len(aside) == 1


CONFIG = "/var/lib/qnet/config.toml"


def break_config(net: Testnet, host) -> float:
    """Restart ``host``'s node into a config.toml it refuses (exit 2, not restarted by
    systemd, nor by recovery's restarts); when that began."""
    net.ssh(host, f"cp -p {CONFIG} /root/config.toml.good && echo 'api_port = \"abc\"' >> "
                  f"{CONFIG} && systemctl restart qnet-node")  # fmt: skip
    return time.time()


def mend_config(net: Testnet, host, restart: bool = False) -> None:
    fix = f"cp -p /root/config.toml.good {CONFIG}"
    if restart:
        fix += " && systemctl reset-failed qnet-node && systemctl restart qnet-node"
    net.ssh(host, fix)


def test_a_node_that_fails_after_every_restart_gets_its_budget_then_one_escalation(net):
    host = net.validators[3]
    started = break_config(net, host)
    try:

        def escalated():
            records = drills.audit_of(net, host, started)
            return records if ("escalate", "budget_exhausted") in decisions(records) else None

        spent = wait_for(escalated, 180, f"recovery to spend {host.name}'s budget")
        # Then nothing more while the node stays broken and its alert fires: watched until
        # well past the time a fourth attempt would have come (backoff 40 s after the third).
        third = max(drills._wall(r["time"]) for r in spent if r["decision"] == "start")
        wait_for(lambda: time.time() > third + 60, 90, "a minute after the third attempt")
        records = drills.audit_of(net, host, started)
        starts = [r for r in records if r["decision"] == "start"]
        outcomes = [r["outcome"] for r in records if r["decision"] == "finish"]
        print(
            f"\n{host.name} broken: {len(starts)} restarts "
            f"({', '.join(r['time'][11:19] for r in starts)}), then {decisions(records)[-1]}"
        )
        assert len(starts) == 3 and outcomes == ["failed"] * 3, decisions(records)
        assert decisions(records).count(("escalate", "budget_exhausted")) == 1
        gaps = [
            drills._wall(b["time"]) - drills._wall(a["time"]) for a, b in itertools.pairwise(starts)
        ]
        assert gaps[0] >= 10 and gaps[1] >= 20, gaps  # the backoff doubles from 10 s
        state = json.loads(drills.recovery(net, "status", "--json"))["nodes"][host.name]
        assert state["blocked"] and state["budget_left"] == 0
        # One notification to the human receiver for the spent budget.
        note = wait_for(lambda: escalation_notes(net, host, started), 60, "the escalation")
        assert len(note) == 1
    finally:
        mend_config(net, host, restart=True)


def escalation_notes(net: Testnet, host, since: float) -> list[dict]:
    out = net.bed.ssh(net.monitor, "cat /var/log/qnet-alerts/alerts.jsonl 2>/dev/null").stdout
    found = []
    for line in out.splitlines():
        note = json.loads(line)
        if drills._wall(note["received"]) < since or note["status"] != "firing":
            continue
        found += [
            a for a in note["alerts"]
            if a["labels"]["alertname"] in ("QNetRecoveryEscalated", "QNetRecoveryBudgetExhausted")
            and a["labels"].get("node") == host.name
        ]  # fmt: skip
    return found


def test_two_of_four_validators_stopped_recovery_does_nothing_and_escalates(net):
    stopped = net.validators[:2]
    started = time.time()
    for host in stopped:
        net.ssh(host, "systemctl stop qnet-node")

    def both_refused():
        records = drills.audit_since(net, started)
        refused = {r["node"] for r in records if (r["decision"], r["reason"]) ==
                   ("escalate", "quorum")}  # fmt: skip
        halted = any(r.get("rule") == "QNetChainHalted" for r in records)
        return records if refused == {h.name for h in stopped} and halted else None

    records = wait_for(both_refused, 240, "recovery to refuse both and see the chain halted")
    print(f"\ntwo validators stopped: {decisions(records)}")
    assert not [r for r in records if r["decision"] in ("act", "queue", "start")], records
    for host in stopped:
        assert net.ssh(host, "systemctl is-active qnet-node || true").strip() == "inactive"


def test_the_same_alert_delivered_three_times_leads_to_one_action(net):
    host = net.validators[0]
    pid = main_pid(net, host)
    started = time.time()
    alert = {
        "status": "firing",
        "fingerprint": f"{int(started):x}",
        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "labels": {"alertname": "QNetHeightStalled", "node": host.name, "severity": "critical",
                   "action": "restart", "scope": "node"},
    }  # fmt: skip
    for status_ in ("firing", "firing", "firing"):
        post(net, {"version": "4", "status": status_, "alerts": [alert]})

    def finished():
        records = drills.audit_of(net, host, started)
        return records if any(r["decision"] == "finish" for r in records) else None

    records = wait_for(finished, 150, "the restart to be verified")
    post(net, {"version": "4", "status": "resolved", "alerts": [{**alert, "status": "resolved"}]})
    print(f"\nthe same alert three times: {decisions(records)}")
    assert decisions(records).count(("skip", "duplicate")) == 2
    assert [r["decision"] for r in records].count("start") == 1
    assert main_pid(net, host) != pid
    assert status(host)["sync_lag_blocks"] == 0


def post(net: Testnet, body: dict) -> None:
    """POST to qnet-recovery's webhook from the monitoring host (it listens on loopback)."""
    script = (
        "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
        "'http://127.0.0.1:9097/alerts', data=sys.argv[1].encode(), "
        "headers={'Content-Type': 'application/json'}), timeout=30).read()"
    )
    net.ssh(net.monitor, f"python3 -c {shlex.quote(script)} {shlex.quote(json.dumps(body))}")


def test_recovery_killed_in_the_middle_of_a_drill_repeats_nothing(net):
    """A validator whose first restart fails (a bad config.toml) gets a retry queued for the
    backoff; qnet-recovery is killed while it waits and the config is fixed: the restarted
    service runs the queued retry once, repeats nothing, and keeps the budget spent."""
    host = net.validators[2]
    started = break_config(net, host)
    try:

        def queued():
            records = drills.audit_of(net, host, started)
            return records if ("queue", "backoff") in decisions(records) else None

        wait_for(queued, 120, f"a failed restart of {host.name} and its retry queued")
        mend_config(net, host)
        net.ssh(net.monitor, "systemctl kill --signal=KILL qnet-recovery")
        killed = time.time()

        def finished_twice():
            records = drills.audit_of(net, host, started)
            return records if decisions(records).count(("finish", "succeeded")) else None

        records = wait_for(finished_twice, 120, "the restarted qnet-recovery to run the retry")
    finally:
        mend_config(net, host)
    print(f"\nqnet-recovery killed during the backoff: {decisions(records)}")
    starts = [r for r in records if r["decision"] == "start"]
    finishes = [r for r in records if r["decision"] == "finish"]
    assert [r["outcome"] for r in finishes] == ["failed", "succeeded"], records
    assert len(starts) == 2 and starts[0]["action_id"] != starts[1]["action_id"]
    assert drills._wall(starts[1]["time"]) > killed  # the retry ran in the new process
    assert sorted(r["action_id"] for r in finishes) == sorted(r["action_id"] for r in starts)
    state = json.loads(drills.recovery(net, "status", "--json"))["nodes"][host.name]
    assert state["budget_left"] == 1  # two actions of three: the restart forgot neither
    restarts = net.ssh(net.monitor, "systemctl show --property NRestarts --value qnet-recovery")
    assert restarts.strip() != "0"
