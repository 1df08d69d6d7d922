"""Activations, heartbeats, epochs and lazy rewards, against an independent naive model.

The model keeps, per node, the list of its eligible epochs and the set of those paid, and a
claim sums the rewards of the unpaid closed ones; the ledger settles lazily in O(1). Both
must agree on every refusal, balance, recorded reward and claimed amount, block after block.
"""

import asyncio
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto, ledger, tx
from qnet.block import Block, CommitCertificate, Header, precommit_message, tx_root
from qnet.config import load_config
from qnet.errors import Rejected
from qnet.genesis import NODE_TYPES, REGIONS, Params, make_genesis
from qnet.ledger import EpochRecord, NodeRecord, State
from qnet.node import InvalidBlock, Node, check_block
from qnet.wire import HeartbeatView

CHAIN = "qnet-test"
NETWORK = crypto.Network(CHAIN, crypto.digest(b"qnet-test genesis"))
MIN_FEE = 1_000
EPOCH_MS = 1_000
FEES = {"super": 50_000, "full": 20_000, "light": 5_000}
VALIDATOR = crypto.KeyPair(b"\x50" * 32)  # a genesis super node; it owns itself
OWNERS = [crypto.KeyPair(bytes([0x60 + i]) * 32) for i in range(3)]
NODE_KEYS = [crypto.KeyPair(bytes([0x70 + i]) * 32) for i in range(5)]
ALL_NODES = [VALIDATOR, *NODE_KEYS]
FUNDS = 10**9


def params(emission: int) -> Params:
    return Params(
        min_fee=MIN_FEE,
        epoch_ms=EPOCH_MS,
        epoch_emission=emission,
        activation_fee_super=FEES["super"],
        activation_fee_full=FEES["full"],
        activation_fee_light=FEES["light"],
    )


def genesis_state() -> State:
    balances = {k.address: FUNDS for k in [VALIDATOR, *OWNERS]}
    validator = NodeRecord(VALIDATOR.address, "super", "eu", 0)
    return State.from_genesis(balances, {VALIDATOR.public_key: validator})


def block_hash(height: int) -> bytes:
    return crypto.digest(b"block %d" % height)


# ---- the model: DESIGN §6 computed the naive way -------------------------------------------


class Model:
    def __init__(self, emission: int):
        self.emission = emission
        self.accounts = {k.address: (FUNDS, 0) for k in [VALIDATOR, *OWNERS]}
        self.nodes = {VALIDATOR.public_key: (VALIDATOR.address, "super")}
        self.eligible_in: dict[bytes, list[int]] = {VALIDATOR.public_key: []}
        self.paid: dict[bytes, set[int]] = {VALIDATOR.public_key: set()}
        self.eligible: dict[int, Counter] = {}
        self.rewards: dict[int, dict[str, int]] = {}
        self.epoch = 0
        self.carry = self.fee_pool = self.emitted = self.burned = self.claimed = 0

    def account(self, address: bytes) -> tuple[int, int]:
        return self.accounts.get(address, (0, 0))

    def owed(self, node_key: bytes) -> int:
        node_type = self.nodes[node_key][1]
        return sum(
            self.rewards[e][node_type]
            for e in self.eligible_in[node_key]
            if e < self.epoch and e not in self.paid[node_key]
        )

    def close(self, epoch: int) -> None:
        counts = self.eligible.get(epoch, Counter())
        total = sum(counts.values())
        if total == 0:
            return
        pot = self.emission + self.carry
        per_node = pot // total
        self.carry = pot - per_node * total
        self.emitted += per_node * total
        super_share = self.fee_pool * 70 // 100
        shares = {"super": super_share, "full": self.fee_pool - super_share, "light": 0}
        reward = {}
        for t in NODE_TYPES:
            fee_each = shares[t] // counts[t] if counts[t] else 0
            self.fee_pool -= fee_each * counts[t]
            reward[t] = per_node + fee_each if counts[t] else 0
        self.rewards[epoch] = reward

    def begin_block(self, epoch: int) -> None:
        if epoch > self.epoch:
            self.close(self.epoch)
            self.epoch = epoch

    def verdict(self, t: tx.Transaction) -> str | None:
        balance, nonce = self.account(t.sender)
        if t.nonce != nonce:
            return "stale_nonce" if t.nonce < nonce else "nonce_gap"
        if t.amount + t.fee > balance:
            return "insufficient_funds"
        node = self.nodes.get(t.node_key)
        if t.kind == tx.KIND_ACTIVATE:
            if node is not None:
                return "already_active"
            return None if t.amount == FEES[t.node_type] else "activation_fee"
        if t.kind in (tx.KIND_HEARTBEAT, tx.KIND_CLAIM) and node is None:
            return "unknown_node"
        if t.kind == tx.KIND_HEARTBEAT:
            if t.epoch != self.epoch:
                return "wrong_epoch"
            return "heartbeat_done" if self.epoch in self.eligible_in[t.node_key] else None
        if t.kind == tx.KIND_CLAIM:
            if node[0] != t.sender:
                return "not_owner"
            return None if self.owed(t.node_key) else "nothing_to_claim"
        return None

    def apply(self, t: tx.Transaction) -> None:
        balance, nonce = self.account(t.sender)
        credit = 0
        if t.kind == tx.KIND_ACTIVATE:
            self.nodes[t.node_key] = (t.sender, t.node_type)
            self.eligible_in[t.node_key], self.paid[t.node_key] = [], set()
            self.burned += t.amount
        elif t.kind == tx.KIND_HEARTBEAT:
            self.eligible_in[t.node_key].append(self.epoch)
            self.eligible.setdefault(self.epoch, Counter())[self.nodes[t.node_key][1]] += 1
        elif t.kind == tx.KIND_CLAIM:
            credit = self.owed(t.node_key)
            self.paid[t.node_key].update(e for e in self.eligible_in[t.node_key] if e < self.epoch)
            self.claimed += credit
        self.accounts[t.sender] = (balance - t.amount - t.fee + credit, nonce + 1)
        if t.kind == tx.KIND_TRANSFER:
            to_balance, to_nonce = self.account(t.to)
            self.accounts[t.to] = (to_balance + t.amount, to_nonce)
        self.fee_pool += t.fee


# ---- drawing transactions, valid or with one flaw ------------------------------------------


def next_nonce(model: Model, key: crypto.KeyPair) -> int:
    return model.account(key.address)[1]


@st.composite
def activation(draw, model: Model) -> tx.Transaction | None:
    owner = draw(st.sampled_from(OWNERS))
    node = draw(st.sampled_from(ALL_NODES))
    node_type = draw(st.sampled_from(NODE_TYPES))
    region = draw(st.sampled_from(REGIONS))
    flaw = draw(st.sampled_from(["none"] * 4 + ["proof", "type", "region", "short", "over"]))
    amount = FEES[node_type] - (flaw == "short") + (flaw == "over")
    signer = OWNERS[(OWNERS.index(owner) + 1) % 3] if flaw == "proof" else node
    proof = tx.prove_node(signer, NETWORK, owner.address)
    if flaw in ("type", "region"):  # no encoding exists for them: refused before any ledger
        bad = {"node_type": "mega"} if flaw == "type" else {"region": "moon"}
        fields = {"node_type": node_type, "region": region} | bad
        with pytest.raises(tx.DecodeError):
            tx.make_activate(
                owner, NETWORK, 0, MIN_FEE, node.public_key, amount=1, **fields, node_proof=proof
            )
        return None
    made = tx.make_activate(
        owner,
        NETWORK,
        next_nonce(model, owner),
        MIN_FEE,
        node.public_key,
        node_type,
        region,
        amount,
        proof,
    )
    assert made.verify_signature(NETWORK) == (flaw != "proof")
    return None if flaw == "proof" else made  # the node refuses it at admission


def some_node(model: Model) -> st.SearchStrategy[crypto.KeyPair]:
    """Mostly an activated node, sometimes any (so also one that is not)."""
    activated = [k for k in ALL_NODES if k.public_key in model.nodes]
    return st.sampled_from(activated * 3 + ALL_NODES)


@st.composite
def heartbeat(draw, model: Model) -> tx.Transaction:
    node = draw(some_node(model))
    epoch = max(0, model.epoch + draw(st.sampled_from([0, 0, 0, 0, -1, 1])))
    return tx.make_heartbeat(node, NETWORK, next_nonce(model, node), epoch)


@st.composite
def claim(draw, model: Model) -> tx.Transaction:
    node = draw(some_node(model))
    owner = model.nodes.get(node.public_key, (None,))[0]
    keys = [k for k in [VALIDATOR, *OWNERS] if k.address == owner]
    signer = draw(st.sampled_from(keys * 3 + OWNERS))  # mostly the owner, sometimes not
    return tx.make_claim(signer, NETWORK, next_nonce(model, signer), MIN_FEE, node.public_key)


@st.composite
def transfer(draw, model: Model) -> tx.Transaction:
    sender = draw(st.sampled_from(OWNERS))
    fee = MIN_FEE + draw(st.integers(0, 5_000))
    to = draw(st.sampled_from([k.address for k in OWNERS + NODE_KEYS]))
    return tx.make_transfer(
        sender, NETWORK, next_nonce(model, sender), fee, to, 1 + draw(st.integers(0, 10**4))
    )


@st.composite
def any_transaction(draw, model: Model) -> tx.Transaction | None:
    maker = draw(st.sampled_from([activation, heartbeat, heartbeat, claim, transfer]))
    return draw(maker(model))


# ---- the property ------------------------------------------------------------------------------


def check_against_model(state: State, model: Model) -> None:
    assert ledger.supply_holds(state)
    assert state.accounts == {a: acc for a, acc in model.accounts.items() if acc != (0, 0)}
    s = state.supply
    assert (s.emitted, s.burned, s.fee_pool) == (model.emitted, model.burned, model.fee_pool)
    assert state.clock == ledger.EpochClock(model.epoch, model.carry)
    assert set(state.nodes) == set(model.nodes)
    for key, record in state.nodes.items():
        assert record.owner == model.nodes[key][0]
        assert ledger.claimable(state, record) == model.owed(key)
        if not model.eligible_in[key]:  # never eligible: never paid anything
            assert record.earned == record.last_claim_amount == ledger.claimable(state, record) == 0
    for epoch, reward in model.rewards.items():  # no epoch is recorded differently
        assert state.epochs[epoch].reward == tuple(reward[t] for t in NODE_TYPES)
    for epoch, counts in model.eligible.items():
        assert state.epochs[epoch].eligible == tuple(counts[t] for t in NODE_TYPES)
    # Unclaimed holds exactly what owners can still claim, and claims plus that are exactly
    # what the closes recorded.
    assert s.unclaimed == sum(model.owed(k) for k in model.nodes)
    recorded = sum(
        reward[t] * model.eligible[e][t] for e, reward in model.rewards.items() for t in NODE_TYPES
    )
    assert model.claimed + s.unclaimed == recorded
    rebuilt = State(
        dict(state.accounts),
        s,
        nodes=dict(state.nodes),
        epochs=dict(state.epochs),
        clock=state.clock,
    )
    assert rebuilt.digest == state.digest


def outcomes(txs: list, included: list, refused: list) -> list[str | None]:
    """The refusal code of each transaction in block order, None for the included ones (a
    transaction drawn twice may be refused first and included later)."""
    included, refused = list(included), list(refused)
    codes = []
    for t in txs:
        if included and included[0] is t:
            codes.append(None)
            included.pop(0)
        else:
            refused_tx, exc = refused.pop(0)
            assert refused_tx is t
            codes.append(exc.code)
    return codes


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.data())
def test_rewards_follow_the_model_and_conserve_supply(emission, data):
    rules = ledger.Rules(NETWORK, params(emission))
    state, model = genesis_state(), Model(emission)
    for height in range(1, data.draw(st.integers(1, 14)) + 1):
        time_ms = state.block_time_ms + data.draw(st.sampled_from([1, 400, 1_000, 2_600]))
        model.begin_block(rules.epoch_of(time_ms))
        txs, want = [], []
        for _ in range(data.draw(st.integers(0, 6))):
            t = data.draw(any_transaction(model))
            if t is None:
                continue
            code = model.verdict(t)
            if code is None:
                model.apply(t)
            txs.append(t)
            want.append(code)
        diff, included, refused = ledger.apply_block(state, txs, rules, time_ms)
        assert outcomes(txs, included, refused) == want
        state.merge(diff, height, block_hash(height), time_ms)
        check_against_model(state, model)


# ---- the rules one by one ----------------------------------------------------------------------


def test_an_epoch_close_example():
    """Emission 1001 over 4 eligible nodes, a fee pool of 1001 over 3 super and 1 full."""
    rules = ledger.Rules(NETWORK, params(1_001))
    counts = EpochRecord(eligible=(3, 1, 0))
    state = State({}, ledger.Supply(genesis=0, fee_pool=1_001), epochs={0: counts})
    diff, _, _ = ledger.apply_block(state, [], rules, EPOCH_MS)
    # emission: 1001 // 4 = 250 each, 1 carried; fees: 700 // 3 = 233 per super node
    # (1 left in the pool), 301 to the full node.
    assert diff.epochs[0].reward == (250 + 233, 250 + 301, 0)
    assert diff.clock == ledger.EpochClock(1, 1)
    assert diff.supply == ledger.Supply(0, emitted=1_000, fee_pool=1, unclaimed=1_000 + 1_000)


def test_an_epoch_nobody_was_eligible_in_mints_nothing_and_keeps_the_fees():
    rules = ledger.Rules(NETWORK, params(5_000))
    state = State({}, ledger.Supply(genesis=0, fee_pool=77), clock=ledger.EpochClock(3, 2))
    diff, _, _ = ledger.apply_block(state, [], rules, 9 * EPOCH_MS)
    assert diff.epochs == {} and diff.clock == ledger.EpochClock(9, 2)
    assert diff.supply == ledger.Supply(0, fee_pool=77)


def test_a_block_skipping_epochs_closes_only_the_one_it_leaves():
    rules = ledger.Rules(NETWORK, params(100))
    state = State(
        {},
        ledger.Supply(genesis=0),
        epochs={2: EpochRecord(eligible=(0, 0, 1))},
        clock=ledger.EpochClock(2),
    )
    diff, _, _ = ledger.apply_block(state, [], rules, 10**6 * EPOCH_MS)
    assert set(diff.epochs) == {2} and diff.epochs[2].reward == (0, 0, 100)
    assert diff.clock.epoch == 10**6 and diff.supply.emitted == 100


def test_a_claim_pays_epochs_heartbeated_across_claims_once():
    rules = ledger.Rules(NETWORK, params(900))
    state, owner, node = genesis_state(), OWNERS[0], NODE_KEYS[0]
    proof = tx.prove_node(node, NETWORK, owner.address)
    steps = [  # (epoch of the block, transactions)
        (
            0,
            [
                tx.make_activate(
                    owner, NETWORK, 0, MIN_FEE, node.public_key, "light", "oc", 5_000, proof
                )
            ],
        ),
        (0, [tx.make_heartbeat(node, NETWORK, 0, 0)]),
        (
            1,
            [
                tx.make_heartbeat(node, NETWORK, 1, 1),
                tx.make_claim(owner, NETWORK, 1, MIN_FEE, node.public_key),
            ],
        ),
        (1, [tx.make_claim(owner, NETWORK, 2, MIN_FEE, node.public_key)]),  # epoch 1 still open
        (3, [tx.make_claim(owner, NETWORK, 2, MIN_FEE, node.public_key)]),
        (4, [tx.make_claim(owner, NETWORK, 3, MIN_FEE, node.public_key)]),  # nothing left
    ]
    outcomes = []
    for height, (epoch, txs) in enumerate(steps, 1):
        time_ms = max(state.block_time_ms + 1, epoch * EPOCH_MS)
        diff, _, refused = ledger.apply_block(state, txs, rules, time_ms)
        state.merge(diff, height, block_hash(height), time_ms)
        outcomes.append([exc.code for _, exc in refused])
    assert outcomes == [[], [], [], ["nothing_to_claim"], [], ["nothing_to_claim"]]
    record = state.node(node.public_key)
    assert (record.last_claim_height, record.last_claim_amount) == (5, 900)  # epoch 1 alone
    assert state.account(owner.address)[0] == FUNDS - 5_000 - 3 * MIN_FEE + 900 + 900


def test_admission_sees_the_epoch_the_next_block_closes():
    """A claim sent after its node's only eligible epoch ended, before any block closed it."""
    rules = ledger.Rules(NETWORK, params(700))
    state, node = genesis_state(), VALIDATOR
    diff, _, _ = ledger.apply_block(state, [tx.make_heartbeat(node, NETWORK, 0, 0)], rules, 1)
    state.merge(diff, 1, block_hash(1), 1)
    claim = tx.make_claim(node, NETWORK, 1, MIN_FEE, node.public_key)
    with pytest.raises(Rejected, match="no unclaimed"):
        ledger.check_kind(state, claim, rules)  # on chain, epoch 0 is still open
    ledger.check_kind(ledger.begin_block(state, rules, 1), claim, rules)


def _signed_block(state: State, txs: list[tx.Transaction], time_ms: int) -> Block:
    header = Header(
        CHAIN,
        state.height + 1,
        time_ms,
        state.block_hash,
        tx_root([t.id for t in txs]),
        len(txs),
        b"\0" * 32,
        VALIDATOR.public_key,
    )
    return Block(header, VALIDATOR.sign(header.signing_message(NETWORK)), tuple(txs))


def test_a_block_with_a_forged_node_proof_is_refused():
    """The ledger does not check signatures; the block path does, node proof included."""
    state, owner, node = genesis_state(), OWNERS[0], NODE_KEYS[0]

    def activation(proof: bytes) -> tx.Transaction:
        return tx.make_activate(
            owner, NETWORK, 0, MIN_FEE, node.public_key, "light", "eu", 5_000, proof
        )

    forged = activation(tx.prove_node(OWNERS[1], NETWORK, owner.address))
    with pytest.raises(InvalidBlock, match="badly signed"):
        check_block(state, _signed_block(state, [forged], 1), ledger.Rules(NETWORK, params(0)))
    assert activation(tx.prove_node(node, NETWORK, owner.address)).verify_signature(NETWORK)
    assert not activation(
        tx.prove_node(node, crypto.Network("another-chain", NETWORK.genesis_hash), owner.address)
    ).verify_signature(NETWORK)
    assert not activation(tx.prove_node(node, NETWORK, OWNERS[1].address)).verify_signature(NETWORK)


def test_digest_covers_nodes_epochs_and_the_clock():
    record = NodeRecord(VALIDATOR.address, "super", "eu", 0)
    base = {
        "nodes": {VALIDATOR.public_key: record},
        "epochs": {4: EpochRecord((1, 0, 0), (7, 0, 0))},
        "clock": ledger.EpochClock(5, 0),
    }
    supply = ledger.Supply(genesis=0)
    digest = State({}, supply, **base).digest
    for change in (
        {"nodes": {VALIDATOR.public_key: replace(record, earned=1)}},
        {"nodes": {VALIDATOR.public_key: replace(record, last_heartbeat=0)}},
        {"nodes": {VALIDATOR.public_key: replace(record, region="oc")}},
        {"nodes": {OWNERS[0].public_key: record}},
        {"epochs": {4: EpochRecord((1, 0, 0), (8, 0, 0))}},
        {"epochs": {3: EpochRecord((1, 0, 0), (7, 0, 0))}},
        {"clock": ledger.EpochClock(6, 0)},
        {"clock": ledger.EpochClock(5, 1)},
    ):
        assert State({}, supply, **(base | change)).digest != digest, change


@settings(max_examples=50, deadline=None)
@given(
    st.builds(
        NodeRecord,
        st.binary(min_size=20, max_size=20),
        st.sampled_from(NODE_TYPES),
        st.sampled_from(REGIONS),
        st.integers(0, 2**64 - 1),
        st.none() | st.integers(0, 2**64 - 2),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    ),
    st.lists(st.integers(0, 2**64 - 1), min_size=6, max_size=6),
)
def test_records_round_trip_their_encoding(record, numbers):
    assert NodeRecord.decode(record.encode()) == record
    epoch = EpochRecord(tuple(numbers[:3]), tuple(numbers[3:]))
    assert EpochRecord.decode(epoch.encode()) == epoch


# ---- the node's own heartbeat --------------------------------------------------------------


def test_a_node_builds_its_heartbeat_for_the_network_driver(tmp_path):
    genesis = make_genesis(CHAIN, [(VALIDATOR.node_id, "eu")], {}, params(10))
    (tmp_path / "validator").mkdir()
    (tmp_path / "stranger").mkdir()
    node = Node(load_config(tmp_path / "validator", region="eu"), genesis, VALIDATOR)
    try:
        heartbeat = node.heartbeat()
        epoch = node.epoch_now()
        assert epoch > 0
        assert (heartbeat.kind, heartbeat.nonce, heartbeat.epoch) == (tx.KIND_HEARTBEAT, 0, epoch)
        assert heartbeat.node_key == VALIDATOR.public_key
        assert heartbeat.verify_signature(genesis.network)
        assert asyncio.run(node.submit([heartbeat])) == [None]
        assert node.heartbeat() is None  # one is pending
        view = node.heartbeat_view(VALIDATOR.public_key)
        assert (view.activated, view.nonce, view.pending, view.epoch) == (True, 1, 1, epoch)
        # What a light node gets over the wire from a full one is the same view.
        assert HeartbeatView.decode(view.encode()) == view
    finally:
        node.close()
    stranger = Node(load_config(tmp_path / "stranger", region="eu"), genesis, OWNERS[0])
    try:
        assert stranger.heartbeat() is None  # not activated
        view = stranger.heartbeat_view(OWNERS[0].public_key)
        assert HeartbeatView.decode(view.encode()) == view and view.last_epoch is None
    finally:
        stranger.close()


def test_a_heartbeat_whose_epoch_closed_is_dropped(tmp_path):
    """A node that builds no blocks must not wait for a heartbeat that can no longer land
    (its epoch closed first) until the mempool TTL: the commit that closes the epoch drops
    it, and the next epoch's heartbeat is due at once."""
    genesis = make_genesis(CHAIN, [(VALIDATOR.node_id, "eu")], {}, params(10))
    (tmp_path / "follower").mkdir()
    (tmp_path / "proposer").mkdir()
    follower = Node(load_config(tmp_path / "follower", region="eu"), genesis, VALIDATOR)
    proposer = Node(load_config(tmp_path / "proposer", region="eu"), genesis, VALIDATOR)
    try:
        heartbeat = follower.heartbeat()
        assert asyncio.run(follower.submit([heartbeat])) == [None]
        assert follower.heartbeat() is None  # pending
        # The proposer never saw it; its next block is in the next epoch.
        block, _ = proposer.build_block(follower.rules.epoch_start_ms(heartbeat.epoch + 1))
        message = precommit_message(genesis.network, block.header.height, 0, block.hash)
        cert = CommitCertificate(
            block.header.height, 0, block.hash, ((VALIDATOR.public_key, VALIDATOR.sign(message)),)
        )

        async def take() -> None:
            await follower.commit(block, cert, await follower.validate_block(block))

        asyncio.run(take())
        assert follower.mempool.pending_count(VALIDATOR.address) == 0
        assert follower.tx_status(heartbeat.id)["reason"] == "wrong_epoch"
        assert follower.heartbeat().epoch == heartbeat.epoch + 1
    finally:
        follower.close()
        proposer.close()
