"""``qnet-cli node keygen``, ``node id`` and ``genesis create``: the steps an operator (or the
qnet_genesis Ansible role) takes when validator keys live on different machines.

Everything goes through the installed ``qnet-cli``; the network test starts real node
processes on loopback and stops them whatever happens.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qnet import crypto
from qnet.cli import node_running
from qnet.config import write_config
from qnet.genesis import Genesis, Params
from qnet.localnode import free_port, wait_for

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "qnet-cli")
QNC = 10**9


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        timeout=60,
    )


def ok(*args: str, stdin: str | None = None) -> dict:
    done = run("--json", *args, stdin=stdin)
    assert done.returncode == 0, f"qnet-cli {' '.join(args)}:\n{done.stderr}"
    return json.loads(done.stdout)


def fails(*args: str) -> str:
    """The one error line of a command that must fail and print nothing on stdout."""
    done = run(*args)
    assert done.returncode != 0, f"qnet-cli {' '.join(args)} succeeded:\n{done.stdout}"
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_keygen_makes_a_private_key_once_and_then_only_reads_it(tmp_path):
    path = tmp_path / "node_key"
    made = ok("node", "keygen", "--out", str(path))
    assert made["created"] is True and made["key_file"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seed = path.read_text()
    assert crypto.KeyPair(bytes.fromhex(seed.strip())).node_id == made["node_id"]

    again = ok("node", "keygen", "--out", str(path))
    assert again == {**made, "created": False}
    assert path.read_text() == seed

    assert ok("node", "id", str(path)) == {"node_id": made["node_id"]}
    assert ok("node", "id", "-", stdin=seed) == {"node_id": made["node_id"]}
    assert run("node", "id", str(path)).stdout.strip() == made["node_id"]


def test_keygen_never_replaces_a_file_that_is_not_a_key(tmp_path):
    path = tmp_path / "node_key"
    path.write_text("not a key\n")
    assert "is not a node key" in fails("node", "keygen", "--out", str(path))
    assert path.read_text() == "not a key\n"
    assert "64 hex characters" in fails("node", "id", str(path))


def keygen(path: Path) -> str:
    return ok("node", "keygen", "--out", str(path))["node_id"]


@pytest.fixture(scope="module")
def node_id() -> str:
    """A valid node id for the tests that need one but no key file."""
    return crypto.KeyPair.generate().node_id


def test_genesis_create_lists_validators_seeds_funds_and_params(tmp_path):
    na, eu = keygen(tmp_path / "na.key"), keygen(tmp_path / "eu.key")
    faucet = crypto.encode_address(crypto.KeyPair.generate().address)
    out = tmp_path / "genesis.json"
    created = ok(
        "genesis",
        "create",
        "--out",
        str(out),
        "--chain-id",
        "qnet-ops",
        "--validator",
        f"{na}:na:http://10.0.0.11:7370",
        "--validator",
        f"{eu}:eu",
        "--fund",
        f"{faucet}=1000.5",
        "--param",
        "epoch_ms=60000",
        "--param",
        "block_interval_ms=100",
    )
    genesis = Genesis.load(out)
    assert created["genesis_hash"] == genesis.hash.hex()
    assert created["chain_id"] == genesis.chain_id == "qnet-ops"
    assert [(v.node_id, v.region, v.power) for v in genesis.validators] == [
        (na, "na", 1),
        (eu, "eu", 1),
    ]
    # Only validators with an API URL are seeds for --region auto.
    assert [(s.node_id, s.region, s.api_url) for s in genesis.seeds] == [
        (na, "na", "http://10.0.0.11:7370")
    ]
    assert genesis.balances == {faucet: 1000 * QNC + QNC // 2}
    assert genesis.params == Params(epoch_ms=60000, block_interval_ms=100)
    assert abs(genesis.genesis_time_ms - time.time() * 1000) < 60_000


def test_genesis_create_never_replaces_a_genesis(tmp_path, node_id):
    out = tmp_path / "genesis.json"
    ok("genesis", "create", "--out", str(out), "--chain-id", "a", "--validator", f"{node_id}:eu")
    before = out.read_bytes()
    error = fails(
        "genesis", "create", "--out", str(out), "--chain-id", "b", "--validator", f"{node_id}:na"
    )
    assert "already exists" in error
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("validator_suffix", "extra", "message"),
    [
        (":xx", [], "region must be one of"),
        (":eu:ftp://host", [], "must start with http"),
        (":eu", ["--param", "epoch_ms=soon"], "is not an integer"),
        (":eu", ["--param", "no_such=1"], "must be NAME=INTEGER"),
        (":eu", ["--param", "super_fee_percent=101"], "super_fee_percent"),
        (":eu", ["--fund", "qnet1nothing=1"], ""),
        (":eu", ["--chain-id", ""], "chain_id"),
    ],
)
def test_genesis_create_refuses_bad_input_and_writes_nothing(
    tmp_path, node_id, validator_suffix, extra, message
):
    out = tmp_path / "genesis.json"
    chain = [] if "--chain-id" in extra else ["--chain-id", "c"]
    error = fails(
        "genesis", "create", "--out", str(out), *chain, "--validator", node_id + validator_suffix,
        *extra,
    )  # fmt: skip
    assert error.startswith("Error: ") and message in error
    assert not out.exists()


def test_genesis_create_refuses_a_validator_twice_or_a_bad_node_id(tmp_path, node_id):
    out = str(tmp_path / "genesis.json")
    twice = fails(
        "genesis", "create", "--out", out, "--chain-id", "c", "--validator", f"{node_id}:eu",
        "--validator", f"{node_id}:na",
    )  # fmt: skip
    assert "listed twice" in twice
    assert "--validator" in fails(
        "genesis", "create", "--out", out, "--chain-id", "c", "--validator", "qnode1abc:eu"
    )


@pytest.fixture
def nodes():
    """Data dirs whose nodes are stopped (by pid as a last resort) after the test."""
    started: list[Path] = []
    yield started
    for data_dir in started:
        pidfile = data_dir / "node.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            run("node", "stop", "--data-dir", str(data_dir))
            if node_running(pid):
                os.kill(pid, signal.SIGKILL)


def status(port: int) -> dict:
    return ok("--node", f"http://127.0.0.1:{port}", "node", "status")


def test_validators_from_keygen_and_genesis_create_commit_blocks(tmp_path, nodes):
    """Keys made apart, one genesis: the validators commit together, each in its genesis
    region, and a node with --region auto picks a region of the genesis seeds."""
    regions = ["na", "eu"]
    dirs = [tmp_path / r for r in regions]
    ports = [(free_port(), free_port()) for _ in regions]
    for d in dirs:
        d.mkdir()
    ids = [keygen(d / "node_key") for d in dirs]
    genesis = tmp_path / "genesis.json"
    ok(
        "genesis", "create", "--out", str(genesis), "--chain-id", "qnet-keygen",
        *(
            arg
            for node_id, region, (api, _) in zip(ids, regions, ports, strict=True)
            for arg in ("--validator", f"{node_id}:{region}:http://127.0.0.1:{api}")
        ),
    )  # fmt: skip
    for i, (d, (api, p2p)) in enumerate(zip(dirs, ports, strict=True)):
        (d / "genesis.json").write_bytes(genesis.read_bytes())
        peers = [f"127.0.0.1:{q}" for j, (_, q) in enumerate(ports) if j != i]
        write_config(d / "config.toml", {"api_port": api, "p2p_port": p2p, "peers": peers})
    for d in dirs:
        nodes.append(d)
        ok("node", "start", "--data-dir", str(d))
    for (api, _), node_id, region in zip(ports, ids, regions, strict=True):
        first = status(api)
        assert (first["node_id"], first["node_type"], first["region"]) == (
            node_id,
            "super",
            region,
        )
        wait_for(lambda api=api: status(api)["height"] >= 3, 30, f"blocks on :{api}")

    relay = tmp_path / "relay"
    relay.mkdir()
    keygen(relay / "node_key")
    (relay / "genesis.json").write_bytes(genesis.read_bytes())
    relay_api = free_port()
    write_config(
        relay / "config.toml",
        {
            "api_port": relay_api,
            "p2p_port": free_port(),
            "region": "auto",
            "peers": [f"127.0.0.1:{p2p}" for _, p2p in ports],
        },
    )
    nodes.append(relay)
    ok("node", "start", "--data-dir", str(relay))
    assert status(relay_api)["region"] in regions
    wait_for(lambda: status(relay_api)["height"] >= 3, 30, "the relay to follow the chain")
