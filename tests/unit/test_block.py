"""Block headers, the transaction root, commit certificates and block shape checks."""

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import block, crypto, tx
from qnet.block import Block, BlockError, CommitCertificate, Header, precommit_message, tx_root

CHAIN = "qnet-test"
NETWORK = crypto.Network(CHAIN, b"\x47" * 32)
# The same chain id and keys after a reset: another genesis, so another network.
RESET = crypto.Network(CHAIN, b"\x48" * 32)
VALIDATORS = [crypto.KeyPair(bytes([0x40 + i]) * 32) for i in range(4)]
OUTSIDER = crypto.KeyPair(b"\x66" * 32)

hash32 = st.binary(min_size=32, max_size=32)
u64 = st.integers(0, 2**64 - 1)
headers = st.builds(
    Header,
    chain_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=64).filter(
        lambda s: len(s.encode()) <= 64
    ),
    height=u64,
    time_ms=u64,
    parent=hash32,
    tx_root=hash32,
    tx_count=st.integers(0, 2**32 - 1),
    state_digest=hash32,
    proposer=hash32,
)


def sample_header(**changes) -> Header:
    fields = dict(
        chain_id=CHAIN,
        height=3,
        time_ms=1_700_000_000_000,
        parent=b"\1" * 32,
        tx_root=b"\2" * 32,
        tx_count=5,
        state_digest=b"\3" * 32,
        proposer=VALIDATORS[0].public_key,
    )
    return Header(**(fields | changes))


# ---- header ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(headers)
def test_header_round_trip(header):
    encoded = header.encode()
    assert Header.decode(encoded) == header
    assert Header.decode(encoded).hash == header.hash == crypto.digest(encoded)


def test_header_hash_is_stable():
    """The header encoding is a consensus rule: a change here forks every stored chain."""
    header = sample_header()
    assert header.encode() == (
        bytes((0x20, 9))
        + b"qnet-test"
        + (3).to_bytes(8, "big")
        + (1_700_000_000_000).to_bytes(8, "big")
        + b"\1" * 32
        + b"\2" * 32
        + (5).to_bytes(4, "big")
        + b"\3" * 32
        + VALIDATORS[0].public_key
    )
    assert header.hash == hashlib.blake2b(header.encode(), digest_size=32).digest()
    assert header.hash.hex() == "09a0fdf23696c9ffed9844292a366a480e51477867e09be328ce19cb8fef57ea"
    assert sample_header().hash == header.hash


@pytest.mark.parametrize(
    "change",
    [
        {"chain_id": "qnet-tesT"},
        {"height": 4},
        {"time_ms": 1_700_000_000_001},
        {"parent": b"\1" * 31 + b"\0"},
        {"tx_root": b"\2" * 31 + b"\0"},
        {"tx_count": 6},
        {"state_digest": b"\3" * 31 + b"\0"},
        {"proposer": VALIDATORS[1].public_key},
    ],
)
def test_every_header_field_is_covered_by_the_hash(change):
    assert sample_header(**change).hash != sample_header().hash


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x20",
        bytes([block.TAG_PRECOMMIT]) + sample_header().encode()[1:],
        sample_header().encode()[:-1],
        sample_header().encode() + b"\0",
    ],
)
def test_header_decode_refuses_malformed_bytes(data):
    with pytest.raises(BlockError):
        Header.decode(data)


def test_header_decode_refuses_a_chain_id_that_is_not_utf8():
    """Headers arrive from peers during sync; garbage must be a BlockError, not a crash."""
    encoded = bytearray(sample_header().encode())
    encoded[2] = 0xFF  # first byte of the chain id
    with pytest.raises(BlockError):
        Header.decode(bytes(encoded))


# ---- transaction root --------------------------------------------------------------------


def ids(n: int) -> list[bytes]:
    return [crypto.digest(b"tx %d" % i) for i in range(n)]


def test_tx_root_of_no_transactions_is_fixed():
    assert tx_root([]) == crypto.digest(b"")


def test_tx_root_follows_rfc6962_for_small_trees():
    def leaf(x):
        return crypto.digest(b"\0" + x)

    def node(a, b):
        return crypto.digest(b"\1" + a + b)

    a, b, c, d, e = ids(5)
    assert tx_root([a]) == leaf(a)
    assert tx_root([a, b]) == node(leaf(a), leaf(b))
    assert tx_root([a, b, c]) == node(node(leaf(a), leaf(b)), leaf(c))
    assert tx_root([a, b, c, d, e]) == node(
        node(node(leaf(a), leaf(b)), node(leaf(c), leaf(d))), leaf(e)
    )


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_tx_root_is_order_sensitive(n):
    leaves = ids(n)
    root = tx_root(leaves)
    for i in range(n - 1):
        swapped = list(leaves)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        assert tx_root(swapped) != root


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 9])
def test_tx_root_commits_to_the_count(n):
    """No duplicated last leaf: a list and the list with its last id repeated differ."""
    leaves = ids(n)
    assert tx_root(leaves + leaves[-1:]) != tx_root(leaves)
    assert tx_root(leaves[:-1]) != tx_root(leaves)
    assert tx_root(leaves) != tx_root([tx_root(leaves)])  # an inner node is not a leaf


@settings(max_examples=50, deadline=None)
@given(st.lists(hash32, min_size=1, max_size=12, unique=True), st.data())
def test_changing_any_id_changes_the_root(leaves, data):
    i = data.draw(st.integers(0, len(leaves) - 1))
    other = data.draw(hash32.filter(lambda h: h != leaves[i]))
    assert tx_root([*leaves[:i], other, *leaves[i + 1 :]]) != tx_root(leaves)


# ---- commit certificate ------------------------------------------------------------------

BLOCK_HASH = crypto.digest(b"block")


def precommit(key, height=7, round_=0, block_hash=BLOCK_HASH, network=NETWORK):
    return key.public_key, key.sign(precommit_message(network, height, round_, block_hash))


def certificate(*signatures) -> CommitCertificate:
    return CommitCertificate(7, 0, BLOCK_HASH, tuple(signatures))


POWERS = {k.public_key: 1 for k in VALIDATORS}


def test_three_of_four_equal_validators_commit():
    certificate(*(precommit(k) for k in VALIDATORS[:3])).verify(NETWORK, POWERS)
    certificate(*(precommit(k) for k in VALIDATORS)).verify(NETWORK, POWERS)


def test_exactly_two_thirds_is_not_enough():
    powers = {VALIDATORS[0].public_key: 2, VALIDATORS[1].public_key: 2, VALIDATORS[2].public_key: 2}
    with pytest.raises(BlockError):
        certificate(precommit(VALIDATORS[0]), precommit(VALIDATORS[1])).verify(NETWORK, powers)
    with pytest.raises(BlockError):
        certificate(*(precommit(k) for k in VALIDATORS[:2])).verify(NETWORK, POWERS)
    with pytest.raises(BlockError):
        certificate().verify(NETWORK, POWERS)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=4, max_size=4), st.sets(st.integers(0, 3)))
def test_a_certificate_verifies_exactly_when_signers_hold_more_than_two_thirds(powers, signers):
    weights = {k.public_key: p for k, p in zip(VALIDATORS, powers, strict=True)}
    cert = certificate(*(precommit(VALIDATORS[i]) for i in sorted(signers)))
    signed = sum(powers[i] for i in signers)
    if 3 * signed > 2 * sum(powers):
        cert.verify(NETWORK, weights)
    else:
        with pytest.raises(BlockError):
            cert.verify(NETWORK, weights)


def test_a_duplicate_signer_is_refused():
    a, b = VALIDATORS[:2]
    # counted twice, a and b would seem to hold 3 of 4
    with pytest.raises(BlockError):
        certificate(precommit(a), precommit(b), precommit(a)).verify(NETWORK, POWERS)


def test_an_unknown_signer_is_refused():
    signatures = [precommit(k) for k in VALIDATORS] + [precommit(OUTSIDER)]
    with pytest.raises(BlockError):
        certificate(*signatures).verify(NETWORK, POWERS)


def test_a_bad_signature_is_refused():
    pk, sig = precommit(VALIDATORS[3])
    bad = (pk, sig[:10] + bytes([sig[10] ^ 1]) + sig[11:])
    with pytest.raises(BlockError):
        certificate(*(precommit(k) for k in VALIDATORS[:3]), bad).verify(NETWORK, POWERS)


def test_a_signature_by_one_validator_under_anothers_name_is_refused():
    _, sig = precommit(VALIDATORS[3])
    forged = (VALIDATORS[2].public_key, sig)
    with pytest.raises(BlockError):
        certificate(precommit(VALIDATORS[0]), precommit(VALIDATORS[1]), forged).verify(
            NETWORK, POWERS
        )


@pytest.mark.parametrize(
    "other",
    [
        {"height": 8},
        {"round_": 1},
        {"block_hash": crypto.digest(b"other block")},
        {"network": crypto.Network("qnet-other", NETWORK.genesis_hash)},
        {"network": RESET},
    ],
)
def test_a_precommit_for_anything_else_is_refused(other):
    honest = [precommit(k) for k in VALIDATORS[:2]]
    with pytest.raises(BlockError):
        certificate(*honest, precommit(VALIDATORS[2], **other)).verify(NETWORK, POWERS)


def test_a_certificate_signed_for_another_chain_does_not_verify_here():
    other = crypto.Network("qnet-other", NETWORK.genesis_hash)
    cert = certificate(*(precommit(k, network=other) for k in VALIDATORS))
    cert.verify(other, POWERS)
    with pytest.raises(BlockError):
        cert.verify(NETWORK, POWERS)


def test_a_certificate_of_a_reset_chain_with_the_same_keys_does_not_verify():
    old = certificate(*(precommit(k, network=RESET) for k in VALIDATORS))
    old.verify(RESET, POWERS)
    with pytest.raises(BlockError, match="bad precommit signature"):
        old.verify(NETWORK, POWERS)
    assert precommit_message(NETWORK, 7, 0, BLOCK_HASH) == (
        bytes((0x22, 9)) + b"qnet-test" + NETWORK.genesis_hash + _vote(7, 0, BLOCK_HASH)
    )


def _vote(height: int, round_: int, block_hash: bytes) -> bytes:
    return height.to_bytes(8, "big") + round_.to_bytes(4, "big") + block_hash


def test_a_header_signature_is_not_a_precommit():
    """Tagged messages: the proposer's header signature cannot be replayed as a vote."""
    header = sample_header(height=7)
    key = VALIDATORS[0]
    signature = key.sign(header.signing_message(NETWORK))
    cert = CommitCertificate(7, 0, header.hash, ((key.public_key, signature),))
    with pytest.raises(BlockError):
        cert.verify(NETWORK, {key.public_key: 1})


def test_certificate_round_trip():
    cert = CommitCertificate(
        2**64 - 1, 2**32 - 1, BLOCK_HASH, tuple(precommit(k) for k in VALIDATORS)
    )
    assert CommitCertificate.decode(cert.encode()) == cert
    with pytest.raises(BlockError):
        CommitCertificate.decode(cert.encode()[:-1])


# ---- block shape -------------------------------------------------------------------------


def make_block(n_txs: int = 3, proposer=VALIDATORS[0], network=NETWORK) -> Block:
    sender = crypto.KeyPair(b"\x51" * 32)
    txs = tuple(tx.make_transfer(sender, network, n, 1_000, b"\x52" * 20, 10) for n in range(n_txs))
    header = sample_header(
        tx_root=tx_root([t.id for t in txs]), tx_count=len(txs), proposer=proposer.public_key
    )
    return Block(header, proposer.sign(header.signing_message(network)), txs)


def test_a_well_formed_block_passes_and_survives_its_encoding():
    good = make_block()
    good.verify_shape(NETWORK)
    again = Block.from_parts(good.header.encode(), good.signature, good.body())
    again.verify_shape(NETWORK)
    assert again.hash == good.hash and [t.id for t in again.txs] == [t.id for t in good.txs]
    make_block(0).verify_shape(NETWORK)


def test_a_bad_proposer_signature_is_detected():
    good = make_block()
    with pytest.raises(BlockError):
        replace(good, signature=OUTSIDER.sign(good.header.signing_message(NETWORK))).verify_shape(
            NETWORK
        )
    with pytest.raises(BlockError):
        replace(good, signature=bytes(64)).verify_shape(NETWORK)
    # a header changed after signing
    later = replace(good.header, time_ms=good.header.time_ms + 1)
    with pytest.raises(BlockError):
        replace(good, header=later).verify_shape(NETWORK)


def test_a_block_of_a_reset_chain_with_the_same_keys_does_not_verify():
    old = make_block(network=RESET)
    old.verify_shape(RESET)
    with pytest.raises(BlockError, match="bad proposer signature"):
        old.verify_shape(NETWORK)
    header = old.header
    assert header.signing_message(NETWORK) == (
        header.encode()[:11] + NETWORK.genesis_hash + header.encode()[11:]
    )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda txs: txs[:-1],
        lambda txs: (*txs, txs[0]),
        lambda txs: (txs[1], txs[0], txs[2]),
        lambda txs: (),
        lambda txs: (
            txs[0],
            txs[1],
            tx.make_transfer(crypto.KeyPair(b"\x53" * 32), NETWORK, 0, 1_000, b"\x52" * 20, 10),
        ),
    ],
)
def test_transactions_that_do_not_match_the_header_are_detected(tamper):
    good = make_block()
    with pytest.raises(BlockError):
        replace(good, txs=tamper(good.txs)).verify_shape(NETWORK)


def test_block_wire_encoding_round_trips_and_refuses_garbage():
    key = crypto.KeyPair.generate()
    sender = crypto.KeyPair.generate()
    wire_network = crypto.Network("qnet-wire", b"\x49" * 32)
    txs = tuple(tx.make_transfer(sender, wire_network, n, 1_000, key.address, 5) for n in range(3))
    header = Header(
        "qnet-wire",
        7,
        1_000,
        b"\1" * 32,
        tx_root([t.id for t in txs]),
        3,
        b"\2" * 32,
        key.public_key,
    )
    block = Block(header, key.sign(header.signing_message(wire_network)), txs)
    again = Block.decode(block.encode())
    assert again.hash == block.hash and [t.id for t in again.txs] == [t.id for t in txs]
    again.verify_shape(wire_network)
    wire = block.encode()
    for broken in (wire[:10], wire[:70], wire[:-1], wire + b"\0"):
        with pytest.raises(BlockError):
            Block.decode(broken)
