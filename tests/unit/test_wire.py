"""The peer protocol's codecs (``wire.py``): every kind round-trips, no bytes a peer can send
make a decoder raise anything but ``ProtocolError``, caps hold, and the bytes on the wire are
those of protocol 3 as it was before the codecs moved here (golden encodings)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import tendermint, tx, wire
from qnet.block import CommitCertificate
from qnet.genesis import NODE_TYPES, REGIONS

U64 = st.integers(0, 2**64 - 1)
keys = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=64, max_size=64)
texts = st.text(max_size=40)
addresses = st.builds(
    wire.join_address,
    st.sampled_from(["127.0.0.1", "10.0.0.7", "::1", "node.example"]),
    st.integers(1, 65535),
)
listens = st.one_of(st.just(""), addresses)
hellos = st.builds(
    wire.Hello,
    st.integers(0, 255),
    texts,
    keys,
    keys,
    st.sampled_from(NODE_TYPES),
    st.sampled_from(REGIONS),
    listens,
    st.integers(0, 65535),
    keys,
)
records = st.builds(
    wire.PeerRecord, keys, st.sampled_from(NODE_TYPES), st.sampled_from(REGIONS), addresses
)
chain_ids = st.text(min_size=1, max_size=40)
value_ids = st.one_of(st.none(), keys.filter(lambda k: k != tendermint.NIL_ID))
votes = st.builds(
    tendermint.Vote,
    st.sampled_from(tendermint.VoteKind),
    chain_ids,
    U64,
    st.integers(0, tendermint.MAX_ROUND),
    value_ids,
    keys,
    signatures,
)
proposals = st.integers(0, tendermint.MAX_ROUND).flatmap(
    lambda round_: st.builds(
        tendermint.Proposal,
        chain_ids,
        U64,
        st.just(round_),
        st.integers(-1, round_ - 1),
        st.binary(max_size=200),
        keys,
        signatures,
    )
)
pairs = st.lists(st.tuples(st.binary(max_size=100), st.binary(max_size=100)), max_size=5)
views = st.builds(
    wire.HeartbeatView,
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 2**64 - 2)),
    U64,
    st.integers(0, 2**32 - 1),
    U64,
)

# Valid messages of every kind; the lists are kept short so truncation stays quick (the caps
# have tests of their own).
MESSAGES = {
    wire.KIND_HELLO: hellos,
    wire.KIND_AUTH: st.builds(wire.Auth, signatures),
    wire.KIND_GET_PEERS: st.just(wire.GetPeers()),
    wire.KIND_PEERS: st.builds(wire.Peers, st.lists(records, max_size=8).map(tuple)),
    wire.KIND_CONSENSUS: st.builds(wire.Consensus, st.one_of(votes, proposals)),
    wire.KIND_TXS: st.builds(
        wire.Txs, st.lists(st.binary(min_size=1, max_size=300), max_size=8).map(tuple)
    ),
    wire.KIND_STATUS: st.builds(wire.Status, U64, st.binary(max_size=300)),
    wire.KIND_GET_BLOCKS: st.builds(wire.GetBlocks, U64, U64),
    wire.KIND_BLOCKS: st.builds(wire.Blocks, pairs.map(tuple)),
    wire.KIND_PING: st.builds(wire.Ping, U64),
    wire.KIND_PONG: st.builds(wire.Pong, U64),
    wire.KIND_HEADERS: st.builds(wire.Headers, pairs.map(tuple)),
    wire.KIND_GET_HEADERS: st.builds(wire.GetHeaders, U64, U64),
    wire.KIND_GET_NODE: st.builds(wire.GetNode, keys),
    wire.KIND_NODE: st.builds(wire.NodeView, keys, views),
}
KINDS = sorted(wire.MESSAGES)


def decode(kind: int, data: bytes) -> object | None:
    """Decode as a node would take the message in (Blocks and Headers all the way to blocks
    and certificates); None if refused. Anything but ProtocolError escapes: a failed test."""
    try:
        message = wire.MESSAGES[kind].decode(data)
        if isinstance(message, wire.Blocks):
            message.blocks()
        elif isinstance(message, wire.Headers):
            message.headers()
        return message
    except wire.ProtocolError:
        return None


def test_every_kind_has_a_name_a_codec_and_a_test() -> None:
    assert set(wire.MESSAGES) == set(wire.KIND_NAMES) == set(MESSAGES)
    assert all(kind == cls.KIND for kind, cls in wire.MESSAGES.items())
    link_kinds = {wire.KIND_HELLO, wire.KIND_AUTH, wire.KIND_GET_PEERS, wire.KIND_PEERS}
    assert max(link_kinds) < wire.FIRST_APP_KIND
    assert min(k for k in KINDS if k > 3) == wire.FIRST_APP_KIND


@pytest.mark.parametrize("kind", KINDS, ids=[wire.KIND_NAMES[k] for k in KINDS])
@given(data=st.data())
def test_every_kind_round_trips(kind: int, data: st.DataObject) -> None:
    message = data.draw(MESSAGES[kind])
    assert kind == type(message).KIND
    encoded = message.encode()
    assert wire.MESSAGES[kind].decode(encoded) == message
    assert wire.MESSAGES[kind].decode(encoded).encode() == encoded


@pytest.mark.parametrize("kind", KINDS, ids=[wire.KIND_NAMES[k] for k in KINDS])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_the_codec_error(kind: int, data: bytes) -> None:
    decode(kind, data)


@pytest.mark.parametrize("kind", KINDS, ids=[wire.KIND_NAMES[k] for k in KINDS])
@settings(max_examples=40)
@given(data=st.data())
def test_every_truncation_and_one_flipped_byte_raise_only_the_codec_error(
    kind: int, data: st.DataObject
) -> None:
    encoded = data.draw(MESSAGES[kind]).encode()
    for end in range(len(encoded)):
        decode(kind, encoded[:end])
    decode(kind, encoded + data.draw(st.binary(min_size=1, max_size=8)))
    if encoded:
        at = data.draw(st.integers(0, len(encoded) - 1))
        flipped = encoded[:at] + bytes([encoded[at] ^ data.draw(st.integers(1, 255))])
        decode(kind, flipped + encoded[at + 1 :])


FIXED = [wire.KIND_AUTH, wire.KIND_GET_BLOCKS, wire.KIND_PING, wire.KIND_PONG]
FIXED += [wire.KIND_GET_HEADERS, wire.KIND_GET_NODE, wire.KIND_NODE, wire.KIND_HELLO]


@pytest.mark.parametrize("kind", FIXED, ids=[wire.KIND_NAMES[k] for k in FIXED])
@settings(max_examples=20)
@given(data=st.data())
def test_a_message_of_fixed_form_cut_short_or_padded_is_refused(
    kind: int, data: st.DataObject
) -> None:
    encoded = data.draw(MESSAGES[kind]).encode()
    for bad in (encoded[:-1], encoded + b"\0"):
        with pytest.raises(wire.ProtocolError):
            wire.MESSAGES[kind].decode(bad)


@pytest.mark.parametrize(
    "field,value",
    [("node_type", "miner"), ("region", "mars"), ("listen", "no-port"), ("listen", "host:0")],
)
def test_hello_with_unknown_values_is_refused(field: str, value: str) -> None:
    fields = {
        "version": 1,
        "chain_id": "c",
        "genesis_hash": bytes(32),
        "public_key": bytes(32),
        "node_type": "full",
        "region": "eu",
        "listen": "127.0.0.1:1",
        "api_port": 7370,
        "ephemeral": bytes(32),
        field: value,
    }
    with pytest.raises(wire.ProtocolError):
        wire.Hello.decode(wire.Hello(**fields).encode())


def test_too_many_peer_records_are_refused() -> None:
    record = wire.PeerRecord(bytes(32), "full", "eu", "127.0.0.1:1")
    with pytest.raises(ValueError):
        wire.Peers((record,) * (wire.MAX_PEER_RECORDS + 1)).encode()
    full = wire.Peers((record,) * wire.MAX_PEER_RECORDS).encode()
    assert len(wire.Peers.decode(full).records) == wire.MAX_PEER_RECORDS
    raw = (wire.MAX_PEER_RECORDS + 1).to_bytes(2, "big") + full[2:] + record.encode()
    with pytest.raises(wire.ProtocolError, match="more than"):
        wire.Peers.decode(raw)


def test_txs_caps_hold_before_the_transactions_are_cut_out() -> None:
    full = wire.Txs((b"\x01",) * wire.TX_BATCH)
    assert wire.Txs.decode(full.encode()) == full
    with pytest.raises(ValueError):
        wire.Txs((b"\x01",) * (wire.TX_BATCH + 1)).encode()
    with pytest.raises(wire.ProtocolError, match=f"over {wire.TX_BATCH}"):
        wire.Txs.decode(tx.frame_batch([b"\x01"] * (wire.TX_BATCH + 1)))
    with pytest.raises(wire.ProtocolError, match="no batch is as big"):
        wire.Txs.decode(bytes(wire.TX_BATCH * wire.MAX_FRAMED_TX + 1))


def test_blocks_and_headers_hold_at_most_max_blocks_pairs() -> None:
    for cls in (wire.Blocks, wire.Headers):
        full = cls(((b"b", b"c"),) * wire.MAX_BLOCKS)
        assert cls.decode(full.encode()) == full
        with pytest.raises(wire.ProtocolError, match="more than"):
            cls.decode(full.encode() + cls(((b"b", b"c"),)).encode())


def test_a_pair_length_beyond_the_frame_is_refused_before_anything_is_read() -> None:
    with pytest.raises(wire.ProtocolError, match="truncated"):
        wire.Blocks.decode((2**32 - 1).to_bytes(4, "big") + b"tiny")


@pytest.mark.parametrize(
    "address,expected", [("127.0.0.1:7471", ("127.0.0.1", 7471)), ("[::1]:80", ("::1", 80))]
)
def test_addresses_split_and_join(address: str, expected: tuple[str, int]) -> None:
    assert wire.split_address(address) == expected
    assert wire.join_address(*expected) == address


@pytest.mark.parametrize("address", ["", "host", "host:", ":1", "host:99999", "host:x"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        wire.split_address(address)


# ---- golden encodings ----------------------------------------------------------------------
# Computed from the codecs as they were in bft.py, p2p.py and node.py before they moved here
# (commit 9e8e12b): a change to any byte on the wire fails this test.
PK = bytes(range(32))
SIG = bytes(range(64, 128))
CERT = CommitCertificate(7, 2, b"\x55" * 32, ((PK, SIG),)).encode()
GOLDEN_MESSAGES = {
    "HELLO": wire.Hello(
        3, "qnet-golden", b"\x11" * 32, PK, "super", "eu", "127.0.0.1:7000", 8080, b"\x22" * 32
    ),
    "AUTH": wire.Auth(SIG),
    "GET_PEERS": wire.GetPeers(),
    "PEERS": wire.Peers(
        (
            wire.PeerRecord(PK, "full", "ap", "[::1]:9000"),
            wire.PeerRecord(b"\x33" * 32, "super", "na", "10.0.0.1:1"),
        )
    ),
    "CONSENSUS_VOTE": wire.Consensus(
        tendermint.Vote(tendermint.VoteKind.PRECOMMIT, "qnet-golden", 7, 2, b"\x44" * 32, PK, SIG)
    ),
    "CONSENSUS_NIL_PREVOTE": wire.Consensus(
        tendermint.Vote(tendermint.VoteKind.PREVOTE, "qnet-golden", 7, 0, None, PK, SIG)
    ),
    "CONSENSUS_PROPOSAL": wire.Consensus(
        tendermint.Proposal("qnet-golden", 7, 1, 0, b"some value", PK, SIG)
    ),
    "TXS": wire.Txs((b"first tx", b"\x00" * 3, b"x" * 300)),
    "STATUS": wire.Status(7, CERT),
    "STATUS_0": wire.Status(0, b""),
    "GET_BLOCKS": wire.GetBlocks(8, 71),
    "BLOCKS": wire.Blocks(((b"block-one", CERT), (b"block-two", b""))),
    "PING": wire.Ping(123456789),
    "PONG": wire.Pong(987654321),
    "HEADERS": wire.Headers(((b"header", CERT),)),
    "GET_HEADERS": wire.GetHeaders(9, 9),
    "GET_NODE": wire.GetNode(PK),
    "NODE": wire.NodeView(PK, wire.HeartbeatView(True, None, 5, 1, 12)),
    "NODE_2": wire.NodeView(PK, wire.HeartbeatView(False, 3, 0, 0, 4)),
}
GOLDEN = {
    "HELLO": """
        030b716e65742d676f6c64656e1111111111111111111111111111111111111111111111111111111111
        111111000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f05737570657202
        65750e3132372e302e302e313a373030301f902222222222222222222222222222222222222222222222
        222222222222222222
    """,
    "AUTH": """
        404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60616263646566676869
        6a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
    """,
    "GET_PEERS": "",
    "PEERS": """
        0002000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f0466756c6c026170
        0a5b3a3a315d3a3930303033333333333333333333333333333333333333333333333333333333333333
        33057375706572026e610a31302e302e302e313a31
    """,
    "CONSENSUS_VOTE": """
        220b716e65742d676f6c64656e0000000000000007000000024444444444444444444444444444444444
        444444444444444444444444444444000102030405060708090a0b0c0d0e0f101112131415161718191a
        1b1c1d1e1f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f6061626364
        65666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
    """,
    "CONSENSUS_NIL_PREVOTE": """
        210b716e65742d676f6c64656e0000000000000007000000000000000000000000000000000000000000
        000000000000000000000000000000000102030405060708090a0b0c0d0e0f101112131415161718191a
        1b1c1d1e1f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f6061626364
        65666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
    """,
    "CONSENSUS_PROPOSAL": """
        230b716e65742d676f6c64656e00000000000000070000000100000000000102030405060708090a0b0c
        0d0e0f101112131415161718191a1b1c1d1e1f404142434445464748494a4b4c4d4e4f50515253545556
        5758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f73
        6f6d652076616c7565
    """,
    "TXS": """
        000866697273742074780003000000012c78787878787878787878787878787878787878787878787878
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878
        7878787878787878787878787878787878787878787878
    """,
    "STATUS": """
        000000000000000700000000000000070000000255555555555555555555555555555555555555555555
        55555555555555555555000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
        404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60616263646566676869
        6a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
    """,
    "STATUS_0": "0000000000000000",
    "GET_BLOCKS": "00000000000000080000000000000047",
    "BLOCKS": """
        00000009626c6f636b2d6f6e650000008c00000000000000070000000255555555555555555555555555
        55555555555555555555555555555555555555000102030405060708090a0b0c0d0e0f10111213141516
        1718191a1b1c1d1e1f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60
        6162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f00000009626c6f636b2d74
        776f00000000
    """,
    "PING": "00000000075bcd15",
    "PONG": "000000003ade68b1",
    "HEADERS": """
        000000066865616465720000008c00000000000000070000000255555555555555555555555555555555
        55555555555555555555555555555555000102030405060708090a0b0c0d0e0f10111213141516171819
        1a1b1c1d1e1f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60616263
        6465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
    """,
    "GET_HEADERS": "00000000000000090000000000000009",
    "GET_NODE": """
        000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
    """,
    "NODE": """
        000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01ffffffffffffffff00
        0000000000000500000001000000000000000c
    """,
    "NODE_2": """
        000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00000000000000000300
        00000000000000000000000000000000000004
    """,
}


def test_the_bytes_on_the_wire_are_those_of_protocol_3() -> None:
    assert {type(m).KIND for m in GOLDEN_MESSAGES.values()} == set(wire.MESSAGES)
    for name, message in GOLDEN_MESSAGES.items():
        golden = bytes.fromhex(GOLDEN[name])
        assert message.encode() == golden, name
        assert wire.MESSAGES[type(message).KIND].decode(golden) == message, name
