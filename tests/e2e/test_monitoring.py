"""ops/playbooks/monitoring.yml on testbed hosts: prometheus-node-exporter on the node hosts,
Prometheus and Alertmanager (with QNet's rules and routing, and the alert log) on the
monitoring host, all from the .deb bundles the controller fetched.

No QNet node runs here: prometheus must still list every node of the inventory as a target,
with its labels, and find it down. That is what shows the scrape configuration comes from
the inventory. Prometheus, Alertmanager and the node exporters are scraped and must be up.
The alerts themselves, on a running testnet: test_alerting.py.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import testbed as tb
from qnet.localnode import wait_for

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PLAYBOOK = "playbooks/monitoring.yml"
DEBS = Path("/var/cache/qnet-debs")  # ops/debs.py's cache, where the roles look by default
NAME, SUBNET = "qc", "10.80.0"
# The first test also waits for the testbed, the bundles and four playbook runs.
pytestmark = pytest.mark.timeout(900)
RECAP = re.compile(
    r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)


class Run:
    """One ansible-playbook run: exit code, output, and the recap's counts per host."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float):
        self.rc, self.output, self.seconds = proc.returncode, proc.stdout + proc.stderr, seconds
        self.recap = {
            host: dict(
                zip(("ok", "changed", "unreachable", "failed"), map(int, counts), strict=True)
            )
            for host, *counts in RECAP.findall(proc.stdout)
        }

    def ok(self) -> bool:
        return (
            self.rc == 0
            and bool(self.recap)
            and all(c["failed"] == c["unreachable"] == 0 for c in self.recap.values())
        )

    def changed(self) -> int:
        return sum(c["changed"] for c in self.recap.values())


def playbook(inventory: Path, home: Path, *args: str, extra: dict | None = None) -> Run:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(OPS / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        # Facts of an earlier testbed with the same host names must not stand in for these.
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(home / "facts"),
        "ANSIBLE_NOCOLOR": "1",
        "LC_ALL": "C.UTF-8",
    }
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), PLAYBOOK]
    if extra is not None:
        cmd += ["-e", json.dumps(extra)]
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, *args], cwd=OPS, capture_output=True, text=True, env=env, timeout=240
    )
    return Run(proc, time.monotonic() - started)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Monitoring:
    """The testbed, its inventory and the runs that rolled monitoring out."""

    def __init__(self, bed: tb.Testbed, inventory: Path, home: Path):
        self.bed, self.inventory, self.home = bed, inventory, home
        self.monitor = bed.hosts[0]
        self.prometheus = f"http://{self.monitor.address}:9090"
        self.alertmanager = f"http://{self.monitor.address}:9093"
        self.runs: dict[str, Run] = {}

    def run(self, *args: str, extra: dict | None = None) -> Run:
        return playbook(self.inventory, self.home, *args, extra=extra)

    def ssh(self, command: str) -> str:
        out = self.bed.ssh(self.monitor, command)
        assert out.returncode == 0, f"{command}: {out.stderr}"
        return out.stdout

    def installed(self, host: tb.Host | None = None) -> str:
        """dpkg's status of the monitoring packages on ``host`` (the monitoring host)."""
        query = "dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'"
        packages = "prometheus prometheus-alertmanager prometheus-node-exporter"
        return self.bed.ssh(host or self.monitor, f"{query} {packages}").stdout

    def sha256(self, path: str) -> str:
        return self.ssh(f"sha256sum {path}").split()[0]


def write_inventory(bed: tb.Testbed, path: Path, monitor_region: str | None = "na") -> Path:
    """qc-1 monitors and is a full node in na (qnet_region); qc-2 a genesis validator in eu
    (by its region_eu group); qc-2-light a light node in ap on qc-2's address, port 7371."""
    monitor, other = bed.hosts
    hostvars = bed.hostvars()
    if monitor_region:
        hostvars[monitor.name]["qnet_region"] = monitor_region
    hostvars[f"{other.name}-light"] = {
        "ansible_host": other.address,
        "qnet_api_port": 7371,
        "qnet_region": "ap",
    }
    groups = {
        "monitoring": [monitor.name],
        "full": [monitor.name],
        "genesis": [other.name],
        "light": [f"{other.name}-light"],
        "region_eu": [other.name],
    }
    # No release to install here: qnet-recovery is deployed and tested on the shared testnet.
    everyone = {**bed.connection_vars(), "qnet_recovery_enabled": False}
    return tb.write_inventory(path, groups, hostvars, everyone)


@pytest.fixture(scope="module")
def monitoring(can_boot, tmp_path_factory):
    """Two testbed hosts, the bundles fetched for their image, a --check run on the fresh
    hosts, then the rollout; the testbed goes when the module's tests are done."""
    home = tmp_path_factory.mktemp("ansible")
    with tb.Testbed(2, NAME, SUBNET) as bed:
        fetch = subprocess.run(
            [sys.executable, OPS / "debs.py", "--base-root", tb.image()],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert fetch.returncode == 0, fetch.stderr
        m = Monitoring(bed, write_inventory(bed, home / "inventory.yml"), home)
        m.runs["fresh check"] = m.run("--check", "--diff")
        m.installed_after_check = [m.installed(host) for host in bed.hosts]
        m.runs["first"] = m.run()
        assert m.runs["first"].ok(), m.runs["first"].output[-5000:]
        m.runs["second"] = m.run()
        m.runs["check"] = m.run("--check", "--diff")
        print(
            f"\nmonitoring.yml: first run {m.runs['first'].seconds:.1f} s, "
            f"re-run {m.runs['second'].seconds:.1f} s"
        )
        yield m


def test_check_mode_on_fresh_hosts_fails_nothing_and_installs_nothing(monitoring):
    check = monitoring.runs["fresh check"]
    assert check.ok(), check.output[-5000:]
    assert check.changed() > 0  # it does report what the real run will do
    assert monitoring.installed_after_check == ["", ""]


def test_a_second_run_and_a_check_change_nothing(monitoring):
    for name in ("second", "check"):
        run = monitoring.runs[name]
        assert run.ok(), run.output[-5000:]
        assert run.changed() == 0, f"{name} run changed something:\n{run.output[-5000:]}"
        assert not re.search(r"^(---|\+\+\+) ", run.output, re.MULTILINE), run.output


def test_services_run_from_the_shipped_packages_and_listen(monitoring):
    services = "prometheus prometheus-alertmanager qnet-alert-log prometheus-node-exporter"
    assert monitoring.ssh(f"systemctl is-active {services}").split() == ["active"] * 4
    assert monitoring.ssh(f"systemctl is-enabled {services}").split() == ["enabled"] * 4
    assert sorted(monitoring.installed().splitlines()) == [
        "prometheus ii ",
        "prometheus-alertmanager ii ",
        "prometheus-node-exporter ii ",
    ]
    listening = monitoring.ssh("ss -Hltn")
    for address in (":9090", ":9093", "127.0.0.1:9095", ":9100"):
        assert re.search(rf"{address}\s", listening), listening
    # The other node host has the node exporter only, from its own bundle.
    other = monitoring.bed.hosts[1]
    assert monitoring.installed(other).splitlines() == ["prometheus-node-exporter ii "]
    assert monitoring.bed.ssh(other, "systemctl is-active prometheus-node-exporter").returncode == 0
    # The alert log runs as a dynamic user, writes only its log directory, answers locally.
    unit = monitoring.ssh(
        "systemctl show qnet-alert-log -p DynamicUser -p ProtectSystem -p NoNewPrivileges"
    )
    assert sorted(unit.split()) == [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ]
    healthy = (
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9095/-/healthy').status)"
    )
    assert monitoring.ssh(f'python3 -c "{healthy}"').strip() == "200"
    # The install forbade service starts with a policy-rc.d of its own, and took it away.
    assert monitoring.bed.ssh(monitoring.monitor, "test -e /usr/sbin/policy-rc.d").returncode == 1
    assert monitoring.ssh("promtool check config /etc/prometheus/prometheus.yml")
    assert monitoring.ssh("amtool check-config /etc/prometheus/alertmanager.yml")


def test_every_inventory_node_is_a_target_with_its_labels(monitoring):
    def scraped() -> list[dict] | None:
        targets = get(f"{monitoring.prometheus}/api/v1/targets")["data"]["activeTargets"]
        done = targets and all(t["health"] != "unknown" for t in targets)
        return targets if done else None

    targets = wait_for(scraped, 60, "a first scrape of every target")
    other = monitoring.bed.hosts[1]

    def of_job(job: str) -> set[tuple[str, str, str, str]]:
        return {
            (t["labels"]["instance"], t["labels"]["region"], t["labels"]["node_type"],
             t["scrapeUrl"])
            for t in targets
            if t["labels"]["job"] == job
        }  # fmt: skip

    assert of_job("qnet") == {
        ("qc-1", "na", "full", f"http://{monitoring.monitor.address}:7370/metrics"),
        ("qc-2", "eu", "super", f"http://{other.address}:7370/metrics"),
        ("qc-2-light", "ap", "light", f"http://{other.address}:7371/metrics"),
    }
    health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
    assert health == {
        ("qnet", "qc-1"): "down",  # no QNet node runs on the testbed
        ("qnet", "qc-2"): "down",
        ("qnet", "qc-2-light"): "down",
        ("node", "qc-1"): "up",  # one node exporter per host: qc-2-light shares qc-2's
        ("node", "qc-2"): "up",
        ("prometheus", "qc-1"): "up",
        ("alertmanager", "qc-1"): "up",
    }
    assert of_job("node") == {
        ("qc-1", "na", "full", f"http://{monitoring.monitor.address}:9100/metrics"),
        ("qc-2", "eu", "super", f"http://{other.address}:9100/metrics"),
    }
    # Community nodes are asked of the genesis validator's service discovery.
    config = monitoring.ssh("cat /etc/prometheus/prometheus.yml")
    assert f"http://{other.address}:7370/api/v1/network/sd" in config


def test_prometheus_alerts_the_alertmanager_of_the_monitoring_group(monitoring):
    active = get(f"{monitoring.prometheus}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"{monitoring.alertmanager}/api/v2/alerts"]
    status = get(f"{monitoring.alertmanager}/api/v2/status")
    assert status["cluster"]["status"] == "disabled"
    config = yaml.safe_load(status["config"]["original"])
    routing = yaml.safe_load((ROOT / "monitoring" / "alertmanager" / "routing.yml").read_text())

    # Alertmanager shows its configuration with defaults filled in and matchers sorted.
    def routes(route: dict) -> list[tuple]:
        return [
            (r["receiver"], sorted(r.get("matchers", [])), r.get("continue", False))
            for r in route["routes"]
        ]

    def inhibitions(rules: list[dict]) -> list[tuple]:
        return [(sorted(r["source_matchers"]), sorted(r["target_matchers"])) for r in rules]

    assert routes(config["route"]) == routes(routing["route"])
    assert config["route"]["group_by"] == routing["route"]["group_by"]
    assert inhibitions(config["inhibit_rules"]) == inhibitions(routing["inhibit_rules"])
    receivers = {r["name"]: [w["url"] for w in r.get("webhook_configs", [])]
                 for r in config["receivers"]}  # fmt: skip
    assert receivers == {
        "human": ["http://127.0.0.1:9095/alerts"],  # the alert log, by default
        "recovery": [],
        "deadman": [],
    }


def shipped_rule_groups() -> list[tuple[str, str]]:
    return [
        (group["name"], f"/etc/prometheus/rules/{path.name}")
        for path in sorted((ROOT / "monitoring" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]


def test_qnets_rules_land_by_default_and_other_files_and_webhooks_can_replace_them(
    monitoring, tmp_path
):
    # The handlers wait until a reload took effect: no polling needed here.
    rules = get(f"{monitoring.prometheus}/api/v1/rules")["data"]["groups"]
    assert [(g["name"], g["file"]) for g in rules] == shipped_rule_groups()

    mine = tmp_path / "qnet-test.yml"
    mine.write_text(
        "groups:\n  - name: qnet-test\n    rules:\n      - alert: NeverFires\n"
        "        expr: vector(0) > 1\n        for: 1m\n"
    )
    recovery = f"http://{monitoring.monitor.address}:7380/alerts"
    run = monitoring.run(
        extra={"prometheus_rule_files": [str(mine)], "alertmanager_recovery_webhook_url": recovery}
    )
    assert run.ok(), run.output[-5000:]
    groups = get(f"{monitoring.prometheus}/api/v1/rules")["data"]["groups"]
    assert [(g["name"], g["file"]) for g in groups] == [
        ("qnet-test", "/etc/prometheus/rules/qnet-test.yml")
    ]
    config = yaml.safe_load(get(f"{monitoring.alertmanager}/api/v2/status")["config"]["original"])
    (receiver,) = [r for r in config["receivers"] if r["name"] == "recovery"]
    assert [w["url"] for w in receiver["webhook_configs"]] == [recovery]

    back = monitoring.run()
    assert back.ok(), back.output[-5000:]
    groups = get(f"{monitoring.prometheus}/api/v1/rules")["data"]["groups"]
    assert [(g["name"], g["file"]) for g in groups] == shipped_rule_groups()
    assert recovery not in get(f"{monitoring.alertmanager}/api/v2/status")["config"]["original"]


@pytest.mark.parametrize(
    ("extra", "path", "service"),
    [
        ({"prometheus_scrape_interval": "5s"}, "/etc/prometheus/prometheus.yml", "prometheus"),
        (
            {"alertmanager_route_overrides": {"receiver": "nowhere"}},
            "/etc/prometheus/alertmanager.yml",
            "prometheus-alertmanager",
        ),
    ],
    ids=["promtool", "amtool"],
)
def test_a_configuration_the_checker_refuses_never_lands(monitoring, extra, path, service):
    before = monitoring.sha256(path)
    run = monitoring.run(extra=extra)  # a scrape timeout (10s) over the interval; no receiver
    assert run.rc != 0 and "failed to validate" in run.output, run.output[-5000:]
    assert monitoring.sha256(path) == before
    assert monitoring.ssh(f"systemctl is-active {service}").strip() == "active"
    for url in (monitoring.prometheus, monitoring.alertmanager):
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
            assert response.status == 200


def test_preflight_refuses_a_missing_bundle_and_a_node_without_region(monitoring, tmp_path):
    missing = monitoring.run(extra={"prometheus_debs_dir": str(tmp_path / "none")})
    assert missing.rc != 0 and "make debs" in missing.output, missing.output[-5000:]

    inventory = write_inventory(monitoring.bed, tmp_path / "inventory.yml", monitor_region=None)
    run = playbook(inventory, monitoring.home)
    assert run.rc != 0 and "needs an address, a port" in run.output, run.output[-5000:]
    assert "qc-1 (" in run.output
    # Nothing was changed before the refusal.
    assert run.changed() == 0


def test_the_bundles_hold_what_a_base_host_lacks(monitoring):
    for bundle, package in (
        ("prometheus", "prometheus"),
        ("alertmanager", "prometheus-alertmanager"),
        ("node_exporter", "prometheus-node-exporter"),
    ):
        directory = DEBS / bundle
        manifest = json.loads((directory / "manifest.json").read_text())
        names = [deb["package"] for deb in manifest["debs"]]
        assert package in names
        assert "libc6" not in names  # the base image has it: never replaced by a bundle
        for deb in manifest["debs"]:
            digest = hashlib.sha256((directory / deb["file"]).read_bytes()).hexdigest()
            assert digest == deb["sha256"]
