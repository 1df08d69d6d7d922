"""The ledger's state transition: transaction rules, conservation of supply, state digest."""

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto, ledger, tx
from qnet.amounts import MAX_SUPPLY
from qnet.genesis import Params
from qnet.ledger import State, Supply

CHAIN = "qnet-test"
MIN_FEE = 1_000
KEYS = [crypto.KeyPair(bytes([i + 1]) * 32) for i in range(5)]
FRESH = [bytes([0xA0 + i]) * 20 for i in range(2)]  # recipients nobody holds a key for
RECIPIENTS = [k.address for k in KEYS] + FRESH
NETWORK = crypto.Network(CHAIN, crypto.digest(b"qnet-test genesis"))
RULES = ledger.Rules(NETWORK, Params(min_fee=MIN_FEE))


def apply(state: State, txs: list[tx.Transaction]):
    """``txs`` as the next block, in the epoch of the state's last block."""
    return ledger.apply_block(state, txs, RULES, state.block_time_ms + 1)


def transfer(key, nonce, amount, fee=MIN_FEE, to=FRESH[0], chain=CHAIN) -> tx.Transaction:
    network = crypto.Network(chain, NETWORK.genesis_hash)
    return tx.make_transfer(key, network, nonce, fee, to, amount)


def block_hash(height: int) -> bytes:
    return crypto.digest(b"block %d" % height)


# ---- an independent model of the rules ---------------------------------------------------


def expected_refusal(model: dict, t: tx.Transaction) -> str | None:
    balance, nonce = model.get(t.sender, (0, 0))
    if t.chain_id != CHAIN:
        return "wrong_chain"
    if t.fee < MIN_FEE:
        return "fee_too_low"
    if t.nonce < nonce:
        return "stale_nonce"
    if t.nonce > nonce:
        return "nonce_gap"
    if t.amount + t.fee > balance:
        return "insufficient_funds"
    return None


def model_apply(model: dict, t: tx.Transaction) -> None:
    balance, nonce = model[t.sender]
    if t.to == t.sender:
        model[t.sender] = (balance - t.fee, nonce + 1)
        return
    model[t.sender] = (balance - t.amount - t.fee, nonce + 1)
    to_balance, to_nonce = model.get(t.to, (0, 0))
    model[t.to] = (to_balance + t.amount, to_nonce)


FLAWS = ["none"] * 8 + ["wrong_chain", "fee_too_low", "stale_nonce", "nonce_gap", "overdraft"]


@st.composite
def transaction_against(draw, model: dict) -> tx.Transaction:
    """A transaction that is valid against ``model`` unless it draws a flaw."""
    key = draw(st.sampled_from(KEYS))
    to = draw(st.sampled_from(RECIPIENTS))
    balance, nonce = model.get(key.address, (0, 0))
    flaw = draw(st.sampled_from(FLAWS))
    fee = (
        draw(st.integers(0, MIN_FEE - 1))
        if flaw == "fee_too_low"
        else MIN_FEE + draw(st.integers(0, 2_000))
    )
    if flaw == "stale_nonce" and nonce > 0:
        nonce -= draw(st.integers(1, nonce))
    elif flaw in ("stale_nonce", "nonce_gap"):
        nonce += draw(st.integers(1, 3))
    spendable = balance - fee
    if flaw == "overdraft" or spendable < 1:
        amount = draw(st.integers(max(1, spendable + 1), max(1, spendable + 1) + 10_000))
    else:
        amount = draw(st.integers(1, spendable))
    chain = "another-chain" if flaw == "wrong_chain" else CHAIN
    return transfer(key, nonce, amount, fee, to, chain)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(MIN_FEE, 10**7), min_size=len(KEYS), max_size=len(KEYS)), st.data())
def test_blocks_follow_the_rules_and_conserve_supply(genesis_balances, data):
    genesis = {k.address: units for k, units in zip(KEYS, genesis_balances, strict=True)}
    total = sum(genesis_balances)
    state = State.from_genesis(genesis)
    model = {a: (units, 0) for a, units in genesis.items()}
    assert ledger.supply_holds(state)

    for height in range(1, data.draw(st.integers(1, 5)) + 1):
        pending = dict(model)
        txs, want_included, want_refused = [], [], []
        for _ in range(data.draw(st.integers(0, 10))):
            t = data.draw(transaction_against(pending))
            txs.append(t)
            code = expected_refusal(pending, t)
            if code is None:
                model_apply(pending, t)
                want_included.append(t.id)
            else:
                want_refused.append((t.id, code))

        before_accounts, before_digest = dict(state.accounts), state.digest
        before_supply = state.supply
        diff, included, refused = apply(state, txs)
        assert [t.id for t in included] == want_included
        assert [(t.id, exc.code) for t, exc in refused] == want_refused
        # Applying changes nothing until the diff is merged.
        assert state.accounts == before_accounts and state.digest == before_digest

        # A refused transaction changes nothing: the included ones alone give the same diff.
        alone, again, none = apply(state, included)
        assert none == [] and [t.id for t in again] == want_included
        assert (alone.accounts, alone.supply, alone.digest) == (
            diff.accounts,
            diff.supply,
            diff.digest,
        )

        state.merge(diff, height, block_hash(height), height * 1000)
        assert (state.height, state.block_hash) == (height, block_hash(height))
        assert state.digest == diff.digest

        # Every included transaction moves exactly amount + fee, and the fees land in the pool.
        fees = sum(t.fee for t in included)
        assert state.supply == Supply(genesis=total, fee_pool=before_supply.fee_pool + fees)
        delta = Counter()
        for t in included:
            delta[t.sender] -= t.amount + t.fee
            delta[t.to] += t.amount
        sent = Counter(t.sender for t in included)
        for address in set(before_accounts) | set(state.accounts):
            old_balance, old_nonce = before_accounts.get(address, (0, 0))
            assert state.account(address) == (
                old_balance + delta[address],
                old_nonce + sent[address],
            )

        model = pending
        assert state.accounts == model
        assert ledger.supply_holds(state)
        assert sum(b for b, _ in state.accounts.values()) + state.supply.fee_pool == total
        # The incremental digest equals the digest of the same state built from scratch.
        assert State(dict(state.accounts), state.supply).digest == state.digest


# ---- each rule on its own ----------------------------------------------------------------


@pytest.fixture
def state() -> State:
    return State.from_genesis({KEYS[0].address: 100_000, KEYS[1].address: 50_000})


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: transfer(KEYS[0], 0, 10, chain="other"), "wrong_chain"),
        (lambda: transfer(KEYS[0], 0, 10, fee=MIN_FEE - 1), "fee_too_low"),
        (lambda: transfer(KEYS[0], 1, 10), "nonce_gap"),
        (lambda: transfer(KEYS[0], 0, 99_001), "insufficient_funds"),
        (lambda: transfer(KEYS[2], 0, 1), "insufficient_funds"),  # an account that does not exist
    ],
)
def test_each_rule_refuses_and_changes_nothing(state, make, code):
    digest = state.digest
    diff, included, refused = apply(state, [make()])
    assert included == [] and [exc.code for _, exc in refused] == [code]
    assert diff.accounts == {} and diff.digest == digest


def test_a_used_nonce_is_stale(state):
    first = transfer(KEYS[0], 0, 10)
    again = transfer(KEYS[0], 0, 11)
    _, included, refused = apply(state, [first, again])
    assert included == [first]
    assert [(t, exc.code) for t, exc in refused] == [(again, "stale_nonce")]


def test_spending_the_whole_balance_is_allowed(state):
    t = transfer(KEYS[0], 0, 100_000 - MIN_FEE, to=KEYS[1].address)
    diff, included, _ = apply(state, [t])
    assert included == [t]
    assert diff.accounts[KEYS[0].address] == (0, 1)  # keeps its nonce, so it is not EMPTY


def test_transfer_to_self_costs_only_the_fee(state):
    t = transfer(KEYS[0], 0, 60_000, to=KEYS[0].address)
    diff, included, _ = apply(state, [t])
    assert included == [t]
    assert diff.accounts == {KEYS[0].address: (100_000 - MIN_FEE, 1)}
    assert diff.supply.fee_pool == MIN_FEE


def test_transfer_to_a_new_account_creates_it(state):
    t = transfer(KEYS[0], 0, 7, to=FRESH[1])
    diff, _, _ = apply(state, [t])
    state.merge(diff, 1, block_hash(1), 1)
    assert state.account(FRESH[1]) == (7, 0)
    assert ledger.supply_holds(state)


def test_funds_received_earlier_in_the_block_can_be_spent(state):
    a, c = KEYS[0], KEYS[2]
    fund = transfer(a, 0, 5_000, to=c.address)
    spend = transfer(c, 0, 4_000, to=FRESH[0])
    _, included, refused = apply(state, [spend, fund])
    assert included == [fund] and refused[0][0] is spend  # order matters
    diff, included, _ = apply(state, [fund, spend])
    assert included == [fund, spend]
    assert diff.accounts[c.address] == (0, 1)


# ---- state digest ------------------------------------------------------------------------

accounts = st.dictionaries(
    st.binary(min_size=20, max_size=20),
    st.tuples(st.integers(1, MAX_SUPPLY), st.integers(0, 2**64 - 1)),
    min_size=1,
    max_size=6,
)
supplies = st.builds(
    Supply,
    st.integers(0, MAX_SUPPLY - 1),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    st.integers(0, 2**32),
)


@settings(max_examples=80, deadline=None)
@given(accounts, supplies, st.data())
def test_digest_differs_when_any_balance_nonce_or_counter_differs(accs, supply, data):
    digest = State(dict(accs), supply).digest
    assert State(dict(reversed(accs.items())), supply).digest == digest  # order is irrelevant
    address = data.draw(st.sampled_from(sorted(accs)))
    balance, nonce = accs[address]
    new_balance = data.draw(st.integers(0, MAX_SUPPLY).filter(lambda b: b != balance))
    assert State(accs | {address: (new_balance, nonce)}, supply).digest != digest
    new_nonce = data.draw(st.integers(0, 2**64 - 1).filter(lambda n: n != nonce))
    assert State(accs | {address: (balance, new_nonce)}, supply).digest != digest
    field = data.draw(st.sampled_from(["genesis", "emitted", "burned", "fee_pool", "unclaimed"]))
    bumped = replace(supply, **{field: getattr(supply, field) + 1})
    assert State(dict(accs), bumped).digest != digest


def test_digest_after_merges_equals_a_rebuilt_state():
    state = State.from_genesis({k.address: 1_000_000 for k in KEYS})
    for height in range(1, 4):
        txs = [
            transfer(k, height - 1, 1_000 * (i + 1), to=RECIPIENTS[(i + height) % 7])
            for i, k in enumerate(KEYS)
        ]
        diff, included, _ = apply(state, txs)
        assert included == txs
        state.merge(diff, height, block_hash(height), height)
        rebuilt = State(dict(state.accounts), state.supply)
        assert rebuilt.digest == state.digest
        assert rebuilt.accumulator == state.accumulator
