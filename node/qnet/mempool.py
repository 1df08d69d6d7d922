"""A mempool sharded by sender.

Each shard holds, per sender, a run of transactions with consecutive nonces starting at the
sender's next nonce on chain, so every queued transaction can execute in order. A shard has
a capacity; when it is full, a transaction with a higher fee evicts the lowest-fee tail of
another sender in the shard; heartbeats rank above every fee (``Transaction.priority``).
Entries expire after a time to live. Signatures are checked before admission (once per node,
see ``Node``); the mempool checks nonce order, fees and that the sender can pay for
everything it has queued.
"""

import heapq
import itertools
from dataclasses import dataclass, field

from .errors import Rejected
from .tx import Transaction


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


class Shard:
    __slots__ = ("capacity", "count", "senders")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count = 0
        self.senders: dict[bytes, SenderQueue] = {}


class Mempool:
    def __init__(
        self,
        shards: int = 16,
        capacity: int = 200_000,
        per_sender: int = 1_000,
        ttl_s: float = 600.0,
    ):
        self.shards = [Shard(max(1, capacity // shards)) for _ in range(shards)]
        self.per_sender = per_sender
        self.ttl_s = ttl_s
        self.by_id: dict[bytes, Entry] = {}
        self.raw_bytes = 0  # of the pending transactions' canonical encodings (the journal's)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self.by_id

    def shard_of(self, sender: bytes) -> Shard:
        return self.shards[sender[0] % len(self.shards)]

    def pending_count(self, sender: bytes) -> int:
        queue = self.shard_of(sender).senders.get(sender)
        return len(queue.entries) if queue else 0

    @property
    def sender_count(self) -> int:
        return sum(len(s.senders) for s in self.shards)

    def admit(self, tx: Transaction, account: tuple[int, int], now: float) -> list[Entry]:
        """Queue a verified transaction; returns entries it evicted. Raises Rejected."""
        if tx.id in self.by_id:
            raise Rejected("duplicate", "transaction is already pending")
        balance, chain_nonce = account
        shard = self.shard_of(tx.sender)
        queue = shard.senders.get(tx.sender)
        base = queue.base_nonce if queue else chain_nonce
        queued = len(queue.entries) if queue else 0
        if tx.nonce < base:
            raise Rejected("stale_nonce", f"nonce {tx.nonce} already used (next is {base})")
        if tx.nonce > base + queued:
            raise Rejected(
                "nonce_gap", f"nonce {tx.nonce} is ahead of the next usable nonce {base + queued}"
            )
        if tx.nonce < base + queued:
            return self._replace(queue, tx, balance, now)
        if queued >= self.per_sender:
            raise Rejected("sender_limit", f"sender already has {queued} pending transactions")
        spend = (queue.spend if queue else 0) + tx.cost
        if spend > balance:
            raise Rejected(
                "insufficient_funds", f"pending spend {spend} exceeds the balance {balance}"
            )
        evicted = self._make_room(shard, tx) if shard.count >= shard.capacity else []
        if queue is None:
            queue = shard.senders[tx.sender] = SenderQueue(chain_nonce)
        entry = Entry(tx, next(self._seq), now)
        queue.entries.append(entry)
        queue.spend = spend
        shard.count += 1
        self.by_id[tx.id] = entry
        self.raw_bytes += len(tx.raw)
        return evicted

    def _replace(self, queue: SenderQueue, tx: Transaction, balance: int, now: float) -> list:
        index = tx.nonce - queue.base_nonce
        old = queue.entries[index]
        if tx.fee <= old.tx.fee:
            raise Rejected(
                "duplicate",
                f"nonce {tx.nonce} is pending; a replacement needs a higher fee than {old.tx.fee}",
            )
        spend = queue.spend - old.tx.cost + tx.cost
        if spend > balance:
            raise Rejected(
                "insufficient_funds", f"pending spend {spend} exceeds the balance {balance}"
            )
        entry = Entry(tx, next(self._seq), now)
        queue.entries[index] = entry
        queue.spend = spend
        del self.by_id[old.tx.id]
        self.by_id[tx.id] = entry
        self.raw_bytes += len(tx.raw) - len(old.tx.raw)
        return [old]

    def _make_room(self, shard: Shard, tx: Transaction) -> list[Entry]:
        victim_sender, victim_rank = None, tx.priority
        for sender, queue in shard.senders.items():
            tail_rank = queue.entries[-1].tx.priority
            if sender != tx.sender and tail_rank < victim_rank:
                victim_sender, victim_rank = sender, tail_rank
        if victim_sender is None:
            raise Rejected(
                "mempool_full",
                f"mempool is full and fee {tx.fee} does not outbid any pending transaction",
            )
        queue = shard.senders[victim_sender]
        entry = queue.entries.pop()
        self._forget(shard, victim_sender, queue, [entry])
        return [entry]

    def _forget(self, shard: Shard, sender: bytes, queue: SenderQueue, gone: list[Entry]) -> None:
        for entry in gone:
            queue.spend -= entry.tx.cost
            del self.by_id[entry.tx.id]
            self.raw_bytes -= len(entry.tx.raw)
        shard.count -= len(gone)
        if not queue.entries:
            del shard.senders[sender]

    def pending(self) -> list[Transaction]:
        """Every waiting transaction, each sender's in nonce order."""
        return [e.tx for shard in self.shards for q in shard.senders.values() for e in q.entries]

    def select(self, max_txs: int) -> list[Transaction]:
        """Executable transactions for the next block, highest priority (fee, heartbeats
        first) first, nonce order kept."""
        heads = []
        for shard in self.shards:
            for queue in shard.senders.values():
                first = queue.entries[0]
                heads.append((-first.tx.priority, first.seq, 0, queue))
        heapq.heapify(heads)
        chosen: list[Transaction] = []
        while heads and len(chosen) < max_txs:
            _, _, index, queue = heapq.heappop(heads)
            chosen.append(queue.entries[index].tx)
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

    def expire(self, now: float) -> list[Entry]:
        """Drop every sender whose oldest transaction outlived the TTL (the rest cannot run)."""
        dropped: list[Entry] = []
        limit = now - self.ttl_s
        for shard in self.shards:
            stale = [s for s, q in shard.senders.items() if q.entries[0].admitted_at < limit]
            for sender in stale:
                dropped.extend(self.drop_sender(sender))
        return dropped
