"""A light node in a real network: it attaches to full nodes of its region, sends its
heartbeat through them once activated, and when the nodes it is attached to die it
reattaches within seconds and keeps following the head (DESIGN §5)."""

import json
import time

import pytest

from qnet import crypto, tx
from qnet.genesis import Params
from qnet.localnode import add_followers, local_net, start_all, wait_for

pytestmark = pytest.mark.integration

QNC = 10**9


def upstreams(node) -> list[dict]:
    return [p for p in node.get("/api/v1/network/peers")[1]["peers"] if p["node_type"] != "light"]


@pytest.fixture
def network(tmp_path):
    owner = crypto.KeyPair.generate()
    # Epochs of 4 s: the light node's heartbeat is due soon after it is activated.
    (validator,) = local_net(tmp_path, 1, {owner.address: 10_000 * QNC}, Params(epoch_ms=4_000))
    full = add_followers(tmp_path, [validator], [("full", "ap")] * 3)
    (light,) = add_followers(tmp_path / "l", [validator], [("light", "ap")])
    nodes = [validator, *full, light]
    start_all([validator])
    try:
        start_all([*full, light])
        yield validator, full, light, owner
    finally:
        for n in nodes:
            n.stop()


def test_a_light_node_heartbeats_and_fails_over(network):
    validator, full, light, owner = network
    # Attached to two full nodes of its own region (the validator, in another, is let go).
    attached = wait_for(
        lambda: (ups := upstreams(light)) and len(ups) == 2
        and all(p["region"] == "ap" and p["node_type"] == "full" for p in ups) and ups,
        20, "the light node to attach in its region",
    )  # fmt: skip

    # Activated by its owner, it sends its heartbeat itself, through the full nodes.
    proof = tx.prove_node(light.key, validator.genesis.network, owner.address)
    burn = Params().activation_fee_light
    activate = tx.make_activate(
        owner, validator.genesis.network, 0, 1_000, light.key.public_key, "light", "ap", burn, proof
    )
    status, body = validator.post("/api/v1/transactions", json.dumps(activate.to_json()).encode())
    assert status == 202, body
    assert validator.wait_committed(activate.id)["status"] == "committed"
    record = wait_for(
        lambda: (r := validator.get(f"/api/v1/nodes/{light.key.node_id}")[1])
        and r["last_heartbeat_epoch"] is not None and r,
        20, "the light node's heartbeat on chain",
    )  # fmt: skip
    assert (record["node_type"], record["region"]) == ("light", "ap")
    # Transactions and histories are ledger state, which a light node does not keep.
    owned = crypto.encode_address(owner.address)
    for path in (
        f"/api/v1/transactions/{activate.id.hex()}",
        f"/api/v1/accounts/{owned}/transactions",
    ):
        status, body = light.get(path)
        assert status == 404 and "light node" in body["error"]["message"], path

    # Kill every node it is attached to: it reattaches and keeps following the head.
    ids = {p["node_id"] for p in attached}
    for node in full:
        if node.key.node_id in ids:
            node.kill()
    killed_at = time.monotonic()
    head_then = validator.status()["height"]
    new = wait_for(
        lambda: [p for p in upstreams(light) if p["node_id"] not in ids],
        10,
        "the light node to reattach",
    )
    print(f"reattached in {time.monotonic() - killed_at:.1f} s to {[p['node_id'] for p in new]}")
    wait_for(
        lambda: light.status()["height"] >= head_then + 3,
        20,
        "the light node to follow the head after failover",
    )
    now = light.status()
    header = validator.get(f"/api/v1/blocks/{now['height']}")[1]["header"]
    assert now["block_hash"] == header["hash"]
