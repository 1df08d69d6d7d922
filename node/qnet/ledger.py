"""The ledger's state transition, written as small pure functions (no I/O, no clocks).

State is a map address -> (balance, nonce), the node registry (node key -> ``NodeRecord``),
one ``EpochRecord`` per epoch that saw a heartbeat, the ``EpochClock`` and the supply
counters. A block is applied to an ``Overlay`` over the committed state; only when the block
is durable does the overlay's diff merge into the committed state. Signatures (including an
activation's node proof) are not checked here: the mempool verifies them once at admission,
and the block path verifies what it has not seen.

Epochs and lazy rewards (DESIGN §6). Epoch ``e`` holds the blocks whose header time falls in
``[origin + e * epoch_ms, origin + (e + 1) * epoch_ms)``, ``origin`` being the genesis time,
so every node derives the same epoch from the same header. A node is eligible in an epoch
when it is activated and its heartbeat for that epoch is on chain; each heartbeat bumps the
epoch's eligible count of its node type. The first block of a later epoch closes the epoch
of its parent, in O(1) whatever the number of nodes, by recording the reward per eligible
node of each type:

    reward[type] = emission // eligible_total + fee_share[type] // eligible[type]

(0 for a type with no eligible node).

- Emission: ``epoch_emission`` plus the emission carried from earlier closes, split equally
  per node across all types (light nodes too). The integer remainder is carried to the next
  close. An epoch nobody was eligible in mints nothing (its emission is not carried), and
  minting stops short of the supply bound.
- Fees: the whole fee pool at the close (this epoch's fees and earlier remainders);
  ``super_fee_percent`` (70) of it to super nodes, the rest (30) to full nodes, each split
  equally within its type. What does not divide, or whose type had no eligible node, stays
  in the pool for the next close. Light nodes earn no fees.

Recorded rewards move into ``unclaimed`` (emission is minted into it, fees move out of the
pool). Nothing is pushed to nodes: a node's record settles lazily. Its latest heartbeat epoch
is *pending* until that epoch closes; the next heartbeat or a claim adds a closed pending
epoch's reward to ``earned`` by one lookup, so heartbeats and claims are O(1) too, and a
claim pays ``earned`` to the owner (its fee comes from the owner's balance) and moves
``claimed_before`` to the current epoch: every eligible epoch is paid exactly once.

Always: balances + unclaimed + fee pool == genesis + emitted - burned (``supply_holds``).

The state digest is an additive multiset hash over the accounts, nodes and epoch records
(sum of BLAKE2b of every entry, mod 2**256), the supply counters and the epoch clock, so a
block updates it in O(entries changed). It detects divergence between honest nodes; it is not
a proof structure for light clients.
"""

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

from . import crypto
from .amounts import MAX_SUPPLY
from .errors import Rejected
from .genesis import NODE_TYPES, REGIONS, Genesis, Params
from .tx import KIND_ACTIVATE, KIND_CLAIM, KIND_HEARTBEAT, KIND_TRANSFER, Transaction

MOD = 2**256
NEVER = 2**64 - 1  # "no heartbeat yet" in an encoded node record
_ENTRY = struct.Struct(">20sQQ")
_NODE = struct.Struct(">20sBBQQQQQQ")
_EPOCH = struct.Struct(">QQQQQQ")
_SUPPLY = struct.Struct(">32sQQQQQQQ")
_NODE_TAG = b"N"  # node and epoch entries are tagged (and never 36 bytes long like accounts)
_EPOCH_TAG = b"E"
EMPTY = (0, 0)
NO_COUNTS = (0,) * len(NODE_TYPES)


@dataclass(frozen=True)
class Supply:
    genesis: int
    emitted: int = 0
    burned: int = 0
    fee_pool: int = 0
    unclaimed: int = 0

    @property
    def total(self) -> int:
        return self.genesis + self.emitted - self.burned


@dataclass(frozen=True)
class Rules:
    """What a block is checked against besides the state: constants fixed at genesis. The
    network is what its signatures must have been made for."""

    network: crypto.Network
    params: Params = field(default_factory=Params)
    epoch_origin_ms: int = 0

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> "Rules":
        return cls(genesis.network, genesis.params, genesis.genesis_time_ms)

    @property
    def chain_id(self) -> str:
        return self.network.chain_id

    def epoch_of(self, time_ms: int) -> int:
        return max(0, time_ms - self.epoch_origin_ms) // self.params.epoch_ms

    def epoch_start_ms(self, epoch: int) -> int:
        return self.epoch_origin_ms + epoch * self.params.epoch_ms

    @cached_property
    def block_limits(self) -> "BlockLimits":
        return BlockLimits(self.params.max_block_txs, self.params.max_block_bytes)


@dataclass(frozen=True)
class BlockLimits:
    """How much one block may carry (genesis ``max_block_txs`` and ``max_block_bytes``).
    ``fits`` decides for the block builder, which fills a block up to the limits, and for
    validators, to whom a block beyond them is invalid. ``body_bytes`` counts the block's
    transactions as they travel (``tx.framed_size`` each)."""

    max_txs: int
    max_bytes: int

    def fits(self, tx_count: int, body_bytes: int) -> bool:
        return tx_count <= self.max_txs and body_bytes <= self.max_bytes


@dataclass(frozen=True, slots=True)
class NodeRecord:
    owner: bytes  # the address that activated the node and may claim its rewards
    node_type: str
    region: str
    activated_at: int  # height of the activating block (0: a genesis validator)
    last_heartbeat: int | None = None  # epoch of the latest heartbeat on chain
    earned: int = 0  # rewards of settled eligible epochs, not yet claimed
    claimed_before: int = 0  # every eligible epoch before this one has been paid
    last_claim_height: int = 0
    last_claim_amount: int = 0

    @property
    def pending_epoch(self) -> int | None:
        """The eligible epoch whose reward is not in ``earned`` yet (maybe still open)."""
        epoch = self.last_heartbeat
        return epoch if epoch is not None and epoch >= self.claimed_before else None

    def encode(self) -> bytes:
        return _NODE.pack(
            self.owner,
            NODE_TYPES.index(self.node_type),
            REGIONS.index(self.region),
            self.activated_at,
            NEVER if self.last_heartbeat is None else self.last_heartbeat,
            self.earned,
            self.claimed_before,
            self.last_claim_height,
            self.last_claim_amount,
        )

    @classmethod
    def decode(cls, data: bytes) -> "NodeRecord":
        owner, type_code, region_code, activated, last, *rest = _NODE.unpack(data)
        heartbeat = None if last == NEVER else last
        return cls(owner, NODE_TYPES[type_code], REGIONS[region_code], activated, heartbeat, *rest)


@dataclass(frozen=True, slots=True)
class EpochRecord:
    eligible: tuple[int, ...] = NO_COUNTS  # nodes with a heartbeat, by type (NODE_TYPES order)
    reward: tuple[int, ...] = NO_COUNTS  # per eligible node by type; set when the epoch closes

    def encode(self) -> bytes:
        return _EPOCH.pack(*self.eligible, *self.reward)

    @classmethod
    def decode(cls, data: bytes) -> "EpochRecord":
        values = _EPOCH.unpack(data)
        n = len(NODE_TYPES)
        return cls(values[:n], values[n:])

    def reward_of(self, node_type: str) -> int:
        return self.reward[NODE_TYPES.index(node_type)]


@dataclass(frozen=True)
class EpochClock:
    epoch: int = 0  # the epoch of the last block: every earlier epoch is closed
    carried_emission: int = 0  # undivided emission, added to the next close's


def entry_hash(address: bytes, account: tuple[int, int]) -> int:
    if account == EMPTY:
        return 0
    return int.from_bytes(crypto.digest(_ENTRY.pack(address, *account)))


def node_hash(node_key: bytes, record: NodeRecord | None) -> int:
    if record is None:
        return 0
    return int.from_bytes(crypto.digest(_NODE_TAG + node_key + record.encode()))


def epoch_hash(epoch: int, record: EpochRecord | None) -> int:
    if record is None:
        return 0
    return int.from_bytes(crypto.digest(_EPOCH_TAG + epoch.to_bytes(8) + record.encode()))


def state_digest(accumulator: int, supply: Supply, clock: EpochClock) -> bytes:
    return crypto.digest(
        _SUPPLY.pack(
            accumulator.to_bytes(32),
            supply.genesis,
            supply.emitted,
            supply.burned,
            supply.fee_pool,
            supply.unclaimed,
            clock.epoch,
            clock.carried_emission,
        )
    )


class State:
    """The committed state, and the block it is the result of."""

    def __init__(
        self,
        accounts: dict[bytes, tuple[int, int]],
        supply: Supply,
        height: int = 0,
        block_hash: bytes = b"\0" * 32,
        block_time_ms: int = 0,
        nodes: dict[bytes, NodeRecord] | None = None,
        epochs: dict[int, EpochRecord] | None = None,
        clock: EpochClock = EpochClock(),
    ):
        self.accounts = accounts
        self.supply = supply
        self.height = height
        self.block_hash = block_hash
        self.block_time_ms = block_time_ms
        self.nodes: dict[bytes, NodeRecord] = {}
        # Epoch records in epoch order: only the open epoch ever gets a new one.
        self.epochs = dict(sorted((epochs or {}).items()))
        self.clock = clock
        # Derived from ``nodes`` for queries; not part of the digest.
        self.node_counts: Counter[tuple[str, str]] = Counter()
        self.owned: dict[bytes, list[bytes]] = {}
        for key, record in (nodes or {}).items():
            self._add_node(key, record)
        self.accumulator = (
            sum(entry_hash(a, acc) for a, acc in accounts.items())
            + sum(node_hash(k, r) for k, r in self.nodes.items())
            + sum(epoch_hash(e, r) for e, r in self.epochs.items())
        ) % MOD

    @classmethod
    def from_genesis(
        cls, balances: dict[bytes, int], nodes: dict[bytes, NodeRecord] | None = None
    ) -> "State":
        return cls(
            {a: (units, 0) for a, units in balances.items()},
            Supply(genesis=sum(balances.values())),
            nodes=nodes,
        )

    @property
    def epoch(self) -> int:
        return self.clock.epoch

    def account(self, address: bytes) -> tuple[int, int]:
        return self.accounts.get(address, EMPTY)

    def node(self, node_key: bytes) -> NodeRecord | None:
        return self.nodes.get(node_key)

    def epoch_record(self, epoch: int) -> EpochRecord:
        return self.epochs.get(epoch, EpochRecord())

    def last_closed_epoch(self) -> int | None:
        """The latest closed epoch that had eligible nodes."""
        return next((e for e in reversed(self.epochs) if e < self.clock.epoch), None)

    @property
    def digest(self) -> bytes:
        return state_digest(self.accumulator, self.supply, self.clock)

    def _add_node(self, key: bytes, record: NodeRecord) -> None:
        if key not in self.nodes:
            self.node_counts[record.node_type, record.region] += 1
            self.owned.setdefault(record.owner, []).append(key)
        self.nodes[key] = record

    def merge(self, diff: "Diff", height: int, block_hash: bytes, block_time_ms: int) -> None:
        for address, account in diff.accounts.items():
            if account == EMPTY:
                self.accounts.pop(address, None)
            else:
                self.accounts[address] = account
        for key, record in diff.nodes.items():
            self._add_node(key, record)
        self.epochs.update(diff.epochs)
        self.clock = diff.clock
        self.accumulator = diff.accumulator
        self.supply = diff.supply
        self.height = height
        self.block_hash = block_hash
        self.block_time_ms = block_time_ms


def genesis_state(genesis: Genesis) -> State:
    """Balances, and the validators as super nodes active from genesis. A validator has no
    owner wallet in genesis.json, so its owner is the address of its own node key."""
    nodes = {
        v.public_key: NodeRecord(crypto.address_bytes(v.public_key), "super", v.region, 0)
        for v in genesis.validators
    }
    return State.from_genesis(genesis.account_balances(), nodes)


@dataclass
class Diff:
    """What one block changes: new values of touched entries, counters, digest accumulator."""

    accounts: dict[bytes, tuple[int, int]]
    supply: Supply
    accumulator: int
    nodes: dict[bytes, NodeRecord] = field(default_factory=dict)
    epochs: dict[int, EpochRecord] = field(default_factory=dict)
    clock: EpochClock = EpochClock()
    heartbeats: list[tuple[bytes, int]] = field(default_factory=list)  # (node key, epoch)

    @property
    def digest(self) -> bytes:
        return state_digest(self.accumulator, self.supply, self.clock)


class Overlay:
    """A writable view over committed state for applying one block in ``epoch``."""

    def __init__(self, base: State, epoch: int | None = None):
        self.base = base
        self.height = base.height + 1
        self.epoch = base.clock.epoch if epoch is None else epoch
        self.carried_emission = base.clock.carried_emission
        self.changes: dict[bytes, tuple[int, int]] = {}
        self.node_changes: dict[bytes, NodeRecord] = {}
        self.epoch_changes: dict[int, EpochRecord] = {}
        self.heartbeats: list[tuple[bytes, int]] = []
        self.fees = 0  # paid into the fee pool
        self.burned = 0
        self.emitted = 0  # minted into unclaimed rewards
        self.fees_rewarded = 0  # moved from the fee pool into unclaimed rewards
        self.claimed = 0  # moved from unclaimed rewards into balances

    def account(self, address: bytes) -> tuple[int, int]:
        got = self.changes.get(address)
        return got if got is not None else self.base.accounts.get(address, EMPTY)

    def node(self, node_key: bytes) -> NodeRecord | None:
        got = self.node_changes.get(node_key)
        return got if got is not None else self.base.nodes.get(node_key)

    def epoch_record(self, epoch: int) -> EpochRecord:
        got = self.epoch_changes.get(epoch)
        return got if got is not None else self.base.epoch_record(epoch)

    @property
    def fee_pool(self) -> int:
        return self.base.supply.fee_pool + self.fees - self.fees_rewarded

    def diff(self) -> Diff:
        base = self.base
        acc = base.accumulator
        for address, new in self.changes.items():
            acc += entry_hash(address, new) - entry_hash(address, base.account(address))
        for key, record in self.node_changes.items():
            acc += node_hash(key, record) - node_hash(key, base.node(key))
        for epoch, record in self.epoch_changes.items():
            acc += epoch_hash(epoch, record) - epoch_hash(epoch, base.epochs.get(epoch))
        s = base.supply
        supply = Supply(
            s.genesis,
            s.emitted + self.emitted,
            s.burned + self.burned,
            self.fee_pool,
            s.unclaimed + self.emitted + self.fees_rewarded - self.claimed,
        )
        return Diff(
            self.changes,
            supply,
            acc % MOD,
            self.node_changes,
            self.epoch_changes,
            EpochClock(self.epoch, self.carried_emission),
            self.heartbeats,
        )


View = State | Overlay


def claimable(view: View, node: NodeRecord) -> int:
    """What a claim would pay now: ``earned`` plus the pending epoch's reward once closed."""
    pending = node.pending_epoch
    if pending is None or pending >= view.epoch:
        return node.earned
    return node.earned + view.epoch_record(pending).reward_of(node.node_type)


# ---- epochs --------------------------------------------------------------------------------


def close_epoch(view: Overlay, rules: Rules, epoch: int) -> None:
    """Record the reward per eligible node of each type for ``epoch``: O(1) in the nodes."""
    record = view.epoch_record(epoch)
    total = sum(record.eligible)
    if total == 0:
        return
    p = rules.params
    room = MAX_SUPPLY - view.base.supply.total  # minting never overflows the supply bound
    emission = min(p.epoch_emission + view.carried_emission, room)
    per_node = emission // total
    pool = view.fee_pool
    super_share = pool * p.super_fee_percent // 100
    shares = dict(zip(NODE_TYPES, (super_share, pool - super_share, 0), strict=True))
    fee_each = [
        shares[t] // n if n else 0 for t, n in zip(NODE_TYPES, record.eligible, strict=True)
    ]
    reward = tuple(per_node + f if n else 0 for f, n in zip(fee_each, record.eligible, strict=True))
    view.epoch_changes[epoch] = replace(record, reward=reward)
    view.emitted += per_node * total
    view.carried_emission = emission - per_node * total
    view.fees_rewarded += sum(f * n for f, n in zip(fee_each, record.eligible, strict=True))


def begin_block(state: State, rules: Rules, epoch: int) -> Overlay:
    """A view for a block in ``epoch``, with the epoch it leaves already closed."""
    view = Overlay(state, epoch)
    if epoch > state.epoch:
        close_epoch(view, rules, state.epoch)
    return view


# ---- transaction rules -----------------------------------------------------------------


def check_fee(tx: Transaction, rules: Rules) -> None:
    """Heartbeats are free (their fee is 0 by encoding); everything else pays ``min_fee``."""
    min_fee = rules.params.min_fee
    if tx.kind != KIND_HEARTBEAT and tx.fee < min_fee:
        raise Rejected("fee_too_low", f"fee {tx.fee} is below the minimum {min_fee}")


def check_activate(view: View, tx: Transaction, rules: Rules) -> None:
    if view.node(tx.node_key) is not None:
        node_id = crypto.encode_node_id(tx.node_key)
        raise Rejected("already_active", f"node {node_id} is already activated")
    fee = rules.params.activation_fee(tx.node_type)
    if tx.amount != fee:
        raise Rejected(
            "activation_fee",
            f"activating a {tx.node_type} node burns exactly {fee} units, not {tx.amount}",
        )


def _registered(view: View, tx: Transaction) -> NodeRecord:
    node = view.node(tx.node_key)
    if node is None:
        node_id = crypto.encode_node_id(tx.node_key)
        raise Rejected("unknown_node", f"node {node_id} is not activated")
    return node


def check_heartbeat(view: View, tx: Transaction, rules: Rules) -> None:
    node = _registered(view, tx)
    if tx.epoch != view.epoch:
        raise Rejected(
            "wrong_epoch", f"heartbeat is for epoch {tx.epoch}, the block is in {view.epoch}"
        )
    if node.last_heartbeat == view.epoch:
        raise Rejected("heartbeat_done", f"the node's heartbeat for epoch {view.epoch} is in")


def check_claim(view: View, tx: Transaction, rules: Rules) -> None:
    node = _registered(view, tx)
    if node.owner != tx.sender:
        raise Rejected("not_owner", "only the node's owner can claim its rewards")
    if claimable(view, node) == 0:
        raise Rejected("nothing_to_claim", "the node has no unclaimed rewards of closed epochs")


def check_transfer(view: View, tx: Transaction, rules: Rules) -> None:
    """A transfer needs nothing beyond chain, fee, nonce and funds."""


CHECKS: dict[int, Callable[[View, Transaction, Rules], None]] = {
    KIND_TRANSFER: check_transfer,
    KIND_ACTIVATE: check_activate,
    KIND_HEARTBEAT: check_heartbeat,
    KIND_CLAIM: check_claim,
}


def check_kind(view: View, tx: Transaction, rules: Rules) -> None:
    """The rules of the transaction's kind (registry, epoch, ownership), not nonce or funds."""
    CHECKS[tx.kind](view, tx, rules)


def check_transaction(view: Overlay, tx: Transaction, rules: Rules) -> None:
    """Every rule a transaction must pass against the state; raises Rejected, changes nothing."""
    if tx.chain_id != rules.chain_id:
        raise Rejected(
            "wrong_chain", f"transaction is for chain {tx.chain_id!r}, not {rules.chain_id!r}"
        )
    check_fee(tx, rules)
    balance, nonce = view.account(tx.sender)
    if tx.nonce < nonce:
        raise Rejected("stale_nonce", f"nonce {tx.nonce} already used (next is {nonce})")
    if tx.nonce > nonce:
        raise Rejected("nonce_gap", f"nonce {tx.nonce} is ahead of the next nonce {nonce}")
    if tx.cost > balance:
        raise Rejected(
            "insufficient_funds", f"amount plus fee {tx.cost} exceeds the balance {balance}"
        )
    CHECKS[tx.kind](view, tx, rules)


def pay(view: Overlay, tx: Transaction, credit: int = 0) -> None:
    """Take amount and fee from the sender (adding ``credit``), use its nonce, pool the fee."""
    balance, nonce = view.account(tx.sender)
    view.changes[tx.sender] = (balance - tx.cost + credit, nonce + 1)
    view.fees += tx.fee


def apply_transfer(view: Overlay, tx: Transaction) -> None:
    pay(view, tx)
    to_balance, to_nonce = view.account(tx.to)
    view.changes[tx.to] = (to_balance + tx.amount, to_nonce)


def apply_activate(view: Overlay, tx: Transaction) -> None:
    pay(view, tx)
    view.burned += tx.amount
    view.node_changes[tx.node_key] = NodeRecord(
        tx.sender, tx.node_type, tx.region, view.height, claimed_before=view.epoch
    )


def apply_heartbeat(view: Overlay, tx: Transaction) -> None:
    pay(view, tx)
    node = view.node(tx.node_key)
    # The previous heartbeat's epoch is closed now: settle it before this one becomes pending.
    settled = claimable(view, node)
    view.node_changes[tx.node_key] = replace(node, earned=settled, last_heartbeat=view.epoch)
    record = view.epoch_record(view.epoch)
    index = NODE_TYPES.index(node.node_type)
    eligible = tuple(n + (i == index) for i, n in enumerate(record.eligible))
    view.epoch_changes[view.epoch] = replace(record, eligible=eligible)
    view.heartbeats.append((tx.node_key, view.epoch))


def apply_claim(view: Overlay, tx: Transaction) -> None:
    node = view.node(tx.node_key)
    paid = claimable(view, node)
    pay(view, tx, credit=paid)
    view.claimed += paid
    view.node_changes[tx.node_key] = replace(
        node,
        earned=0,
        claimed_before=view.epoch,
        last_claim_height=view.height,
        last_claim_amount=paid,
    )


APPLY: dict[int, Callable[[Overlay, Transaction], None]] = {
    KIND_TRANSFER: apply_transfer,
    KIND_ACTIVATE: apply_activate,
    KIND_HEARTBEAT: apply_heartbeat,
    KIND_CLAIM: apply_claim,
}


def apply_transaction(view: Overlay, tx: Transaction, rules: Rules) -> None:
    check_transaction(view, tx, rules)
    APPLY[tx.kind](view, tx)


def apply_transactions(
    view: Overlay, txs: list[Transaction], rules: Rules
) -> tuple[list[Transaction], list[tuple[Transaction, Rejected]]]:
    """Apply in order, keeping what passes."""
    included: list[Transaction] = []
    refused: list[tuple[Transaction, Rejected]] = []
    for tx in txs:
        try:
            apply_transaction(view, tx, rules)
        except Rejected as exc:
            refused.append((tx, exc))
        else:
            included.append(tx)
    return included, refused


def apply_block(
    state: State, txs: list[Transaction], rules: Rules, time_ms: int
) -> tuple[Diff, list[Transaction], list[tuple[Transaction, Rejected]]]:
    """A block at ``time_ms`` (later than its parent's): close the epoch it leaves, then
    apply its transactions in order. The builder's, validator's and replayer's path; it
    changes nothing until the diff is merged."""
    view = begin_block(state, rules, rules.epoch_of(time_ms))
    included, refused = apply_transactions(view, txs, rules)
    return view.diff(), included, refused


def supply_holds(state: State) -> bool:
    """balances + unclaimed rewards + fee pool == genesis + emitted - burned."""
    s = state.supply
    balances = sum(balance for balance, _ in state.accounts.values())
    return balances + s.unclaimed + s.fee_pool == s.total
