"""The ledger's state transition, written as small pure functions (no I/O, no clocks).

State is a map address -> (balance, nonce) plus the supply counters. A block is applied to
an ``Overlay`` over the committed state; only when the block is durable does the overlay's
diff merge into the committed state. Signatures are not checked here: the mempool verifies
them once at admission, and the block path verifies what it has not seen.

The state digest is an additive multiset hash over the accounts (sum of BLAKE2b of every
entry, mod 2**256) and the supply counters, so a block updates it in O(accounts changed).
It detects divergence between honest nodes; it is not a proof structure for light clients.
"""

import struct
from dataclasses import dataclass, replace

from . import crypto
from .errors import Rejected
from .tx import KIND_TRANSFER, Transaction

MOD = 2**256
_ENTRY = struct.Struct(">20sQQ")
_SUPPLY = struct.Struct(">32sQQQQQ")
EMPTY = (0, 0)


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


def entry_hash(address: bytes, account: tuple[int, int]) -> int:
    if account == EMPTY:
        return 0
    return int.from_bytes(crypto.digest(_ENTRY.pack(address, *account)))


class State:
    """The committed state, and the block it is the result of."""

    def __init__(
        self,
        accounts: dict[bytes, tuple[int, int]],
        supply: Supply,
        height: int = 0,
        block_hash: bytes = b"\0" * 32,
        block_time_ms: int = 0,
    ):
        self.accounts = accounts
        self.supply = supply
        self.height = height
        self.block_hash = block_hash
        self.block_time_ms = block_time_ms
        self.accumulator = sum(entry_hash(a, acc) for a, acc in accounts.items()) % MOD

    @classmethod
    def from_genesis(cls, balances: dict[bytes, int]) -> "State":
        return cls(
            {a: (units, 0) for a, units in balances.items()}, Supply(genesis=sum(balances.values()))
        )

    def account(self, address: bytes) -> tuple[int, int]:
        return self.accounts.get(address, EMPTY)

    @property
    def digest(self) -> bytes:
        return state_digest(self.accumulator, self.supply)

    def merge(self, diff: "Diff", height: int, block_hash: bytes, block_time_ms: int) -> None:
        for address, account in diff.accounts.items():
            if account == EMPTY:
                self.accounts.pop(address, None)
            else:
                self.accounts[address] = account
        self.accumulator = diff.accumulator
        self.supply = diff.supply
        self.height = height
        self.block_hash = block_hash
        self.block_time_ms = block_time_ms


def state_digest(accumulator: int, supply: Supply) -> bytes:
    return crypto.digest(
        _SUPPLY.pack(
            accumulator.to_bytes(32),
            supply.genesis,
            supply.emitted,
            supply.burned,
            supply.fee_pool,
            supply.unclaimed,
        )
    )


@dataclass
class Diff:
    """What one block changes: new values of touched accounts, counters, digest accumulator."""

    accounts: dict[bytes, tuple[int, int]]
    supply: Supply
    accumulator: int

    @property
    def digest(self) -> bytes:
        return state_digest(self.accumulator, self.supply)


class Overlay:
    """A writable view over committed state for applying one block."""

    def __init__(self, base: State):
        self.base = base
        self.changes: dict[bytes, tuple[int, int]] = {}
        self.fees = 0

    def account(self, address: bytes) -> tuple[int, int]:
        got = self.changes.get(address)
        return got if got is not None else self.base.accounts.get(address, EMPTY)

    def diff(self) -> Diff:
        acc = self.base.accumulator
        base = self.base.accounts
        for address, new in self.changes.items():
            acc += entry_hash(address, new) - entry_hash(address, base.get(address, EMPTY))
        supply = replace(self.base.supply, fee_pool=self.base.supply.fee_pool + self.fees)
        return Diff(self.changes, supply, acc % MOD)


# ---- transaction rules -----------------------------------------------------------------


def check_transaction(view: Overlay, tx: Transaction, chain_id: str, min_fee: int) -> None:
    """Every rule a transaction must pass against the state; raises Rejected, changes nothing."""
    if tx.chain_id != chain_id:
        raise Rejected("wrong_chain", f"transaction is for chain {tx.chain_id!r}, not {chain_id!r}")
    if tx.fee < min_fee:
        raise Rejected("fee_too_low", f"fee {tx.fee} is below the minimum {min_fee}")
    balance, nonce = view.account(tx.sender)
    if tx.nonce < nonce:
        raise Rejected("stale_nonce", f"nonce {tx.nonce} already used (next is {nonce})")
    if tx.nonce > nonce:
        raise Rejected("nonce_gap", f"nonce {tx.nonce} is ahead of the next nonce {nonce}")
    if tx.cost > balance:
        raise Rejected(
            "insufficient_funds", f"amount plus fee {tx.cost} exceeds the balance {balance}"
        )


def apply_transfer(view: Overlay, tx: Transaction) -> None:
    balance, nonce = view.account(tx.sender)
    view.changes[tx.sender] = (balance - tx.cost, nonce + 1)
    to_balance, to_nonce = view.account(tx.to)
    view.changes[tx.to] = (to_balance + tx.amount, to_nonce)
    view.fees += tx.fee


APPLY = {KIND_TRANSFER: apply_transfer}


def apply_transaction(view: Overlay, tx: Transaction, chain_id: str, min_fee: int) -> None:
    check_transaction(view, tx, chain_id, min_fee)
    APPLY[tx.kind](view, tx)


def apply_transactions(
    state: State, txs: list[Transaction], chain_id: str, min_fee: int
) -> tuple[Diff, list[Transaction], list[tuple[Transaction, Rejected]]]:
    """Apply in order, keeping what passes; the block builder's and the replayer's path."""
    view = Overlay(state)
    included: list[Transaction] = []
    refused: list[tuple[Transaction, Rejected]] = []
    for tx in txs:
        try:
            apply_transaction(view, tx, chain_id, min_fee)
        except Rejected as exc:
            refused.append((tx, exc))
        else:
            included.append(tx)
    return view.diff(), included, refused


def supply_holds(state: State) -> bool:
    """balances + unclaimed rewards + fee pool == genesis + emitted - burned."""
    s = state.supply
    balances = sum(balance for balance, _ in state.accounts.values())
    return balances + s.unclaimed + s.fee_pool == s.total
