"""Four validator processes reach BFT finality, lose one, get it back, and agree."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netns import Bridge, can_run
from qnet import crypto, loadgen
from qnet.genesis import Params
from qnet.localnode import CHAIN_ID, LocalNode, http, local_net, wait_for
from qnet.tx import encode_batch

FAST = {
    "timeout_propose_ms": 1000,
    "timeout_vote_ms": 500,
    "timeout_delta_ms": 250,
    "empty_block_interval_ms": 500,
}
PARAMS = Params(block_interval_ms=100)
SENDERS = 40


def height(node: LocalNode) -> int:
    return node.status()["height"]


class Load:
    """Steady transfers spread over the validators' APIs, in a thread."""

    def __init__(self, nodes: list[LocalNode], senders: list[crypto.KeyPair]):
        sink = crypto.KeyPair.generate().address
        txs = loadgen.presign(senders, nodes[0].genesis.network, 40_000, 1_000, sink)
        self.batches = [txs[i : i + 100] for i in range(0, len(txs), 100)]
        self.nodes = nodes
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        for k, batch in enumerate(self.batches):
            if self._stop.is_set():
                return
            node = self.nodes[k % len(self.nodes)]
            try:
                code, body = http(
                    "POST",
                    node.url + "/api/v1/transactions/batch",
                    encode_batch(batch),
                    "application/octet-stream",
                    timeout=3,
                )
                if code == 200:
                    self.accepted += body["accepted"]
            except OSError:
                pass  # that validator is down or cut off: the load goes on elsewhere
            time.sleep(0.1)  # about 1,000 tx/s offered

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def assert_same_chain(nodes: list[LocalNode]) -> None:
    """Every node has the same block hash at every height and the same state at the head."""
    wait_for(lambda: len({n.status()["mempool_size"] for n in nodes}) == 1, 30, "mempools")
    top = min(height(n) for n in nodes)
    for h in range(1, top + 1):
        hashes = {n.get(f"/api/v1/blocks/{h}")[1]["header"]["hash"] for n in nodes}
        assert len(hashes) == 1, f"nodes disagree at height {h}: {hashes}"
    target = max(height(n) for n in nodes)
    wait_for(lambda: all(height(n) >= target for n in nodes), 30, "all at one height")
    answers = [n.get(f"/api/v1/blocks/{target}") for n in nodes]
    assert all(code == 200 for code, _ in answers), answers
    headers = [body["header"] for _, body in answers]
    assert len({h["hash"] for h in headers}) == 1
    assert len({h["state_digest"] for h in headers}) == 1


def signers(node: LocalNode, h: int) -> set[str]:
    block = node.get(f"/api/v1/blocks/{h}")[1]
    return {p["validator"] for p in block["certificate"]["precommits"]}


def missed_precommits_agree_with_certificates(node: LocalNode) -> None:
    """The node's qnet_validator_missed_precommits_total, per validator, is the number of
    blocks it committed whose stored certificate lacks that validator's precommit."""
    _, text = node.get("/metrics")
    samples = {
        (s.name, s.labels.get("validator")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    head = int(samples[("qnet_block_height", None)])
    validators = [v.node_id for v in node.genesis.validators]
    lacking = dict.fromkeys(validators, 0)
    for h in range(1, head + 1):
        for v in set(validators) - signers(node, h):
            lacking[v] += 1
    counted = {v: samples[("qnet_validator_missed_precommits_total", v)] for v in validators}
    assert counted == lacking
    assert any(lacking.values())  # the scenario's victim missed some


@pytest.fixture
def senders():
    return [crypto.KeyPair.generate() for _ in range(SENDERS)]


def run_fault_scenario(nodes, senders, fault, recover) -> None:
    for n in nodes:
        n.start()
    try:
        wait_for(lambda: all(height(n) >= 2 for n in nodes), 30, "first blocks")
        victim, others = nodes[-1], nodes[:-1]
        with Load(nodes, senders) as load:
            time.sleep(2)
            fault(victim)
            before = max(height(n) for n in others)
            time.sleep(4)
            after = max(height(n) for n in others)
            assert after >= before + 3, f"three validators stalled at {before}..{after}"
            recover(victim)
            wait_for(
                lambda: height(victim) >= max(height(n) for n in others) - 1,
                30,
                "the victim to catch up",
            )
            # It takes part again: its precommit is in a certificate made after it returned.
            rejoined = height(victim)
            wait_for(
                lambda: any(
                    victim.key.node_id in signers(others[0], h)
                    for h in range(rejoined + 1, height(others[0]) + 1)
                ),
                30,
                "the victim's precommits",
            )
        assert load.accepted > 0
        assert_same_chain(nodes)
        missed_precommits_agree_with_certificates(others[0])
    finally:
        for n in nodes:
            n.stop()


def test_sigkill_one_of_four_then_restart(tmp_path, senders):
    nodes = local_net(tmp_path, 4, {k.address: 10**15 for k in senders}, PARAMS, FAST)

    def recover(victim):
        victim.start()

    run_fault_scenario(nodes, senders, lambda v: v.kill(), recover)
    assert "synced" in nodes[-1].log()


def test_snapshot_wipe_and_restore_one_of_four(tmp_path, senders):
    """A validator's data is lost; restored from a snapshot taken while it ran, it has no
    signing state, so it follows the chain first, then votes again; all four agree."""
    nodes = local_net(tmp_path, 4, {k.address: 10**15 for k in senders}, PARAMS, FAST)
    archive = tmp_path / "v4.tar.gz"

    def lose_data(victim):
        cli("node", "snapshot", "--data-dir", str(victim.data_dir), "--out", str(archive))
        victim.stop()
        for f in victim.data_dir.iterdir():
            if f.name not in ("node_key", "config.toml", "node.log"):
                f.unlink()

    def restore(victim):  # the genesis went with the data: the operator names the chain's
        cli("node", "restore", "--data-dir", str(victim.data_dir), "--from", str(archive),
            "--genesis-hash", victim.genesis.hash.hex())  # fmt: skip
        victim.start()

    run_fault_scenario(nodes, senders, lose_data, restore)
    assert "no signing state" in nodes[-1].log()
    assert "voting again" in nodes[-1].log()


def cli(*args: str) -> dict:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "qnet-cli"), "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(bool(can_run()) and os.environ.get("CI") != "true", reason=can_run() or "")
def test_cut_off_one_of_four_then_heal(tmp_path, senders):
    bridge = Bridge(4)
    try:
        nodes = local_net(
            tmp_path,
            4,
            {k.address: 10**15 for k in senders},
            PARAMS,
            FAST,
            hosts=bridge.addresses,
            netns=bridge.namespaces,
        )
        run_fault_scenario(nodes, senders, lambda v: bridge.cut(3), lambda v: bridge.heal(3))
    finally:
        bridge.close()


def test_peer_with_another_genesis_is_refused(tmp_path):
    nodes = local_net(tmp_path / "good", 1, {}, PARAMS, FAST)
    stray = local_net(tmp_path / "stray", 1, {}, PARAMS, FAST)[0]
    stray.set_peers([nodes[0].p2p_address])
    try:
        for n in (*nodes, stray):
            n.start()
        wait_for(
            lambda: "refusing peer" in nodes[0].log() and "refusing peer" in stray.log(),
            15,
            "both sides to refuse",
        )
        line = next(x for x in nodes[0].log().splitlines() if "refusing peer" in x)
        assert stray.key.node_id in line and "genesis hash" in line, line
        assert stray.status()["height"] == 0 or stray.status()["chain_id"] == CHAIN_ID
    finally:
        for n in (*nodes, stray):
            n.stop()


def test_a_follower_gets_every_block_pushed(tmp_path, senders):
    """A node outside the validator set follows the chain from blocks its peers push."""
    nodes = local_net(tmp_path, 2, {k.address: 10**15 for k in senders}, PARAMS, FAST)
    key = crypto.KeyPair.generate()
    follower = LocalNode(tmp_path / "follower", nodes[0].genesis, key, {"region": "eu", **FAST})
    follower.set_peers([nodes[0].p2p_address])
    try:
        for n in (*nodes, follower):
            n.start()
        with Load(nodes, senders):
            time.sleep(4)
        gaps = []
        for _ in range(20):
            gaps.append(height(nodes[0]) - height(follower))
            time.sleep(0.1)
        assert max(gaps) <= 1, f"the follower lagged by {gaps}"
        assert_same_chain([*nodes, follower])
        assert follower.status()["sync_lag_blocks"] <= 1
    finally:
        for n in (*nodes, follower):
            n.stop()


def test_validators_send_a_heartbeat_every_epoch(tmp_path):
    """Genesis validators are active from genesis; each proves liveness once per epoch."""
    nodes = local_net(tmp_path, 2, {}, Params(block_interval_ms=100, epoch_ms=2_000), FAST)
    try:
        for n in nodes:
            n.start()

        def heartbeats() -> list[int | None]:
            return [
                nodes[0].get(f"/api/v1/nodes/{n.key.node_id}")[1]["last_heartbeat_epoch"]
                for n in nodes
            ]

        wait_for(lambda: None not in heartbeats(), 20, "a heartbeat from each validator")
        first = max(heartbeats())
        wait_for(lambda: min(heartbeats()) > first, 20, "heartbeats of the next epoch")
        assert nodes[0].get("/api/v1/epochs/current")[1]["epoch"] > first
    finally:
        for n in nodes:
            n.stop()


def test_network_peers_and_stats_through_the_cli(tmp_path, senders):
    """What an operator sees of a running network: peers with identity and latency, stats."""
    nodes = local_net(tmp_path, 3, {k.address: 10**15 for k in senders}, PARAMS, FAST)
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: all(n.status()["peers"] == 2 for n in nodes), 20, "a full mesh")
        with Load(nodes, senders) as load:
            time.sleep(3)
        cli = [str(Path(sys.executable).parent / "qnet-cli"), "--node", nodes[0].url, "--json"]

        def peers() -> list[dict]:
            out = subprocess.run([*cli, "network", "peers"], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)["peers"]

        wait_for(lambda: all(p["latency_ms"] is not None for p in peers()), 10, "latencies")
        seen = {p["node_id"]: p for p in peers()}
        assert set(seen) == {n.key.node_id for n in nodes[1:]}
        for n in nodes[1:]:
            peer = seen[n.key.node_id]
            assert (peer["node_type"], peer["validator"]) == ("super", True)
            assert peer["region"] == n.status()["region"]
            assert peer["direction"] in ("inbound", "outbound")
            assert 0 < peer["latency_ms"] < 1000
        shown = subprocess.run(
            [*cli[:-1], "network", "peers"], capture_output=True, text=True, check=True
        ).stdout
        assert nodes[1].key.node_id in shown and "ms" in shown

        out = subprocess.run([*cli, "network", "stats"], capture_output=True, text=True)
        stats = json.loads(out.stdout)
        assert stats["height"] >= 1 and stats["peers"] == 2
        assert stats["nodes"]["by_type"]["super"] == 3  # the genesis validators
        assert stats["tps_last_minute"] * 60 >= load.accepted * 0.9  # what was sent committed
    finally:
        for n in nodes:
            n.stop()
