"""Admission and block limits seen from outside a real node: blocks never exceed the genesis
limits whatever is waiting, a replacement needs its fee bump, and what fails a cheap check
is refused for that reason even when its signature is bad too."""

import json

from qnet import crypto, tx
from qnet.genesis import Params
from qnet.localnode import CHAIN_ID, NO_EMPTY_BLOCKS, LocalNode
from qnet.mempool import REPLACEMENT_BUMP_PERCENT, replacement_fee

FUNDS = 1_000 * 10**9
FEE = Params().min_fee
SINK = crypto.KeyPair(b"\x42" * 32).address


def transfer(node: LocalNode, key: crypto.KeyPair, nonce: int, fee: int = FEE) -> tx.Transaction:
    return tx.make_transfer(key, node.genesis.network, nonce, fee, SINK, 1)


def post_json(node: LocalNode, t: tx.Transaction) -> tuple[int, dict]:
    return node.post("/api/v1/transactions", json.dumps(t.to_json()).encode())


def test_blocks_stay_within_the_genesis_limits(tmp_path):
    wallets = [crypto.KeyPair.generate() for _ in range(5)]
    # A transfer's size is the same on every network of this chain id.
    any_network = crypto.Network(CHAIN_ID, bytes(32))
    size = tx.framed_size(tx.make_transfer(wallets[0], any_network, 0, FEE, SINK, 1))
    params = Params(epoch_ms=10**12, max_block_txs=4, max_block_bytes=3 * size)
    node = LocalNode.single(tmp_path / "v1", {w.address: FUNDS for w in wallets}, params)
    node.start()
    try:
        txs = [transfer(node, w, n) for n in range(4) for w in wallets]
        code, body = node.post(
            "/api/v1/transactions/batch", tx.encode_batch(txs), "application/octet-stream"
        )
        assert (code, body["accepted"]) == (200, len(txs)), body
        for t in txs:
            assert node.wait_committed(t.id, timeout=60)["status"] == "committed"
        height = node.status()["height"]
        code, blocks = node.get(f"/api/v1/blocks?from=1&to={height}")
        assert code == 200
        counts = [h["tx_count"] for h in blocks["headers"]]
        assert max(counts) == 3  # the byte cap binds before max_block_txs
        assert sum(counts) >= len(txs)  # the validator's heartbeat may ride along
    finally:
        node.stop()


def test_a_replacement_needs_its_fee_bump_and_cheap_checks_come_first(tmp_path):
    alice = crypto.KeyPair.generate()
    node = LocalNode.single(
        tmp_path / "v1",
        {alice.address: FUNDS},
        Params(block_interval_ms=60_000, epoch_ms=10**12),  # nothing commits during the test
        NO_EMPTY_BLOCKS,
    )
    node.start()
    try:
        first = transfer(node, alice, 0, fee=2 * FEE)
        assert post_json(node, first)[0] == 202
        least = replacement_fee(first.fee)
        assert least == first.fee * (100 + REPLACEMENT_BUMP_PERCENT) // 100
        code, body = post_json(node, transfer(node, alice, 0, fee=least - 1))
        assert (code, body["error"]["code"]) == (409, "duplicate")
        assert f"at least {least}" in body["error"]["message"]
        # A bad signature on a nonce out of the window: refused for the nonce.
        gap = {**transfer(node, alice, 7).to_json(), "signature": "00" * 64}
        del gap["id"]
        code, body = node.post("/api/v1/transactions", json.dumps(gap).encode())
        assert (code, body["error"]["code"]) == (422, "nonce_gap")
        replacement = transfer(node, alice, 0, fee=least)
        assert post_json(node, replacement)[0] == 202
        status = node.get(f"/api/v1/transactions/{replacement.id.hex()}")[1]["status"]
        assert status == "pending"
        replaced = node.get(f"/api/v1/transactions/{first.id.hex()}")[1]
        assert (replaced["status"], replaced["reason"]) == ("rejected", "duplicate")
        assert replaced["message"].startswith(f"replaced by {replacement.id.hex()}")
    finally:
        node.stop()
