"""A mempool sharded by sender.

Each shard holds, per sender, a run of transactions with consecutive nonces starting at the
sender's next nonce on chain, so every queued transaction can execute in order. The shard of
a sender is a keyed hash (BLAKE2b under a random key of this process), so nobody can grind
addresses that all land in one shard of a given node. A shard has a capacity; when it is
full, a transaction with a higher priority evicts the lowest-priority tail of another sender
in the shard, found through a heap of the senders' tails, so admitting or refusing costs
O(log n) whatever the number of senders. Replacing a pending transaction (same sender and
nonce) needs a fee ``REPLACEMENT_BUMP_PERCENT`` higher than the one it replaces.

Heartbeats are free; they rank above every fee (``Transaction.priority``), but only within a
bounded share: at most ``HEARTBEAT_SHARE_PERCENT`` of a shard's capacity (a heartbeat beyond
it is refused) and of a block's transactions (beyond it they wait for the next block), and
at most one pending per node and epoch. So they never displace more than that share of
fee-paying traffic, however many nodes are activated.

Entries expire after a time to live. The cheap checks here (``BatchCheck``) run before a
signature is verified (once per node, see ``Node``); ``admit`` checks again exactly: nonce
order, fees, room, and that the sender can pay for everything it has queued. A transaction
that passed the cheap checks is *in flight* until its batch is admitted (``release``); the
cheap checks of a later batch count it as queued, so a batch that arrives while an earlier one
of the same senders is still being verified is judged against both.
"""

import hashlib
import heapq
import itertools
import os
from dataclasses import dataclass, field

from .errors import Rejected
from .ledger import BlockLimits
from .tx import KIND_HEARTBEAT, Transaction, framed_size

REPLACEMENT_BUMP_PERCENT = 10  # a replacement pays at least this much more than what it replaces
HEARTBEAT_SHARE_PERCENT = 10  # of a shard's capacity and of a block's transactions
SHARD_KEY_BYTES = 16
SHARD_MEMORY = 100_000  # senders whose shard is remembered (the hash costs more than admission)
_TAILS_SLACK = 64  # stale tail records a shard tolerates beyond twice its senders


def replacement_fee(fee: int) -> int:
    """The least fee that replaces a pending transaction paying ``fee`` (always more)."""
    return fee + max(1, -(-fee * REPLACEMENT_BUMP_PERCENT // 100))


def heartbeat_share(slots: int) -> int:
    """How many of ``slots`` (a shard's capacity, a block's transactions) heartbeats may fill."""
    return max(1, slots * HEARTBEAT_SHARE_PERCENT // 100)


@dataclass(slots=True)
class Entry:
    tx: Transaction
    seq: int
    admitted_at: float


@dataclass(slots=True)
class SenderQueue:
    base_nonce: int
    entries: list[Entry] = field(default_factory=list)
    spend: int = 0  # amount + fee of everything queued
    heartbeat_epochs: set[int] = field(default_factory=set)  # of its pending heartbeats
    tail_token: int = -1  # of the shard's live tail record for this queue

    def copy(self) -> "SenderQueue":
        return SenderQueue(
            self.base_nonce, list(self.entries), self.spend, set(self.heartbeat_epochs)
        )


class Shard:
    __slots__ = ("capacity", "count", "heartbeats", "senders", "tails")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count = 0
        self.heartbeats = 0  # pending heartbeats in this shard
        self.senders: dict[bytes, SenderQueue] = {}
        # (priority, -seq, token, sender) of each sender's last entry, lowest first: who is
        # evicted when the shard is full (the newest of the lowest priority). A record is live
        # while its token is its queue's ``tail_token``; stale ones are skipped when met and
        # dropped all at once when they outnumber the live ones.
        self.tails: list[tuple[int, int, int, bytes]] = []

    def push_tail(self, sender: bytes, queue: SenderQueue, token: int) -> None:
        tail = queue.entries[-1]
        queue.tail_token = token
        heapq.heappush(self.tails, (tail.tx.priority, -tail.seq, token, sender))
        if len(self.tails) > 2 * len(self.senders) + _TAILS_SLACK:
            self.tails = [
                (q.entries[-1].tx.priority, -q.entries[-1].seq, q.tail_token, s)
                for s, q in self.senders.items()
            ]
            heapq.heapify(self.tails)

    def _live(self, record: tuple[int, int, int, bytes]) -> bool:
        queue = self.senders.get(record[3])
        return queue is not None and queue.tail_token == record[2]

    def _top(self) -> tuple[int, int, int, bytes] | None:
        tails = self.tails
        while tails and not self._live(tails[0]):
            heapq.heappop(tails)
        return tails[0] if tails else None

    def lowest_tail(self, exclude: bytes) -> tuple[int, bytes] | None:
        """(priority, sender) of the lowest-priority tail of a sender other than ``exclude``."""
        top = self._top()
        if top is None or top[3] != exclude:
            return None if top is None else (top[0], top[3])
        own = heapq.heappop(self.tails)
        other = self._top()
        heapq.heappush(self.tails, own)
        return None if other is None else (other[0], other[3])


class Mempool:
    def __init__(
        self,
        shards: int = 16,
        capacity: int = 200_000,
        per_sender: int = 1_000,
        ttl_s: float = 600.0,
        shard_key: bytes | None = None,
    ):
        self.shards = [Shard(max(1, capacity // shards)) for _ in range(shards)]
        self.per_sender = per_sender
        self.ttl_s = ttl_s
        self.by_id: dict[bytes, Entry] = {}
        self.raw_bytes = 0  # of the pending transactions' canonical encodings (the journal's)
        self._seq = itertools.count()
        self._shard_key = os.urandom(SHARD_KEY_BYTES) if shard_key is None else shard_key
        self._shard_numbers: dict[bytes, int] = {}  # sender -> shard, up to SHARD_MEMORY
        self._heartbeat_senders: set[bytes] = set()  # senders with a pending heartbeat
        # Passed the cheap checks, not yet admitted or refused: sender -> those txs in order
        # (each with its shard if it is a new entry, None if a replacement), and shard ->
        # (new entries, heartbeats among them).
        self._in_flight: dict[bytes, list[tuple[Transaction, int | None]]] = {}
        self._in_flight_ids: set[bytes] = set()
        self._in_flight_room: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self.by_id

    def get(self, tx_id: bytes) -> Transaction | None:
        entry = self.by_id.get(tx_id)
        return None if entry is None else entry.tx

    def shard_index(self, sender: bytes) -> int:
        number = self._shard_numbers.get(sender)
        if number is None:
            if len(self._shard_numbers) >= SHARD_MEMORY:
                self._shard_numbers.clear()
            digest = hashlib.blake2b(sender, digest_size=8, key=self._shard_key).digest()
            number = self._shard_numbers[sender] = int.from_bytes(digest) % len(self.shards)
        return number

    def shard_of(self, sender: bytes) -> Shard:
        return self.shards[self.shard_index(sender)]

    def pending_count(self, sender: bytes) -> int:
        queue = self.shard_of(sender).senders.get(sender)
        return len(queue.entries) if queue else 0

    @property
    def sender_count(self) -> int:
        return sum(len(s.senders) for s in self.shards)

    # ---- the rules, shared by the batch's cheap checks and by admission -----------------

    def _check_sender(self, queue: SenderQueue, tx: Transaction, balance: int) -> int | None:
        """The sender's rules against its queue: nonce window, replacement fee, per-sender
        limit, one heartbeat per node and epoch, funds. Returns the index of the entry ``tx``
        replaces, or None when it goes after the others."""
        base, queued = queue.base_nonce, len(queue.entries)
        if tx.nonce < base:
            raise Rejected("stale_nonce", f"nonce {tx.nonce} already used (next is {base})")
        if tx.nonce > base + queued:
            raise Rejected(
                "nonce_gap", f"nonce {tx.nonce} is ahead of the next usable nonce {base + queued}"
            )
        index = None
        if tx.nonce < base + queued:
            index = tx.nonce - base
            old = queue.entries[index].tx
            if old.id == tx.id:
                raise Rejected("duplicate", "transaction is already pending")
            least = replacement_fee(old.fee)
            if tx.fee < least:
                raise Rejected(
                    "duplicate",
                    f"nonce {tx.nonce} is pending with fee {old.fee}; a replacement needs a fee "
                    f"of at least {least} ({REPLACEMENT_BUMP_PERCENT}% more)",
                )
            spend = queue.spend - old.cost + tx.cost
        else:
            if queued >= self.per_sender:
                raise Rejected("sender_limit", f"sender already has {queued} pending transactions")
            spend = queue.spend + tx.cost
        if tx.kind == KIND_HEARTBEAT and tx.epoch in queue.heartbeat_epochs:
            raise Rejected(
                "duplicate", f"a heartbeat of this node for epoch {tx.epoch} is already pending"
            )
        if spend > balance:
            raise Rejected(
                "insufficient_funds", f"pending spend {spend} exceeds the balance {balance}"
            )
        return index

    def _check_room(
        self, shard: Shard, tx: Transaction, more: int = 0, more_heartbeats: int = 0
    ) -> bytes | None:
        """Room in ``shard`` for a new entry (with ``more`` entries, ``more_heartbeats`` of them
        heartbeats, about to come): None if there is, else the sender whose tail it evicts."""
        if tx.kind == KIND_HEARTBEAT:
            share = heartbeat_share(shard.capacity)
            if shard.heartbeats + more_heartbeats >= share:
                raise Rejected(
                    "mempool_full", f"heartbeats already fill their share ({share}) of the mempool"
                )
        if shard.count + more < shard.capacity:
            return None
        lowest = shard.lowest_tail(exclude=tx.sender)
        if lowest is None or lowest[0] >= tx.priority:
            raise Rejected(
                "mempool_full",
                f"mempool is full and fee {tx.fee} does not outbid any pending transaction",
            )
        return lowest[1]

    def batch_check(self) -> "BatchCheck":
        """The cheap checks of a new batch; what passes is in flight until ``release``."""
        return BatchCheck(self)

    def _hold(self, tx: Transaction, number: int, new: bool) -> None:
        self._in_flight.setdefault(tx.sender, []).append((tx, number if new else None))
        self._in_flight_ids.add(tx.id)
        if new:
            more, heartbeats = self._in_flight_room.get(number, (0, 0))
            self._in_flight_room[number] = (more + 1, heartbeats + (tx.kind == KIND_HEARTBEAT))

    def release(self, txs: list[Transaction]) -> None:
        """End the flight of ``txs`` (that passed a batch's cheap checks): admitted or refused."""
        for tx in txs:
            self._in_flight_ids.discard(tx.id)
            held = self._in_flight.get(tx.sender, [])
            # by identity, and from the front: a batch is released in the order it was held
            at = next((i for i, (flying, _) in enumerate(held) if flying is tx), None)
            if at is None:
                continue
            number = held.pop(at)[1]
            if not held:
                del self._in_flight[tx.sender]
            if number is None:
                continue
            more, heartbeats = self._in_flight_room[number]
            if more == 1:
                del self._in_flight_room[number]
            else:
                self._in_flight_room[number] = (
                    more - 1,
                    heartbeats - (tx.kind == KIND_HEARTBEAT),
                )

    @property
    def in_flight(self) -> int:
        return len(self._in_flight_ids)

    # ---- changes ------------------------------------------------------------------------

    def admit(self, tx: Transaction, account: tuple[int, int], now: float) -> list[Entry]:
        """Queue a verified transaction; returns entries it evicted. Raises Rejected and then
        changes nothing."""
        if tx.id in self.by_id:
            raise Rejected("duplicate", "transaction is already pending")
        balance, chain_nonce = account
        shard = self.shard_of(tx.sender)
        queue = shard.senders.get(tx.sender) or SenderQueue(chain_nonce)
        index = self._check_sender(queue, tx, balance)
        entry = Entry(tx, next(self._seq), now)
        if index is not None:
            old = queue.entries[index]
            queue.entries[index] = entry
            queue.spend += tx.cost - old.tx.cost
            self._unindex(shard, tx.sender, queue, old)
            self._index(shard, tx.sender, queue, entry)
            if index == len(queue.entries) - 1:
                shard.push_tail(tx.sender, queue, next(self._seq))
            return [old]
        victim = self._check_room(shard, tx)
        evicted = [] if victim is None else [self._evict_tail(shard, victim)]
        if not queue.entries:
            shard.senders[tx.sender] = queue
        queue.entries.append(entry)
        queue.spend += tx.cost
        self._index(shard, tx.sender, queue, entry)
        shard.push_tail(tx.sender, queue, next(self._seq))
        return evicted

    def _index(self, shard: Shard, sender: bytes, queue: SenderQueue, entry: Entry) -> None:
        self.by_id[entry.tx.id] = entry
        self.raw_bytes += len(entry.tx.raw)
        shard.count += 1
        if entry.tx.kind == KIND_HEARTBEAT:
            queue.heartbeat_epochs.add(entry.tx.epoch)
            shard.heartbeats += 1
            self._heartbeat_senders.add(sender)

    def _unindex(self, shard: Shard, sender: bytes, queue: SenderQueue, entry: Entry) -> None:
        del self.by_id[entry.tx.id]
        self.raw_bytes -= len(entry.tx.raw)
        shard.count -= 1
        if entry.tx.kind == KIND_HEARTBEAT:
            queue.heartbeat_epochs.discard(entry.tx.epoch)
            shard.heartbeats -= 1
            if not queue.heartbeat_epochs:
                self._heartbeat_senders.discard(sender)

    def _evict_tail(self, shard: Shard, sender: bytes) -> Entry:
        queue = shard.senders[sender]
        entry = queue.entries.pop()
        self._forget(shard, sender, queue, [entry])
        if queue.entries:
            shard.push_tail(sender, queue, next(self._seq))
        return entry

    def _forget(self, shard: Shard, sender: bytes, queue: SenderQueue, gone: list[Entry]) -> None:
        for entry in gone:
            queue.spend -= entry.tx.cost
            self._unindex(shard, sender, queue, entry)
        if not queue.entries:
            del shard.senders[sender]

    def pending(self) -> list[Transaction]:
        """Every waiting transaction, each sender's in nonce order."""
        return [e.tx for shard in self.shards for q in shard.senders.values() for e in q.entries]

    def select(self, limits: BlockLimits) -> list[Transaction]:
        """Executable transactions for the next block within ``limits``, highest priority
        first (heartbeats within their share of the block, then by fee), each sender's in
        nonce order. A sender whose next transaction does not fit waits for the next block."""
        heads = []
        for shard in self.shards:
            for queue in shard.senders.values():
                first = queue.entries[0]
                heads.append((-first.tx.priority, first.seq, 0, queue))
        heapq.heapify(heads)
        heartbeat_room = heartbeat_share(limits.max_txs)
        chosen: list[Transaction] = []
        body_bytes = 0
        while heads and len(chosen) < limits.max_txs:
            _, _, index, queue = heapq.heappop(heads)
            tx = queue.entries[index].tx
            grown = body_bytes + framed_size(tx)
            if not limits.fits(len(chosen) + 1, grown):
                continue
            if tx.kind == KIND_HEARTBEAT:
                if not heartbeat_room:
                    continue
                heartbeat_room -= 1
            chosen.append(tx)
            body_bytes = grown
            if index + 1 < len(queue.entries):
                nxt = queue.entries[index + 1]
                heapq.heappush(heads, (-nxt.tx.priority, nxt.seq, index + 1, queue))
        return chosen

    def on_committed(self, senders: set[bytes], nonce_of) -> list[Entry]:
        """Drop what a committed block consumed; ``nonce_of(sender)`` is the new chain nonce.

        Returns the dropped entries (those the block included, and any that lost their nonce
        to a different transaction committed by another proposer).
        """
        dropped: list[Entry] = []
        for sender in senders:
            shard = self.shard_of(sender)
            queue = shard.senders.get(sender)
            if queue is None:
                continue
            nonce = nonce_of(sender)
            done = max(0, min(nonce - queue.base_nonce, len(queue.entries)))
            gone, queue.entries = queue.entries[:done], queue.entries[done:]
            queue.base_nonce = nonce
            self._forget(shard, sender, queue, gone)
            dropped.extend(gone)
        return dropped

    def drop_sender(self, sender: bytes) -> list[Entry]:
        shard = self.shard_of(sender)
        queue = shard.senders.get(sender)
        if queue is None:
            return []
        gone, queue.entries = queue.entries, []
        self._forget(shard, sender, queue, gone)
        return gone

    def drop_stale_heartbeats(self, epoch: int) -> list[Entry]:
        """Drop each sender holding a heartbeat of an epoch before ``epoch`` (closed, so it can
        never be included), with what it queued after it (which cannot run without it)."""
        stale = [
            sender
            for sender in self._heartbeat_senders
            if min(self.shard_of(sender).senders[sender].heartbeat_epochs) < epoch
        ]
        return [entry for sender in stale for entry in self.drop_sender(sender)]

    def expire(self, now: float) -> list[Entry]:
        """Drop every sender whose oldest transaction outlived the TTL (the rest cannot run)."""
        dropped: list[Entry] = []
        limit = now - self.ttl_s
        for shard in self.shards:
            stale = [s for s, q in shard.senders.items() if q.entries[0].admitted_at < limit]
            for sender in stale:
                dropped.extend(self.drop_sender(sender))
        return dropped


class BatchCheck:
    """The cheap checks of a batch, before any of its signatures is verified: every rule of
    ``Mempool.admit``, each transaction checked as if those in flight (of earlier batches)
    and those before it in the batch that passed were admitted. What passes is put in flight;
    the pool's entries are not touched, and ``admit`` checks again when it admits (room is
    judged against the pool as it is: a batch that outbids the same victim twice passes here
    and is cut there)."""

    def __init__(self, pool: Mempool):
        self._pool = pool
        # Senders with transactions in flight: the pool's queue as it would be with them
        # admitted, made once per batch and kept up to date by the batch's own.
        self._queues: dict[bytes, SenderQueue] = {}

    def _queue(self, tx: Transaction, chain_nonce: int, shard: Shard) -> SenderQueue:
        """The sender's queue to check ``tx`` against (not to change: a sender with nothing in
        flight is checked against the pool's own)."""
        queue = self._queues.get(tx.sender)
        if queue is not None:
            return queue
        held = shard.senders.get(tx.sender)
        flying = self._pool._in_flight.get(tx.sender)
        if not flying:
            return held or SenderQueue(chain_nonce)
        queue = held.copy() if held else SenderQueue(chain_nonce)
        for in_flight, _ in flying:
            _place(queue, in_flight)
        self._queues[tx.sender] = queue
        return queue

    def check(self, tx: Transaction, account: tuple[int, int]) -> None:
        """Raise Rejected as ``admit`` would; else put ``tx`` in flight."""
        pool = self._pool
        if tx.id in pool.by_id or tx.id in pool._in_flight_ids:
            raise Rejected("duplicate", "transaction is already pending")
        balance, chain_nonce = account
        number = pool.shard_index(tx.sender)
        shard = pool.shards[number]
        queue = self._queue(tx, chain_nonce, shard)
        index = pool._check_sender(queue, tx, balance)
        if index is None:
            pool._check_room(shard, tx, *pool._in_flight_room.get(number, (0, 0)))
        if tx.sender in self._queues:
            _place(queue, tx)
        pool._hold(tx, number, new=index is None)


def _place(queue: SenderQueue, tx: Transaction) -> None:
    """Put ``tx`` into a copy of a sender's queue as ``admit`` would, without its checks: after
    the others, or over the entry of its nonce (one that no longer fits is left out)."""
    index = tx.nonce - queue.base_nonce
    if index < 0 or index > len(queue.entries):
        return
    entry = Entry(tx, -1, 0.0)
    if index == len(queue.entries):
        queue.entries.append(entry)
        queue.spend += tx.cost
    else:
        old = queue.entries[index].tx
        if old.kind == KIND_HEARTBEAT:
            queue.heartbeat_epochs.discard(old.epoch)
        queue.entries[index] = entry
        queue.spend += tx.cost - old.cost
    if tx.kind == KIND_HEARTBEAT:
        queue.heartbeat_epochs.add(tx.epoch)
