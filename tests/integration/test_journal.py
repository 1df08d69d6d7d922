"""Accepted means kept, also across SIGKILL: a node journals what it accepts before it
answers, re-admits it at start, and every transaction it accepted is committed.

Three kills of the node taking a steady stream of transactions: first while it runs alone
(nothing it accepts can have reached another node, so without the journal every one is
lost), then twice inside a running network of four validators. The 503 answer of a
stopping node: test_api_contract.py."""

import asyncio
import random
import threading
from pathlib import Path

import pytest

from qnet import crypto, loadgen
from qnet.config import load_config
from qnet.genesis import make_genesis
from qnet.journal import read_journal, record
from qnet.localnode import CHAIN_ID, LocalNode, http, local_net, start_all, wait_for
from qnet.node import Node
from qnet.tx import encode_batch, make_transfer

pytestmark = pytest.mark.integration

ROUNDS = 3
SENDERS_PER_ROUND = 20
BATCH = 25
FEE = 1_000


class Stream:
    """Posts batches to one node, one after another, until stopped or the node dies;
    remembers the ids of the transactions the node answered accepted for."""

    def __init__(self, node: LocalNode, txs: list, accepted_batches_before_kill: int):
        self.node = node
        self.batches = [txs[i : i + BATCH] for i in range(0, len(txs), BATCH)]
        self.accepted: set[str] = set()
        self.refused: dict[str, str] = {}
        self.enough = threading.Event()
        self._want = accepted_batches_before_kill
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(15)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        for answered, batch in enumerate(self.batches, 1):
            try:
                code, body = http(
                    "POST",
                    self.node.url + "/api/v1/transactions/batch",
                    encode_batch(batch),
                    "application/octet-stream",
                    timeout=5,
                )
            except OSError:
                break  # killed under us: no answer, nothing counted as accepted
            if code != 200:
                break
            refused = {r["index"]: r["code"] for r in body["rejected"]}
            for i, t in enumerate(batch):
                if i in refused:
                    self.refused[t.id.hex()] = refused[i]
                else:
                    self.accepted.add(t.id.hex())
            if answered == self._want:
                self.enough.set()
        self.enough.set()


def committed_ids(node: LocalNode, seen: dict[int, list[str]]) -> set[str]:
    """Ids in the node's committed blocks; ``seen`` caches the blocks read so far."""
    head = node.status()["height"]
    for height in range(len(seen) + 1, head + 1):
        seen[height] = node.get(f"/api/v1/blocks/{height}")[1]["transactions"]
    return {tx_id for ids in seen.values() for tx_id in ids}


def assert_all_kept(node: LocalNode, accepted: set[str], seen: dict[int, list[str]]) -> None:
    """Every accepted transaction ends committed, or reported rejected; none is unknown."""

    def resolved() -> bool:
        return accepted <= committed_ids(node, seen)

    try:
        wait_for(resolved, 30, f"{len(accepted)} accepted transactions to be committed")
    except AssertionError:
        missing = accepted - committed_ids(node, seen)
        statuses = {i: node.get(f"/api/v1/transactions/{i}") for i in sorted(missing)[:20]}
        lost = {i: s for i, s in statuses.items() if s[0] == 404 or s[1]["status"] == "pending"}
        assert not lost, f"{len(missing)} accepted transactions not committed; e.g. {lost}"


def test_every_accepted_transaction_survives_sigkill(tmp_path):
    rng = random.Random(11)
    senders = [[crypto.KeyPair.generate() for _ in range(SENDERS_PER_ROUND)] for _ in range(ROUNDS)]
    funded = {k.address: 10**15 for keys in senders for k in keys}
    nodes = local_net(tmp_path, 4, funded)
    target = nodes[0]
    sink = crypto.KeyPair.generate().address
    seen: dict[int, list[str]] = {}
    try:
        for round_ in range(ROUNDS):
            alone = round_ == 0  # the others are not up yet: nothing it accepts goes anywhere
            if alone:
                target.start()
            txs = loadgen.presign(senders[round_], target.genesis.network, 2_000, FEE, sink)
            stream = Stream(target, txs, rng.randint(4, 12))
            stream.start()
            assert stream.enough.wait(30), target.log()
            target.kill()
            stream.join()
            assert stream.accepted, stream.refused
            assert not stream.refused, stream.refused

            if alone:
                start_all(nodes)
                assert target.get(f"/api/v1/transactions/{min(stream.accepted)}")[0] == 200
            else:
                target.start()
            assert_all_kept(target, stream.accepted, seen)
            assert "re-admitted" in target.log()
    finally:
        for node in nodes:
            node.stop()


def _in_process_node(tmp_path: Path, genesis=None, key=None) -> Node:
    """A node in ``tmp_path`` without its network; again with ``genesis`` and ``key``."""
    return Node(load_config(tmp_path, region="eu"), genesis, key)


def _chain(alice: crypto.KeyPair) -> tuple:
    key = crypto.KeyPair.generate()
    balances = {crypto.encode_address(alice.address): 10**12}
    return make_genesis(CHAIN_ID, [(key.node_id, "eu")], balances), key


def test_the_journal_is_restored_at_start_then_holds_only_what_is_pending(tmp_path):
    alice = crypto.KeyPair.generate()
    genesis, key = _chain(alice)
    sink = crypto.KeyPair.generate().address
    network = genesis.network
    txs = [make_transfer(alice, network, n, 1_000, sink, 1) for n in range(5)]
    broke = make_transfer(alice, network, 5, 1_000, sink, 10**13)  # more than alice has
    journal = tmp_path / "mempool.journal"

    async def accept_then_stop() -> None:
        node = _in_process_node(tmp_path, genesis, key)
        assert await node.submit(txs) == [None] * 5
        await node.aclose()

    asyncio.run(accept_then_stop())
    assert read_journal(journal).records == [t.raw for t in txs]
    # A record of a transaction that can no longer run, and a torn one after it.
    with journal.open("ab") as f:
        f.write(record(broke.raw) + record(txs[0].raw)[:-3])

    async def start_again() -> Node:
        node = _in_process_node(tmp_path, genesis, key)
        await node.restore_journal()
        return node

    node = asyncio.run(start_again())
    try:
        assert [t.id for t in node.mempool.pending()] == [t.id for t in txs]
        assert node.tx_status(broke.id)["status"] == "rejected"
        assert read_journal(journal).records == [t.raw for t in txs]
    finally:
        asyncio.run(node.aclose())
