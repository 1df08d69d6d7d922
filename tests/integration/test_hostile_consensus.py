"""A stranger with its own key speaks the peer protocol to a running network: it floods a
validator with forged consensus messages, or tells a follower it is at height 2^64-1. The
chain keeps committing, nothing of the attacker is kept, logged or counted, and the
attacker is banned."""

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from hostile import FAST, forged_votes
from qnet import crypto, p2p, wire
from qnet.genesis import Params
from qnet.localnode import CHAIN_ID, LocalNode, free_port, local_net, wait_for

PARAMS = Params(block_interval_ms=100)


def height(node: LocalNode) -> int:
    return node.status()["height"]


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def attack(target: LocalNode, frames: list[tuple[int, bytes]]) -> str:
    """Connect to ``target`` as a full node with a fresh key and send ``frames``, until the
    target bans the attacker and then refuses its new connections; returns the reason
    given for the ban."""

    async def ignore(info: p2p.PeerInfo, kind: int, payload: bytes) -> None:
        pass

    key = crypto.KeyPair.generate()
    net = p2p.PeerNetwork(
        key=key,
        chain_id=CHAIN_ID,
        genesis_hash=target.genesis.hash,
        node_type="full",
        region="eu",
        listen_host="127.0.0.1",
        listen_port=free_port(),
        seeds=[target.p2p_address],
        on_message=ignore,
    )
    await net.start()
    try:
        await until(lambda: net.peers(), 15, "the connection to the target")
        victim = net.peers()[0].node_id
        for kind, payload in frames:
            await net.send(victim, kind, payload)
        banning = f"banning peer {key.node_id} for "
        await until(lambda: banning in target.log(), 15, "the target to ban the attacker")
        refusing = f"refusing peer {key.node_id} at"  # it keeps dialling its seed
        await until(lambda: refusing in target.log(), 15, "the target to refuse it again")
        line = next(line for line in target.log().splitlines() if banning in line)
        return line.split(banning, 1)[1]
    finally:
        await net.stop()


def vote_series(node: LocalNode) -> set[str]:
    _, text = node.get("/metrics")
    return {
        s.labels["validator"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "qnet_consensus_votes_received_total"
    }


def test_a_stranger_flooding_forged_votes_is_banned_and_nothing_of_it_is_kept(tmp_path):
    nodes = local_net(tmp_path, 4, {}, PARAMS, FAST)
    victim, others = nodes[0], nodes[1:]
    validators = {v.node_id for v in victim.genesis.validators}
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: all(height(n) >= 2 for n in nodes), 30, "first blocks")
        votes = forged_votes(2_000, victim.genesis, height(victim) + 1)
        frames = [(wire.KIND_CONSENSUS, v) for v in votes]
        before = height(victim)
        reason = asyncio.run(attack(victim, frames))
        assert "not a validator" in reason
        wait_for(lambda: height(victim) >= before + 3, 20, "the chain to go on")
        assert vote_series(victim) <= validators  # labels only from verified validators
        wal = (victim.data_dir / "consensus.wal").read_bytes()
        assert not any(v in wal for v in votes)
        heights = {height(n) for n in others}
        assert max(heights) - min(heights) <= 2
    finally:
        for n in nodes:
            n.stop()


def test_a_follower_is_not_stalled_by_a_peer_that_claims_the_greatest_height(tmp_path):
    nodes = local_net(tmp_path, 2, {}, PARAMS, FAST)
    follower = LocalNode(
        tmp_path / "follower", nodes[0].genesis, crypto.KeyPair.generate(), {"region": "eu", **FAST}
    )
    follower.set_peers([nodes[0].p2p_address])
    try:
        for n in (*nodes, follower):
            n.start()
        wait_for(lambda: height(follower) >= 2, 30, "the follower's first blocks")
        claim = wire.Status(2**64 - 1, b"").encode()
        reason = asyncio.run(attack(follower, [(wire.KIND_STATUS, claim)]))
        assert "malformed kind 18" in reason
        before = height(follower)
        wait_for(lambda: height(follower) >= before + 3, 20, "the follower to go on")
        assert follower.status()["sync_lag_blocks"] <= 2
    finally:
        for n in (*nodes, follower):
            n.stop()
