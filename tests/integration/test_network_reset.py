"""A testnet reset: the same chain id, validator key and funds, another genesis time. What
was signed for the first network is refused by the second through the HTTP API, and the
second chain does not change (issue 12)."""

import json
import time

import pytest

from qnet import crypto, tx
from qnet.client import Client
from qnet.genesis import Params
from qnet.localnode import NO_EMPTY_BLOCKS, local_genesis, validator_nodes

pytestmark = pytest.mark.integration

FUNDS = 1_000 * 10**9
FEE = Params().min_fee


def test_a_transaction_of_the_network_before_a_reset_is_refused_after_it(tmp_path):
    validator, alice, bob = (crypto.KeyPair.generate() for _ in range(3))
    funded = {alice.address: FUNDS}
    params = Params(epoch_ms=10**12)  # no epoch ends, so no heartbeat makes a block
    now_ms = int(time.time() * 1000)
    first = local_genesis([validator], funded, params, genesis_time_ms=now_ms - 60_000)
    second = local_genesis([validator], funded, params, genesis_time_ms=now_ms - 30_000)
    assert first.chain_id == second.chain_id and first.hash != second.hash

    (before,) = validator_nodes(tmp_path / "before", first, [validator], NO_EMPTY_BLOCKS)
    before.start()
    try:
        assert Client(before.url).network() == first.network
        old = tx.make_transfer(alice, first.network, 0, FEE, bob.address, 5 * 10**9)
        code, body = before.post("/api/v1/transactions", json.dumps(old.to_json()).encode())
        assert code == 202, body
        assert before.wait_committed(old.id)["status"] == "committed"
    finally:
        before.stop()

    (after,) = validator_nodes(tmp_path / "after", second, [validator], NO_EMPTY_BLOCKS)
    after.start()
    try:
        assert Client(after.url).network() == second.network
        alice_at, bob_at = (
            f"/api/v1/accounts/{crypto.encode_address(k.address)}" for k in (alice, bob)
        )
        baseline = after.status()["height"], after.get(alice_at)[1], after.get(bob_at)[1]
        code, body = after.post("/api/v1/transactions", json.dumps(old.to_json()).encode())
        assert code == 422, body
        assert body["error"]["code"] == "bad_signature"
        message = body["error"]["message"]
        assert f"on chain '{second.chain_id}' (genesis {second.hash.hex()[:16]})" in message
        assert "signed for another network with this chain id" in message
        code, body = after.post(
            "/api/v1/transactions/batch", tx.encode_batch([old]), "application/octet-stream"
        )
        assert code == 200 and body["accepted"] == 0, body
        assert [r["code"] for r in body["rejected"]] == ["bad_signature"]
        status = after.get(f"/api/v1/transactions/{old.id.hex()}")[1]
        assert (status["status"], status["reason"]) == ("rejected", "bad_signature")
        assert (after.status()["height"], after.get(alice_at)[1], after.get(bob_at)[1]) == baseline
        assert after.status()["mempool_size"] == 0
        # The same transfer signed again for this network is taken: nonce 0 is still alice's.
        new = tx.make_transfer(alice, second.network, 0, FEE, bob.address, 5 * 10**9)
        code, body = after.post("/api/v1/transactions", json.dumps(new.to_json()).encode())
        assert code == 202, body
        assert after.wait_committed(new.id)["status"] == "committed"
    finally:
        after.stop()
