"""The handshake's signed message, and the per-peer limits (token bucket, frame queue)."""

import asyncio

from qnet import crypto, p2p, wire


def _hello(key: crypto.KeyPair, ephemeral: bytes, chain_id: str = "c") -> bytes:
    return wire.Hello(
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
