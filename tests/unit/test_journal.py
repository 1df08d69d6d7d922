"""The mempool journal: records survive as written, a torn tail and a damaged record are
handled without losing what came before, compaction keeps only what is pending, and
concurrent appenders share fsyncs."""

import asyncio
import os

import pytest

from qnet import crypto, journal
from qnet.journal import Journal, JournalError, read_journal
from qnet.mempool import Mempool
from qnet.tx import make_transfer

NETWORK = crypto.Network("qnet-test", crypto.digest(b"qnet-test genesis"))
SENDER = crypto.KeyPair.generate()
SINK = crypto.KeyPair.generate().address


def transfers(count: int, sender: crypto.KeyPair = SENDER, first_nonce: int = 0):
    return [make_transfer(sender, NETWORK, first_nonce + n, 1_000, SINK, 1) for n in range(count)]


class FakeMempool:
    """What the journal reads of the mempool: the pending transactions."""

    def __init__(self, txs=()):
        self.txs = list(txs)

    @property
    def raw_bytes(self) -> int:
        return sum(len(t.raw) for t in self.txs)

    def __len__(self) -> int:
        return len(self.txs)

    def pending(self):
        return list(self.txs)


def written(path) -> list[bytes]:
    contents = read_journal(path)
    assert contents.damaged_at is None and contents.torn_bytes == 0
    return contents.records


def test_appended_transactions_read_back_in_order(tmp_path):
    path = tmp_path / "mempool.journal"
    txs = transfers(5)

    async def scenario():
        j = Journal(path, FakeMempool(txs))
        await j.append(txs[:2])
        await j.append(txs[2:])
        await j.close()
        return j.size

    size = asyncio.run(scenario())
    assert written(path) == [t.raw for t in txs]
    assert size == os.path.getsize(path) == journal.record_bytes(sum(len(t.raw) for t in txs), 5)


def test_an_absent_journal_holds_nothing(tmp_path):
    assert read_journal(tmp_path / "none").records == []


def test_a_torn_last_record_is_ignored_and_the_rest_kept(tmp_path):
    path = tmp_path / "mempool.journal"
    txs = transfers(3)
    whole = b"".join(journal.record(t.raw) for t in txs)
    for cut in (1, 5, 8, 20, len(journal.record(txs[2].raw)) - 1):
        path.write_bytes(whole[:-cut])
        contents = read_journal(path)
        assert contents.records == [t.raw for t in txs[:2]], cut
        assert contents.damaged_at is None
        assert contents.torn_bytes == len(journal.record(txs[2].raw)) - cut


def test_a_bad_checksum_stops_reading_there(tmp_path, caplog):
    path = tmp_path / "mempool.journal"
    txs = transfers(4)
    records = [journal.record(t.raw) for t in txs]
    data = bytearray(b"".join(records))
    damaged_at = len(records[0]) + len(records[1])
    data[damaged_at + 20] ^= 0xFF  # inside the third record's payload
    path.write_bytes(bytes(data))
    contents = read_journal(path)
    assert contents.records == [txs[0].raw, txs[1].raw]
    assert contents.damaged_at == damaged_at
    assert contents.dropped_bytes == len(data) - damaged_at
    assert "damaged" in caplog.text and str(damaged_at) in caplog.text


@pytest.mark.parametrize("length", [0, 2**31])
def test_a_record_of_impossible_length_counts_as_damaged(tmp_path, length):
    path = tmp_path / "mempool.journal"
    tx = transfers(1)[0]
    path.write_bytes(journal.record(tx.raw) + length.to_bytes(4, "big") + bytes(4) + b"x" * 50)
    contents = read_journal(path)
    assert contents.records == [tx.raw]
    assert contents.damaged_at == len(journal.record(tx.raw))


def test_rewrite_with_replaces_the_contents_and_appends_go_on_after(tmp_path):
    path = tmp_path / "mempool.journal"
    old, kept, new = transfers(3)

    async def scenario():
        j = Journal(path, FakeMempool())
        await j.append([old, kept])
        await j.rewrite_with([kept.raw])
        await j.append([new])
        await j.close()

    asyncio.run(scenario())
    assert written(path) == [kept.raw, new.raw]
    assert not (tmp_path / "mempool.journal.new").exists()


def test_a_journal_mostly_dead_is_compacted_to_what_is_pending(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 2_000)
    path = tmp_path / "mempool.journal"
    mempool = FakeMempool()
    txs = transfers(60)

    async def scenario():
        j = Journal(path, mempool)
        biggest = 0
        for n, tx in enumerate(txs):
            mempool.txs = txs[max(0, n - 2) : n + 1]  # earlier ones committed meanwhile
            await j.append([tx])
            biggest = max(biggest, os.path.getsize(path))
        await j.close()
        return biggest

    biggest = asyncio.run(scenario())
    records = written(path)
    assert set(records) >= {t.raw for t in txs[-3:]}
    assert len(records) < 30  # compacted at least once
    one = len(journal.record(txs[0].raw))
    assert biggest <= 2_000 + one  # never more than the limit and one batch


def test_compaction_holds_a_real_mempool_s_pending_transactions(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 0)
    path = tmp_path / "mempool.journal"
    mempool = Mempool(shards=2, capacity=100)
    txs = transfers(6)
    for tx in txs:
        mempool.admit(tx, (10**12, 0), 0.0)
    mempool.on_committed({SENDER.address}, lambda sender: 4)  # nonces 0..3 committed
    assert mempool.raw_bytes == sum(len(t.raw) for t in txs[4:])

    async def scenario():
        j = Journal(path, mempool)
        await j.append(txs)  # 6 records for 2 pending: compacted instead of appended
        await j.close()

    asyncio.run(scenario())
    assert written(path) == [t.raw for t in txs[4:]]


def test_concurrent_appenders_share_fsyncs(tmp_path):
    path = tmp_path / "mempool.journal"
    txs = transfers(200)
    fsyncs: list[int] = []

    async def scenario():
        j = Journal(path, FakeMempool(txs), lambda records, seconds: fsyncs.append(records))
        await asyncio.gather(*(j.append([tx]) for tx in txs))
        await j.close()

    asyncio.run(scenario())
    assert sorted(written(path)) == sorted(t.raw for t in txs)
    assert sum(fsyncs) == 200
    # The first appender's write starts alone; everyone arriving while it runs shares the next.
    assert len(fsyncs) <= 3, fsyncs


def test_append_returns_only_after_its_records_are_fsynced(tmp_path, monkeypatch):
    path = tmp_path / "mempool.journal"
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd):
        real_fdatasync(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(journal.os, "fdatasync", fdatasync)
    txs = transfers(2)

    async def scenario():
        j = Journal(path, FakeMempool(txs))
        await j.append(txs[:1])
        assert synced == [os.path.getsize(path)]
        await j.append(txs[1:])
        assert synced[-1] == os.path.getsize(path)
        await j.close()

    asyncio.run(scenario())


def test_a_failed_write_raises_and_leaves_no_partial_record(tmp_path, monkeypatch):
    path = tmp_path / "mempool.journal"
    good, lost, later = transfers(3)
    real_fdatasync = os.fdatasync
    failures = iter([False, True, False])

    def fdatasync(fd):
        if next(failures):
            raise OSError(28, "No space left on device")
        real_fdatasync(fd)

    monkeypatch.setattr(journal.os, "fdatasync", fdatasync)

    async def scenario():
        j = Journal(path, FakeMempool([good, lost, later]))
        await j.append([good])
        with pytest.raises(JournalError, match="No space left"):
            await j.append([lost])
        await j.append([later])
        await j.close()

    asyncio.run(scenario())
    assert written(path) == [good.raw, later.raw]


def test_a_cancelled_appender_does_not_cancel_the_others_write(tmp_path):
    path = tmp_path / "mempool.journal"
    txs = transfers(3)

    async def scenario():
        j = Journal(path, FakeMempool(txs))
        first = asyncio.create_task(j.append(txs[:1]))
        second = asyncio.create_task(j.append(txs[1:2]))
        third = asyncio.create_task(j.append(txs[2:]))
        await asyncio.sleep(0)  # let all three join their batches
        second.cancel()
        await asyncio.gather(first, third)
        await j.close()

    asyncio.run(scenario())
    assert written(path) == [t.raw for t in txs]
