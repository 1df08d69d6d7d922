"""The light client: it takes a header only with a certificate from the validator set,
follows the chain without its state, notices a fork, and resumes from its saved head; it
heartbeats on what two upstream peers it asked agree on, and bans a peer that sends a view
it was not asked for."""

import asyncio
from dataclasses import replace

import pytest

from qnet import crypto, tx
from qnet.block import CommitCertificate, Header, precommit_message
from qnet.config import load_config
from qnet.genesis import Params, make_genesis
from qnet.light import KIND_GET_NODE, KIND_NODE, KIND_TXS, Fork, LightNode
from qnet.node import HeartbeatView, InvalidBlock, Node
from qnet.p2p import PeerInfo

CHAIN = "qnet-light-test"
VALIDATORS = [crypto.KeyPair.generate() for _ in range(4)]
GENESIS = make_genesis(CHAIN, [(k.node_id, "eu") for k in VALIDATORS], {})


def header(height: int, parent: bytes, time_ms: int | None = None, salt: int = 0) -> Header:
    return Header(
        chain_id=CHAIN,
        height=height,
        time_ms=time_ms or GENESIS.genesis_time_ms + 1000 * height,
        parent=parent,
        tx_root=crypto.digest(b"txs%d" % salt),
        tx_count=0,
        state_digest=crypto.digest(b"state%d" % height),
        proposer=VALIDATORS[height % 4].public_key,
    )


def certify(h: Header, signers=VALIDATORS[:3], round_: int = 0) -> CommitCertificate:
    message = precommit_message(GENESIS.network, h.height, round_, h.hash)
    return CommitCertificate(
        h.height, round_, h.hash, tuple((k.public_key, k.sign(message)) for k in signers)
    )


def chain(n: int) -> list[Header]:
    out, parent = [], b"\0" * 32
    for height in range(1, n + 1):
        out.append(header(height, parent))
        parent = out[-1].hash
    return out


@pytest.fixture
def light(tmp_path):
    def make() -> LightNode:
        config = load_config(tmp_path, node_type="light", region="eu")
        return LightNode(config, GENESIS, crypto.KeyPair.generate())

    return make


def test_follows_certified_headers_in_order_and_by_jumps(light):
    node = light()
    headers = chain(10)
    assert node.accept(headers[0], certify(headers[0])) is True
    assert node.accept(headers[1], certify(headers[1])) is True
    assert node.accept(headers[1], certify(headers[1])) is False  # already there
    assert node.accept(headers[0], certify(headers[0])) is False  # older
    # With a fixed validator set one certified header proves the head: jump to it.
    assert node.accept(headers[9], certify(headers[9])) is True
    status = node.status()
    assert (status["height"], status["block_hash"]) == (10, headers[9].hash.hex())
    assert status["state_digest"] == headers[9].state_digest.hex()
    assert [h for h, _ in node.arrivals] == [1, 2, 10]


def test_its_status_says_the_chain_minimum_fee_as_a_full_node_does(tmp_path):
    (tmp_path / "light").mkdir()
    (tmp_path / "full").mkdir()
    genesis = make_genesis(
        CHAIN, [(k.node_id, "eu") for k in VALIDATORS], {}, Params(min_fee=12_345)
    )
    light = LightNode(
        load_config(tmp_path / "light", node_type="light", region="eu"),
        genesis,
        crypto.KeyPair.generate(),
    )
    full = Node(load_config(tmp_path / "full", region="eu"), genesis, VALIDATORS[0])
    try:
        assert light.status()["min_fee"] == full.status()["min_fee"] == "12345"
    finally:
        full.close()


@pytest.mark.parametrize(
    "forge",
    [
        lambda h: certify(h, VALIDATORS[:2]),  # 2 of 4: not more than 2/3
        lambda h: certify(h, [crypto.KeyPair.generate() for _ in range(3)]),  # strangers
        lambda h: certify(header(h.height, h.parent, salt=9)),  # for another block
        lambda h: CommitCertificate(h.height, 0, h.hash, certify(h).signatures[:2]),
        lambda h: CommitCertificate(
            h.height, 1, h.hash, certify(h).signatures
        ),  # signed for round 0, claims round 1
    ],
)
def test_refuses_a_header_without_a_valid_certificate(light, forge):
    node = light()
    (first,) = chain(1)
    with pytest.raises(InvalidBlock):
        node.accept(first, forge(first))
    assert node.height == 0 and not node.arrivals


def test_refuses_a_header_of_another_chain(light):
    node = light()
    other = replace(header(1, b"\0" * 32), chain_id="elsewhere")
    with pytest.raises(InvalidBlock):
        node.accept(other, certify(other))


def test_two_certified_chains_are_a_fork(light):
    node = light()
    headers = chain(3)
    for h in headers:
        node.accept(h, certify(h))
    rival = header(3, headers[1].hash, salt=1)  # same height, other block
    with pytest.raises(Fork):
        node.accept(rival, certify(rival))
    stray = header(4, crypto.digest(b"not block 3"))
    with pytest.raises(Fork):
        node.accept(stray, certify(stray))
    assert node.height == 3 and node.head_hash == headers[2].hash


def test_resumes_from_its_saved_head_and_ignores_a_damaged_one(light, tmp_path):
    node = light()
    headers = chain(5)
    node.accept(headers[4], certify(headers[4]))
    again = light()
    assert (again.height, again.head_hash) == (5, headers[4].hash)
    (tmp_path / "light_head").write_bytes(b"\0\0\0\x05junk")
    assert light().height == 0


# ---- heartbeats: whom it asks, what it takes ----------------------------------------------


class FakeNet:
    """The part of ``PeerNetwork`` the heartbeat logic uses: connected peers, what was sent
    to whom, whom it banned."""

    def __init__(self, peers: list[PeerInfo]):
        self.connected = peers
        self.sent: list[tuple[str, int, bytes]] = []
        self.banned: dict[str, str] = {}

    def peers(self) -> list[PeerInfo]:
        return list(self.connected)

    async def send(self, node_id: str, kind: int, payload: bytes) -> bool:
        self.sent.append((node_id, kind, payload))
        return True

    def ban(self, node_id: str, reason: str, seconds: float = 60) -> None:
        self.banned[node_id] = reason

    def take(self, kind: int) -> list[tuple[str, bytes]]:
        """What was sent of ``kind`` since the last take, as (peer, payload)."""
        taken = [(node_id, payload) for node_id, k, payload in self.sent if k == kind]
        self.sent = [entry for entry in self.sent if entry[1] != kind]
        return taken


def peer(node_type: str = "full") -> PeerInfo:
    return PeerInfo.of(crypto.KeyPair.generate().public_key, node_type, "eu", "", True)


@pytest.fixture
def attached(light):
    """A light node with three full peers and a light one, on a fake network."""
    node = light()
    node.net = FakeNet([peer(), peer(), peer(), peer("light")])
    return node


def due(node: LightNode, nonce: int = 7, **changes) -> HeartbeatView:
    """A view of ``node``'s record that calls for its heartbeat of the current epoch."""
    view = HeartbeatView(True, None, nonce, 0, node.epoch_now())
    return replace(view, **changes)


def answer(node: LightNode, by: PeerInfo, view: HeartbeatView, about: bytes | None = None):
    payload = (about or node.key.public_key) + view.encode()
    asyncio.run(node._on_message(by, KIND_NODE, payload))


def ask(node: LightNode) -> list[PeerInfo]:
    """Run one round's question; the peers asked (about this node)."""
    asyncio.run(node._ask_for_heartbeat())
    questions = node.net.take(KIND_GET_NODE)
    assert all(payload == node.key.public_key for _, payload in questions)
    ids = [node_id for node_id, _ in questions]
    return [p for p in node.net.connected if p.node_id in ids]


def heartbeats(node: LightNode) -> list[tuple[str, tx.Transaction]]:
    return [
        (node_id, tx.decode(raw))
        for node_id, payload in node.net.take(KIND_TXS)
        for raw in tx.split_batch(payload)
    ]


def test_asks_two_distinct_upstreams_and_heartbeats_when_they_agree(attached):
    node = attached
    asked = ask(node)
    assert len(asked) == 2 and all(p.node_type == "full" for p in asked)
    answer(node, asked[0], due(node))
    assert heartbeats(node) == []  # one answer is not enough
    answer(node, asked[1], due(node))
    sent = heartbeats(node)
    assert sorted(node_id for node_id, _ in sent) == sorted(p.node_id for p in asked)
    assert {(t.nonce, t.epoch, t.sender) for _, t in sent} == {
        (7, node.epoch_now(), crypto.address_bytes(node.key.public_key))
    }
    assert node.net.banned == {}


LIES = [
    lambda n: due(n, nonce=99),  # a nonce that wastes the heartbeat
    lambda n: due(n, last_epoch=n.epoch_now()),  # "it is on chain already"
    lambda n: due(n, pending=1),  # "one is pending"
    lambda n: due(n, epoch=n.epoch_now() + 1),  # a heartbeat to hold and replay later
]


def rounds_until_the_heartbeat(node: LightNode, liar: PeerInfo, lie) -> list[list[PeerInfo]]:
    """Ask and answer rounds (the liar lying) until the honest heartbeat is sent; the rounds.
    No heartbeat is sent for another epoch, a pair that disagrees sends none, and the liar's
    word alone never ends the epoch's rounds."""
    rounds: list[list[PeerInfo]] = []
    while True:
        assert len(rounds) < 60, "the honest heartbeat was never sent"
        asked = ask(node)
        rounds.append(asked)
        assert 1 <= len(asked) <= 2 and all(p.node_type == "full" for p in asked)
        for p in asked:
            answer(node, p, lie(node) if p == liar else due(node))
        sent = heartbeats(node)
        assert all(t.epoch == node.epoch_now() for _, t in sent)
        if liar in asked and len(asked) == 2:
            assert sent == []  # a pair that disagrees sends nothing
        assert node._heartbeat_on_chain is None
        if any(t.nonce == 7 for _, t in sent):
            return rounds


@pytest.mark.parametrize("lie", LIES)
def test_a_lying_upstream_delays_the_heartbeat_but_cannot_steer_it(attached, lie):
    """Rounds with the liar in a pair send nothing and rest one of the pair; a round of
    honest peers sends the heartbeat they agree on."""
    node = attached
    rounds_until_the_heartbeat(node, node.net.connected[0], lie)
    assert node.net.banned == {}


@pytest.mark.parametrize("lie", LIES)
def test_with_two_upstreams_one_liar_cannot_hold_the_heartbeat_back(light, lie):
    """Where a light node keeps only two upstreams (as the topology has it), a disagreement
    rests one of them, drawn: when it is the liar, the honest one is asked alone."""
    node = light()
    node.net = FakeNet([peer(), peer()])
    rounds = rounds_until_the_heartbeat(node, node.net.connected[0], lie)
    assert len(rounds[0]) == 2 and len(rounds[-1]) == 1  # a pair first, the honest one last
    assert node.net.banned == {}


def test_a_silent_upstream_rests_from_the_next_rounds(attached):
    node = attached
    asked = ask(node)
    answer(node, asked[0], due(node))
    node._view_round.deadline = 0  # the round's time is over: the other was silent
    again = ask(node)
    assert asked[1] not in again and len(again) == 2


def test_a_view_of_another_epoch_is_not_taken_even_from_the_only_upstream(light):
    node = light()
    only = peer()
    node.net = FakeNet([only, peer("light")])
    assert ask(node) == [only]
    answer(node, only, due(node, epoch=node.epoch_now() + 1))
    assert heartbeats(node) == []
    assert ask(node) == [only]
    answer(node, only, due(node))  # a single upstream's view is taken alone
    assert [(node_id, t.nonce) for node_id, t in heartbeats(node)] == [(only.node_id, 7)]


def test_a_view_nobody_asked_for_gets_its_sender_banned(attached):
    node = attached
    stranger = node.net.connected[0]
    answer(node, stranger, due(node))  # before any question
    assert "not asked" in node.net.banned.pop(stranger.node_id)
    asked = ask(node)
    unasked = next(p for p in node.net.connected if p not in asked)
    answer(node, unasked, due(node))
    assert "not asked" in node.net.banned.pop(unasked.node_id)
    answer(node, asked[0], due(node))
    answer(node, asked[0], due(node))  # a second answer to one question
    assert "not asked" in node.net.banned.pop(asked[0].node_id)
    answer(node, asked[1], due(node), about=crypto.KeyPair.generate().public_key)
    assert "another node" in node.net.banned.pop(asked[1].node_id)
    assert heartbeats(node) == [] and node.net.banned == {}


def test_a_late_answer_is_dropped_without_a_ban_and_the_round_is_asked_again(attached):
    node = attached
    asked = ask(node)
    answer(node, asked[0], due(node))
    node._view_round.deadline = 0  # the round's time is over: the next round may start
    answer(node, asked[1], due(node))
    assert heartbeats(node) == [] and node.net.banned == {}
    again = ask(node)
    assert len(again) == 2
    for p in again:
        answer(node, p, due(node))
    assert len(heartbeats(node)) == 2 and node.net.banned == {}
