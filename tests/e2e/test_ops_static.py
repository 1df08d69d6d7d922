"""The Ansible code without hosts: ansible-lint's production profile, each role's argument
specs against its defaults, the example inventory's vault driving the genesis role on the
controller, what the monitoring and recovery roles render for the example inventory, the
prometheus role's for overrides and the node unit's damaged-data hook. Needs no root and no
testbed."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import tool

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
BIN = Path(sys.executable).parent
EXAMPLE = OPS / "inventory" / "example"
VAULT_PASSWORD = EXAMPLE / "vault-password.example"
sys.path.insert(0, str(OPS))
import testnet  # noqa: E402

ROLES = sorted(p for p in (OPS / "roles").iterdir() if (p / "meta").is_dir())


def test_ansible_lint_production_profile_passes():
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(OPS / "ansible.cfg"),
        "ANSIBLE_VAULT_PASSWORD_FILE": str(VAULT_PASSWORD),
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor", "ops/"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_argument_specs_document_exactly_the_defaults(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    # A required option has no default; every other one has exactly the role's default.
    assert sorted(name for name, o in options.items() if not o.get("required")) == sorted(defaults)
    assert not {name for name, o in options.items() if o.get("required")} & set(defaults)
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        if "default" in option:
            assert option["default"] == defaults[name], name


def test_the_example_vault_gives_the_validators_their_keys_for_the_genesis(tmp_path):
    """The genesis role on the example inventory: node ids from the vaulted keys, no key
    file on the controller, a second run that changes nothing, a refused other network."""
    network = tmp_path / "network"
    args = ("-l", "localhost", "--vault-password-file", str(VAULT_PASSWORD))
    net = ("-e", f"qnet_network_dir={network}")
    first = testnet.run_playbook(EXAMPLE, "testnet.yml", *args, *net, state=tmp_path)
    assert first.returncode == 0, first.output[-5000:]
    assert first.changed == {"localhost": 2}  # the network directory and the genesis
    assert "keygen" not in first.output and list((network / "keys").iterdir()) == []

    vault = subprocess.run(
        [
            BIN / "ansible-vault",
            "decrypt",
            "--vault-password-file",
            VAULT_PASSWORD,
            "--output",
            "-",
            EXAMPLE / "group_vars" / "genesis" / "vault.yml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seeds = yaml.safe_load(vault)["vault_qnet_node_keys"]
    hosts = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())["all"]["children"]
    regions = {
        host: group.removeprefix("region_")
        for group, members in hosts.items()
        if group.startswith("region_")
        for host in members["hosts"]
    }
    expected = {}
    for host, seed in seeds.items():
        node_id = subprocess.run(
            [BIN / "qnet-cli", "node", "id", "-"], input=seed, capture_output=True, text=True
        ).stdout.strip()
        expected[node_id] = regions[host]
    genesis = json.loads((network / "genesis.json").read_text())
    assert {v["node_id"]: v["region"] for v in genesis["validators"]} == expected
    assert genesis["chain_id"] == "qnet-example"
    assert len(expected) == len(hosts["genesis"]["hosts"]) == 4

    again = testnet.run_playbook(EXAMPLE, "testnet.yml", *args, *net, state=tmp_path)
    assert again.returncode == 0 and again.changed == {"localhost": 0}, again.output[-5000:]

    before = (network / "genesis.json").read_bytes()
    other = testnet.run_playbook(
        EXAMPLE, "testnet.yml", *args, *net, "-e", "qnet_chain_id=other", state=tmp_path
    )
    assert other.returncode != 0
    assert "is the genesis of another network than the inventory describes" in other.output
    assert (network / "genesis.json").read_bytes() == before


def load_filter_plugin():
    """The prometheus role's filters over rule files, as Ansible loads them."""
    path = OPS / "roles" / "prometheus" / "filter_plugins" / "alert_rules.py"
    spec = importlib.util.spec_from_file_location("alert_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RULE_FILES = sorted((ROOT / "monitoring" / "rules").glob("*.yml"))


def test_for_overrides_shorten_only_the_named_rungs_and_leave_the_rest_as_it_is(tmp_path):
    rules = load_filter_plugin()
    for path in RULE_FILES:
        text = path.read_text()
        assert rules.alert_for_overrides(text, {}) == text, path.name
        assert rules.alert_for_overrides(text, {"NoSuchAlert/critical": "1s"}) == text
    availability = (ROOT / "monitoring" / "rules" / "availability.yml").read_text()
    assert "QNetNodeDown/warning" in rules.alert_rungs(availability)
    shortened = rules.alert_for_overrides(availability, {"QNetNodeDown/critical": "20s"})
    fors = {
        f"{r['alert']}/{r['labels']['severity']}": r["for"]
        for r in yaml.safe_load(shortened)["groups"][0]["rules"]
    }
    original = {
        f"{r['alert']}/{r['labels']['severity']}": r["for"]
        for r in yaml.safe_load(availability)["groups"][0]["rules"]
    }
    assert fors == {**original, "QNetNodeDown/critical": "20s"}
    (tmp_path / "availability.yml").write_text(shortened)
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", tmp_path / "availability.yml"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_monitoring_yml_deploys_recovery_on_the_monitoring_hosts_after_alertmanager():
    plays = yaml.safe_load((OPS / "playbooks" / "monitoring.yml").read_text())
    roles = [
        (play["hosts"], role["role"])
        for play in plays
        for role in play.get("roles", [])
    ]  # fmt: skip
    assert ("monitoring", "qnet_recovery") in roles
    assert roles.index(("monitoring", "alertmanager")) < roles.index(
        ("monitoring", "qnet_recovery")
    )
    testnet_plays = yaml.safe_load((OPS / "playbooks" / "testnet.yml").read_text())
    imported = [play.get("ansible.builtin.import_playbook") for play in testnet_plays]
    assert "monitoring.yml" in imported


def render_monitoring(tmp_path: Path, *extra: str) -> Path:
    """What the prometheus, alertmanager and qnet_recovery roles write on the example
    inventory's monitoring host, rendered on the controller (promtool and amtool check the
    first two)."""
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "monitoring",
                    "gather_facts": False,
                    "tasks": [
                        {"ansible.builtin.include_role": {"name": role, "tasks_from": "render"}}
                        for role in ("prometheus", "alertmanager", "qnet_recovery")
                    ],
                }
            ]
        )
    )
    out = tmp_path / "rendered"
    (out / "monitoring-1.qnet.example.org").mkdir(parents=True)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(OPS / "ansible.cfg"),
        "ANSIBLE_VAULT_PASSWORD_FILE": str(VAULT_PASSWORD),
        "ANSIBLE_HOME": str(tmp_path / "ansible"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "PATH": f"{tool('promtool').parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        [BIN / "ansible-playbook", "-i", EXAMPLE, playbook, "-e", f"monitoring_render_dir={out}",
         *extra],
        cwd=OPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr
    return out / "monitoring-1.qnet.example.org"


def test_recovery_gets_the_inventory_nodes_the_alerts_and_is_scraped(tmp_path):
    rendered = render_monitoring(tmp_path)
    config = yaml.safe_load((rendered / "config.yml").read_text())
    hosts = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())["all"]["children"]
    validators, full = list(hosts["genesis"]["hosts"]), list(hosts["full"]["hosts"])
    assert list(config["nodes"]) == validators + full  # light nodes keep no chain to resync
    na = config["nodes"]["validator-na-1.qnet.example.org"]
    assert na == {
        "address": "validator-na-1.qnet.example.org",
        "ssh_port": 22,
        "ssh_user": "root",
        "api_port": 7370,
        "node_type": "super",
        "region": "na",
        "validator": True,
        "home": "/opt/qnet",
        "data_dir": "/var/lib/qnet",
        "user": "qnet",  # the node's user, which the gate runs its files' commands as
    }
    assert config["nodes"]["full-af-1.qnet.example.org"]["region"] == "af"
    assert not config["nodes"]["full-af-1.qnet.example.org"]["validator"]
    assert config["listen"] == "127.0.0.1:9097" and config["dry_run"] is False
    assert config["alertmanagers"] == ["http://127.0.0.1:9093"]
    assert config["match"] == {"severity": "critical", "action": "restart|resync"}

    unit = (rendered / "qnet-recovery.service").read_text()
    for line in (
        "User=qnet-recovery",
        "ExecStart=/opt/qnet-recovery/current/bin/qnet-recovery serve"
        " --config /etc/qnet-recovery/config.yml\n",
        "RestartPreventExitStatus=2\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
    ):  # fmt: skip
        assert line in unit, line

    alertmanager = yaml.safe_load((rendered / "alertmanager.yml").read_text())
    (recovery,) = [r for r in alertmanager["receivers"] if r["name"] == "recovery"]
    assert [w["url"] for w in recovery["webhook_configs"]] == ["http://127.0.0.1:9097/alerts"]
    prometheus = yaml.safe_load((rendered / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "qnet-recovery"]
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:9097"], "labels": {"instance": "monitoring-1.qnet.example.org"}}
    ]


def test_without_recovery_nothing_is_sent_to_it_or_scraped(tmp_path):
    rendered = render_monitoring(tmp_path, "-e", "qnet_recovery_enabled=false")
    alertmanager = yaml.safe_load((rendered / "alertmanager.yml").read_text())
    (recovery,) = [r for r in alertmanager["receivers"] if r["name"] == "recovery"]
    assert "webhook_configs" not in recovery
    prometheus = yaml.safe_load((rendered / "prometheus.yml").read_text())
    assert "qnet-recovery" not in [j["job_name"] for j in prometheus["scrape_configs"]]


def test_dry_run_reaches_the_unit(tmp_path):
    rendered = render_monitoring(tmp_path, "-e", "qnet_recovery_dry_run=true")
    assert (
        " --config /etc/qnet-recovery/config.yml --dry-run\n"
        in (rendered / "qnet-recovery.service").read_text()
    )
    assert yaml.safe_load((rendered / "config.yml").read_text())["dry_run"] is True


def test_the_rendered_recovery_config_passes_check_config(tmp_path):
    program = BIN / "qnet-recovery"
    if not program.exists():
        pytest.skip(f"{program} is not installed (pip install -e .)")
    rendered = render_monitoring(tmp_path)
    done = subprocess.run(
        [program, "check-config", rendered / "config.yml"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_node_unit_reports_damaged_data_for_the_textfile_collector(tmp_path):
    """The unit's hooks, run as systemd would run them: 0 at a start, 1 after exit status 3
    only, written whole (a temporary file moved into place) into a directory they make."""
    unit = (OPS / "roles" / "qnet_node" / "templates" / "qnet-node.service.j2").read_text()
    assert "RestartPreventExitStatus=2 3\n" in unit
    textfiles = tmp_path / "node-exporter"

    def hook(setting: str) -> list[str]:
        (line,) = [line for line in unit.splitlines() if line.startswith(f"{setting}=")]
        command = line.split("=", 1)[1]
        # As root outside the sandbox ("+"), never keeping the node down ("-").
        assert command.startswith("-+/bin/sh -c ")
        command = command.removeprefix("-+").replace("$$", "$")  # systemd's unescaping
        command = command.replace("{{ textfile }}", f"{textfiles}/qnet_node.prom")
        return shlex.split(command.replace("{{ qnet_node_textfile_dir }}", str(textfiles)))

    def run(setting: str, **env: str) -> str:
        subprocess.run(hook(setting), env={"PATH": os.environ["PATH"], **env}, check=True)
        assert sorted(p.name for p in textfiles.iterdir()) == ["qnet_node.prom"]
        return (textfiles / "qnet_node.prom").read_text()

    assert run("ExecStartPre") == "qnet_node_data_damaged 0\n"
    assert run("ExecStopPost", EXIT_CODE="exited", EXIT_STATUS="3") == "qnet_node_data_damaged 1\n"
    assert (textfiles / "qnet_node.prom").stat().st_mode & 0o777 == 0o644  # the exporter reads it
    assert run("ExecStartPre") == "qnet_node_data_damaged 0\n"
    for ended in (
        {"EXIT_CODE": "exited", "EXIT_STATUS": "1"},
        {"EXIT_CODE": "killed", "EXIT_STATUS": "KILL"},
        {"EXIT_CODE": "exited", "EXIT_STATUS": "0"},
    ):
        assert run("ExecStopPost", **ended) == "qnet_node_data_damaged 0\n"
