"""The sealed link after the handshake: keys agreed from the hellos, frames in records with a
counter nonce per direction; anything altered in flight is refused."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto, p2p, wire

LIMIT = 3 * p2p.RECORD_DATA
frames = st.binary(min_size=1, max_size=2 * p2p.RECORD_DATA + 10)
batches = st.lists(st.lists(frames, min_size=1, max_size=4), min_size=1, max_size=4)


def hello(key: crypto.KeyPair, ephemeral: bytes) -> bytes:
    return wire.Hello(
        p2p.PROTOCOL_VERSION, "c", bytes(32), key.public_key, "full", "eu", "", 0, ephemeral
    ).encode()


def pair(limit: int = LIMIT) -> tuple[p2p.SecretLink, p2p.SecretLink]:
    """(dialler's link, acceptor's link), agreed as two nodes agree them."""
    (d_pub, d_sec), (a_pub, a_sec) = p2p.ephemeral_keypair(), p2p.ephemeral_keypair()
    d_hello = hello(crypto.KeyPair.generate(), d_pub)
    a_hello = hello(crypto.KeyPair.generate(), a_pub)
    dialler = p2p.SecretLink.between(d_sec, a_pub, d_hello, a_hello, True, limit)
    acceptor = p2p.SecretLink.between(a_sec, d_pub, a_hello, d_hello, False, limit)
    return dialler, acceptor


def open_all(link: p2p.SecretLink, records: list[bytes]) -> list[bytes]:
    return [frame for record in records for frame in link.open(record)]


@settings(max_examples=50, deadline=None)
@given(batches, batches)
def test_frames_arrive_whole_and_in_order_both_ways(out: list, back: list) -> None:
    dialler, acceptor = pair()
    for batch in out:
        assert open_all(acceptor, list(dialler.seal(batch))) == batch
    for batch in back:
        assert open_all(dialler, list(acceptor.seal(batch))) == batch


@settings(max_examples=50, deadline=None)
@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_any_flipped_bit_is_refused(batch: list[bytes], data: st.DataObject) -> None:
    dialler, acceptor = pair()
    records = list(dialler.seal(batch))
    which = data.draw(st.integers(0, len(records) - 1))
    at = data.draw(st.integers(0, len(records[which]) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(records[which])
    tampered[at] ^= 1 << bit
    open_all(acceptor, records[:which])
    with pytest.raises(p2p.LinkError) as refused:
        acceptor.open(bytes(tampered))
    assert refused.value.reason == "tampered"


def test_replayed_reordered_dropped_or_cut_records_are_refused() -> None:
    big = bytes(range(100)) * (p2p.RECORD_DATA // 100 + 1)  # two records
    cases = {
        "replayed": lambda r: [r[0], r[0]],
        "reordered": lambda r: [r[1], r[0]],
        "dropped": lambda r: [r[1]],
        "cut short": lambda r: [r[0][:-1]],
        "cut to nothing": lambda r: [r[0][: p2p.RECORD_TAG]],
        "grown": lambda r: [r[0] + b"\0"],
    }
    for what, alter in cases.items():
        dialler, acceptor = pair()
        records = list(dialler.seal([big]))
        assert len(records) == 2
        with pytest.raises(p2p.LinkError) as refused:
            open_all(acceptor, alter(records))
        assert refused.value.reason == "tampered", what


def test_a_record_is_good_for_one_direction_of_one_link_only() -> None:
    dialler, acceptor = pair()
    record = next(dialler.seal([b"\x10hello"]))
    with pytest.raises(p2p.LinkError):
        dialler.open(record)  # reflected back to its maker
    _, other_acceptor = pair()
    with pytest.raises(p2p.LinkError):
        other_acceptor.open(record)  # relayed into another connection
    assert acceptor.open(record) == [b"\x10hello"]


def test_the_same_frame_never_seals_the_same_way_twice() -> None:
    dialler, _ = pair()
    sealed = [next(dialler.seal([b"\x10same"])) for _ in range(100)]
    assert len(set(sealed)) == 100  # the counter moves: no nonce is used twice
    assert all(b"same" not in record for record in sealed)


def test_swapped_ephemeral_keys_give_keys_that_do_not_fit() -> None:
    """A man in the middle who puts his own ephemeral key in a hello cannot read or forge
    frames (and the signature over the hellos, tested in test_p2p_codec, fails too)."""
    (d_pub, d_sec), (a_pub, a_sec), (m_pub, _) = (p2p.ephemeral_keypair() for _ in range(3))
    d_hello, a_hello = (
        hello(crypto.KeyPair.generate(), d_pub),
        hello(crypto.KeyPair.generate(), a_pub),
    )
    dialler = p2p.SecretLink.between(d_sec, m_pub, d_hello, a_hello, True, LIMIT)
    acceptor = p2p.SecretLink.between(a_sec, d_pub, a_hello, d_hello, False, LIMIT)
    with pytest.raises(p2p.LinkError):
        acceptor.open(next(dialler.seal([b"\x10x"])))


@pytest.mark.parametrize("low_order", [bytes(32), (1).to_bytes(32, "little")])
def test_an_ephemeral_key_of_low_order_is_refused(low_order: bytes) -> None:
    _, secret = p2p.ephemeral_keypair()
    with pytest.raises(wire.ProtocolError):
        p2p.shared_secret(secret, low_order)


def test_a_frame_over_the_limit_is_refused_on_its_length_before_its_bytes() -> None:
    dialler, acceptor = pair(limit=LIMIT)
    records = list(dialler.seal([bytes(LIMIT + 1)]))  # sealing leaves limits to the caller
    with pytest.raises(p2p.LinkError) as refused:
        acceptor.open(records[0])  # the first record already says how long the frame is
    assert refused.value.reason == "oversize"
    dialler, acceptor = pair(limit=LIMIT)
    assert open_all(acceptor, list(dialler.seal([bytes(LIMIT)]))) == [bytes(LIMIT)]


def test_an_empty_frame_is_malformed() -> None:
    dialler, acceptor = pair()
    with pytest.raises(p2p.LinkError) as refused:
        open_all(acceptor, list(dialler.seal([b""])))
    assert refused.value.reason == "malformed"


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=p2p.RECORD_LIMIT + 2), max_size=4))
def test_arbitrary_records_raise_nothing_but_a_link_error(records: list[bytes]) -> None:
    _, acceptor = pair()
    for record in records:
        with pytest.raises(p2p.LinkError):
            acceptor.open(record)


def test_small_frames_queued_together_share_records() -> None:
    dialler, acceptor = pair()
    batch = [bytes([16, i]) * 100 for i in range(50)]  # 10 KB in all
    records = list(dialler.seal(batch))
    assert len(records) == 1
    assert open_all(acceptor, records) == batch
    assert max(len(r) for r in dialler.seal([bytes(10 * p2p.RECORD_DATA)])) <= p2p.RECORD_LIMIT
