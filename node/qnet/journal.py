"""The mempool journal: a transaction is on disk before this node answers "accepted" for it.

An append-only file (``mempool.journal`` in the data dir) of records
``length:u32 crc32:u32 payload``, each payload a transaction's canonical encoding
(``Transaction.raw``). Appends are group-committed: records appended while a write and
fsync is under way wait for the next one, so concurrent submitters share one fsync, and
the blocking write runs in a thread, never on the event loop.

At start the node reads the records back (``read_journal``), re-admits them through the
normal admission checks and rewrites the file with what is still pending (``rewrite``). A
torn last record (a crash in mid-write) is ignored; a record whose checksum or length is
wrong stops the reading there, with what it cost reported, so a damaged journal never
stops the node.

The file stays bounded: when it holds more than ``COMPACT_FACTOR`` times the bytes of the
transactions still pending (and more than ``COMPACT_MIN_BYTES``), the next flush rewrites
it from the mempool instead of appending. The mempool's capacity bounds what is pending, so
the file holds at most that many records' worth times the factor, plus the minimum and one
batch.
"""

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .tx import MAX_TX_BYTES, Transaction

log = logging.getLogger("qnet.journal")

_RECORD = struct.Struct(">II")  # payload length, crc32 of the payload
COMPACT_FACTOR = 2
COMPACT_MIN_BYTES = 8 * 2**20


class JournalError(OSError):
    """Records could not be made durable: the transactions they hold were not kept."""


class Pending(Protocol):
    """What the journal needs of the mempool to rewrite itself: what is still pending."""

    @property
    def raw_bytes(self) -> int: ...  # of the pending transactions' encodings

    def __len__(self) -> int: ...

    def pending(self) -> list[Transaction]: ...


@dataclass(frozen=True)
class Contents:
    records: list[bytes]  # payloads of the intact records, in order
    torn_bytes: int  # an incomplete last record, ignored
    damaged_at: int | None  # offset of a record that fails its checks; reading stopped there
    dropped_bytes: int  # bytes from ``damaged_at`` to the end of the file


def record(payload: bytes) -> bytes:
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def record_bytes(payload_bytes: int, count: int) -> int:
    """The size on disk of ``count`` records holding ``payload_bytes`` in all."""
    return payload_bytes + count * _RECORD.size


def parse(data: bytes) -> Contents:
    records: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + _RECORD.size > end:
            return Contents(records, end - pos, None, 0)
        length, crc = _RECORD.unpack_from(data, pos)
        start = pos + _RECORD.size
        if not 0 < length <= MAX_TX_BYTES:
            return Contents(records, 0, pos, end - pos)
        if start + length > end:
            return Contents(records, end - pos, None, 0)
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            return Contents(records, 0, pos, end - pos)
        records.append(payload)
        pos = start + length
    return Contents(records, 0, None, 0)


def read_journal(path: Path) -> Contents:
    """The journal's intact records; an absent file holds none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Contents([], 0, None, 0)
    contents = parse(data)
    if contents.torn_bytes:
        log.info("journal %s: ignored a torn last record of %d bytes", path, contents.torn_bytes)
    if contents.damaged_at is not None:
        log.warning(
            "journal %s: record at byte %d is damaged (bad length or checksum); read %d "
            "records before it and dropped the last %d bytes",
            path,
            contents.damaged_at,
            len(contents.records),
            contents.dropped_bytes,
        )
    return contents


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite(path: Path, payloads: list[bytes]) -> int:
    """Replace the journal by one holding ``payloads``, atomically (write a temporary file,
    fsync it, rename it over the journal, fsync the directory); returns its size."""
    data = b"".join(record(p) for p in payloads)
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
    _fsync_dir(path.parent)
    return len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Journal:
    """Group-committed appends to the journal file, and its compaction.

    ``append`` returns once its records are fsynced. One flusher task at a time does the
    writing: it takes everything appended since its last write, writes and fsyncs it in a
    thread, and wakes the appenders it covered; appends that arrive meanwhile form the next
    batch. ``observe(records, seconds)`` is told of every fsync (metrics).
    """

    def __init__(
        self,
        path: Path,
        pending: Pending,
        observe: Callable[[int, float], None] = lambda records, seconds: None,
    ):
        self.path = path
        self._pending = pending
        self._observe = observe
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size  # bytes written and fsynced
        self._buffer = bytearray()  # records appended since the flusher last took them
        self._buffered = 0  # how many
        self._batch: asyncio.Future | None = None  # resolved when the buffer is durable
        self._flusher: asyncio.Task | None = None

    async def append(self, txs: list[Transaction]) -> None:
        """Journal ``txs``; returns once they are durable, raises JournalError if they could
        not be written. Cancelling the caller does not cancel the write."""
        if not txs:
            return
        for tx in txs:
            self._buffer += record(tx.raw)
        self._buffered += len(txs)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="journal")
        await asyncio.shield(batch)

    def compaction_due(self, incoming: int = 0) -> bool:
        live = record_bytes(self._pending.raw_bytes, len(self._pending))
        return self.size + incoming > max(COMPACT_MIN_BYTES, COMPACT_FACTOR * live)

    async def _flush(self) -> None:
        try:
            while self._batch is not None:
                data, count, done = bytes(self._buffer), self._buffered, self._batch
                self._buffer, self._buffered, self._batch = bytearray(), 0, None
                try:
                    if self.compaction_due(len(data)):
                        await self._compact()  # holds what ``data`` held, if still pending
                    else:
                        await asyncio.to_thread(self._write, data, count)
                except OSError as exc:
                    log.error("journal %s: cannot write %d records: %s", self.path, count, exc)
                    done.set_exception(JournalError(f"cannot write the journal: {exc}"))
                    done.exception()  # retrieved: every appender raises its own copy
                else:
                    done.set_result(None)
        finally:
            self._flusher = None

    def _write(self, data: bytes, count: int) -> None:
        started = time.perf_counter()
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            # Cut a partly written batch off, or the records after it would be unreadable.
            os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)
        self._observe(count, time.perf_counter() - started)

    async def _compact(self) -> None:
        """Rewrite the journal from what is pending now (taken on the event loop, so it
        holds every transaction admitted so far), then append to the new file."""
        payloads = [tx.raw for tx in self._pending.pending()]
        before = self.size
        started = time.perf_counter()
        await asyncio.to_thread(self._replace, payloads)
        self._observe(len(payloads), time.perf_counter() - started)
        log.info(
            "journal compacted from %d to %d bytes (%d pending transactions)",
            before,
            self.size,
            len(payloads),
        )

    def _replace(self, payloads: list[bytes]) -> None:
        size = rewrite(self.path, payloads)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.close(self._fd)
        self._fd, self.size = fd, size

    async def rewrite_with(self, payloads: list[bytes]) -> None:
        """At start: replace the journal's contents by ``payloads`` (what is pending after
        re-admitting what it held)."""
        await asyncio.to_thread(self._replace, payloads)

    async def close(self) -> None:
        """Let a write under way finish, then close the file."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        os.close(self._fd)
