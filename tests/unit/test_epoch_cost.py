"""Closing an epoch, and a heartbeat or a claim, cost the same for 10 or 100,000 nodes.

Cost is counted, not timed: every read and write of the state's tables (accounts, nodes,
epoch records) goes through a dict that counts the entries it touches, iteration included.
"""

import pytest

from qnet import crypto, ledger, tx
from qnet.genesis import NODE_TYPES, Params
from qnet.ledger import EpochRecord, NodeRecord, State

CHAIN = "qnet-cost"
EPOCH_MS = 1_000
OWNER = crypto.KeyPair(b"\x31" * 32)
WATCHED = crypto.KeyPair(b"\x32" * 32)  # the node the heartbeat and the claim are about
NETWORK = crypto.Network(CHAIN, crypto.digest(b"qnet-cost genesis"))
RULES = ledger.Rules(NETWORK, Params(epoch_ms=EPOCH_MS))
SIZES = (10, 1_000, 100_000)


class CountingDict(dict):
    """A dict that counts the entries each operation touches."""

    touched = 0

    def _count(self, n: int = 1) -> None:
        CountingDict.touched += n

    def __getitem__(self, key):
        self._count()
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._count()
        return super().get(key, default)

    def __contains__(self, key):
        self._count()
        return super().__contains__(key)

    def __setitem__(self, key, value):
        self._count()
        super().__setitem__(key, value)

    def pop(self, key, *default):
        self._count()
        return super().pop(key, *default)

    def update(self, other=(), **more):
        pairs = dict(other, **more)
        self._count(len(pairs))
        super().update(pairs)

    def __iter__(self):
        for key in super().__iter__():
            self._count()
            yield key

    def __reversed__(self):
        for key in super().__reversed__():
            self._count()
            yield key

    def items(self):
        return ((k, super(CountingDict, self).__getitem__(k)) for k in self)

    def values(self):
        return (v for _, v in self.items())


def network(size: int, epoch: int) -> State:
    """``size`` activated nodes (the watched one among them), every one eligible in ``epoch``,
    each owning an account its heartbeats used."""
    keys = [WATCHED.public_key] + [i.to_bytes(32, "big") for i in range(1, size)]
    types = [NODE_TYPES[i % 3] for i in range(size)]
    nodes = {
        k: NodeRecord(OWNER.address, t, "eu", 1, last_heartbeat=epoch, claimed_before=epoch)
        for k, t in zip(keys, types, strict=True)
    }
    counts = tuple(types.count(t) for t in NODE_TYPES)
    accounts = {crypto.address_bytes(k): (0, 1) for k in keys} | {OWNER.address: (10**12, 0)}
    state = State(
        accounts,
        ledger.Supply(genesis=10**12, fee_pool=10**6),
        height=5,
        block_time_ms=epoch * EPOCH_MS,
        nodes=nodes,
        epochs={epoch: EpochRecord(eligible=counts)},
        clock=ledger.EpochClock(epoch),
    )
    state.accounts = CountingDict(state.accounts)
    state.nodes = CountingDict(state.nodes)
    state.epochs = CountingDict(state.epochs)
    return state


def cost_of_block(state: State, txs: list[tx.Transaction], time_ms: int) -> tuple[int, int]:
    """Entries touched applying and merging the block, and entries its diff changes."""
    CountingDict.touched = 0
    diff, included, refused = ledger.apply_block(state, txs, RULES, time_ms)
    assert included == txs and refused == []
    state.merge(diff, state.height + 1, b"\1" * 32, time_ms)
    changed = len(diff.accounts) + len(diff.nodes) + len(diff.epochs)
    return CountingDict.touched, changed


@pytest.fixture(scope="module")
def costs() -> dict[int, dict[str, tuple[int, int]]]:
    measured = {}
    for size in SIZES:
        state = network(size, epoch=7)
        close = cost_of_block(state, [], 8 * EPOCH_MS)
        heartbeat = cost_of_block(
            state, [tx.make_heartbeat(WATCHED, NETWORK, 1, 8)], 8 * EPOCH_MS + 1
        )
        claim = cost_of_block(
            state, [tx.make_claim(OWNER, NETWORK, 0, 1_000, WATCHED.public_key)], 9 * EPOCH_MS
        )
        measured[size] = {"close": close, "heartbeat": heartbeat, "claim": claim}
    return measured


@pytest.mark.parametrize("step", ["close", "heartbeat", "claim"])
def test_cost_does_not_grow_with_the_number_of_nodes(costs, step):
    per_size = {size: costs[size][step] for size in SIZES}
    assert len(set(per_size.values())) == 1, per_size


def test_closing_an_epoch_writes_one_record(costs):
    touched, changed = costs[100_000]["close"]
    assert changed == 1 and touched < 10


def test_the_counter_sees_a_scan():
    """The wrapper would catch an O(nodes) close: iterating the registry counts every node."""
    state = network(1_000, epoch=0)
    CountingDict.touched = 0
    assert sum(1 for _ in state.nodes.values()) == 1_000
    assert CountingDict.touched == 1_000
