import json

from qnet import crypto, tx


def test_transfer_commits_and_moves_funds(node, wallets):
    alice, bob = wallets[0], crypto.KeyPair.generate()
    t = tx.make_transfer(alice, node.genesis.network, 0, 1_000, bob.address, 7 * 10**9)
    code, body = node.post("/api/v1/transactions", json.dumps(t.to_json()).encode())
    assert code == 202, body
    assert node.wait_committed(t.id)["status"] == "committed"
    code, acct = node.get(f"/api/v1/accounts/{crypto.encode_address(bob.address)}")
    assert (code, acct["balance"]) == (200, str(7 * 10**9))
