"""A wallet's view of a running node: transfers between two wallets are listed in both
accounts' histories, newest first, each with the content the transaction endpoint gives; the
histories survive a restart, and a chain database an earlier version left without the
account index gets it when the node starts (an upgrade in place)."""

import json
import sqlite3

from qnet import crypto, tx
from qnet.genesis import Params

FEE = Params().min_fee


def history(node, address: bytes, limit: int = 100) -> list[dict]:
    """The account's whole history, walked a page of ``limit`` at a time."""
    target = f"/api/v1/accounts/{crypto.encode_address(address)}/transactions?limit={limit}"
    rows, query = [], ""
    while True:
        code, page = node.get(target + query)
        assert code == 200, page
        rows += page["transactions"]
        if page["next_cursor"] is None:
            return rows
        query = f"&cursor={page['next_cursor']}"


def test_transfers_between_two_wallets_show_in_both_histories_across_an_upgrade(node, wallets):
    alice, bob = wallets[0], wallets[1]
    network = node.genesis.network
    sent = [
        tx.make_transfer(alice, network, 0, FEE, bob.address, 5 * 10**9),
        tx.make_transfer(bob, network, 0, FEE, alice.address, 2 * 10**9),
        tx.make_transfer(alice, network, 1, 2 * FEE, bob.address, 1),
        tx.make_transfer(alice, network, 2, FEE, alice.address, 3),  # to herself: listed once
    ]
    for t in sent:
        code, body = node.post("/api/v1/transactions", json.dumps(t.to_json()).encode())
        assert code == 202, body
    answers = {t.id: node.wait_committed(t.id) for t in sent}
    for t in sent:  # the transaction endpoint: content, place and the block's time
        found = answers[t.id]
        code, block = node.get(f"/api/v1/blocks/{found['height']}")
        assert block["transactions"][found["index"]] == t.id.hex()
        assert found == {
            "status": "committed",
            "height": found["height"],
            "index": found["index"],
            "time_ms": block["header"]["time_ms"],
            **t.to_json(),
        }

    def expected(address: bytes) -> list[dict]:
        touching = [answers[t.id] for t in sent if address in (t.sender, t.to)]
        return sorted(touching, key=lambda a: (a["height"], a["index"]), reverse=True)

    alice_history, bob_history = history(node, alice.address), history(node, bob.address)
    assert alice_history == expected(alice.address) and len(alice_history) == 4
    assert bob_history == expected(bob.address) and len(bob_history) == 3
    assert history(node, alice.address, limit=1) == alice_history

    node.stop()  # as an earlier version leaves the database: no index, no record of one
    logged = len(node.log())
    with sqlite3.connect(node.data_dir / "chain.db") as conn:
        conn.execute("DROP TABLE account_txs")
        conn.execute("DELETE FROM meta WHERE key = 'account_txs_height'")
    node.start()
    assert "account index: blocks 1 to" in node.log()[logged:]
    assert history(node, alice.address) == alice_history
    assert history(node, bob.address, limit=2) == bob_history
    code, found = node.get(f"/api/v1/transactions/{sent[0].id.hex()}")
    assert (code, found) == (200, answers[sent[0].id])
