"""The Ansible code without hosts: ansible-lint's production profile, each role's argument
specs against its defaults, and the example inventory's vault driving the genesis role on
the controller. Needs no root and no testbed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    assert sorted(options) == sorted(defaults)
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
