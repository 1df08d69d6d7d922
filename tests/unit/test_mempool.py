"""The sharded mempool: admission rules, eviction, selection, commit and expiry."""

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from qnet import crypto, ledger, tx
from qnet.errors import Rejected
from qnet.genesis import Params
from qnet.ledger import BlockLimits
from qnet.mempool import REPLACEMENT_BUMP_PERCENT, Mempool, replacement_fee

CHAIN = "qnet-test"
MIN_FEE = 1_000
RICH = (10**12, 0)
NETWORK = crypto.Network(CHAIN, crypto.digest(b"qnet-test genesis"))
RULES = ledger.Rules(NETWORK, Params(min_fee=MIN_FEE))
SHARD_KEY = b"a fixed test key"  # so tests can pick senders by shard


def new_pool(**kwargs) -> Mempool:
    return Mempool(shard_key=SHARD_KEY, **kwargs)


def limits(max_txs: int, max_bytes: int = 2**40) -> BlockLimits:
    return BlockLimits(max_txs, max_bytes)


@functools.cache
def key_in_shard(shard: int, shards: int, skip: int = 0) -> crypto.KeyPair:
    """The ``skip``-th deterministic key whose sender lands in ``shard`` of ``shards``."""
    reference = new_pool(shards=shards)
    seed = 0
    while True:
        seed += 1
        key = crypto.KeyPair(seed.to_bytes(32, "big"))
        if reference.shard_index(key.address) == shard:
            if skip == 0:
                return key
            skip -= 1


A, B, C, D = (key_in_shard(0, 1, i) for i in range(4))


def transfer(key, nonce, fee=MIN_FEE, amount=1, to=b"\x99" * 20) -> tx.Transaction:
    return tx.make_transfer(key, NETWORK, nonce, fee, to, amount)


def code_of(pool: Mempool, t: tx.Transaction, account=RICH, now=0.0) -> str:
    with pytest.raises(Rejected) as info:
        pool.admit(t, account, now)
    return info.value.code


def nonces(pool: Mempool, key) -> list[int]:
    queue = pool.shard_of(key.address).senders.get(key.address)
    return [e.tx.nonce for e in queue.entries] if queue else []


# ---- admission ---------------------------------------------------------------------------


def test_a_sender_queues_consecutive_nonces_from_its_chain_nonce():
    pool = new_pool(shards=1)
    for n in (5, 6, 7):
        assert pool.admit(transfer(A, n), (10**9, 5), 0.0) == []
    assert nonces(pool, A) == [5, 6, 7]
    assert len(pool) == 3 and pool.sender_count == 1


def test_stale_nonce_is_refused():
    pool = new_pool(shards=1)
    assert code_of(pool, transfer(A, 4), (10**9, 5)) == "stale_nonce"
    pool.admit(transfer(A, 5), (10**9, 5), 0.0)
    assert code_of(pool, transfer(A, 4), (10**9, 5)) == "stale_nonce"
    assert len(pool) == 1


def test_nonce_gap_is_refused():
    pool = new_pool(shards=1)
    assert code_of(pool, transfer(A, 1), (10**9, 0)) == "nonce_gap"
    pool.admit(transfer(A, 0), (10**9, 0), 0.0)
    assert code_of(pool, transfer(A, 2), (10**9, 0)) == "nonce_gap"
    assert nonces(pool, A) == [0]


def test_the_same_transaction_twice_is_a_duplicate():
    pool = new_pool(shards=1)
    t = transfer(A, 0)
    pool.admit(t, RICH, 0.0)
    assert code_of(pool, t) == "duplicate"
    assert len(pool) == 1


def test_replacement_needs_a_fee_ten_percent_higher():
    pool = new_pool(shards=1)
    old = transfer(A, 0, fee=2_000, amount=1)
    pool.admit(old, RICH, 0.0)
    pool.admit(transfer(A, 1), RICH, 0.0)
    assert code_of(pool, transfer(A, 0, fee=2_000, amount=2)) == "duplicate"
    assert code_of(pool, transfer(A, 0, fee=1_999, amount=2)) == "duplicate"
    with pytest.raises(Rejected, match="needs a fee of at least 2200"):
        pool.admit(transfer(A, 0, fee=2_199, amount=2), RICH, 0.0)  # +1 unit is not enough
    assert old.id in pool
    new = transfer(A, 0, fee=2_200, amount=3)
    assert [e.tx for e in pool.admit(new, RICH, 1.0)] == [old]
    assert old.id not in pool and new.id in pool
    assert len(pool) == 2 and nonces(pool, A) == [0, 1]
    queue = pool.shard_of(A.address).senders[A.address]
    assert queue.spend == new.cost + transfer(A, 1).cost


def test_replacement_must_stay_affordable():
    pool = new_pool(shards=1)
    first = transfer(A, 0, amount=1_000)
    pool.admit(first, (3_000, 0), 0.0)
    assert (
        code_of(pool, transfer(A, 0, fee=1_100, amount=2_000), (3_000, 0)) == "insufficient_funds"
    )
    assert first.id in pool


def test_per_sender_limit():
    pool = new_pool(shards=1, per_sender=3)
    for n in range(3):
        pool.admit(transfer(A, n), RICH, 0.0)
    assert code_of(pool, transfer(A, 3)) == "sender_limit"
    pool.admit(transfer(A, 2, fee=2 * MIN_FEE), RICH, 0.0)  # replacing is still allowed
    pool.admit(transfer(B, 0), RICH, 0.0)  # other senders are unaffected
    assert nonces(pool, A) == [0, 1, 2] and len(pool) == 4


def test_funds_must_cover_everything_queued():
    pool = new_pool(shards=1)
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
    pool = new_pool(shards=1, capacity=3)
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
    pool = new_pool(shards=1, capacity=2)
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
    pool = new_pool(shards=1, capacity=2)
    pool.admit(transfer(A, 0, fee=1_000), RICH, 0.0)
    pool.admit(transfer(B, 0, fee=5_000), RICH, 0.0)
    assert code_of(pool, transfer(A, 1, fee=3_000)) == "mempool_full"
    assert nonces(pool, A) == [0] and nonces(pool, B) == [0]


def test_a_full_shard_does_not_block_another_shard():
    left, right = key_in_shard(0, 2), key_in_shard(1, 2)
    pool = new_pool(shards=2, capacity=2)
    pool.admit(transfer(left, 0), RICH, 0.0)
    assert code_of(pool, transfer(left, 1)) == "mempool_full"
    pool.admit(transfer(right, 0), RICH, 0.0)
    assert len(pool) == 2


# ---- selection ---------------------------------------------------------------------------


def test_select_takes_highest_fee_first_and_keeps_nonce_order():
    pool = new_pool(shards=4)
    a0, a1 = transfer(A, 0, fee=1_000), transfer(A, 1, fee=5_000)
    b0 = transfer(B, 0, fee=3_000)
    c0, c1 = transfer(C, 0, fee=2_000), transfer(C, 1, fee=2_500)
    for t in (a0, a1, b0, c0, c1):
        pool.admit(t, RICH, 0.0)
    assert pool.select(limits(10)) == [b0, c0, c1, a0, a1]
    assert pool.select(limits(2)) == [b0, c0]
    assert pool.select(limits(0)) == []
    assert len(pool) == 5  # selecting removes nothing


def test_select_breaks_fee_ties_by_arrival():
    pool = new_pool(shards=4)
    txs = [transfer(k, 0, fee=2_000) for k in (C, A, D, B)]
    for t in txs:
        pool.admit(t, RICH, 0.0)
    assert pool.select(limits(4)) == txs


# ---- commit and expiry -------------------------------------------------------------------


def test_on_committed_removes_consumed_entries_and_keeps_the_rest():
    pool = new_pool(shards=2)
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
    pool = new_pool(shards=2, ttl_s=10.0)
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
    pool = new_pool(shards=7)
    keys = [crypto.KeyPair(bytes([i + 50]) * 32) for i in range(12)]
    for n in range(3):
        for k in keys:
            pool.admit(transfer(k, n), RICH, 0.0)
    for k in keys:
        holding = [i for i, s in enumerate(pool.shards) if k.address in s.senders]
        assert holding == [pool.shards.index(pool.shard_of(k.address))]
        assert nonces(pool, k) == [0, 1, 2]
    assert sum(s.count for s in pool.shards) == len(pool) == 36


# ---- the keyed shard hash ----------------------------------------------------------------


def test_the_shard_of_a_sender_is_a_keyed_hash_not_its_first_byte():
    """Addresses ground to share a first byte (what ``sender[0] % 16`` put in one shard)
    spread over the shards, and where they land depends on the process's key."""
    ground = [bytes([7]) + i.to_bytes(19, "big") for i in range(256)]
    pool = new_pool(shards=16)
    landing = [pool.shard_index(a) for a in ground]
    assert len(set(landing)) == 16
    assert max(landing.count(i) for i in range(16)) < 40  # 16 on average
    other = Mempool(shards=16, shard_key=b"another test key")
    assert [other.shard_index(a) for a in ground] != landing
    assert [pool.shard_index(a) for a in ground] == landing  # stable within a process
    assert Mempool(shards=16)._shard_key != Mempool(shards=16)._shard_key  # random by default


# ---- replacement ---------------------------------------------------------------------------


@given(old_fee=st.integers(MIN_FEE, 10**15), bump=st.integers(-5, 5))
@settings(max_examples=60, deadline=None)
def test_a_replacement_pays_at_least_ten_percent_more(old_fee, bump):
    least = replacement_fee(old_fee)
    assert 100 * least >= (100 + REPLACEMENT_BUMP_PERCENT) * old_fee
    assert 100 * (least - 1) < (100 + REPLACEMENT_BUMP_PERCENT) * old_fee or least == old_fee + 1
    pool, funds = new_pool(shards=1), (10**18, 0)
    old = transfer(A, 0, fee=old_fee)
    pool.admit(old, funds, 0.0)
    new = transfer(A, 0, fee=least + bump, amount=2)
    if bump < 0:
        assert code_of(pool, new, funds) == "duplicate" and old.id in pool
    else:
        assert pool.admit(new, funds, 0.0)[0].tx is old and new.id in pool


# ---- heartbeats ----------------------------------------------------------------------------


def heartbeat(key, nonce, epoch=5) -> tx.Transaction:
    return tx.make_heartbeat(key, NETWORK, nonce, epoch)


def test_one_pending_heartbeat_per_node_and_epoch():
    pool = new_pool(shards=1)
    first = heartbeat(A, 0)
    pool.admit(first, (0, 0), 0.0)
    with pytest.raises(Rejected, match="heartbeat of this node for epoch 5 is already pending"):
        pool.admit(heartbeat(A, 1), (0, 0), 0.0)
    assert nonces(pool, A) == [0]
    pool.admit(heartbeat(A, 1, epoch=6), (0, 0), 0.0)  # another epoch is another heartbeat
    pool.admit(heartbeat(B, 0), (0, 0), 0.0)  # another node too
    pool.on_committed({A.address}, {A.address: 1}.__getitem__)  # the first one is in
    assert first.id not in pool and nonces(pool, A) == [1]
    pool.admit(heartbeat(A, 2), (0, 1), 0.0)  # the ledger refuses it later; the pool no more


def test_heartbeats_fill_at_most_their_share_of_a_shard():
    pool = new_pool(shards=1, capacity=30)  # a share of 3
    keys = [key_in_shard(0, 1, i) for i in range(6)]
    for key in keys[:3]:
        pool.admit(heartbeat(key, 0), (0, 0), 0.0)
    with pytest.raises(Rejected, match=r"heartbeats already fill their share \(3\)") as info:
        pool.admit(heartbeat(keys[3], 0), (0, 0), 0.0)
    assert info.value.code == "mempool_full" and len(pool) == 3
    pool.admit(transfer(keys[3], 0), RICH, 0.0)  # paying traffic still gets in
    pool.drop_sender(keys[0].address)
    pool.admit(heartbeat(keys[4], 0), (0, 0), 0.0)  # a freed slot of the share is usable


def test_a_full_shard_gives_heartbeats_no_more_than_their_share():
    """A heartbeat outbids any fee when the shard is full, but only within its share."""
    pool = new_pool(shards=1, capacity=20)  # a share of 2
    payers = [key_in_shard(0, 1, i) for i in range(20)]
    for key in payers:
        pool.admit(transfer(key, 0), RICH, 0.0)
    nodes = [key_in_shard(0, 1, 20 + i) for i in range(3)]
    assert len(pool.admit(heartbeat(nodes[0], 0), (0, 0), 0.0)) == 1
    assert len(pool.admit(heartbeat(nodes[1], 0), (0, 0), 0.0)) == 1
    assert code_of(pool, heartbeat(nodes[2], 0), (0, 0)) == "mempool_full"
    assert len(pool) == 20 and sum(t.kind == tx.KIND_HEARTBEAT for t in pool.pending()) == 2


def test_heartbeats_take_at_most_their_share_of_a_block_and_come_first():
    pool = new_pool(shards=4)
    nodes = [crypto.KeyPair(bytes([0x30 + i]) * 32) for i in range(30)]
    beats = [heartbeat(k, 0) for k in nodes]
    paying = [transfer(k, 0, fee=MIN_FEE + i) for i, k in enumerate((A, B, C, D))]
    for t in beats:
        pool.admit(t, (0, 0), 0.0)
    for t in paying:
        pool.admit(t, RICH, 0.0)
    chosen = pool.select(limits(20))  # a share of 2
    assert chosen[:2] == beats[:2]  # first come first among equals
    assert chosen[2:] == paying[::-1]  # then by fee; the other heartbeats wait
    assert pool.select(limits(1000)) == beats + paying[::-1]  # a share of 100


# ---- block limits in selection -------------------------------------------------------------


def test_select_fills_a_block_up_to_its_byte_limit():
    pool = new_pool(shards=4)
    small = [transfer(k, 0, fee=2_000) for k in (A, B, C)]
    owner = key_in_shard(0, 1, 10)
    big = tx.make_activate(owner, NETWORK, 0, 5_000, D.public_key, "light", "eu", 1, b"\1" * 64)
    for t in [big, *small]:
        pool.admit(t, RICH, 0.0)
    size, big_size = tx.framed_size(small[0]), tx.framed_size(big)
    assert size < big_size < 2 * size
    assert pool.select(limits(10, 10**6)) == [big, *small]
    assert pool.select(limits(2, 10**6)) == [big, small[0]]
    assert pool.select(limits(10, big_size + size)) == [big, small[0]]
    # The highest fee does not fit: it waits, and those behind it still fill the block.
    assert pool.select(limits(10, big_size - 1)) == [small[0]]
    assert pool.select(limits(10, 2 * size)) == [big]


@given(
    max_txs=st.integers(0, 12),
    max_bytes=st.integers(1, 2_500),
    fees=st.lists(st.integers(MIN_FEE, 3 * MIN_FEE), min_size=0, max_size=12),
)
@settings(max_examples=60, deadline=None)
def test_a_selection_always_fits_the_limits(max_txs, max_bytes, fees):
    pool = new_pool(shards=3)
    for i, fee in enumerate(fees):
        pool.admit(transfer(key_in_shard(i % 3, 3, i // 3), 0, fee=fee), RICH, 0.0)
    block = limits(max_txs, max_bytes)
    chosen = pool.select(block)
    body = len(tx.encode_batch(chosen))
    assert block.fits(len(chosen), body)
    if len(chosen) < len(fees):  # full: one more (they are all one size) would not fit
        assert not block.fits(len(chosen) + 1, body + tx.framed_size(transfer(A, 0)))


# ---- refusals when full cost O(log n) ------------------------------------------------------


class CountingDict(dict):
    """A sender table that counts walks over it (what a linear scan for a victim does)."""

    walks = 0

    def items(self):
        CountingDict.walks += 1
        return super().items()

    def values(self):
        CountingDict.walks += 1
        return super().values()

    def __iter__(self):
        CountingDict.walks += 1
        return super().__iter__()


def test_a_full_shard_finds_its_victim_without_walking_its_senders():
    pool = new_pool(shards=1, capacity=2_000)
    shard = pool.shards[0]
    shard.senders = CountingDict()
    keys = [crypto.KeyPair(i.to_bytes(32, "big")) for i in range(1, 2_002)]
    for i, key in enumerate(keys[:2_000]):
        pool.admit(transfer(key, 0, fee=MIN_FEE + i), RICH, 0.0)
    CountingDict.walks = 0
    for fee in (MIN_FEE - 1, MIN_FEE):  # below or equal to the lowest: refused
        assert code_of(pool, transfer(keys[2_000], 0, fee=fee)) == "mempool_full"
    evicted = pool.admit(transfer(keys[2_000], 0, fee=MIN_FEE + 10_000), RICH, 0.0)
    assert [e.tx.fee for e in evicted] == [MIN_FEE]  # the lowest tail
    evicted = pool.admit(transfer(keys[0], 0, fee=MIN_FEE + 10_000), RICH, 0.0)
    assert [e.tx.fee for e in evicted] == [MIN_FEE + 1]
    assert CountingDict.walks == 0
    assert len(shard.tails) <= 2 * len(shard.senders) + 64


def test_eviction_picks_the_newest_of_the_lowest_fee():
    pool = new_pool(shards=1, capacity=3)
    older, newer = transfer(A, 0, fee=1_000), transfer(B, 0, fee=1_000)
    pool.admit(older, RICH, 0.0)
    pool.admit(newer, RICH, 0.0)
    pool.admit(transfer(C, 0, fee=5_000), RICH, 0.0)
    assert [e.tx for e in pool.admit(transfer(D, 0, fee=1_001), RICH, 0.0)] == [newer]


# ---- the cheap checks of a batch -----------------------------------------------------------


def test_a_batch_check_sees_the_batch_before_it_and_changes_no_entry():
    pool = new_pool(shards=2, per_sender=3)
    pool.admit(transfer(A, 0), RICH, 0.0)
    batch = pool.batch_check()
    passed = [transfer(A, 1), transfer(A, 2)]  # the second follows the first in the batch
    for t in passed:
        batch.check(t, RICH)
    with pytest.raises(Rejected) as info:
        batch.check(transfer(A, 3), RICH)
    assert info.value.code == "sender_limit"
    with pytest.raises(Rejected) as info:
        batch.check(transfer(A, 2), RICH)
    assert info.value.code == "duplicate"
    batch.check(heartbeat(B, 0), (0, 0))
    with pytest.raises(Rejected, match="epoch 5 is already pending"):
        batch.check(heartbeat(B, 1), (0, 0))
    with pytest.raises(Rejected) as info:
        batch.check(transfer(C, 0, amount=10), (MIN_FEE, 0))  # the fee counts
    assert info.value.code == "insufficient_funds"
    assert len(pool) == 1 and nonces(pool, A) == [0] and nonces(pool, B) == []
    assert pool.in_flight == 3


def test_what_passed_a_batch_check_is_in_flight_for_later_batches_until_released():
    """A batch checked while an earlier one of the same sender is still being verified sees
    it: its nonces follow, and its share of the shard's room and the sender's funds count."""
    pool = new_pool(shards=1, capacity=3, per_sender=10)
    first = [transfer(A, 0), transfer(A, 1)]
    check = pool.batch_check()
    for t in first:
        check.check(t, RICH)
    second = pool.batch_check()
    second.check(transfer(A, 2), RICH)  # not a gap: 0 and 1 are in flight
    with pytest.raises(Rejected) as info:
        second.check(transfer(A, 1), RICH)
    assert info.value.code == "duplicate"
    with pytest.raises(Rejected) as info:
        pool.batch_check().check(transfer(B, 0), RICH)  # three in flight fill the room
    assert info.value.code == "mempool_full"
    with pytest.raises(Rejected) as info:  # the fees in flight count against the balance
        pool.batch_check().check(transfer(A, 3), (3 * (MIN_FEE + 1), 0))
    assert info.value.code == "insufficient_funds"
    pool.release(first)  # refused at verification, say: they are gone
    assert pool.in_flight == 1
    with pytest.raises(Rejected) as info:
        pool.batch_check().check(transfer(A, 3), RICH)
    assert info.value.code == "nonce_gap"
    pool.batch_check().check(transfer(A, 0), RICH)
    assert len(pool) == 0


@given(
    held=st.lists(st.sampled_from([A, A, B]), max_size=2),
    batch=st.lists(
        st.tuples(
            st.sampled_from([A, B, C, D]),
            st.integers(-1, 3),  # nonce offset from the sender's next in the pool
            st.sampled_from([MIN_FEE, MIN_FEE + 50, 2 * MIN_FEE]),
            st.sampled_from([None, 5, 6]),  # a heartbeat for that epoch, or a transfer
        ),
        max_size=12,
    ),
)
@settings(max_examples=200, deadline=None)
def test_a_batch_check_refuses_exactly_what_admitting_in_order_refuses(held, batch):
    """With room to spare, the cheap checks of a batch pass a transaction exactly when
    admitting the batch in order admits it: none refused that would have been admitted."""
    funds = 2 * (MIN_FEE + 1) + 500  # two cheap transfers; heartbeats are free
    accounts = {k.address: (funds, 0) for k in (A, B, C)} | {D.address: (funds, 2)}
    pool = new_pool(shards=2, per_sender=3)
    for key in held:
        pool.admit(transfer(key, len(nonces(pool, key))), accounts[key.address], 0.0)
    txs = []
    for key, offset, fee, epoch in batch:
        nonce = max(0, accounts[key.address][1] + len(nonces(pool, key)) + offset)
        txs.append(transfer(key, nonce, fee=fee) if epoch is None else heartbeat(key, nonce, epoch))
    check = pool.batch_check()
    cheap = []
    for t in txs:
        try:
            check.check(t, accounts[t.sender])
        except Rejected as exc:
            cheap.append(exc.code)
        else:
            cheap.append(None)
    pool.release(txs)
    admitted = []
    for t in txs:
        try:
            pool.admit(t, accounts[t.sender], 0.0)
        except Rejected as exc:
            admitted.append(exc.code)
        else:
            admitted.append(None)
    assert cheap == admitted


# ---- invariants under random operations --------------------------------------------------

SENDERS = [key_in_shard(i % 2, 2, i // 2) for i in range(6)]


class MempoolMachine(RuleBasedStateMachine):
    """Random admissions, blocks and expiries against a real ledger state."""

    @initialize(balances=st.lists(st.integers(5_000, 200_000), min_size=6, max_size=6))
    def start(self, balances):
        self.pool = new_pool(shards=2, capacity=6, per_sender=3, ttl_s=30.0)
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
        fee=st.integers(MIN_FEE, 2 * MIN_FEE),
        amount=st.integers(1, 5_000),
        to=st.sampled_from([k.address for k in SENDERS] + [b"\x77" * 20]),
    )
    def admit(self, sender, nonce_delta, fee, amount, to):
        account = self.state.account(sender.address)
        queued = len(nonces(self.pool, sender))
        t = tx.make_transfer(
            sender, NETWORK, max(0, account[1] + queued + nonce_delta), fee, to, amount
        )
        before = self.snapshot()
        expected_victim = self.victim_by_scan(t)
        try:
            self.pool.batch_check().check(t, account)
        except Rejected as exc:
            cheap = exc.code
        else:
            cheap = None
            self.pool.release([t])
        try:
            evicted = self.pool.admit(t, account, self.now)
        except Rejected as exc:
            assert self.snapshot() == before  # a refusal changes nothing
            assert cheap == exc.code  # the cheap checks refuse it the same way
            return
        assert cheap is None and self.snapshot() != before
        assert t.id in self.pool
        assert all(e.tx.id not in self.pool for e in evicted)
        if expected_victim is not None:
            assert [e.tx for e in evicted] == [expected_victim]

    def victim_by_scan(self, t):
        """What a full shard evicts for ``t``, found the slow way: the lowest tail of another
        sender, the newest among equals (None: ``t`` replaces, or there is room)."""
        shard = self.pool.shard_of(t.sender)
        queue = shard.senders.get(t.sender)
        if shard.count < shard.capacity or (
            queue and t.nonce < queue.base_nonce + len(queue.entries)
        ):
            return None
        tails = [q.entries[-1] for s, q in shard.senders.items() if s != t.sender]
        lowest = min(tails, key=lambda e: (e.tx.priority, -e.seq), default=None)
        return lowest.tx if lowest is not None and lowest.tx.priority < t.priority else None

    @rule(max_txs=st.integers(0, 10))
    def commit_block(self, max_txs):
        chosen = self.pool.select(limits(max_txs))
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
