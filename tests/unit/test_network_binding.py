"""Nothing signed for one network is valid on another with the same chain id and validator
keys (issue 12: a testnet reset, or a second network cloned from the same inventory).

Two genesis documents differ only in their genesis time, so in their hash: a transaction,
a node proof, a block, a commit certificate and a light client's head of the first are
refused by the second, with real signed objects and the real verification paths.
"""

import asyncio

import pytest

from qnet import crypto, tx
from qnet.block import Block, BlockError, CommitCertificate, Header, precommit_message, tx_root
from qnet.config import load_config
from qnet.genesis import Genesis, Params, make_genesis
from qnet.light import LightNode
from qnet.node import InvalidBlock, Node, check_certificate

CHAIN = "qnet-testnet"
VALIDATORS = [crypto.KeyPair(bytes([0x10 + i]) * 32) for i in range(4)]
POWERS = {k.public_key: 1 for k in VALIDATORS}
WALLET = crypto.KeyPair(b"\x20" * 32)
FUNDS = 10**12
SINK = b"\x21" * 20


def genesis(time_ms: int) -> Genesis:
    return make_genesis(
        CHAIN,
        [(k.node_id, "eu") for k in VALIDATORS],
        {crypto.encode_address(WALLET.address): FUNDS},
        Params(epoch_ms=10**12),
        genesis_time_ms=time_ms,
    )


OLD = genesis(1_700_000_000_000)
NEW = genesis(1_700_000_900_000)  # the same testnet made again: same id, keys and funds


@pytest.fixture
def node(tmp_path):
    """A validator of the new network."""
    n = Node(load_config(tmp_path, region="eu"), NEW, VALIDATORS[0])
    yield n
    n.close()


def certified_block(of: Genesis) -> tuple[Block, CommitCertificate]:
    """Block 1 of a network, signed by its proposer and precommitted by 3 of 4 validators."""
    proposer = VALIDATORS[1]
    header = Header(
        CHAIN,
        1,
        of.genesis_time_ms + 1_000,
        bytes(32),
        tx_root([]),
        0,
        crypto.digest(b"state"),
        proposer.public_key,
    )
    block = Block(header, proposer.sign(header.signing_message(of.network)), ())
    message = precommit_message(of.network, 1, 0, block.hash)
    signatures = tuple((k.public_key, k.sign(message)) for k in VALIDATORS[:3])
    return block, CommitCertificate(1, 0, block.hash, signatures)


def test_the_networks_share_chain_id_keys_and_funds_but_not_the_genesis_hash():
    assert (OLD.chain_id, OLD.validators, OLD.balances) == (
        NEW.chain_id,
        NEW.validators,
        NEW.balances,
    )
    assert OLD.network != NEW.network
    assert OLD.network.genesis_hash == OLD.hash


def test_a_transaction_signed_for_the_old_network_is_refused_with_a_clear_message(node):
    old = tx.make_transfer(WALLET, OLD.network, 0, 1_000, SINK, 5)
    (refused,) = asyncio.run(node.submit([old]))
    assert refused.code == "bad_signature"
    assert f"on chain '{CHAIN}' (genesis {NEW.hash.hex()[:16]})" in refused.message
    assert "it may be signed for another network with this chain id" in refused.message
    assert node.tx_status(old.id)["reason"] == "bad_signature"
    assert len(node.mempool) == 0 and node.state.account(WALLET.address) == (FUNDS, 0)
    # The same transfer signed for this network: the same bytes but the signature, admitted.
    new = tx.make_transfer(WALLET, NEW.network, 0, 1_000, SINK, 5)
    assert new.body == old.body and new.id != old.id
    assert asyncio.run(node.submit([new])) == [None]


def test_a_node_proof_for_the_old_network_does_not_activate_on_the_new(node):
    node_key = crypto.KeyPair(b"\x30" * 32)
    old_proof = tx.prove_node(node_key, OLD.network, WALLET.address)
    burn = NEW.params.activation_fee_light
    activation = tx.make_activate(
        WALLET, NEW.network, 0, 1_000, node_key.public_key, "light", "eu", burn, old_proof
    )
    assert not activation.verify_signature(NEW.network)
    (refused,) = asyncio.run(node.submit([activation]))
    assert refused.code == "bad_signature" and "node key's proof" in refused.message
    assert "another network" in refused.message and len(node.mempool) == 0
    proof = tx.prove_node(node_key, NEW.network, WALLET.address)
    fresh = tx.make_activate(
        WALLET, NEW.network, 0, 1_000, node_key.public_key, "light", "eu", burn, proof
    )
    assert asyncio.run(node.submit([fresh])) == [None]


def test_a_commit_certificate_and_block_of_the_old_network_fail_on_the_new(node):
    block, cert = certified_block(OLD)
    check_certificate(block, cert, OLD.network, POWERS)
    block.verify_shape(OLD.network)
    with pytest.raises(BlockError, match="bad precommit signature"):
        cert.verify(NEW.network, POWERS)
    with pytest.raises(InvalidBlock, match="bad precommit signature"):
        check_certificate(block, cert, NEW.network, POWERS)
    with pytest.raises(BlockError, match="bad proposer signature"):
        block.verify_shape(NEW.network)
    # What a node of the new network does with it when a peer serves it for sync.
    with pytest.raises(InvalidBlock, match="bad precommit signature"):
        asyncio.run(node.apply_certified(block, cert))
    assert node.height == 0


def light_client(data_dir, of: Genesis) -> LightNode:
    config = load_config(data_dir, node_type="light", region="eu")
    return LightNode(config, of, crypto.KeyPair(b"\x40" * 32))


def test_a_light_client_of_the_new_network_refuses_a_head_of_the_old(tmp_path):
    light = light_client(tmp_path, NEW)
    old_block, old_cert = certified_block(OLD)
    with pytest.raises(InvalidBlock, match="bad precommit signature"):
        light.accept(old_block.header, old_cert)
    assert light.height == 0 and not (tmp_path / "light_head").exists()
    new_block, new_cert = certified_block(NEW)
    assert light.accept(new_block.header, new_cert)
    assert light.height == 1 and light.head_hash == new_block.hash


def test_a_light_client_of_the_new_network_ignores_the_head_saved_under_the_old(tmp_path):
    """A data dir kept across a reset: the head the old network certified is not resumed."""
    old_block, old_cert = certified_block(OLD)
    assert light_client(tmp_path, OLD).accept(old_block.header, old_cert)
    assert light_client(tmp_path, OLD).height == 1  # resumed under its own network
    assert light_client(tmp_path, NEW).height == 0
