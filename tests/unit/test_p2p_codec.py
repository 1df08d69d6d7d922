"""The p2p wire codec, the handshake's signed message, and the per-peer limits."""

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnet import crypto, p2p
from qnet.genesis import REGIONS

keys = st.binary(min_size=32, max_size=32)
texts = st.text(max_size=40)
addresses = st.builds(
    p2p.join_address,
    st.sampled_from(["127.0.0.1", "10.0.0.7", "::1", "node.example"]),
    st.integers(1, 65535),
)
listens = st.one_of(st.just(""), addresses)
hellos = st.builds(
    p2p.Hello,
    st.integers(0, 255),
    texts,
    keys,
    keys,
    st.sampled_from(p2p.NODE_TYPES),
    st.sampled_from(REGIONS),
    listens,
    st.integers(0, 65535),
    keys,
)
records = st.builds(
    p2p.PeerRecord, keys, st.sampled_from(p2p.NODE_TYPES), st.sampled_from(REGIONS), addresses
)


@given(hellos)
def test_hello_round_trips(hello: p2p.Hello) -> None:
    assert p2p.Hello.decode(hello.encode()) == hello


@given(st.lists(records, max_size=p2p.MAX_PEER_RECORDS))
def test_peers_round_trip(peers: list[p2p.PeerRecord]) -> None:
    assert p2p.decode_peers(p2p.encode_peers(peers)) == peers


@given(st.binary(max_size=300))
def test_garbage_is_a_protocol_error_and_nothing_else(data: bytes) -> None:
    for decode in (p2p.Hello.decode, p2p.decode_peers):
        with contextlib.suppress(p2p.ProtocolError):
            decode(data)


@given(hellos)
def test_truncated_or_padded_hello_is_refused(hello: p2p.Hello) -> None:
    raw = hello.encode()
    with pytest.raises(p2p.ProtocolError):
        p2p.Hello.decode(raw[:-1])
    with pytest.raises(p2p.ProtocolError):
        p2p.Hello.decode(raw + b"\0")


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
    with pytest.raises(p2p.ProtocolError):
        p2p.Hello.decode(p2p.Hello(**fields).encode())


def test_too_many_peer_records_are_refused() -> None:
    record = p2p.PeerRecord(bytes(32), "full", "eu", "127.0.0.1:1")
    with pytest.raises(ValueError):
        p2p.encode_peers([record] * (p2p.MAX_PEER_RECORDS + 1))
    raw = p2p._U16.pack(p2p.MAX_PEER_RECORDS + 1) + record.encode() * (p2p.MAX_PEER_RECORDS + 1)
    with pytest.raises(p2p.ProtocolError):
        p2p.decode_peers(raw)


def _hello(key: crypto.KeyPair, ephemeral: bytes, chain_id: str = "c") -> bytes:
    return p2p.Hello(
        p2p.PROTOCOL_VERSION, chain_id, bytes(32), key.public_key, "super", "eu", "", 0, ephemeral
    ).encode()


def test_a_handshake_signature_is_good_for_one_direction_of_one_session_only() -> None:
    a, b, c = (crypto.KeyPair.generate() for _ in range(3))
    a_hello, b_hello = _hello(a, b"\1" * 32), _hello(b, b"\2" * 32)
    signature = a.sign(p2p.auth_message(a_hello, b_hello))
    assert crypto.verify(a.public_key, signature, p2p.auth_message(a_hello, b_hello))
    others = {
        "reflected back to its maker": p2p.auth_message(b_hello, a_hello),
        "relayed to another node": p2p.auth_message(a_hello, _hello(c, b"\2" * 32)),
        "replayed against a new ephemeral key": p2p.auth_message(a_hello, _hello(b, b"\3" * 32)),
        "replayed with a new own ephemeral key": p2p.auth_message(_hello(a, b"\4" * 32), b_hello),
        "used on another chain": p2p.auth_message(
            _hello(a, b"\1" * 32, "d"), _hello(b, b"\2" * 32, "d")
        ),
    }
    for what, message in others.items():
        assert not crypto.verify(a.public_key, signature, message), what


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = p2p.TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.take(0.0) for _ in range(5))
    assert not bucket.take(0.0)
    assert bucket.take(0.1)  # one token back after 1/rate seconds
    assert not bucket.take(0.1)
    assert sum(bucket.take(100.0) for _ in range(10)) == 5  # refills to the burst, no more


def test_frame_queue_bounds_bytes_and_hands_over_in_order() -> None:
    async def scenario() -> None:
        q = p2p.FrameQueue(limit_bytes=3 * (100 + p2p.FRAME_OVERHEAD))
        assert all(q.offer(bytes([i]) * 100) for i in range(3))
        assert not q.offer(b"x")  # full: an outbound peer this slow is dropped
        newer = p2p.FrameQueue(limit_bytes=10_000)
        assert newer.offer(b"new")
        newer.take_over(q)
        assert [await newer.get() for _ in range(4)] == [
            bytes([0]) * 100,
            bytes([1]) * 100,
            bytes([2]) * 100,
            b"new",
        ]
        assert len(q) == 0 and q.size == 0

        waiting = p2p.FrameQueue(limit_bytes=100 + p2p.FRAME_OVERHEAD)
        await waiting.put(b"a" * 100)
        put = asyncio.create_task(waiting.put(b"b" * 100))  # an inbound reader waits for room
        await asyncio.sleep(0.01)
        assert not put.done()
        assert await waiting.get() == b"a" * 100
        await put
        waiting.finish()
        assert waiting.clear() == [b"b" * 100]  # what a banned peer had still queued
        assert await waiting.get() is None  # the end mark survives

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "address,expected", [("127.0.0.1:7471", ("127.0.0.1", 7471)), ("[::1]:80", ("::1", 80))]
)
def test_addresses_split_and_join(address: str, expected: tuple[str, int]) -> None:
    assert p2p.split_address(address) == expected
    assert p2p.join_address(*expected) == address


@pytest.mark.parametrize("address", ["", "host", "host:", ":1", "host:99999", "host:x"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        p2p.split_address(address)


def test_frames_waiting_together_are_taken_together_up_to_a_record() -> None:
    q = p2p.FrameQueue(limit_bytes=10_000)
    for f in (b"a" * 10, b"b" * 20, b"c" * 30):
        assert q.offer(f)
    q.finish()
    assert q.pop_ready(35) == [b"a" * 10, b"b" * 20]  # the next one does not fit
    assert q.size == 30 + p2p.FRAME_OVERHEAD
    assert q.pop_ready(100) == [b"c" * 30]
    assert q.pop_ready(100) == []  # the end mark stays for the writer
    assert q.size == 0 and len(q) == 1
