"""The light client: it takes a header only with a certificate from the validator set,
follows the chain without its state, notices a fork, and resumes from its saved head."""

from dataclasses import replace

import pytest

from qnet import crypto
from qnet.block import CommitCertificate, Header, precommit_message
from qnet.config import load_config
from qnet.genesis import make_genesis
from qnet.light import Fork, LightNode
from qnet.node import InvalidBlock

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
