"""A community node's life through ``qnet-cli``: activate it from a funded wallet, send its
heartbeats for two epochs, claim exactly the expected reward; the chain verifies and restarts
to the same state."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qnet import crypto
from qnet.genesis import Params
from qnet.localnode import NO_EMPTY_BLOCKS, LocalNode

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "qnet-cli")
PASSWORD = "node operator"
QNC = 10**9
EMISSION = 60 * QNC  # divisible by 1..6 eligible nodes: no remainder is carried
PARAMS = Params(
    epoch_ms=2_500,
    epoch_emission=EMISSION,
    # All fees go to super nodes, so a full node's reward is its emission share alone and
    # the expectation does not depend on which fees landed when.
    super_fee_percent=100,
    activation_fee_full=10 * QNC,
)
FEE = PARAMS.min_fee


class Cli:
    def __init__(self, home: Path, node_url: str):
        self.env = {
            **os.environ,
            "HOME": str(home),
            "QNET_KEYSTORE": str(home / "wallets"),
            "QNET_NODE": node_url,
            "QNET_WALLET_PASSWORD": PASSWORD,
        }

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [CLI, *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=120
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"qnet-cli {' '.join(args)}:\n{done.stderr}"
        return done.stdout

    def json(self, *args: str):
        return json.loads(self.ok("--json", *args))


@pytest.fixture
def chain(tmp_path):
    owner = crypto.KeyPair.generate()
    node = LocalNode.single(
        tmp_path / "validator", {owner.address: 1_000 * QNC}, PARAMS, NO_EMPTY_BLOCKS
    )
    node.start()
    yield node, owner
    node.stop()


def next_epoch(node: LocalNode) -> int:
    """Sleep into the next epoch (with a margin, so a heartbeat sent now lands in it)."""
    current = node.get("/api/v1/epochs/current")[1]
    time.sleep(current["time_left_ms"] / 1000 + 0.15)
    fresh = node.get("/api/v1/epochs/current")[1]
    assert fresh["epoch"] == current["epoch"] + 1 and fresh["time_left_ms"] > 1_500
    return fresh["epoch"]


def heartbeat_epochs(cli: Cli, node_key: crypto.KeyPair) -> list[int]:
    (info,) = cli.json("rewards", "check", "--node", node_key.node_id)["nodes"]
    return [e["epoch"] for e in info["epochs"]]


def test_a_new_node_activates_heartbeats_and_claims_its_reward(chain, tmp_path):
    node, owner = chain
    cli = Cli(tmp_path, node.url)
    cli.ok("wallet", "import", "owner", stdin=owner.seed.hex() + "\n")
    node_key = crypto.KeyPair.generate()
    # A community full node's data dir (key, genesis, ports; type, region and the validator
    # as its peer, also given as flags below).
    community = LocalNode(
        tmp_path / "community",
        node.genesis,
        node_key,
        {"node_type": "full", "region": "sa", "peers": [node.p2p_address]},
    )

    start = cli.json("wallet", "balance", "owner")
    started = cli.json(
        "node", "start", "--data-dir", str(community.data_dir), "--type", "full",
        "--peer", node.p2p_address, "--activate", "owner",
    )  # fmt: skip
    try:
        activated = started["activation"]
        assert activated["status"] == "committed" and activated["node_id"] == node_key.node_id
        assert activated["burned"] == str(10 * QNC)
        after_activation = cli.json("wallet", "balance", "owner")
        assert int(start["balance"]) - int(after_activation["balance"]) == 10 * QNC + FEE
        # Starting it again does not activate it twice.
        cli.ok("node", "stop", "--data-dir", str(community.data_dir))
        again = cli.json(
            "node", "start", "--data-dir", str(community.data_dir), "--activate", "owner"
        )
        assert again["activation"] == {"status": "already active"}

        # The node sends its own heartbeat each epoch, through the validator it follows.
        deadline = time.monotonic() + 30
        while len(heartbeat_epochs(cli, node_key)) < 2:
            assert time.monotonic() < deadline, "the node did not heartbeat in two epochs"
            time.sleep(0.2)
    finally:
        cli.run("node", "stop", "--data-dir", str(community.data_dir))
    # Stopped, it sends no more (one it sent last may still land): let every epoch it has a
    # heartbeat in close, so the counts of eligible nodes are final.
    next_epoch(node)
    seen = heartbeat_epochs(cli, node_key)
    while next_epoch(node) <= seen[-1]:
        pass

    check = cli.json("rewards", "check", "--node", node_key.node_id)
    (info,) = check["nodes"]
    assert (info["node_type"], info["region"]) == ("full", "sa")
    # The last epoch is closed by the first block after it: the claim's, or an earlier one
    # (the validator's own heartbeat for the next epoch), depending on timing.
    assert [e["epoch"] for e in info["epochs"]] == heartbeat_epochs(cli, node_key)
    assert len(info["epochs"]) >= 2
    assert info["epochs"][0]["closed"] is True
    # Emission split equally among every node eligible in the epoch (the validator may send
    # heartbeats too); each count is final, as no later block can carry those heartbeats.
    expected = sum(EMISSION // sum(e["eligible"].values()) for e in info["epochs"])
    assert info["epochs"][0]["reward"] == str(
        EMISSION // sum(info["epochs"][0]["eligible"].values())
    )
    assert "total claimable" in cli.ok("rewards", "check", "--owner", "owner")

    before = int(cli.json("wallet", "balance", "owner")["balance"])
    claimed = cli.json("rewards", "claim", "--node", node_key.node_id, "--owner", "owner")
    assert claimed["status"] == "committed"
    assert int(claimed["credited"]) == expected
    assert int(cli.json("wallet", "balance", "owner")["balance"]) == before + expected - FEE

    left = cli.json("rewards", "check", "--owner", "owner")
    assert left["claimable"] == "0" and left["nodes"][0]["epochs"] == []
    again = cli.run("rewards", "claim", "--node", node_key.node_id, "--owner", "owner")
    assert again.returncode == 1 and "nothing_to_claim" in again.stderr
    stats = node.get("/api/v1/nodes?region=sa")[1]
    assert (stats["total"], stats["by_type"]["full"]) == (1, 1)

    # Stopped, the stored chain replays to the stored state; restarted, the node resumes
    # there (blocks keep coming while it runs: epochs are short and validators heartbeat).
    shown = node.get(f"/api/v1/nodes/{node_key.node_id}")[1]
    node.stop()
    verified = cli.json("node", "verify", "--data-dir", str(node.data_dir))
    assert verified["ok"] is True
    node.start()
    header = node.get(f"/api/v1/blocks/{verified['height']}")[1]["header"]
    assert header["state_digest"] == verified["state_digest"]
    again_shown = node.get(f"/api/v1/nodes/{node_key.node_id}")[1]
    stable = ("node_id", "node_type", "region", "owner", "activated_at")
    assert {k: again_shown[k] for k in stable} == {k: shown[k] for k in stable}
