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

from qnet import crypto, tx
from qnet.genesis import Params
from qnet.localnode import CHAIN_ID, NO_EMPTY_BLOCKS, LocalNode
from qnet.node import write_secret

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


def send_heartbeat(node: LocalNode, key: crypto.KeyPair, epoch: int) -> None:
    address = crypto.encode_address(key.address)
    nonce = node.get(f"/api/v1/accounts/{address}")[1]["next_nonce"]
    heartbeat = tx.make_heartbeat(key, CHAIN_ID, nonce, epoch)
    status, body = node.post("/api/v1/transactions", json.dumps(heartbeat.to_json()).encode())
    assert status == 202, body
    assert node.wait_committed(heartbeat.id)["status"] == "committed"


def test_a_new_node_activates_heartbeats_and_claims_its_reward(chain, tmp_path):
    node, owner = chain
    cli = Cli(tmp_path, node.url)
    cli.ok("wallet", "import", "owner", stdin=owner.seed.hex() + "\n")
    community = tmp_path / "community"
    community.mkdir()
    node_key = crypto.KeyPair.generate()
    write_secret(community / "node_key", node_key.seed.hex())
    node.genesis.save(community / "genesis.json")

    start = cli.json("wallet", "balance", "owner")
    activated = cli.json(
        "node", "activate", "--data-dir", str(community), "--owner", "owner", "--type", "full",
        "--region", "sa",
    )  # fmt: skip
    assert activated["status"] == "committed" and activated["node_id"] == node_key.node_id
    assert activated["burned"] == str(10 * QNC)
    after_activation = cli.json("wallet", "balance", "owner")
    assert int(start["balance"]) - int(after_activation["balance"]) == 10 * QNC + FEE

    first = next_epoch(node)
    send_heartbeat(node, node_key, first)
    second = next_epoch(node)
    send_heartbeat(node, node_key, second)
    next_epoch(node)  # so that the second epoch is closed by the time of the claim

    check = cli.json("rewards", "check", "--node", node_key.node_id)
    (info,) = check["nodes"]
    assert (info["node_type"], info["region"]) == ("full", "sa")
    # The second epoch is closed by the first block after it: the claim's, or an earlier one
    # (the validator's own heartbeat for the next epoch), depending on timing.
    assert [e["epoch"] for e in info["epochs"]] == [first, second]
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
