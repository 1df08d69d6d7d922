"""Admission and block limits at the node: cheap checks before any signature is verified, a
signature verified once per node, and blocks beyond the genesis limits refused before their
signatures cost anything, while the builder fills blocks up to the same limits."""

import asyncio
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto, ledger, tx
from qnet.block import Block, CommitCertificate, Header, precommit_message, tx_root
from qnet.config import load_config
from qnet.genesis import Genesis, GenesisError, Params, make_genesis
from qnet.node import InvalidBlock, Node

CHAIN = "qnet-test"
MIN_FEE = 1_000
VALIDATOR = crypto.KeyPair(b"\x50" * 32)
WALLETS = [crypto.KeyPair(bytes([0x60 + i]) * 32) for i in range(4)]
FUNDS = 10**9
SINK = b"\x99" * 20


class VerifyCounter:
    """Counts ``Transaction.verify_signature`` calls (on the node's thread pool too)."""

    def __init__(self, monkeypatch):
        self.calls: list[bytes] = []
        self._lock = threading.Lock()
        real = tx.Transaction.verify_signature

        def counted(t, network):
            with self._lock:
                self.calls.append(t.id)
            return real(t, network)

        monkeypatch.setattr(tx.Transaction, "verify_signature", counted)


@pytest.fixture
def verify_calls(monkeypatch) -> list[bytes]:
    return VerifyCounter(monkeypatch).calls


def genesis(**params) -> Genesis:
    return make_genesis(
        CHAIN,
        [(VALIDATOR.node_id, "eu")],
        {crypto.encode_address(w.address): FUNDS for w in WALLETS},
        Params(min_fee=MIN_FEE, epoch_ms=10**12, **params),
    )


NETWORK = genesis().network  # of the default genesis; one with other params is another


def new_node(tmp_path, name: str, chain: Genesis, **config) -> Node:
    data_dir = tmp_path / name
    data_dir.mkdir()
    return Node(load_config(data_dir, region="eu", **config), chain, VALIDATOR)


@pytest.fixture
def node(tmp_path):
    n = new_node(tmp_path, "node", genesis(), mempool_per_sender=3)
    yield n
    n.close()


def transfer(key, nonce, fee=MIN_FEE, amount=1, network=NETWORK) -> tx.Transaction:
    return tx.make_transfer(key, network, nonce, fee, SINK, amount)


def forged(t: tx.Transaction) -> tx.Transaction:
    """``t`` with a signature that does not verify."""
    raw = bytearray(t.raw)
    raw[0] ^= 1
    return tx.decode(bytes(raw))


def submit(node: Node, txs) -> list[str | None]:
    return [None if r is None else r.code for r in asyncio.run(node.submit(list(txs)))]


# ---- cheap checks first ------------------------------------------------------------------


def test_cheap_refusals_never_verify_a_signature(node, verify_calls):
    w = WALLETS[0]
    assert submit(node, [transfer(w, 0), transfer(w, 1)]) == [None, None]
    verify_calls.clear()
    heartbeat = tx.make_heartbeat(VALIDATOR, NETWORK, 0, node.epoch_now())
    assert submit(node, [heartbeat]) == [None]
    verify_calls.clear()
    bad = [
        forged(transfer(w, 0, network=crypto.Network("another-chain", NETWORK.genesis_hash))),
        forged(transfer(w, 0, fee=MIN_FEE)),  # a nonce queued already, no fee bump
        forged(transfer(w, 5)),  # beyond the nonce window
        forged(transfer(w, 0, fee=MIN_FEE - 1)),
        forged(transfer(WALLETS[1], 0, amount=FUNDS)),  # the fee on top is not there
        forged(tx.make_heartbeat(VALIDATOR, NETWORK, 1, node.epoch_now())),  # one per epoch
    ]
    codes = submit(node, bad)
    assert codes == [
        "wrong_chain",
        "duplicate",
        "nonce_gap",
        "fee_too_low",
        "insufficient_funds",
        "duplicate",
    ]
    assert submit(node, [transfer(w, 2), forged(transfer(w, 3))]) == [None, "sender_limit"]
    assert verify_calls == [transfer(w, 2).id]  # only the one that passed the cheap checks
    assert node.tx_status(bad[1].id)["message"].startswith("nonce 0 is pending with fee")
    replacement = transfer(w, 0, fee=MIN_FEE + MIN_FEE // 10)
    assert submit(node, [replacement]) == [None]
    replaced = node.tx_status(transfer(w, 0).id)
    assert (replaced["reason"], replaced["message"]) == (
        "duplicate",
        f"replaced by {replacement.id.hex()}, which pays a higher fee",
    )
    assert len(node.mempool) == 4


def test_a_batch_is_checked_in_order_and_verified_together(node, verify_calls):
    w = WALLETS[0]
    batch = [transfer(w, 0), transfer(w, 1), transfer(w, 2)]
    assert submit(node, batch) == [None, None, None]
    assert sorted(verify_calls) == sorted(t.id for t in batch)
    other = WALLETS[1]
    # A bad signature in the middle: what follows it cannot run and is refused at admission.
    assert submit(node, [transfer(other, 0), forged(transfer(other, 1)), transfer(other, 2)]) == [
        None,
        "bad_signature",
        "nonce_gap",
    ]
    assert node.mempool.pending_count(other.address) == 1


def test_a_batch_arriving_while_one_before_it_verifies_follows_it(node, monkeypatch):
    """Two batches of the same sender's consecutive nonces, the second checked while the
    first is still being verified: the second's nonces are not a gap, and it is admitted after
    the first even though its own signatures verify first (the gate holds the first back until
    they have)."""
    w, other = WALLETS[0], WALLETS[1]
    first = [transfer(w, 0)]
    second = [transfer(w, 1), transfer(other, 0)]
    waiting = {t.id for t in second}
    lock, second_verified = threading.Lock(), threading.Event()
    real = tx.Transaction.verify_signature

    def gated(t, network):
        if t.id == first[0].id:
            assert second_verified.wait(10), "the second batch was not verified meanwhile"
        ok = real(t, network)
        with lock:
            waiting.discard(t.id)
            if not waiting:
                second_verified.set()
        return ok

    monkeypatch.setattr(tx.Transaction, "verify_signature", gated)

    async def both():
        return await asyncio.gather(node.submit(first), node.submit(second))

    assert asyncio.run(both()) == [[None], [None, None]]
    assert node.mempool.pending_count(w.address) == 2
    assert node.mempool.in_flight == 0


def test_a_batch_that_fails_midway_leaves_nothing_in_flight_and_blocks_no_other(node, monkeypatch):
    w = WALLETS[0]
    real = ledger.check_kind
    calls = []

    def failing(view, t, rules):
        calls.append(t.nonce)
        if len(calls) == 2:
            raise RuntimeError("a bug in a check")
        return real(view, t, rules)

    monkeypatch.setattr(ledger, "check_kind", failing)
    with pytest.raises(RuntimeError):
        submit(node, [transfer(w, 0), transfer(w, 1)])
    assert node.mempool.in_flight == 0  # the first had passed: its flight ended
    assert submit(node, [transfer(w, 0), transfer(w, 1)]) == [None, None]  # not held back


def test_a_full_mempool_refuses_before_verifying(tmp_path, verify_calls):
    n = new_node(tmp_path, "small", genesis(), mempool_shards=1, mempool_capacity=2)
    try:
        assert submit(n, [transfer(WALLETS[0], 0, fee=2_000), transfer(WALLETS[1], 0)]) == [
            None,
            None,
        ]
        verify_calls.clear()
        assert submit(n, [forged(transfer(WALLETS[2], 0))]) == ["mempool_full"]
        assert verify_calls == []
        assert submit(n, [transfer(WALLETS[2], 0, fee=1_500)]) == [None]  # outbids
    finally:
        n.close()


# ---- a signature is verified once per node -------------------------------------------------


def certify(block: Block, network: crypto.Network = NETWORK) -> CommitCertificate:
    message = precommit_message(network, block.header.height, 0, block.hash)
    return CommitCertificate(
        block.header.height, 0, block.hash, ((VALIDATOR.public_key, VALIDATOR.sign(message)),)
    )


def test_a_signature_is_verified_once_per_node(tmp_path, verify_calls):
    chain = genesis()
    proposer = new_node(tmp_path, "proposer", chain)
    follower = new_node(tmp_path, "follower", chain)
    try:
        txs = [transfer(WALLETS[0], 0), transfer(WALLETS[1], 0)]
        assert submit(proposer, txs) == [None, None]
        block, _ = proposer.build_block(1_000)
        assert list(block.txs) == txs
        verify_calls.clear()
        asyncio.run(follower.validate_block(block))  # a proposal: new to the follower
        asyncio.run(follower.validate_block(block))  # again, in a later round
        assert sorted(verify_calls) == sorted(t.id for t in txs)
        assert submit(follower, txs) == [None, None]  # the relay comes after the proposal
        assert submit(follower, [transfer(WALLETS[0], 1)]) == [None]
        assert len(verify_calls) == 3
        block, _ = follower.build_block(2_000)
        asyncio.run(follower.validate_block(block))  # its own mempool's: verified already
        assert len(verify_calls) == 3
    finally:
        proposer.close()
        follower.close()


# ---- block limits --------------------------------------------------------------------------


def signed_block(node: Node, txs: list[tx.Transaction]) -> Block:
    """A block by the validator on top of ``node``'s state, with a made-up state digest: the
    limits are checked before anything that would notice."""
    s = node.state
    header = Header(
        CHAIN,
        s.height + 1,
        s.block_time_ms + 1_000,
        s.block_hash,
        tx_root([t.id for t in txs]),
        len(txs),
        b"\0" * 32,
        VALIDATOR.public_key,
    )
    return Block(header, VALIDATOR.sign(header.signing_message(node.network)), tuple(txs))


def test_a_proposal_with_too_many_transactions_is_invalid(tmp_path, verify_calls):
    n = new_node(tmp_path, "n", genesis(max_block_txs=3))
    try:
        txs = [transfer(WALLETS[i % 4], i // 4, network=n.network) for i in range(4)]
        with pytest.raises(InvalidBlock, match=r"4 transactions of .* beyond the limits of 3"):
            asyncio.run(n.validate_block(signed_block(n, txs)))
        assert verify_calls == []  # refused before any signature was checked
        with pytest.raises(InvalidBlock, match="state digest"):
            asyncio.run(n.validate_block(signed_block(n, txs[:3])))  # within: on to the rest
    finally:
        n.close()


def test_a_proposal_with_too_many_bytes_is_invalid(tmp_path, verify_calls):
    size = tx.framed_size(transfer(WALLETS[0], 0))
    n = new_node(tmp_path, "n", genesis(max_block_bytes=2 * size))
    try:
        txs = [transfer(WALLETS[i], 0, network=n.network) for i in range(3)]
        with pytest.raises(InvalidBlock, match=rf"of {3 * size} bytes, beyond .* {2 * size} bytes"):
            asyncio.run(n.validate_block(signed_block(n, txs)))
        assert verify_calls == []
    finally:
        n.close()


def test_a_transaction_that_fits_no_block_is_refused(tmp_path, verify_calls):
    t = transfer(WALLETS[0], 0)
    n = new_node(tmp_path, "n", genesis(max_block_bytes=tx.framed_size(t) - 1))
    try:
        (refused,) = asyncio.run(n.submit([t]))
        assert refused.code == "malformed" and "does not fit in a block" in refused.message
        assert verify_calls == [] and len(n.mempool) == 0
    finally:
        n.close()


@given(
    max_txs=st.integers(1, 8),
    max_bytes_in_txs=st.integers(1, 8),
    per_wallet=st.lists(st.integers(0, 4), min_size=4, max_size=4),
)
@settings(max_examples=15, deadline=None)
def test_built_blocks_fit_the_limits_and_pass_validation(
    tmp_path_factory, max_txs, max_bytes_in_txs, per_wallet
):
    """The builder and the validators use one rule: whatever the limits, the builder's block
    is within them and another node accepts it; the rest waits for the next block."""
    size = tx.framed_size(transfer(WALLETS[0], 0))
    chain = genesis(max_block_txs=max_txs, max_block_bytes=max_bytes_in_txs * size)
    base = tmp_path_factory.mktemp("limits")
    proposer, follower = new_node(base, "p", chain), new_node(base, "f", chain)
    try:
        txs = [
            transfer(w, n, network=chain.network)
            for w, count in zip(WALLETS, per_wallet, strict=True)
            for n in range(count)
        ]
        assert all(r is None for r in asyncio.run(proposer.submit(txs)))
        committed = 0
        for height in range(1, 20):
            block, _ = proposer.build_block(height * 1_000)
            assert len(block.txs) <= max_txs
            assert len(block.body()) <= max_bytes_in_txs * size
            assert len(block.txs) == min(max_txs, max_bytes_in_txs, len(txs) - committed)
            diff = asyncio.run(follower.validate_block(block))
            asyncio.run(follower.commit(block, certify(block, chain.network), diff))
            asyncio.run(proposer.commit(block, certify(block, chain.network), diff))
            committed += len(block.txs)
            if committed == len(txs):
                break
        assert committed == len(txs) and len(proposer.mempool) == 0
    finally:
        proposer.close()
        follower.close()


# ---- the genesis byte cap ------------------------------------------------------------------


def test_a_genesis_written_before_the_byte_cap_keeps_its_hash(tmp_path):
    """Genesis files of running networks lack ``max_block_bytes``: they get the default and
    their hash (which data dirs and peers check) does not change."""
    old = genesis().to_json()
    assert "max_block_bytes" not in old["params"]
    old_hash = crypto.digest(json.dumps(old, sort_keys=True, separators=(",", ":")).encode())
    loaded = Genesis.from_json(old)
    assert loaded.params.max_block_bytes == Params().max_block_bytes
    assert loaded.hash == old_hash
    path = tmp_path / "genesis.json"
    loaded.save(path)
    assert Genesis.load(path).hash == old_hash


def test_a_genesis_byte_cap_is_kept_and_checked():
    capped = genesis(max_block_bytes=10_000)
    data = capped.to_json()
    assert data["params"]["max_block_bytes"] == 10_000
    assert Genesis.from_json(data) == capped and capped.hash != genesis().hash
    for bad in (0, -1, "4096"):
        data["params"]["max_block_bytes"] = bad
        with pytest.raises(GenesisError):
            Genesis.from_json(data)


def test_rules_carry_the_genesis_limits():
    rules = ledger.Rules.from_genesis(genesis(max_block_txs=7, max_block_bytes=900))
    assert rules.block_limits == ledger.BlockLimits(7, 900)
    assert rules.block_limits.fits(7, 900)
    assert not rules.block_limits.fits(8, 900) and not rules.block_limits.fits(7, 901)
