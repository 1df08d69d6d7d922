"""The consensus driver against hostile peers, without sockets: what a peer sends is checked
before it is stored, written to consensus.wal, relayed or counted (DESIGN §5), sync asks
only peers whose height a certificate proves and rotates away from peers that do not
answer, and a failing disk neither kills the driver nor lets an unsaved vote leave."""

import asyncio
from dataclasses import replace

import pytest

from qnet import bft, crypto, gossip, sync, tendermint, wire
from qnet.bft import BftConsensus, DriverInputs
from qnet.block import Block, CommitCertificate, Header, precommit_message, tx_root
from qnet.config import load_config
from qnet.genesis import NODE_TYPES, REGIONS, Params, make_genesis
from qnet.light import LightNode
from qnet.metrics import Metrics
from qnet.node import Node
from qnet.p2p import PeerInfo
from qnet.tx import encode_batch, frame_batch, make_heartbeat, make_transfer
from qnet.wire import (
    KIND_BLOCKS,
    KIND_CONSENSUS,
    KIND_GET_BLOCKS,
    KIND_GET_HEADERS,
    KIND_STATUS,
    KIND_TXS,
    Blocks,
    GetHeaders,
    Status,
)

CHAIN = "qnet-bft-validation"
KEYS = [crypto.KeyPair(bytes([i + 1]) * 32) for i in range(4)]
WALLET = crypto.KeyPair(b"\x55" * 32)
GENESIS = make_genesis(
    CHAIN,
    [(k.node_id, "eu") for k in KEYS],
    {crypto.encode_address(WALLET.address): 10**12},
    Params(max_block_txs=10, max_block_bytes=4_000),
)
ME, OTHER, THIRD = KEYS[0], KEYS[1], KEYS[2]


class FakeNet:
    """What the driver asks of ``PeerNetwork``, recorded."""

    def __init__(self, peers: list[PeerInfo]):
        self._peers = {p.node_id: p for p in peers}
        self.sent: list[tuple[str, int, bytes]] = []
        self.banned: dict[str, str] = {}

    def peers(self) -> list[PeerInfo]:
        return list(self._peers.values())

    async def send(self, node_id: str, kind: int, payload: bytes) -> bool:
        self.sent.append((node_id, kind, payload))
        return node_id in self._peers

    async def broadcast(self, kind, payload, exclude=None, only=None) -> int:
        to = [p for p in self.peers() if p.node_id != exclude and (only is None or only(p))]
        for peer in to:
            self.sent.append((peer.node_id, kind, payload))
        return len(to)

    def ban(self, node_id: str, reason: str, seconds: float = 60) -> None:
        self.banned[node_id] = reason
        self._peers.pop(node_id, None)

    def kinds(self, kind: int) -> list[tuple[str, bytes]]:
        return [(n, p) for n, k, p in self.sent if k == kind]


def peer(key: crypto.KeyPair, node_type: str = "super") -> PeerInfo:
    return PeerInfo.of(key.public_key, node_type, "eu", "127.0.0.1:1", True)


OTHER_LINK, THIRD_LINK = peer(OTHER), peer(THIRD)
STRANGER = crypto.KeyPair(b"\x77" * 32)
STRANGER_LINK = peer(STRANGER, "full")


@pytest.fixture
def driver(tmp_path):
    """A validator's driver at height 1 with its core started, peers OTHER and THIRD."""
    created = []

    async def make(key: crypto.KeyPair = ME, peers=(OTHER_LINK, THIRD_LINK, STRANGER_LINK)):
        data_dir = tmp_path / key.node_id
        data_dir.mkdir()
        node = Node(load_config(data_dir, region="eu"), GENESIS, key)
        consensus = BftConsensus(node, node.config)
        net = FakeNet(list(peers))
        consensus.net = consensus.stats.net = consensus.gossip.net = consensus.sync.net = net
        if consensus.is_validator:
            consensus.core = consensus._make_core()
            await consensus._start_height()
        created.append(consensus)
        return consensus

    yield make
    for consensus in created:
        for timer in consensus._timers:
            timer.cancel()
        for task in consensus._tasks:
            task.cancel()
        consensus.log.close()
        consensus.signing_state.close()
        consensus.node.close()


async def drain(consensus: BftConsensus) -> None:
    """Run the driver's queued inputs, as its loop would."""
    while not consensus._inputs._queue.empty():
        await (await consensus._inputs.get())()


def vote(key: crypto.KeyPair, value_id: bytes | None = None, round_: int = 0, height: int = 1):
    kind = tendermint.VoteKind.PREVOTE
    signed = tendermint.vote_signing_bytes(kind, GENESIS.network, height, round_, value_id)
    signature = key.sign(signed)
    return tendermint.Vote(kind, CHAIN, height, round_, value_id, key.public_key, signature)


def wal_size(consensus: BftConsensus) -> int:
    consensus.log._file.flush()
    return consensus.log.path.stat().st_size


def series(consensus: BftConsensus, name: str) -> list[dict]:
    """The labels of the series of ``name`` counted above zero (all exist from the start)."""
    return [
        s.labels
        for metric in consensus.metrics.registry.collect()
        for s in metric.samples
        if s.name == name and s.value
    ]


def test_forged_votes_are_not_kept_logged_relayed_or_counted_and_ban_their_link(driver):
    async def scenario():
        consensus = await driver()
        wal_before = wal_size(consensus)
        for i in range(200):  # votes by random keys, relayed by a validator link
            forged = vote(crypto.KeyPair(i.to_bytes(32, "big")), crypto.digest(b"x"))
            await consensus._on_message(OTHER_LINK, KIND_CONSENSUS, forged.encode())
            await drain(consensus)
        assert wal_size(consensus) == wal_before
        assert consensus.net.kinds(KIND_CONSENSUS) == []
        assert series(consensus, "qnet_consensus_votes_received_total") == []
        validators = {k.node_id for k in KEYS}
        assert {
            s.labels["validator"]
            for metric in consensus.metrics.registry.collect()
            for s in metric.samples
            if s.name == "qnet_consensus_votes_received_total"
        } == validators  # no series for a forged signer: they all exist from the start
        assert "not_validator" in consensus.net.banned[OTHER_LINK.node_id]
        assert consensus.core.dropped["not_validator"] == 1  # the link was cut after one
        assert series(consensus, "qnet_consensus_messages_dropped_total") == [
            {"reason": "not_validator"}
        ]
        return consensus

    asyncio.run(scenario())


def test_a_vote_with_a_bad_signature_bans_the_link_that_carried_it(driver):
    async def scenario():
        consensus = await driver()
        good = vote(THIRD)
        forged = tendermint.Vote(
            good.kind, CHAIN, 1, 0, crypto.digest(b"y"), THIRD.public_key, good.signature
        )
        await consensus._on_message(OTHER_LINK, KIND_CONSENSUS, forged.encode())
        await drain(consensus)
        assert "bad_signature" in consensus.net.banned[OTHER_LINK.node_id]
        assert forged.encode() not in consensus._messages.get(1, {}).values()

    asyncio.run(scenario())


def test_a_verified_vote_is_kept_logged_relayed_and_counted_by_its_validator(driver):
    async def scenario():
        consensus = await driver()
        wal_before = wal_size(consensus)
        good = vote(THIRD, crypto.digest(b"z")).encode()
        await consensus._on_message(OTHER_LINK, KIND_CONSENSUS, good)
        await drain(consensus)
        assert good in consensus._messages[1].values()
        assert wal_size(consensus) > wal_before
        # relayed to the validators but the link it came from (not to the stranger)
        assert consensus.net.kinds(KIND_CONSENSUS) == [(THIRD_LINK.node_id, good)]
        assert series(consensus, "qnet_consensus_votes_received_total") == [
            {"validator": THIRD.node_id, "kind": "prevote"}
        ]
        await consensus._on_message(THIRD_LINK, KIND_CONSENSUS, good)  # a retransmission
        await drain(consensus)
        assert len(consensus.net.kinds(KIND_CONSENSUS)) == 1
        assert not consensus.net.banned

    asyncio.run(scenario())


def test_a_consensus_message_from_a_non_validator_link_is_dropped_and_the_link_banned(driver):
    async def scenario():
        consensus = await driver()
        relayed = vote(THIRD).encode()  # validly signed, but a stranger carries it
        await consensus._on_message(STRANGER_LINK, KIND_CONSENSUS, relayed)
        assert consensus._inputs._queue.empty()
        assert "not a validator" in consensus.net.banned[STRANGER_LINK.node_id]
        assert relayed not in consensus._messages.get(1, {}).values()

    asyncio.run(scenario())


def signed_block(proposer: crypto.KeyPair, tx_count: int, body: bytes, height: int = 1) -> bytes:
    header = Header(
        CHAIN, height, GENESIS.genesis_time_ms + 1, bytes(32), tx_root([]), tx_count,
        bytes(32), proposer.public_key,
    )  # fmt: skip
    signature = proposer.sign(header.signing_message(GENESIS.network))
    return Block.encode_parts(header.encode(), signature, body)


def proposal_of(value: bytes, round_: int = 0) -> tendermint.Proposal:
    proposer = next(k for k in KEYS if k.public_key == GENESIS_SET.proposer(1, round_))
    value_id = bft.value_id(value)
    signed = tendermint.proposal_signing_bytes(GENESIS.network, 1, round_, -1, value_id)
    return tendermint.Proposal(
        CHAIN, 1, round_, -1, value, proposer.public_key, proposer.sign(signed)
    )


GENESIS_SET = tendermint.ValidatorSet({k.public_key: 1 for k in KEYS})


@pytest.mark.parametrize(
    ("tx_count", "body", "why"),
    [
        # Params(max_block_txs=10, max_block_bytes=4_000)
        (11, b"", "11 transactions of 0 bytes, beyond the genesis limits"),
        (10, bytes(4_001), "10 transactions of 4001 bytes, beyond the genesis limits"),
        (1, bytes(3_000), "more than its 1 transactions can take"),
    ],
)
def test_a_proposal_beyond_the_genesis_limits_is_refused_before_it_is_kept(
    driver, tx_count, body, why
):
    async def scenario():
        consensus = await driver()
        proposer = next(k for k in KEYS if k.public_key == GENESIS_SET.proposer(1, 0))
        big = proposal_of(signed_block(proposer, tx_count, body)).encode()
        wal_before = wal_size(consensus)
        await consensus._on_message(OTHER_LINK, KIND_CONSENSUS, big)
        assert consensus._inputs._queue.empty()
        assert why in consensus.net.banned[OTHER_LINK.node_id]
        assert wal_size(consensus) == wal_before

    asyncio.run(scenario())


def test_a_flooding_peer_is_bounded_by_its_input_budget():
    async def scenario():
        inputs = DriverInputs(Metrics(None), per_peer=3, per_peer_bytes=100, total_bytes=150)
        ran = []

        def handler(tag):
            async def run():
                ran.append(tag)

            return run

        assert [inputs.offer("flood", 10, handler(i)) for i in range(5)] == [True] * 3 + [False] * 2
        assert inputs.offer("big", 101, handler("big")) is False  # over its own bytes
        assert inputs.offer("honest", 90, handler("honest")) is True
        assert inputs.offer("third", 40, handler("third")) is False  # over the total
        inputs.put(handler("timeout"))  # the driver's own inputs always get in
        while not inputs._queue.empty():
            await (await inputs.get())()
        assert ran == [0, 1, 2, "honest", "timeout"]
        assert inputs.offer("flood", 10, handler("again")) is True  # its budget came back

    asyncio.run(scenario())


def test_a_vote_whose_signing_state_cannot_be_saved_never_leaves(driver, monkeypatch):
    async def scenario():
        consensus = await driver()

        def disk_full(state):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(consensus.signing_state, "save", disk_full)
        core = consensus.core
        await consensus._on_timeout(tendermint.Timeout(tendermint.Step.PROPOSE, 1, 0))
        assert core.step is tendermint.Step.PREVOTE  # the core went on
        sent_votes = [tendermint.decode_message(p) for _, p in consensus.net.kinds(KIND_CONSENSUS)]
        assert not any(tendermint.sender(m) == ME.public_key for m in sent_votes)
        assert all(
            tendermint.sender(tendermint.decode_message(d)) != ME.public_key
            for d in consensus._messages.get(1, {}).values()
        )

    asyncio.run(scenario())


def test_a_failing_consensus_log_does_not_stop_the_driver(driver, monkeypatch, caplog):
    async def scenario():
        consensus = await driver()

        def broken(data):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(consensus.log, "append", broken)
        for key in (OTHER, THIRD):
            await consensus._on_message(peer(key), KIND_CONSENSUS, vote(key).encode())
            await drain(consensus)
        assert len(consensus._messages[1]) == 2  # kept in memory, relayed
        assert caplog.text.count("cannot append to consensus.wal") == 1

    asyncio.run(scenario())


# ---- STATUS and sync -----------------------------------------------------------------------


def certified(height: int, signers=KEYS[:3]) -> tuple[bytes, bytes]:
    """A block of ``height`` (not on our chain) with a commit certificate that verifies."""
    block = signed_block(KEYS[height % 4], 0, b"", height)
    block_hash = Block.decode_header(block).hash
    message = precommit_message(GENESIS.network, height, 0, block_hash)
    cert = CommitCertificate(
        height, 0, block_hash, tuple((k.public_key, k.sign(message)) for k in signers)
    )
    return block, cert.encode()


def test_a_status_height_above_ours_needs_a_certificate_that_verifies(driver):
    async def scenario():
        consensus = await driver()
        liar = peer(OTHER)
        await consensus._on_message(liar, KIND_STATUS, Status(2**64 - 1, b"").encode())
        assert consensus.stats.heights.get(liar.node_id) is None
        assert liar.node_id in consensus.net.banned
        _, weak = certified(5, signers=KEYS[:2])  # 2 of 4: no quorum
        await consensus._on_message(THIRD_LINK, KIND_STATUS, Status(5, weak).encode())
        assert consensus.stats.heights.get(THIRD_LINK.node_id) is None
        assert consensus.net.kinds(KIND_GET_BLOCKS) == []

    asyncio.run(scenario())


def test_sync_rotates_among_certified_peers_and_bans_one_that_never_answers(driver, monkeypatch):
    async def scenario():
        a, b = peer(OTHER), peer(THIRD)
        consensus = await driver(key=STRANGER, peers=(a, b))  # a follower
        _, cert = certified(10)
        clock = [1000.0]
        monkeypatch.setattr(sync.time, "monotonic", lambda: clock[0])
        for link in (a, b):
            await consensus._on_message(link, KIND_STATUS, Status(10, cert).encode())
        await asyncio.sleep(0)
        asked = [n for n, _ in consensus.net.kinds(KIND_GET_BLOCKS)]
        assert len(asked) == 1  # one request at a time
        for _ in range(6):  # nobody answers: each deadline passes
            clock[0] += sync.SYNC_TIMEOUT_S + 0.1
            consensus.sync.maybe_sync()
            await asyncio.sleep(0)
            for node_id in list(consensus.sync._demoted_until):
                consensus.sync._demoted_until[node_id] = 0.0  # demotion over: ask again
        asked = [n for n, _ in consensus.net.kinds(KIND_GET_BLOCKS)]
        assert {asked[0], asked[1]} == {a.node_id, b.node_id}  # it rotated
        assert set(consensus.net.banned) == {a.node_id, b.node_id}
        assert all(
            "unanswered" in r or "did not answer" in r for r in consensus.net.banned.values()
        )

    asyncio.run(scenario())


def test_blocks_nobody_asked_for_are_not_decoded_and_count_against_the_peer(driver):
    async def scenario():
        consensus = await driver()  # a validator: it gets no pushes
        many = Blocks(tuple(certified(h) for h in (1, 2, 3))).encode()
        for _ in range(sync.SYNC_STRIKES):
            await consensus._on_message(OTHER_LINK, KIND_BLOCKS, many)
        assert consensus._inputs._queue.empty()
        assert "nobody asked for" in consensus.net.banned[OTHER_LINK.node_id]

    asyncio.run(scenario())


# ---- transactions --------------------------------------------------------------------------


def test_a_txs_frame_over_the_batch_limit_bans_its_sender(driver):
    async def scenario():
        consensus = await driver()
        frame = frame_batch([b"\x01"] * (wire.TX_BATCH + 1))
        await consensus._on_message(STRANGER_LINK, KIND_TXS, frame)
        assert "over 5000" in consensus.net.banned[STRANGER_LINK.node_id]
        assert len(consensus.node.mempool) == 0

    asyncio.run(scenario())


def test_a_peer_relaying_a_bad_signature_is_banned(driver):
    async def scenario():
        consensus = await driver()
        fee = GENESIS.params.min_fee
        good = make_transfer(WALLET, GENESIS.network, 0, fee, STRANGER.address, 1_000)
        raw = bytearray(good.raw)
        raw[-1] ^= 1  # the signature's last byte
        await consensus._on_message(STRANGER_LINK, KIND_TXS, frame_batch([bytes(raw)]))
        assert "signature" in consensus.net.banned[STRANGER_LINK.node_id]
        await consensus._on_message(THIRD_LINK, KIND_TXS, encode_batch([good]))
        assert THIRD_LINK.node_id not in consensus.net.banned

    asyncio.run(scenario())


def in_group(key: crypto.KeyPair, host: str) -> PeerInfo:
    """A full node's link that connected from ``host``."""
    return replace(PeerInfo.of(key.public_key, "full", "eu", "", False), api=f"{host}:7370")


def test_a_peer_whose_transactions_are_refused_spends_its_budget_then_is_not_read(driver):
    async def scenario():
        consensus = await driver()
        consensus.gossip.clock = lambda: 0.0  # no refill during the test
        burst, fee = gossip.PEER_REFUSAL_BURST, GENESIS.params.min_fee
        # What admission takes costs no budget: a burst of good transfers gets in whole...
        good = [
            make_transfer(WALLET, GENESIS.network, n, fee, STRANGER.address, 1)
            for n in range(burst)
        ]
        await consensus._on_message(STRANGER_LINK, KIND_TXS, encode_batch(good))
        assert all(t.id in consensus.node.mempool for t in good)
        # ... and so do duplicates, which gossip along two paths brings ...
        await consensus._on_message(STRANGER_LINK, KIND_TXS, encode_batch(good))
        assert consensus.metrics.rejected.labels("duplicate")._value.get() == burst
        # ... and leaves the budget whole for refusals: heartbeats of nodes nobody activated.
        unknown = [
            make_heartbeat(crypto.KeyPair.generate(), GENESIS.network, 0, 0) for _ in range(800)
        ]
        flood = encode_batch(unknown)
        refused = consensus.metrics.rejected.labels("unknown_node")
        await consensus._on_message(STRANGER_LINK, KIND_TXS, flood)
        assert refused._value.get() == burst  # then the budget was spent: the rest unread
        assert consensus.metrics.peer_txs_dropped._value.get() == 800 - burst
        assert STRANGER_LINK.node_id not in consensus.net.banned
        await consensus._on_message(THIRD_LINK, KIND_TXS, flood)  # validators have no budget
        assert refused._value.get() == burst + 800

    asyncio.run(scenario())


def test_a_few_refusals_never_cut_a_frame_and_a_group_shares_one_budget(driver):
    async def scenario():
        consensus = await driver()
        consensus.gossip.clock = lambda: 0.0  # no refill during the test
        fee = GENESIS.params.min_fee
        relay = in_group(crypto.KeyPair.generate(), "10.1.2.3")
        unknown = [
            make_heartbeat(crypto.KeyPair.generate(), GENESIS.network, 0, 0) for _ in range(5)
        ]
        good = [
            make_transfer(WALLET, GENESIS.network, n, fee, STRANGER.address, 1)
            for n in range(2 * gossip.PEER_REFUSAL_BURST)
        ]
        # Five refusals in the frame's first step leave tokens for all the rest.
        await consensus._on_message(relay, KIND_TXS, encode_batch(unknown + good))
        assert all(t.id in consensus.node.mempool for t in good)
        assert consensus.metrics.peer_txs_dropped._value.get() == 0
        # A flood from the same /24 under another key (or after a reconnection) draws on the
        # same budget: what the relay's refusals left, then nothing.
        flood = [
            make_heartbeat(crypto.KeyPair.generate(), GENESIS.network, 0, 0)
            for _ in range(gossip.PEER_REFUSAL_BURST)
        ]
        neighbour = in_group(crypto.KeyPair.generate(), "10.1.2.99")
        await consensus._on_message(neighbour, KIND_TXS, encode_batch(flood))
        left = gossip.PEER_REFUSAL_BURST - 5
        assert consensus.metrics.rejected.labels("unknown_node")._value.get() == 5 + left
        assert consensus.metrics.peer_txs_dropped._value.get() == 5
        elsewhere = in_group(crypto.KeyPair.generate(), "10.1.3.1")  # another group: its own
        await consensus._on_message(elsewhere, KIND_TXS, encode_batch(flood[:1]))
        assert consensus.metrics.rejected.labels("unknown_node")._value.get() == 6 + left

    asyncio.run(scenario())


def test_peers_by_type_and_region_are_series_from_the_start_whatever_connects(driver):
    async def scenario():
        consensus = await driver()

        def series() -> set[tuple[str, str]]:
            return {
                (s.labels["peer_type"], s.labels["peer_region"])
                for family in consensus.metrics.registry.collect()
                if family.name == "qnet_peers"
                for s in family.samples
            }

        everything = {(t, r) for t in NODE_TYPES for r in REGIONS}
        assert series() == everything
        stranger = PeerInfo.of(crypto.KeyPair.generate().public_key, "light", "oc", "", False)
        consensus.net._peers[stranger.node_id] = stranger
        await consensus._on_peer(stranger, True)
        assert series() == everything
        del consensus.net._peers[stranger.node_id]
        await consensus._on_peer(stranger, False)
        assert series() == everything

    asyncio.run(scenario())


def test_refusal_budgets_are_kept_for_a_bounded_number_of_groups(driver, monkeypatch):
    monkeypatch.setattr(gossip, "BUDGETS_KEPT", 2)

    async def scenario():
        consensus = await driver()
        consensus.gossip.clock = lambda: 0.0  # no refill during the test
        flood = [
            make_heartbeat(crypto.KeyPair.generate(), GENESIS.network, 0, 0)
            for _ in range(gossip.PEER_REFUSAL_BURST + 1)
        ]
        for host in ("10.1.1.1", "10.1.2.1", "10.1.3.1"):
            link = in_group(crypto.KeyPair.generate(), host)
            await consensus._on_message(link, KIND_TXS, encode_batch(flood))
        kept = consensus.gossip._budgets
        assert list(kept) == ["10.1.2.0/24", "10.1.3.0/24"]  # the least recent went
        assert consensus.gossip._over_budget <= set(kept)

    asyncio.run(scenario())


def test_a_malformed_status_is_a_protocol_violation(driver):
    async def scenario():
        consensus = await driver()
        await consensus._on_message(OTHER_LINK, KIND_STATUS, b"\x00")
        assert OTHER_LINK.node_id in consensus.net.banned

    asyncio.run(scenario())


def test_a_push_while_a_request_is_outstanding_is_not_taken_for_its_answer(driver):
    async def scenario():
        upstream = peer(OTHER, "full")
        consensus = await driver(key=STRANGER, peers=(upstream,))  # a follower
        _, cert = certified(10)
        await consensus._on_message(upstream, KIND_STATUS, Status(10, cert).encode())
        await asyncio.sleep(0)
        assert consensus.net.kinds(KIND_GET_BLOCKS)  # asked for 1-10
        push = Blocks((certified(11),)).encode()  # it committed 11 meanwhile and pushes it
        await consensus._on_message(upstream, KIND_BLOCKS, push)
        assert not consensus.net.banned
        assert upstream.node_id in consensus.sync._requests  # the answer is still awaited
        assert consensus._inputs._queue.empty()

    asyncio.run(scenario())


def test_a_light_node_asks_only_peers_whose_height_a_certificate_proves(tmp_path):
    async def scenario():
        config = load_config(tmp_path, node_type="light", region="eu")
        light = LightNode(config, GENESIS, crypto.KeyPair.generate())
        liar, honest = peer(OTHER), peer(THIRD)
        light.net = light.stats.net = FakeNet([liar, honest])
        await light._on_message(liar, KIND_STATUS, Status(2**64 - 1, b"").encode())
        assert liar.node_id in light.net.banned
        _, cert = certified(7)
        await light._on_message(honest, KIND_STATUS, Status(7, cert).encode())
        assert light.net.kinds(KIND_GET_HEADERS) == [(honest.node_id, GetHeaders(7, 7).encode())]
        assert light.network_status()["sync_lag_blocks"] == 7

    asyncio.run(scenario())


def test_a_validator_flooding_far_rounds_cannot_grow_the_kept_messages_or_the_log(driver):
    async def scenario():
        consensus = await driver()
        flood = 3 * bft.WAL_COMPACT_MIN
        for round_ in range(10, 10 + flood):
            await consensus._on_message(
                OTHER_LINK, KIND_CONSENSUS, vote(OTHER, None, round_).encode()
            )
            await drain(consensus)
        assert not consensus.net.banned  # validly signed: its own business, but bounded
        limits = consensus.core.limits
        assert len(consensus._messages[1]) <= limits.future_rounds + 2  # + our own prevote
        assert len(consensus.log.read()) <= bft.WAL_COMPACT_MIN + limits.future_rounds + 2

    asyncio.run(scenario())
