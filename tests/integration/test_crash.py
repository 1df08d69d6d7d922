"""kill -9 under load loses nothing the API reported committed; replay matches the state, and
every stored block has its account index rows."""

import random
import sqlite3
import threading
import time

from qnet import crypto, loadgen
from qnet.genesis import Genesis
from qnet.localnode import NO_EMPTY_BLOCKS, LocalNode, http
from qnet.node import replay
from qnet.storage import BlockIndex, Storage
from qnet.tx import encode_batch

SENDERS = 64
FEE = 1_000


def test_sigkill_under_load_keeps_every_committed_transaction(tmp_path):
    rng = random.Random(7)
    senders = [crypto.KeyPair.generate() for _ in range(SENDERS)]
    sink = crypto.KeyPair.generate().address
    node = LocalNode.single(
        tmp_path / "node", {k.address: 10**15 for k in senders}, config=NO_EMPTY_BLOCKS
    )
    txs = loadgen.presign(senders, node.genesis.network, 60_000, FEE, sink)
    batches = [txs[i : i + 200] for i in range(0, len(txs), 200)]
    reported: dict[str, int] = {}  # tx id -> height, as the API reported them committed
    next_batch = 0

    def load(stop: threading.Event) -> None:
        nonlocal next_batch
        while not stop.is_set() and next_batch < len(batches):
            try:
                code, _ = http(
                    "POST",
                    node.url + "/api/v1/transactions/batch",
                    encode_batch(batches[next_batch]),
                    "application/octet-stream",
                    timeout=5,
                )
            except OSError:
                return  # the node was killed under us
            if code == 200:
                next_batch += 1

    problems: list[str] = []

    def observe(stop: threading.Event) -> None:
        seen = 0
        while not stop.is_set():
            try:
                head = http("GET", node.url + "/api/v1/status", timeout=2)[1]["height"]
                for h in range(seen + 1, head + 1):
                    code, blk = http("GET", f"{node.url}/api/v1/blocks/{h}", timeout=2)
                    if code != 200:
                        problems.append(f"block {h} below head {head} answered {code}")
                        return
                    for tx_id in blk["transactions"]:
                        reported[tx_id] = h
                    seen = h
                if blk_ids := list(reported)[-5:]:  # also ask the per-transaction endpoint
                    for tx_id in blk_ids:
                        code, st = http("GET", f"{node.url}/api/v1/transactions/{tx_id}", timeout=2)
                        if st.get("status") != "committed":
                            problems.append(f"{tx_id} was in a block but is {st}")
            except OSError:
                return

    try:
        for _round in range(3):
            node.start()
            stop = threading.Event()
            threads = [threading.Thread(target=f, args=(stop,)) for f in (load, observe)]
            for t in threads:
                t.start()
            time.sleep(1.0 + rng.random() * 2)  # let load run for a random while before the kill
            count_before = len(reported)
            node.kill()
            stop.set()
            for t in threads:
                t.join(10)
            assert count_before > 0, node.log()
            assert not problems, problems

            # Everything the API called committed is still there, at the same height.
            node.start()
            status = node.status()
            stored_at: dict[str, int] = {}
            for h in range(1, status["height"] + 1):
                for tx_id in node.get(f"/api/v1/blocks/{h}")[1]["transactions"]:
                    stored_at[tx_id] = h
            lost = {i: h for i, h in reported.items() if stored_at.get(i) != h}
            assert not lost, f"{len(lost)} reported-committed transactions lost or moved"
            for tx_id in rng.sample(sorted(reported), min(200, len(reported))):
                code, st = node.get(f"/api/v1/transactions/{tx_id}")
                assert (code, st["status"], st["height"]) == (200, "committed", reported[tx_id])
            node.stop()

            # The stored state equals a replay of the stored blocks from genesis.
            storage = Storage(node.data_dir / "chain.db", index=False)
            try:
                replayed = replay(storage, Genesis.load(node.data_dir / "genesis.json"))
                stored = storage.load_state()
            finally:
                storage.close()
            assert replayed.height == stored.height >= status["height"]
            assert replayed.digest == stored.digest
            if replayed.height == status["height"]:  # else a heartbeat block came in between
                assert replayed.digest.hex() == status["state_digest"]
            assert replayed.accounts == stored.accounts

        # Each block went in with its rows of the account index, none without (read before
        # a Storage opens the database: that would complete a missing part).
        with sqlite3.connect(node.data_dir / "chain.db") as conn:
            indexed = conn.execute("SELECT * FROM account_txs").fetchall()
            ids = conn.execute("SELECT * FROM tx_index").fetchall()
            offsets = conn.execute("SELECT * FROM frame_offsets").fetchall()
            (head,) = conn.execute("SELECT value FROM meta WHERE key = 'height'").fetchone()
            (done,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'account_txs_height'"
            ).fetchone()
        storage = Storage(node.data_dir / "chain.db", index=False)
        try:
            derived = [BlockIndex.of(b.header.height, b.txs) for b, _ in storage.iter_blocks()]
        finally:
            storage.close()
        assert done == head
        assert sorted(ids) == sorted(r for d in derived for r in d.ids)
        assert sorted(indexed) == sorted(r for d in derived for r in d.accounts)
        assert sorted(offsets) == sorted(d.offsets for d in derived)
    finally:
        node.stop()
