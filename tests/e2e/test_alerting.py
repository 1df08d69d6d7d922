"""Monitoring of the shared testnet (tests/e2e_testnet.py) with real Prometheus and
Alertmanager on its monitoring host, as ``make testnet`` rolls them out, with the test
intervals (scrape and rule evaluation every 2 s, Alertmanager group_wait 2 s and
group_interval 10 s) and the production ``for:`` of every rule.

- Prometheus loads every rule file of monitoring/rules and scrapes every node and node host;
- every query of every dashboard returns data while the testnet commits under load;
- a frozen validator (SIGSTOP) reaches the human receiver (the alert log) as QNetNodeDown
  with its node, region and runbook, and the alert resolves when it runs again;
- two of four validators stopped: exactly one notification, QNetChainHalted, while the
  per-node alerts it explains fire in Prometheus and are inhibited in Alertmanager.

Run alone (as root; ``-s`` prints the detection times):

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/e2e/test_alerting.py
"""

import asyncio
import json
import threading
import time
import urllib.parse
from datetime import UTC, datetime

import dashboards
import pytest
import yaml

from e2e_testnet import ROOT, Testnet, api, get
from qnet import crypto, loadgen
from qnet.localnode import wait_for

MONITORING = ROOT / "monitoring"
ALERT_LOG = "/var/log/qnet-alerts/alerts.jsonl"
NODE_DOWN_FOR_S = 120  # QNetNodeDown's warning rung (monitoring/rules/availability.yml)

pytestmark = pytest.mark.timeout(900)


def notifications(net: Testnet, since: datetime) -> list[dict]:
    """What the human receiver wrote since ``since`` (the hosts share this machine's clock)."""
    out = net.bed.ssh(net.monitor, f"cat {ALERT_LOG} 2>/dev/null").stdout
    lines = [json.loads(line) for line in out.splitlines()]
    return [n for n in lines if datetime.fromisoformat(n["received"]) >= since]


def alerts_in(notes: list[dict], alertname: str, status: str | None = None) -> list[dict]:
    """The alerts named ``alertname`` in ``notes``, each with its notification's fields."""
    return [
        {**alert, "notification": note}
        for note in notes
        for alert in note["alerts"]
        if alert["labels"]["alertname"] == alertname and status in (None, note["status"])
    ]


def main_pid(net: Testnet, host) -> str:
    return net.ssh(host, "systemctl show --property MainPID --value qnet-node").strip()


@pytest.fixture(scope="module")
def net(shared_net):
    return shared_net


def test_prometheus_loads_every_rule_and_scrapes_every_node_and_host(net):
    groups = get(f"{net.prometheus}/api/v1/rules")["data"]["groups"]
    shipped = {
        group["name"]: f"/etc/prometheus/rules/{path.name}"
        for path in sorted((MONITORING / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    }
    assert {g["name"]: g["file"] for g in groups} == shipped
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"]), groups

    def scraped() -> list[dict] | None:
        targets = get(f"{net.prometheus}/api/v1/targets")["data"]["activeTargets"]
        return targets if all(t["health"] == "up" for t in targets) else None

    targets = wait_for(scraped, 30, "every target to be up")
    seen = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets}
    validators = {h.name for h in net.validators}
    assert seen == {
        *(("qnet", name) for name in validators),
        *(("node", name) for name in validators),
        ("prometheus", net.monitor.name),
        ("alertmanager", net.monitor.name),
        ("qnet-recovery", net.monitor.name),
    }
    for target in targets:
        if target["labels"]["job"] in ("qnet", "node"):
            assert target["labels"]["node_type"] == "super"
            assert target["labels"]["region"] in ("na", "eu", "ap", "sa")
    # The dead-man switch fires: rules are evaluated and Alertmanager has it.
    # Prometheus resends firing alerts every minute (--rules.alert.resend-delay): just after
    # a start, its first send can come before it knows the Alertmanager, and is dropped.
    watchdog = f"{net.alertmanager}/api/v2/alerts?filter=alertname%3D%22QNetWatchdog%22"
    firing = wait_for(lambda: get(watchdog), 90, "the Watchdog to reach Alertmanager")
    assert [a["labels"]["alertname"] for a in firing] == ["QNetWatchdog"]


def empty_queries(net: Testnet, variable_sets: list[dict]) -> list[str]:
    """Each dashboard query (and variable query) that returns nothing now, with its panel."""
    empty = []
    for path in dashboards.dashboards():
        board = dashboards.load(path)
        for variables in variable_sets:
            for title, expr in dashboards.queries(board, variables) + dashboards.template_queries(
                board, variables
            ):
                query = urllib.parse.urlencode({"query": expr})
                result = get(f"{net.prometheus}/api/v1/query?{query}")["data"]["result"]
                if not result:
                    empty.append(f"{path.name}: {title}: {expr}")
    return empty


def test_every_dashboard_query_returns_data_while_the_testnet_commits(net):
    """Each query of each panel and template variable, with all regions and types and with
    one of each, against this Prometheus, while transfers go to the validators."""
    validator = net.validators[0].name
    variable_sets = [
        {"instance": validator},  # the rest: All
        {"region": "na", "node_type": "super", "instance": validator},
    ]
    rate = 40  # transfers per second, from the funded load keys, for 100 s
    sink = crypto.KeyPair.generate().address
    transfers = loadgen.presign(net.load_keys, net.network, rate * 100, 1_000, sink)
    urls = [api(h) for h in net.validators]
    sent: dict = {}
    load = threading.Thread(
        target=lambda: sent.update(
            report=asyncio.run(loadgen.send_at_rate(urls, transfers, rate, batch_size=20))
        )
    )
    started = time.monotonic()
    load.start()
    try:
        wait_for(
            lambda: not empty_queries(net, variable_sets), 120, "every dashboard query to have data"
        )
        ready_s = time.monotonic() - started
    except AssertionError as timeout:
        raise AssertionError("\n".join(empty_queries(net, variable_sets))) from timeout
    finally:
        load.join()
    queries = sum(
        len(dashboards.queries(b, v)) + len(dashboards.template_queries(b, v))
        for b in map(dashboards.load, dashboards.dashboards())
        for v in variable_sets
    )
    report = sent["report"]
    print(
        f"\n{queries} dashboard queries all returned data {ready_s:.0f} s after the load "
        f"started; load: {report.sent} sent, {report.accepted} accepted at "
        f"{report.achieved_rate:.0f}/s"
    )


def test_a_frozen_validator_reaches_the_human_receiver_and_resolves(net):
    victim = net.validators[1]
    net.wait_advancing(net.validators)
    frozen_at = datetime.now(UTC)
    net.ssh(victim, f"kill -STOP {main_pid(net, victim)}")
    try:
        fired = wait_for(
            lambda: alerts_in(notifications(net, frozen_at), "QNetNodeDown", "firing"),
            NODE_DOWN_FOR_S + 90,
            f"QNetNodeDown of {victim.name} in the alert log",
        )
    finally:
        net.ssh(victim, f"kill -CONT {main_pid(net, victim)}")
    released_at = datetime.now(UTC)
    (alert,) = fired
    assert alert["labels"]["node"] == victim.name
    assert alert["labels"]["region"] == "eu" and alert["labels"]["node_type"] == "super"
    assert (alert["labels"]["severity"], alert["labels"]["action"]) == ("warning", "none")
    assert alert["annotations"]["runbook_url"] == "monitoring/runbooks/node-down.md"
    assert (ROOT / alert["annotations"]["runbook_url"]).is_file()
    assert victim.name in alert["annotations"]["summary"]
    assert alert["notification"]["receiver"] == "human"
    detected = datetime.fromisoformat(alert["notification"]["received"]) - frozen_at

    resolved = wait_for(
        lambda: alerts_in(notifications(net, released_at), "QNetNodeDown", "resolved"),
        60,
        f"QNetNodeDown of {victim.name} to resolve",
    )
    cleared = datetime.fromisoformat(resolved[0]["notification"]["received"]) - released_at
    assert resolved[0]["labels"]["node"] == victim.name
    print(
        f"\n{victim.name} frozen: QNetNodeDown in the alert log after "
        f"{detected.total_seconds():.1f} s (for: {NODE_DOWN_FOR_S} s, scrape and evaluation "
        f"every 2 s, group_wait 2 s); resolved {cleared.total_seconds():.1f} s after SIGCONT"
    )
    # Nothing else reached a person for this fault.
    others = {a["labels"]["alertname"] for n in notifications(net, frozen_at) for a in n["alerts"]}
    assert others == {"QNetNodeDown"}, others
    net.wait_advancing(net.validators)


def test_two_validators_stopped_give_one_chain_halted_notification(net):
    stopped = net.validators[2:]
    net.wait_advancing(net.validators)
    halted_at = datetime.now(UTC)
    for host in stopped:
        net.ssh(host, "systemctl stop qnet-node")
    try:
        fired = wait_for(
            lambda: alerts_in(notifications(net, halted_at), "QNetChainHalted", "firing"),
            150,
            "QNetChainHalted in the alert log",
        )
        detected = datetime.fromisoformat(fired[0]["notification"]["received"]) - halted_at

        # The per-node alerts fire (QNetNodeDown after 2 minutes) and are inhibited; had they
        # not been, Alertmanager would have sent them group_wait (2 s) after they fired.
        def node_down_inhibited() -> list[dict] | None:
            down = get(f"{net.alertmanager}/api/v2/alerts?filter=alertname%3D%22QNetNodeDown%22")
            inhibited = [a for a in down if a["status"]["inhibitedBy"]]
            if len(inhibited) < len(stopped):
                return None
            fired_at = max(datetime.fromisoformat(a["startsAt"]) for a in inhibited)
            return inhibited if (datetime.now(UTC) - fired_at).total_seconds() > 10 else None

        inhibited = wait_for(node_down_inhibited, NODE_DOWN_FOR_S + 90, "QNetNodeDown, inhibited")
        notes = notifications(net, halted_at)
    finally:
        for host in stopped:
            net.ssh(host, "systemctl start qnet-node")
    assert sorted(a["labels"]["node"] for a in inhibited) == sorted(h.name for h in stopped)
    assert [n["status"] for n in notes] == ["firing"], notes
    (alert,) = notes[0]["alerts"]
    assert alert["labels"]["alertname"] == "QNetChainHalted"
    assert (alert["labels"]["node"], alert["labels"]["scope"]) == ("network", "network")
    assert alert["annotations"]["runbook_url"] == "monitoring/runbooks/chain-halted.md"
    for host in stopped:  # the description names the validators that do not answer
        assert host.name in alert["annotations"]["description"]

    started_at = datetime.now(UTC)
    resolved = wait_for(
        lambda: alerts_in(notifications(net, started_at), "QNetChainHalted", "resolved"),
        90,
        "QNetChainHalted to resolve",
    )
    cleared = datetime.fromisoformat(resolved[0]["notification"]["received"]) - started_at
    print(
        f"\n{len(stopped)} of {len(net.validators)} validators stopped: one notification, "
        f"QNetChainHalted, {detected.total_seconds():.1f} s after the stop; per-node alerts "
        f"inhibited; resolved {cleared.total_seconds():.1f} s after the validators started"
    )
    net.wait_advancing(net.validators)
