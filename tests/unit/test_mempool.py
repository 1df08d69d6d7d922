"""The sharded mempool: admission rules, eviction, selection, commit and expiry."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from qnet import crypto, ledger, tx
from qnet.errors import Rejected
from qnet.genesis import Params
from qnet.mempool import Mempool

CHAIN = "qnet-test"
MIN_FEE = 1_000
RICH = (10**12, 0)
RULES = ledger.Rules(CHAIN, Params(min_fee=MIN_FEE))


def key_in_shard(shard: int, shards: int, skip: int = 0) -> crypto.KeyPair:
    """The ``skip``-th deterministic key whose sender lands in ``shard`` of ``shards``."""
    seed = 0
    while True:
        seed += 1
        key = crypto.KeyPair(seed.to_bytes(32, "big"))
        if key.address[0] % shards == shard:
            if skip == 0:
                return key
            skip -= 1


A, B, C, D = (key_in_shard(0, 1, i) for i in range(4))


def transfer(key, nonce, fee=MIN_FEE, amount=1, to=b"\x99" * 20) -> tx.Transaction:
    return tx.make_transfer(key, CHAIN, nonce, fee, to, amount)


def code_of(pool: Mempool, t: tx.Transaction, account=RICH, now=0.0) -> str:
    with pytest.raises(Rejected) as info:
        pool.admit(t, account, now)
    return info.value.code


def nonces(pool: Mempool, key) -> list[int]:
    queue = pool.shard_of(key.address).senders.get(key.address)
    return [e.tx.nonce for e in queue.entries] if queue else []


# ---- admission ---------------------------------------------------------------------------


def test_a_sender_queues_consecutive_nonces_from_its_chain_nonce():
    pool = Mempool(shards=1)
    for n in (5, 6, 7):
        assert pool.admit(transfer(A, n), (10**9, 5), 0.0) == []
    assert nonces(pool, A) == [5, 6, 7]
    assert len(pool) == 3 and pool.sender_count == 1


def test_stale_nonce_is_refused():
    pool = Mempool(shards=1)
    assert code_of(pool, transfer(A, 4), (10**9, 5)) == "stale_nonce"
    pool.admit(transfer(A, 5), (10**9, 5), 0.0)
    assert code_of(pool, transfer(A, 4), (10**9, 5)) == "stale_nonce"
    assert len(pool) == 1


def test_nonce_gap_is_refused():
    pool = Mempool(shards=1)
    assert code_of(pool, transfer(A, 1), (10**9, 0)) == "nonce_gap"
    pool.admit(transfer(A, 0), (10**9, 0), 0.0)
    assert code_of(pool, transfer(A, 2), (10**9, 0)) == "nonce_gap"
    assert nonces(pool, A) == [0]


def test_the_same_transaction_twice_is_a_duplicate():
    pool = Mempool(shards=1)
    t = transfer(A, 0)
    pool.admit(t, RICH, 0.0)
    assert code_of(pool, t) == "duplicate"
    assert len(pool) == 1


def test_replacement_needs_a_higher_fee():
    pool = Mempool(shards=1)
    old = transfer(A, 0, fee=2_000, amount=1)
    pool.admit(old, RICH, 0.0)
    pool.admit(transfer(A, 1), RICH, 0.0)
    assert code_of(pool, transfer(A, 0, fee=2_000, amount=2)) == "duplicate"
    assert code_of(pool, transfer(A, 0, fee=1_999, amount=2)) == "duplicate"
    new = transfer(A, 0, fee=2_001, amount=3)
    assert [e.tx for e in pool.admit(new, RICH, 1.0)] == [old]
    assert old.id not in pool and new.id in pool
    assert len(pool) == 2 and nonces(pool, A) == [0, 1]
    queue = pool.shard_of(A.address).senders[A.address]
    assert queue.spend == new.cost + transfer(A, 1).cost


def test_replacement_must_stay_affordable():
    pool = Mempool(shards=1)
    first = transfer(A, 0, amount=1_000)
    pool.admit(first, (3_000, 0), 0.0)
    assert (
        code_of(pool, transfer(A, 0, fee=1_001, amount=2_000), (3_000, 0)) == "insufficient_funds"
    )
    assert first.id in pool


def test_per_sender_limit():
    pool = Mempool(shards=1, per_sender=3)
    for n in range(3):
        pool.admit(transfer(A, n), RICH, 0.0)
    assert code_of(pool, transfer(A, 3)) == "sender_limit"
    pool.admit(transfer(A, 2, fee=MIN_FEE + 1), RICH, 0.0)  # replacing is still allowed
    pool.admit(transfer(B, 0), RICH, 0.0)  # other senders are unaffected
    assert nonces(pool, A) == [0, 1, 2] and len(pool) == 4


def test_funds_must_cover_everything_queued():
    pool = Mempool(shards=1)
    cost = transfer(A, 0, amount=500).cost
    balance = 3 * cost - 1
    pool.admit(transfer(A, 0, amount=500), (balance, 0), 0.0)
    pool.admit(transfer(A, 1, amount=500), (balance, 0), 0.0)
    assert code_of(pool, transfer(A, 2, amount=500), (balance, 0)) == "insufficient_funds"
    pool.admit(transfer(A, 2, amount=499), (balance, 0), 0.0)
    assert nonces(pool, A) == [0, 1, 2]


# ---- capacity ----------------------------------------------------------------------------


def full_pool() -> Mempool:
    """One shard of three: A queues fees 1000, 1100; B queues 1200."""
    pool = Mempool(shards=1, capacity=3)
    pool.admit(transfer(A, 0, fee=1_000), RICH, 0.0)
    pool.admit(transfer(A, 1, fee=1_100), RICH, 0.0)
    pool.admit(transfer(B, 0, fee=1_200), RICH, 0.0)
    return pool


def test_a_full_shard_evicts_the_lowest_fee_tail_of_another_sender():
    pool = full_pool()
    newcomer = transfer(C, 0, fee=1_150)
    evicted = pool.admit(newcomer, RICH, 0.0)
    assert [(e.tx.sender, e.tx.nonce, e.tx.fee) for e in evicted] == [(A.address, 1, 1_100)]
    assert len(pool) == 3 and newcomer.id in pool
    assert nonces(pool, A) == [0]  # the evicted entry was A's tail, so A can still run
    assert pool.shard_of(A.address).senders[A.address].spend == transfer(A, 0).cost


def test_eviction_removes_a_sender_whose_only_entry_goes():
    pool = Mempool(shards=1, capacity=2)
    pool.admit(transfer(A, 0, fee=1_000), RICH, 0.0)
    pool.admit(transfer(B, 0, fee=1_500), RICH, 0.0)
    pool.admit(transfer(C, 0, fee=1_200), RICH, 0.0)
    assert nonces(pool, A) == [] and pool.sender_count == 2


def test_a_full_shard_refuses_a_newcomer_that_does_not_outbid():
    pool = full_pool()
    assert code_of(pool, transfer(C, 0, fee=1_100)) == "mempool_full"  # equal is not more
    assert code_of(pool, transfer(C, 0, fee=500)) == "mempool_full"
    assert len(pool) == 3 and nonces(pool, A) == [0, 1] and nonces(pool, B) == [0]


def test_a_sender_never_evicts_its_own_tail():
    pool = Mempool(shards=1, capacity=2)
    pool.admit(transfer(A, 0, fee=1_000), RICH, 0.0)
    pool.admit(transfer(B, 0, fee=5_000), RICH, 0.0)
    assert code_of(pool, transfer(A, 1, fee=3_000)) == "mempool_full"
    assert nonces(pool, A) == [0] and nonces(pool, B) == [0]


def test_a_full_shard_does_not_block_another_shard():
    left, right = key_in_shard(0, 2), key_in_shard(1, 2)
    pool = Mempool(shards=2, capacity=2)
    pool.admit(transfer(left, 0), RICH, 0.0)
    assert code_of(pool, transfer(left, 1)) == "mempool_full"
    pool.admit(transfer(right, 0), RICH, 0.0)
    assert len(pool) == 2


# ---- selection ---------------------------------------------------------------------------


def test_select_takes_highest_fee_first_and_keeps_nonce_order():
    pool = Mempool(shards=4)
    a0, a1 = transfer(A, 0, fee=1_000), transfer(A, 1, fee=5_000)
    b0 = transfer(B, 0, fee=3_000)
    c0, c1 = transfer(C, 0, fee=2_000), transfer(C, 1, fee=2_500)
    for t in (a0, a1, b0, c0, c1):
        pool.admit(t, RICH, 0.0)
    assert pool.select(10) == [b0, c0, c1, a0, a1]
    assert pool.select(2) == [b0, c0]
    assert pool.select(0) == []
    assert len(pool) == 5  # selecting removes nothing


def test_select_breaks_fee_ties_by_arrival():
    pool = Mempool(shards=4)
    txs = [transfer(k, 0, fee=2_000) for k in (C, A, D, B)]
    for t in txs:
        pool.admit(t, RICH, 0.0)
    assert pool.select(4) == txs


# ---- commit and expiry -------------------------------------------------------------------


def test_on_committed_removes_consumed_entries_and_keeps_the_rest():
    pool = Mempool(shards=2)
    a = [transfer(A, n, amount=10) for n in range(4)]
    b = [transfer(B, n) for n in range(2)]
    c = [transfer(C, 0)]
    for t in a + b + c:
        pool.admit(t, RICH, 0.0)
    chain_nonce = {A.address: 2, B.address: 5, D.address: 1}
    pool.on_committed({A.address, B.address, D.address}, chain_nonce.__getitem__)
    assert nonces(pool, A) == [2, 3]
    assert [t.id in pool for t in a] == [False, False, True, True]
    assert nonces(pool, B) == [] and not any(t.id in pool for t in b)
    assert nonces(pool, C) == [0]  # not in the block: untouched
    assert len(pool) == 3 and pool.sender_count == 2
    queue = pool.shard_of(A.address).senders[A.address]
    assert queue.base_nonce == 2 and queue.spend == a[2].cost + a[3].cost
    pool.admit(transfer(A, 4), RICH, 1.0)  # the next nonce follows on
    assert code_of(pool, transfer(A, 1)) == "stale_nonce"


def test_expire_drops_senders_whose_oldest_entry_outlived_the_ttl():
    pool = Mempool(shards=2, ttl_s=10.0)
    old = [transfer(A, 0), transfer(A, 1)]
    pool.admit(old[0], RICH, 0.0)
    pool.admit(old[1], RICH, 9.0)
    fresh = transfer(B, 0)
    pool.admit(fresh, RICH, 5.0)
    assert pool.expire(9.0) == []
    dropped = pool.expire(10.5)
    assert sorted(e.tx.nonce for e in dropped) == [0, 1] and {e.tx.sender for e in dropped} == {
        A.address
    }
    assert len(pool) == 1 and fresh.id in pool
    assert [e.tx for e in pool.expire(100.0)] == [fresh]
    assert len(pool) == 0 and pool.sender_count == 0


def test_a_sender_always_lives_in_the_same_shard():
    pool = Mempool(shards=7)
    keys = [crypto.KeyPair(bytes([i + 50]) * 32) for i in range(12)]
    for n in range(3):
        for k in keys:
            pool.admit(transfer(k, n), RICH, 0.0)
    for k in keys:
        holding = [i for i, s in enumerate(pool.shards) if k.address in s.senders]
        assert holding == [pool.shards.index(pool.shard_of(k.address))]
        assert nonces(pool, k) == [0, 1, 2]
    assert sum(s.count for s in pool.shards) == len(pool) == 36


# ---- invariants under random operations --------------------------------------------------

SENDERS = [key_in_shard(i % 2, 2, i // 2) for i in range(6)]


class MempoolMachine(RuleBasedStateMachine):
    """Random admissions, blocks and expiries against a real ledger state."""

    @initialize(balances=st.lists(st.integers(5_000, 200_000), min_size=6, max_size=6))
    def start(self, balances):
        self.pool = Mempool(shards=2, capacity=6, per_sender=3, ttl_s=30.0)
        funded = {k.address: b for k, b in zip(SENDERS, balances, strict=True)}
        self.state = ledger.State.from_genesis(funded)
        self.now = 0.0
        self.height = 0

    def snapshot(self):
        return (
            sorted(self.pool.by_id),
            [
                (s.count, {a: (q.base_nonce, q.spend) for a, q in s.senders.items()})
                for s in self.pool.shards
            ],
        )

    @rule(
        sender=st.sampled_from(SENDERS),
        nonce_delta=st.sampled_from([-1, 0, 0, 0, 0, 0, 1, 3]),
        fee=st.integers(MIN_FEE, MIN_FEE + 50),
        amount=st.integers(1, 5_000),
        to=st.sampled_from([k.address for k in SENDERS] + [b"\x77" * 20]),
    )
    def admit(self, sender, nonce_delta, fee, amount, to):
        account = self.state.account(sender.address)
        queued = len(nonces(self.pool, sender))
        t = tx.make_transfer(
            sender, CHAIN, max(0, account[1] + queued + nonce_delta), fee, to, amount
        )
        before = self.snapshot()
        try:
            evicted = self.pool.admit(t, account, self.now)
        except Rejected:
            assert self.snapshot() == before  # a refusal changes nothing
            return
        assert t.id in self.pool
        assert all(e.tx.id not in self.pool for e in evicted)

    @rule(max_txs=st.integers(0, 10))
    def commit_block(self, max_txs):
        chosen = self.pool.select(max_txs)
        assert len(chosen) == min(max_txs, len(self.pool))
        self.check_greedy_order(chosen)
        diff, included, refused = ledger.apply_block(self.state, chosen, RULES, self.height + 1)
        assert refused == []  # whatever the mempool offers can run, in that order
        self.height += 1
        self.state.merge(diff, self.height, crypto.digest(b"%d" % self.height), self.height)
        self.pool.on_committed({t.sender for t in included}, lambda s: self.state.account(s)[1])
        assert not any(t.id in self.pool for t in included)

    def check_greedy_order(self, chosen):
        """Each pick is the head of its sender's queue and no other head pays more."""
        queues = {a: list(q.entries) for s in self.pool.shards for a, q in s.senders.items()}
        for t in chosen:
            heads = {a: entries[0].tx for a, entries in queues.items() if entries}
            assert heads[t.sender] is t
            assert t.fee == max(h.fee for h in heads.values())
            queues[t.sender].pop(0)

    @rule(seconds=st.floats(0, 20))
    def advance_and_expire(self, seconds):
        self.now += seconds
        for entry in self.pool.expire(self.now):
            assert entry.tx.id not in self.pool
        for shard in self.pool.shards:
            for queue in shard.senders.values():
                assert queue.entries[0].admitted_at >= self.now - self.pool.ttl_s

    @invariant()
    def queues_are_consistent(self):
        if not hasattr(self, "pool"):
            return
        total = 0
        ids = set()
        for index, shard in enumerate(self.pool.shards):
            assert shard.count == sum(len(q.entries) for q in shard.senders.values())
            assert shard.count <= shard.capacity
            for sender, queue in shard.senders.items():
                assert self.pool.shards.index(self.pool.shard_of(sender)) == index
                assert queue.entries, "an empty queue must be dropped"
                assert len(queue.entries) <= self.pool.per_sender
                assert [e.tx.nonce for e in queue.entries] == list(
                    range(queue.base_nonce, queue.base_nonce + len(queue.entries))
                )
                assert all(e.tx.sender == sender for e in queue.entries)
                assert queue.spend == sum(e.tx.cost for e in queue.entries)
                balance, chain_nonce = self.state.account(sender)
                assert queue.base_nonce == chain_nonce
                assert queue.spend <= balance
                ids |= {e.tx.id for e in queue.entries}
            total += shard.count
        assert len(self.pool) == total == len(ids)
        assert set(self.pool.by_id) == ids


MempoolMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_mempool_invariants = MempoolMachine.TestCase
