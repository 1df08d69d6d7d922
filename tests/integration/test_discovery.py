"""Service discovery on a real network: a node lists its activated, answering peers with
the chain's type and region (``GET /api/v1/network/sd``), which is what the monitoring
host's Prometheus scrapes beside the inventory's nodes."""

import json

import pytest

from qnet import crypto, tx
from qnet.genesis import Params
from qnet.localnode import add_followers, local_net, start_all, wait_for

pytestmark = pytest.mark.integration

QNC = 10**9


def listed(node) -> dict[str, dict]:
    status, groups = node.get("/api/v1/network/sd")
    assert status == 200, groups
    return {g["labels"]["__meta_qnet_node_id"]: {**g["labels"], "targets": g["targets"]}
            for g in groups}  # fmt: skip


def activate(validator, owner: crypto.KeyPair, nonce: int, node, node_type: str, region: str):
    network = validator.genesis.network
    proof = tx.prove_node(node.key, network, owner.address)
    fee = getattr(Params(), f"activation_fee_{node_type}")
    activation = tx.make_activate(
        owner, network, nonce, 1_000, node.key.public_key, node_type, region, fee, proof
    )
    status, body = validator.post("/api/v1/transactions", json.dumps(activation.to_json()).encode())
    assert status == 202, body
    assert validator.wait_committed(activation.id)["status"] == "committed"


def test_activated_answering_peers_are_listed_with_the_chains_labels(tmp_path):
    owner = crypto.KeyPair.generate()
    (validator,) = local_net(tmp_path, 1, {owner.address: 10_000 * QNC})
    activated, stranger = add_followers(tmp_path, [validator], [("full", "ap")] * 2)
    (light,) = add_followers(tmp_path / "l", [validator], [("light", "ap")])
    nodes = [validator, activated, stranger, light]
    start_all([validator])
    try:
        start_all([activated, stranger, light])
        activate(validator, owner, 0, activated, "full", "ap")
        activate(validator, owner, 1, light, "light", "ap")

        # The validator lists the activated full node, not the one nobody activated.
        mine = wait_for(
            lambda: (found := listed(validator)) and activated.key.node_id in found and found,
            20,
            "the validator to list the activated full node",
        )
        assert stranger.key.node_id not in mine  # (the light node may still be its peer)
        assert mine[activated.key.node_id] == {
            "__meta_qnet_node_id": activated.key.node_id,
            "__meta_qnet_node_type": "full",
            "__meta_qnet_region": "ap",
            "targets": [f"127.0.0.1:{activated.port}"],
        }
        # A full node serves the document too: the light node attached to it in ap, and
        # the validator, active from genesis.
        theirs = wait_for(
            lambda: (found := listed(activated)) and light.key.node_id in found and found,
            20,
            "the full node to list the activated light node",
        )
        assert theirs[light.key.node_id]["__meta_qnet_node_type"] == "light"
        assert theirs[light.key.node_id]["targets"] == [f"127.0.0.1:{light.port}"]
        assert theirs[validator.key.node_id]["__meta_qnet_node_type"] == "super"
        assert stranger.key.node_id not in theirs

        # A node that goes away is no longer a peer, and no longer listed.
        activated.stop()
        wait_for(
            lambda: activated.key.node_id not in listed(validator),
            20,
            "the stopped node to leave the validator's document",
        )
        # A light node keeps no ledger state: it cannot tell who is activated.
        status, body = light.get("/api/v1/network/sd")
        assert status == 404 and "light node" in body["error"]["message"]
    finally:
        for node in nodes:
            node.stop()
