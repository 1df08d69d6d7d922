"""A local network of 100 node processes: 4 validators, full and light nodes in 5 regions
(DESIGN §5). Every node follows the head, full nodes hold their region, light nodes take
only certified headers, and ``network peers`` shows who is who. The same network measured
for propagation and memory: ``make bench-network``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qnet.localnode import start_network, topology_summary, wait_converged

pytestmark = pytest.mark.integration

REGIONS = ["na", "sa", "eu", "af", "ap"]
CLI = str(Path(sys.executable).parent / "qnet-cli")


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    nodes = start_network(tmp_path_factory.mktemp("net100"), 100, 4, 0.6, REGIONS)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def test_every_node_follows_the_head(network):
    wait_converged(network, 120)
    statuses = [n.status() for n in network]
    kinds = {s["node_type"] for s in statuses}
    assert kinds == {"super", "full", "light"}
    assert {s["region"] for s in statuses} == set(REGIONS)
    # The light nodes hold exactly the validators' blocks, though they hold no state: a
    # validator's block at each light node's height is the one the light node took.
    validator = network[0]
    for n, s in zip(network, statuses, strict=True):
        if s["node_type"] == "light":
            header = validator.get(f"/api/v1/blocks/{s['height']}")[1]["header"]
            assert (s["block_hash"], s["state_digest"]) == (header["hash"], header["state_digest"])
            status, body = n.get(f"/api/v1/accounts/{'q' * 10}")
            assert status == 404 and "light node" in body["error"]["message"]


def test_full_nodes_hold_their_region_and_validators_their_bounds(network):
    shape = topology_summary(network)
    assert shape["min_same_region_upstream"]["full"] >= 2
    assert shape["min_same_region_upstream"]["light"] >= 1
    # Validators talk to each other and to a bounded share of the 96 others.
    assert all(3 <= n <= 3 + 16 + 4 for n in shape["validator_peers"])


def test_network_peers_shows_each_peers_type_and_region(network):
    by_id = {n.key.node_id: n.status() for n in network}
    out = subprocess.run(
        [CLI, "--json", "--node", network[0].url, "network", "peers"],
        capture_output=True,
        text=True,
        check=True,
    )
    peers = json.loads(out.stdout)["peers"]
    assert {p["node_type"] for p in peers} >= {"super", "full"}
    for p in peers:
        own = by_id[p["node_id"]]
        assert (p["node_type"], p["region"]) == (own["node_type"], own["region"])
