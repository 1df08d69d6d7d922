"""A node stopped gracefully (SIGTERM: an upgrade, a restart) loses none of the transactions
it accepted: before it exits it hands its pending transactions up to its peers, and lets
what it queued for them leave before it closes the connections.

The case that would lose them without the hand-off, made certain: a full node accepts
transfers while its validator is not running, so its relay reaches no one; the validator
comes up and they peer; the full node is stopped. Its transfers must be committed."""

import pytest

from qnet import crypto, loadgen
from qnet.localnode import add_followers, local_net, start_all, wait_for
from qnet.tx import encode_batch

pytestmark = pytest.mark.integration


def test_a_stopping_node_hands_its_pending_transactions_on(tmp_path):
    sender = crypto.KeyPair.generate()
    (validator,) = local_net(tmp_path, 1, {sender.address: 10**15})
    (full,) = add_followers(tmp_path, [validator], [("full", "eu")])
    sink = crypto.KeyPair.generate().address
    transfers = loadgen.presign([sender], validator.genesis.network, 200, 1_000, sink)
    start_all([full])  # its validator is not up: nothing it admits goes anywhere
    try:
        code, body = full.post(
            "/api/v1/transactions/batch", encode_batch(transfers), "application/octet-stream"
        )
        assert code == 200 and body == {"accepted": len(transfers), "rejected": []}, body
        start_all([validator])
        wait_for(
            lambda: full.status()["peers"] == 1 and validator.status()["peers"] == 1,
            20,
            "the full node and the validator to peer",
        )
        # Relayed when they were admitted, to no one: the validator has none of them.
        assert validator.status()["mempool_size"] == 0
        assert validator.get(f"/api/v1/transactions/{transfers[0].id.hex()}")[0] == 404

        assert full.stop() == 0
        assert "handed 200 pending transactions to 1 peers" in full.log()
        for transfer in (transfers[0], transfers[-1]):
            assert validator.wait_committed(transfer.id)["status"] == "committed"
        committed = [
            validator.get(f"/api/v1/transactions/{t.id.hex()}")[1]["status"] for t in transfers
        ]
        assert committed == ["committed"] * len(transfers)
    finally:
        full.stop()
        validator.stop()
