"""Transaction bytes, JSON, batches and bech32 identifiers: round trips and refusals."""

import hashlib
import json

import bech32
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto, tx
from qnet.amounts import MAX_AMOUNT
from qnet.genesis import NODE_TYPES, REGIONS

u64 = st.integers(min_value=0, max_value=MAX_AMOUNT)
chain_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64).filter(
    lambda s: len(s.encode()) <= tx.MAX_CHAIN_ID_LEN
)
# Transactions here are signed for networks of one genesis hash and any chain id: the
# network a transaction was signed for is then ``on(t.chain_id)``.
GENESIS_HASH = bytes(range(32))
networks = chain_ids.map(lambda chain_id: crypto.Network(chain_id, GENESIS_HASH))
keys = st.binary(min_size=32, max_size=32).map(crypto.KeyPair)
addresses = st.binary(min_size=crypto.ADDRESS_LEN, max_size=crypto.ADDRESS_LEN)


@st.composite
def transfers(draw) -> tx.Transaction:
    return tx.make_transfer(
        draw(keys),
        draw(networks),
        nonce=draw(u64),
        fee=draw(u64),
        to=draw(addresses),
        amount=draw(st.integers(min_value=1, max_value=MAX_AMOUNT)),
    )


@st.composite
def activations(draw) -> tx.Transaction:
    owner, node, network = draw(keys), draw(keys), draw(networks)
    return tx.make_activate(
        owner,
        network,
        nonce=draw(u64),
        fee=draw(u64),
        node_key=node.public_key,
        node_type=draw(st.sampled_from(NODE_TYPES)),
        region=draw(st.sampled_from(REGIONS)),
        amount=draw(u64),
        node_proof=tx.prove_node(node, network, owner.address),
    )


@st.composite
def heartbeats(draw) -> tx.Transaction:
    return tx.make_heartbeat(draw(keys), draw(networks), nonce=draw(u64), epoch=draw(u64))


@st.composite
def claims(draw) -> tx.Transaction:
    return tx.make_claim(
        draw(keys), draw(networks), nonce=draw(u64), fee=draw(u64), node_key=draw(keys).public_key
    )


transactions = st.one_of(transfers(), activations(), heartbeats(), claims())
FAST = settings(max_examples=60, deadline=None)


def on(chain_id: str, genesis_hash: bytes = GENESIS_HASH) -> crypto.Network:
    return crypto.Network(chain_id, genesis_hash)


C = on("c")


def same_fields(a: tx.Transaction, b: tx.Transaction) -> bool:
    names = (
        "kind",
        "chain_id",
        "public_key",
        "nonce",
        "fee",
        "to",
        "amount",
        "signature",
        "body",
        "raw",
        "id",
        "sender",
        "node_key",
        "node_type",
        "region",
        "node_proof",
        "epoch",
    )
    return all(getattr(a, n) == getattr(b, n) for n in names)


# ---- canonical bytes --------------------------------------------------------------------


def test_raw_follows_the_documented_layout_and_id_is_its_hash():
    key = crypto.KeyPair(bytes(range(32)))
    t = tx.make_transfer(
        key, on("qnet-test"), nonce=7, fee=1000, to=b"\x11" * 20, amount=12_500_000_000
    )
    body = (
        bytes((1, 1, 9))
        + b"qnet-test"
        + key.public_key
        + (7).to_bytes(8, "big")
        + (1000).to_bytes(8, "big")
        + b"\x11" * 20
        + (12_500_000_000).to_bytes(8, "big")
    )
    assert t.body == body
    assert t.raw == t.signature + body
    # Signed: tag 0x41, the chain id, the genesis hash (not in the raw bytes), the body.
    signed = bytes((0x41, 9)) + b"qnet-test" + GENESIS_HASH + body
    assert t.signature == key.sign(signed)
    assert t.id == hashlib.blake2b(t.raw, digest_size=32).digest()
    assert t.sender == hashlib.blake2b(key.public_key, digest_size=20).digest()
    # Ed25519 is deterministic, so the id of this transaction is fixed forever: a change
    # here is a change of the consensus encoding.
    assert t.id.hex() == "37e1bef0891f36fce823b0614832a55f18d6efd5a394f4aa5c4cd6c9ddd68598"


@FAST
@given(transactions)
def test_decode_reproduces_every_field(t):
    got = tx.decode(t.raw)
    assert same_fields(got, t)
    assert got.verify_signature(on(t.chain_id))


@FAST
@given(transactions)
def test_json_round_trip(t):
    obj = t.to_json()
    got = tx.from_json(json.loads(json.dumps(obj)))
    assert same_fields(got, t)
    assert got.to_json() == obj
    assert got.verify_signature(on(t.chain_id))


@FAST
@given(transactions, st.data())
def test_any_single_byte_mutation_is_refused_or_breaks_the_signature(t, data):
    pos = data.draw(st.integers(min_value=0, max_value=len(t.raw) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(t.raw)
    mutated[pos] ^= flip
    try:
        got = tx.decode(bytes(mutated))
    except tx.DecodeError:
        return
    assert got.id != t.id
    assert not got.verify_signature(on(got.chain_id))


@FAST
@given(transactions, st.data())
def test_truncation_is_refused(t, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(t.raw) - 1))
    with pytest.raises(tx.DecodeError):
        tx.decode(t.raw[:cut])


@FAST
@given(transactions, st.binary(min_size=1, max_size=tx.MAX_TX_BYTES))
def test_extension_is_refused(t, extra):
    with pytest.raises(tx.DecodeError):
        tx.decode(t.raw + extra)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", MAX_AMOUNT + 1),
        ("fee", MAX_AMOUNT + 1),
        ("amount", MAX_AMOUNT + 1),
        ("amount", 0),
        ("nonce", -1),
        ("chain_id", ""),
        ("chain_id", "x" * 65),
        ("chain_id", "é" * 33),
    ],
)
def test_out_of_range_fields_are_refused_when_signing(field, value):
    fields = {"chain_id": "c", "nonce": 0, "fee": 0, "amount": 1} | {field: value}
    # An empty chain id is no network at all (crypto.EncodingError); a long one is a
    # network no transaction can name (tx.DecodeError).
    with pytest.raises((tx.DecodeError, crypto.EncodingError)):
        network = on(fields.pop("chain_id"))
        tx.make_transfer(crypto.KeyPair(b"\1" * 32), network, to=b"\2" * 20, **fields)


def test_payload_layouts_follow_the_documented_encoding():
    owner, node = crypto.KeyPair(bytes(range(32))), crypto.KeyPair(b"\x09" * 32)
    proof = tx.prove_node(node, C, owner.address)
    signed = bytes((0x40, 1)) + b"c" + GENESIS_HASH + owner.address + node.public_key
    assert proof == node.sign(signed)
    activate = tx.make_activate(owner, C, 0, 5, node.public_key, "light", "oc", 7, proof)
    payload = node.public_key + bytes((2, 6)) + (7).to_bytes(8, "big") + proof
    assert activate.body[-len(payload) :] == payload and activate.body[1] == tx.KIND_ACTIVATE
    heartbeat = tx.make_heartbeat(node, C, 3, 12)
    assert heartbeat.body[-24:] == (3).to_bytes(8, "big") + bytes(8) + (12).to_bytes(8, "big")
    assert heartbeat.node_key == node.public_key and heartbeat.cost == 0
    claim = tx.make_claim(owner, C, 1, 9, node.public_key)
    assert claim.body[-32:] == node.public_key and claim.cost == 9


def test_a_signature_is_bound_to_the_genesis_hash_not_only_the_chain_id():
    owner = crypto.KeyPair(b"\x05" * 32)
    first, reset = on("c"), on("c", bytes(32))  # the same chain id, another genesis
    transfer = tx.make_transfer(owner, first, 0, 1, b"\2" * 20, 1)
    assert transfer.verify_signature(first)
    assert not transfer.verify_signature(reset)
    assert not transfer.verify_signature(on("d"))
    # The same bytes travel either way: the genesis hash is supplied by the verifier.
    again = tx.make_transfer(owner, reset, 0, 1, b"\2" * 20, 1)
    assert again.body == transfer.body and again.id != transfer.id


def test_a_node_proof_for_another_network_does_not_activate():
    owner, node = crypto.KeyPair(b"\x05" * 32), crypto.KeyPair(b"\x06" * 32)
    first, reset = on("c"), on("c", bytes(32))
    old_proof = tx.prove_node(node, first, owner.address)
    replayed = tx.make_activate(owner, reset, 0, 0, node.public_key, "full", "eu", 0, old_proof)
    assert not replayed.verify_signature(reset)
    proof = tx.prove_node(node, reset, owner.address)
    fresh = tx.make_activate(owner, reset, 0, 0, node.public_key, "full", "eu", 0, proof)
    assert fresh.verify_signature(reset)


@pytest.mark.parametrize(
    ("pos", "value", "message"),
    [(-74, 3, "node type"), (-73, 7, "region")],  # the codes just after the node key
)
def test_bytes_with_an_unknown_node_type_or_region_are_refused(pos, value, message):
    owner, node = crypto.KeyPair(b"\x01" * 32), crypto.KeyPair(b"\x02" * 32)
    proof = tx.prove_node(node, C, owner.address)
    t = tx.make_activate(owner, C, 0, 0, node.public_key, "super", "na", 0, proof)
    raw = bytearray(t.raw)
    raw[pos] = value
    with pytest.raises(tx.DecodeError, match=message):
        tx.decode(bytes(raw))


def test_a_heartbeat_with_a_fee_is_refused():
    t = tx.make_heartbeat(crypto.KeyPair(b"\x01" * 32), C, 0, 1)
    raw = bytearray(t.raw)
    raw[-9] = 1  # the last byte of the fee
    with pytest.raises(tx.DecodeError, match="free"):
        tx.decode(bytes(raw))
    with pytest.raises(tx.DecodeError, match="free"):
        tx.from_json({**t.to_json(), "fee": "1"})


def test_bytes_for_a_zero_amount_are_refused():
    t = tx.make_transfer(crypto.KeyPair(b"\1" * 32), C, 0, 0, b"\2" * 20, 1)
    with pytest.raises(tx.DecodeError):
        tx.decode(t.raw[:-8] + bytes(8))


def test_bytes_with_an_invalid_utf8_chain_id_are_refused():
    t = tx.make_transfer(crypto.KeyPair(b"\1" * 32), on("ab"), 0, 0, b"\2" * 20, 1)
    raw = bytearray(t.raw)
    raw[64 + 3] = 0xFF  # first byte of the chain id
    with pytest.raises(tx.DecodeError):
        tx.decode(bytes(raw))


# ---- JSON refusals -----------------------------------------------------------------------


@pytest.fixture
def sample_json() -> dict:
    t = tx.make_transfer(crypto.KeyPair(b"\3" * 32), on("qnet-test"), 1, 1000, b"\4" * 20, 5)
    return t.to_json()


@pytest.mark.parametrize(
    "change",
    [
        {"id": "00" * 32},
        {"kind": "mint"},
        {"nonce": "1"},
        {"nonce": True},
        {"fee": 1000},
        {"amount": "0"},
        {"amount": str(MAX_AMOUNT + 1)},
        {"amount": "-5"},
        {"to": "qnc1notanaddress"},
        {"public_key": "ab" * 31},
        {"signature": "zz" * 64},
        {"extra": 1},
    ],
)
def test_from_json_refuses_bad_fields(sample_json, change):
    with pytest.raises(tx.DecodeError):
        tx.from_json(sample_json | change)


@pytest.mark.parametrize(
    "missing", ["kind", "chain_id", "public_key", "nonce", "fee", "to", "amount", "signature"]
)
def test_from_json_refuses_missing_fields(sample_json, missing):
    del sample_json[missing]
    with pytest.raises(tx.DecodeError):
        tx.from_json(sample_json)


def test_from_json_refuses_a_chain_id_that_is_not_utf8_encodable(sample_json):
    """JSON can carry a lone surrogate ("\\ud800"); it must be a DecodeError (HTTP 400)."""
    sample_json["chain_id"] = json.loads('"\\ud800"')
    del sample_json["id"]
    with pytest.raises(tx.DecodeError):
        tx.from_json(sample_json)


def test_from_json_refuses_a_from_address_that_is_not_the_signers(sample_json):
    """Like ``id``, an optional ``from`` that contradicts the public key is refused."""
    sample_json["from"] = crypto.encode_address(b"\5" * 20)
    with pytest.raises(tx.DecodeError):
        tx.from_json(sample_json)


# ---- batches -----------------------------------------------------------------------------


@FAST
@given(st.lists(transactions, max_size=5))
def test_batch_round_trip(txs):
    frames = tx.split_batch(tx.encode_batch(txs))
    assert frames == [t.raw for t in txs]
    assert [tx.decode(f).id for f in frames] == [t.id for t in txs]


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_batch_with_truncated_last_frame_is_refused(cut):
    batch = tx.encode_batch(
        [tx.make_transfer(crypto.KeyPair(b"\6" * 32), C, n, 0, b"\7" * 20, 1) for n in range(3)]
    )
    with pytest.raises(tx.DecodeError):
        tx.split_batch(batch[:-cut])


def test_batch_with_truncated_length_prefix_is_refused():
    batch = tx.encode_batch([tx.make_transfer(crypto.KeyPair(b"\6" * 32), C, 0, 0, b"\7" * 20, 1)])
    with pytest.raises(tx.DecodeError):
        tx.split_batch(batch + b"\x00")


def test_batch_with_zero_length_frame_is_refused():
    batch = tx.encode_batch([tx.make_transfer(crypto.KeyPair(b"\6" * 32), C, 0, 0, b"\7" * 20, 1)])
    with pytest.raises(tx.DecodeError):
        tx.split_batch(batch + b"\x00\x00")
    with pytest.raises(tx.DecodeError):
        tx.split_batch(b"\x00\x00" + batch)


# ---- addresses and node ids --------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(addresses)
def test_address_round_trip(raw):
    text = crypto.encode_address(raw)
    assert text.startswith("qnc1")
    assert crypto.decode_address(text) == raw
    assert crypto.decode_address(text.upper()) == raw


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_node_id_round_trip(public_key):
    text = crypto.encode_node_id(public_key)
    assert text.startswith("qnode1")
    assert crypto.decode_node_id(text) == public_key


def test_node_id_checks_the_owners_signature():
    key = crypto.KeyPair(b"\x08" * 32)
    message = b"hello"
    assert crypto.verify(crypto.decode_node_id(key.node_id), key.sign(message), message)


replacement_chars = st.sampled_from("qpzry9x8gf2tvdw0s3jn54khce6mua7l1bioQPZ-")


@settings(max_examples=200, deadline=None)
@given(addresses, st.data())
def test_a_one_character_change_in_an_address_is_refused(raw, data):
    text = crypto.encode_address(raw)
    pos = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    char = data.draw(replacement_chars.filter(lambda c: c != text[pos]))
    with pytest.raises(crypto.EncodingError):
        crypto.decode_address(text[:pos] + char + text[pos + 1 :])


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.data())
def test_a_one_character_change_in_a_node_id_is_refused(public_key, data):
    text = crypto.encode_node_id(public_key)
    pos = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    char = data.draw(replacement_chars.filter(lambda c: c != text[pos]))
    with pytest.raises(crypto.EncodingError):
        crypto.decode_node_id(text[:pos] + char + text[pos + 1 :])


def _bech32(hrp: str, payload: bytes) -> str:
    return bech32.bech32_encode(hrp, bech32.convertbits(payload, 8, 5))


@pytest.mark.parametrize(
    "text",
    [
        _bech32("qnode", b"\1" * 20),  # right length, node prefix
        _bech32("qn", b"\1" * 20),
        _bech32("bc", b"\1" * 20),
        crypto.encode_node_id(b"\1" * 32),
        _bech32("qnc", b"\1" * 19),  # right prefix, wrong length
        _bech32("qnc", b"\1" * 32),
        "",
        "qnc1",
    ],
)
def test_address_with_wrong_prefix_or_length_is_refused(text):
    with pytest.raises(crypto.EncodingError):
        crypto.decode_address(text)


@pytest.mark.parametrize(
    "text",
    [
        crypto.encode_address(b"\1" * 20),
        _bech32("qnc", b"\1" * 32),
        _bech32("qnode", b"\1" * 31),
    ],
)
def test_node_id_with_wrong_prefix_or_length_is_refused(text):
    with pytest.raises(crypto.EncodingError):
        crypto.decode_node_id(text)


def test_non_string_identifiers_are_refused():
    with pytest.raises(crypto.EncodingError):
        crypto.decode_address(b"qnc1")
    with pytest.raises(crypto.EncodingError):
        crypto.decode_node_id(None)
