"""The alert rules of monitoring/rules, their promtool tests, runbooks and routing.

Every alerting rule: a `for`, a severity, an action recovery can match, the labels node,
region and node_type, a summary and a runbook_url naming a runbook that exists; every rung
of every alert fires in a promtool test, and every alert has a quiet case; every runbook
belongs to an alert (or to the alert qnet-recovery posts itself); the routing sends what it
should where it should, and never sends recovery an alert about recovery."""

import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tools import ROOT, tool

MONITORING = ROOT / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
TEST_FILES = sorted((MONITORING / "tests").glob("*.yml"))
RUNBOOKS = sorted(p for p in (MONITORING / "runbooks").glob("*.md") if p.name != "README.md")
SEVERITIES = {"warning", "critical"}
ACTIONS = {"restart", "resync", "none"}
ALWAYS_FIRING = {"QNetWatchdog"}  # the dead-man switch has no quiet case
# Alerts no rule makes: qnet-recovery posts them to Alertmanager itself.
POSTED_ALERTS = {"QNetRecoveryEscalated": MONITORING / "runbooks" / "recovery-escalated.md"}


def alerting_rules() -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def rule_tests() -> list[tuple[Path, dict]]:
    """Every alert_rule_test entry of every test file."""
    return [
        (path, case)
        for path in TEST_FILES
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_there_are_rules_tests_and_runbooks():
    assert RULE_FILES and TEST_FILES and RUNBOOKS
    cases = sum(len(yaml.safe_load(p.read_text())["tests"]) for p in TEST_FILES)
    alerts = alerting_rules()
    print(
        f"\n{len(alerts)} alerting rules ({len({r['alert'] for r in alerts})} alerts) in "
        f"{len(RULE_FILES)} files; {cases} promtool test cases with {len(rule_tests())} "
        f"alert checks in {len(TEST_FILES)} files; {len(RUNBOOKS)} runbooks"
    )


@pytest.mark.parametrize(
    "rule", alerting_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_every_alert_has_for_severity_action_labels_and_a_runbook(rule):
    assert "for" in rule, f"{rule['alert']} has no for"
    labels, annotations = rule["labels"], rule["annotations"]
    severities = SEVERITIES | ({"none"} if rule["alert"] in ALWAYS_FIRING else set())
    assert labels["severity"] in severities
    assert labels["action"] in ACTIONS
    assert labels["scope"] in ("node", "network", "recovery")
    if labels["scope"] == "node":
        assert labels["node"] == "{{ $labels.instance }}"
        assert "{{ $labels.instance }}" in annotations["summary"]
    elif labels["scope"] == "network":
        assert (labels["node"], labels["region"], labels["node_type"]) == ("network", "all", "all")
    else:  # about recovery: the node it gave up on, or the host of the service itself
        assert labels["action"] == "none", "recovery must never act on an alert about itself"
        assert labels["node"] in ("{{ $labels.node }}", "{{ $labels.instance }}")
        assert labels["node"] in annotations["summary"]
        if labels["node"] == "{{ $labels.instance }}":
            assert (labels["region"], labels["node_type"]) == ("all", "all")
    runbook = ROOT / annotations["runbook_url"]
    assert runbook.is_file() and runbook.parent == MONITORING / "runbooks", runbook
    if labels["action"] != "none":
        assert labels["severity"] == "critical", "recovery acts only on a critical rung"


def test_every_runbook_belongs_to_an_alert():
    used = {ROOT / r["annotations"]["runbook_url"] for r in alerting_rules()}
    assert set(RUNBOOKS) == used | set(POSTED_ALERTS.values())


def test_the_runbook_index_lists_every_alert():
    index = (MONITORING / "runbooks" / "README.md").read_text()
    for alert in {r["alert"] for r in alerting_rules()} | POSTED_ALERTS.keys():
        assert f"| {alert} |" in index, f"{alert} is not in runbooks/README.md"


def test_every_rules_file_has_a_test_file():
    tested = {
        (path.parent / name).resolve()
        for path in TEST_FILES
        for name in yaml.safe_load(path.read_text())["rule_files"]
    }
    assert tested == {p.resolve() for p in RULE_FILES}


def test_every_rung_fires_in_a_test_and_every_alert_has_a_quiet_case():
    fired: dict[str, set[str]] = defaultdict(set)
    quiet: set[str] = set()
    for _, case in rule_tests():
        if case.get("exp_alerts"):
            fired[case["alertname"]] |= {a["exp_labels"]["severity"] for a in case["exp_alerts"]}
        else:
            quiet.add(case["alertname"])
    rungs = defaultdict(set)
    for rule in alerting_rules():
        rungs[rule["alert"]].add(rule["labels"]["severity"])
    for alert, severities in rungs.items():
        assert severities <= fired[alert], f"{alert}: rungs {severities - fired[alert]} never fire"
        assert alert in quiet or alert in ALWAYS_FIRING, f"{alert} has no quiet case"


def test_promtool_checks_the_rules_and_passes_their_tests():
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", *RULE_FILES], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", *(p.relative_to(MONITORING) for p in TEST_FILES)],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(TEST_FILES), tested.stdout


ROUTING = MONITORING / "alertmanager" / "routing.yml"


@pytest.fixture(scope="module")
def alertmanager_config(tmp_path_factory) -> Path:
    """routing.yml with the three receivers it names, as the alertmanager role writes it."""
    config = yaml.safe_load(ROUTING.read_text())
    config["receivers"] = [{"name": n} for n in ("human", "recovery", "deadman")]
    path = tmp_path_factory.mktemp("alertmanager") / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    checked = subprocess.run([tool("amtool"), "check-config", path], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return path


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ("alertname=QNetNodeDown severity=critical action=restart", "recovery,human"),
        ("alertname=QNetSyncLagGrowing severity=critical action=resync", "recovery,human"),
        ("alertname=QNetNodeDown severity=warning action=none", "human"),
        ("alertname=QNetRestartLoop severity=critical action=none", "human"),
        ("alertname=QNetChainHalted severity=critical action=none", "recovery,human"),
        ("alertname=QNetWatchdog severity=none action=none", "deadman"),
        ("alertname=QNetNodeDown severity=critical action=restart community=true", "human"),
        ("alertname=QNetNodeDataDamaged severity=critical action=resync", "recovery,human"),
        ("alertname=QNetRecoveryDown severity=critical action=none scope=recovery", "human"),
        ("alertname=QNetRecoveryFailing severity=warning action=none scope=recovery", "human"),
        (
            "alertname=QNetRecoveryBudgetExhausted severity=critical action=none scope=recovery",
            "human",
        ),
        (
            "alertname=QNetRecoveryEscalated severity=critical action=none scope=recovery",
            "human",
        ),
        # Whatever its labels say, an alert about recovery never goes back to it.
        ("alertname=QNetRecoveryEscalated severity=critical action=resync", "human"),
        ("alertname=QNetRecoveryDown severity=critical action=restart scope=recovery", "human"),
    ],
)
def test_the_routing_sends_each_alert_to_its_receivers(alertmanager_config, labels, receivers):
    routed = subprocess.run(
        [tool("amtool"), "config", "routes", "test", f"--config.file={alertmanager_config}",
         *labels.split()],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert routed.stdout.strip() == receivers, routed.stdout + routed.stderr


def test_the_inhibition_rules_name_alerts_that_exist():
    names = {r["alert"] for r in alerting_rules()} | POSTED_ALERTS.keys()
    rules = yaml.safe_load(ROUTING.read_text())["inhibit_rules"]
    for rule in rules:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            label, _, value = matcher.partition("=")
            if label.rstrip("~") == "alertname" and "=" not in label:
                for name in value.lstrip("~").strip('"').split("|"):
                    assert name in names, f"{matcher}: no alert {name}"
