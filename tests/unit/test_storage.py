"""Durable storage: committed blocks survive a reopen, replay reproduces them, a failed commit
leaves nothing behind; the account index lists what each account sent and received, is
completed at open for a database an earlier version left, and is made anew on restore."""

import re
import sqlite3
from dataclasses import replace

import pytest

from qnet import crypto, ledger, snapshot, tx
from qnet import genesis as genesis_mod
from qnet import storage as storage_mod
from qnet.amounts import MAX_AMOUNT
from qnet.api import history_page
from qnet.block import Block, CommitCertificate, Header, precommit_message, tx_root
from qnet.genesis import GenesisError, Params
from qnet.node import StateDivergence, replay
from qnet.storage import DamagedStorage, Storage, StorageError

CHAIN = "qnet-test"
MIN_FEE = 1_000
VALIDATOR = crypto.KeyPair(b"\x70" * 32)
OUTSIDER = crypto.KeyPair(b"\x6f" * 32)
WALLETS = [crypto.KeyPair(bytes([0x71 + i]) * 32) for i in range(3)]
FRESH = b"\xee" * 20


def make_genesis(chain_id: str = CHAIN, balances: dict[bytes, int] | None = None):
    balances = balances or {w.address: 10**12 for w in WALLETS}
    return genesis_mod.make_genesis(
        chain_id,
        [(VALIDATOR.node_id, "eu")],
        {crypto.encode_address(a): units for a, units in balances.items()},
        Params(min_fee=MIN_FEE),
    )


RULES = ledger.Rules.from_genesis(make_genesis())
NETWORK = RULES.network  # of the default genesis, which ``pay`` signs for


def build_block(
    state: ledger.State,
    txs: list[tx.Transaction],
    signer=VALIDATOR,
    rules: ledger.Rules = RULES,
    step_ms: int = 200,
    **header_changes,
) -> tuple[Block, CommitCertificate, ledger.Diff]:
    """What ``Node.build_block`` and a one-validator commit do, without the node around them."""
    time_ms = state.block_time_ms + step_ms
    diff, included, _ = ledger.apply_block(state, txs, rules, time_ms)
    header = Header(
        chain_id=CHAIN,
        height=state.height + 1,
        time_ms=time_ms,
        parent=state.block_hash,
        tx_root=tx_root([t.id for t in included]),
        tx_count=len(included),
        state_digest=diff.digest,
        proposer=VALIDATOR.public_key,
    )
    header = replace(header, **header_changes)
    block = Block(header, VALIDATOR.sign(header.signing_message(rules.network)), tuple(included))
    precommit = precommit_message(rules.network, header.height, 0, block.hash)
    cert = CommitCertificate(
        header.height, 0, block.hash, ((signer.public_key, signer.sign(precommit)),)
    )
    return block, cert, diff


class Chain:
    """A storage with genesis recorded and the in-memory state a node would hold beside it."""

    def __init__(self, path, genesis=None):
        self.path = path
        self.genesis = genesis or make_genesis()
        self.storage = Storage(path)
        self.storage.initialise(
            self.genesis.chain_id,
            self.genesis.hash,
            ledger.genesis_state(self.genesis),
        )
        self.state = self.storage.load_state()
        self.rules = ledger.Rules.from_genesis(self.genesis)
        self.blocks: list[Block] = []

    def commit(self, txs: list[tx.Transaction], **build) -> Block:
        block, cert, diff = build_block(self.state, txs, rules=self.rules, **build)
        self.storage.commit_block(block, cert, diff)
        self.state.merge(diff, block.header.height, block.hash, block.header.time_ms)
        self.blocks.append(block)
        return block

    def reopen(self) -> Storage:
        self.storage.close()
        self.storage = Storage(self.path)
        return self.storage


def pay(key, nonce, to, amount=1_000_000, fee=MIN_FEE) -> tx.Transaction:
    return tx.make_transfer(key, NETWORK, nonce, fee, to, amount)


def four_blocks(chain: Chain) -> None:
    a, b, c = WALLETS
    chain.commit([pay(a, 0, b.address), pay(b, 0, c.address), pay(c, 0, FRESH)])
    chain.commit(
        [pay(a, 1, a.address), pay(a, 2, FRESH, fee=5_000), pay(b, 5, a.address)]
    )  # the last one has a nonce gap and is left out
    chain.commit([pay(c, 1, b.address, amount=10**12 - 10**7)])
    chain.commit([pay(b, n, FRESH, amount=n + 1) for n in range(1, 6)])


@pytest.fixture
def chain(tmp_path):
    chain = Chain(tmp_path / "chain.sqlite")
    four_blocks(chain)
    yield chain
    chain.storage.close()


def same_state(got: ledger.State, want: ledger.State) -> None:
    assert got.accounts == want.accounts
    assert (got.nodes, got.epochs, got.clock) == (want.nodes, want.epochs, want.clock)
    assert got.supply == want.supply
    assert (got.height, got.block_hash, got.block_time_ms) == (
        want.height,
        want.block_hash,
        want.block_time_ms,
    )
    assert got.digest == want.digest


# ---- what a reopened storage holds -------------------------------------------------------


def test_the_chain_under_test_moves_funds(chain):
    assert chain.state.height == 4
    assert [len(b.txs) for b in chain.blocks] == [3, 2, 1, 5]
    assert chain.state.account(FRESH)[0] > 0
    assert chain.state.supply.fee_pool == 10 * MIN_FEE + 5_000
    assert ledger.supply_holds(chain.state)


def test_reopened_storage_loads_the_committed_state(chain):
    storage = chain.reopen()
    same_state(storage.load_state(), chain.state)


def test_every_transaction_is_found_where_it_was_committed(chain):
    storage = chain.reopen()
    for block in chain.blocks:
        for index, t in enumerate(block.txs):
            assert storage.tx_location(t.id) == (block.header.height, index)
    left_out = pay(WALLETS[1], 5, WALLETS[0].address)
    assert storage.tx_location(left_out.id) is None


def test_headers_returns_the_requested_range(chain):
    storage = chain.reopen()
    headers = [b.header for b in chain.blocks]
    assert storage.headers(2, 3) == headers[1:3]
    assert storage.headers(1, 100) == headers
    assert storage.headers(4, 4) == headers[3:]
    assert storage.headers(5, 9) == []
    assert storage.headers(3, 2) == []


def test_stored_blocks_and_certificates_read_back(chain):
    storage = chain.reopen()
    for block in chain.blocks:
        got, cert = storage.block(block.header.height)
        got.verify_shape(NETWORK)
        assert got.header == block.header and got.signature == block.signature
        assert [t.raw for t in got.txs] == [t.raw for t in block.txs]
        assert cert.block_hash == block.hash and cert.height == block.header.height
        cert.verify(NETWORK, {VALIDATOR.public_key: 1})
    assert storage.block(0) is None and storage.block(5) is None
    assert [b.hash for b, _ in storage.iter_blocks()] == [b.hash for b in chain.blocks]


def test_replay_reproduces_the_state(chain):
    same_state(replay(chain.reopen(), chain.genesis), chain.state)


def test_load_state_detects_accounts_changed_behind_its_back(chain):
    chain.storage.close()
    with sqlite3.connect(chain.path) as conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE address = ?", (FRESH,))
    chain.storage = Storage(chain.path)
    with pytest.raises(StorageError):
        chain.storage.load_state()


def test_nodes_epochs_and_rewards_survive_storage_and_replay(tmp_path):
    params = Params(min_fee=MIN_FEE, epoch_ms=1_000, epoch_emission=10**6)
    balances = {crypto.encode_address(w.address): 10**15 for w in WALLETS}
    genesis = genesis_mod.make_genesis(CHAIN, [(VALIDATOR.node_id, "eu")], balances, params)
    chain = Chain(tmp_path / "chain.sqlite", genesis)
    owner, node = WALLETS[0], crypto.KeyPair(b"\x7e" * 32)
    network = genesis.network
    proof = tx.prove_node(node, network, owner.address)
    burn = params.activation_fee_full
    chain.commit(
        [tx.make_activate(owner, network, 0, MIN_FEE, node.public_key, "full", "sa", burn, proof)]
    )

    def next_epoch_block(txs_for) -> None:
        epoch = chain.rules.epoch_of(chain.state.block_time_ms + 1_000)
        chain.commit(txs_for(epoch), step_ms=1_000)

    for n in range(2):  # eligible in epochs 1 and 2, beside the validator
        next_epoch_block(
            lambda e, n=n: [
                tx.make_heartbeat(node, network, n, e),
                tx.make_heartbeat(VALIDATOR, network, n, e),
            ]
        )
    next_epoch_block(lambda e: [tx.make_claim(owner, network, 1, MIN_FEE, node.public_key)])
    next_epoch_block(lambda e: [tx.make_heartbeat(node, network, 2, e)])
    assert [len(b.txs) for b in chain.blocks] == [1, 2, 2, 1, 1]

    record = chain.state.node(node.public_key)
    rewards = [chain.state.epochs[e].reward_of("full") for e in (1, 2)]
    assert record.last_claim_amount == sum(rewards) > 0
    assert (record.claimed_before, record.last_heartbeat) == (3, 4)
    assert ledger.supply_holds(chain.state)
    storage = chain.reopen()
    same_state(storage.load_state(), chain.state)
    same_state(replay(storage, genesis), chain.state)
    assert storage.heartbeat_epochs(node.public_key, 0) == [1, 2, 4]
    assert storage.heartbeat_epochs(node.public_key, record.claimed_before) == [4]
    assert storage.heartbeat_epochs(VALIDATOR.public_key, 0) == [1, 2]
    chain.storage.close()
    with sqlite3.connect(chain.path) as conn:  # a record changed behind the ledger's back
        conn.execute("UPDATE epochs SET record = ? WHERE epoch = 1", (bytes(48),))
    with pytest.raises(StorageError):
        Storage(chain.path).load_state()


# ---- replay refuses what does not verify -------------------------------------------------


def test_replay_refuses_a_block_whose_state_digest_is_wrong(tmp_path):
    chain = Chain(tmp_path / "chain.sqlite")
    chain.commit([pay(WALLETS[0], 0, FRESH)])
    chain.commit([pay(WALLETS[0], 1, FRESH)], state_digest=b"\0" * 32)
    with pytest.raises(StateDivergence):
        replay(chain.reopen(), chain.genesis)
    chain.storage.close()


def test_replay_refuses_a_certificate_not_signed_by_the_validators(tmp_path):
    chain = Chain(tmp_path / "chain.sqlite")
    chain.commit([pay(WALLETS[0], 0, FRESH)], signer=OUTSIDER)
    with pytest.raises(StateDivergence, match="certificate"):
        replay(chain.reopen(), chain.genesis)
    chain.storage.close()


# ---- genesis -----------------------------------------------------------------------------


def test_initialise_refuses_a_data_dir_of_another_genesis(chain):
    storage = chain.reopen()
    other = make_genesis(chain_id="qnet-other")
    fresh = ledger.genesis_state(other)
    with pytest.raises(StorageError):
        storage.initialise(other.chain_id, other.hash, fresh)
    richer = make_genesis(balances={w.address: 10**12 + 1 for w in WALLETS})
    with pytest.raises(StorageError):
        storage.initialise(richer.chain_id, richer.hash, fresh)
    same_state(storage.load_state(), chain.state)


def test_initialise_with_the_same_genesis_keeps_the_chain(chain):
    storage = chain.reopen()
    storage.initialise(CHAIN, chain.genesis.hash, ledger.genesis_state(chain.genesis))
    same_state(storage.load_state(), chain.state)


@pytest.mark.parametrize("units", [2**63 - 1, 2**63, MAX_AMOUNT])
def test_every_balance_genesis_accepts_survives_storage(tmp_path, units):
    """Genesis allows a u64 supply; storage must hold whatever genesis accepts."""
    try:
        genesis = make_genesis(balances={WALLETS[0].address: units})
    except GenesisError:
        return  # refused up front, so storage never has to hold it
    chain = Chain(tmp_path / "chain.sqlite", genesis)
    chain.commit([pay(WALLETS[0], 0, FRESH, amount=units - MIN_FEE)])
    same_state(chain.reopen().load_state(), chain.state)
    chain.storage.close()


# ---- a failed commit leaves nothing behind -----------------------------------------------


def nothing_of(storage: Storage, block: Block, before: ledger.State) -> None:
    same_state(storage.load_state(), before)
    assert storage.block(block.header.height) is None
    assert storage.headers(block.header.height, block.header.height) == []
    assert all(storage.tx_location(t.id) is None for t in block.txs)
    for t in block.txs:
        assert all(h < block.header.height for h, _, _ in history(storage, t.sender))
    assert storage.get_meta("account_txs_height") == str(before.height)


def test_a_commit_failing_at_its_last_step_is_rolled_back(chain, monkeypatch):
    before = chain.reopen().load_state()
    block, cert, diff = build_block(
        before, [pay(WALLETS[0], 3, FRESH), pay(WALLETS[2], 2, WALLETS[0].address)]
    )
    assert len(block.txs) == 2

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(chain.storage, "_put_head", crash)
    with pytest.raises(OSError):
        chain.storage.commit_block(block, cert, diff)
    nothing_of(chain.storage, block, before)
    nothing_of(chain.reopen(), block, before)
    chain.storage.commit_block(block, cert, diff)  # the same block commits afterwards
    before.merge(diff, block.header.height, block.hash, block.header.time_ms)
    same_state(chain.reopen().load_state(), before)


def test_a_commit_failing_in_the_middle_is_rolled_back(chain):
    before = chain.reopen().load_state()
    t = pay(WALLETS[0], 3, FRESH)
    block, cert, diff = build_block(before, [t])
    twice = Block(block.header, block.signature, (t, t))  # the tx index refuses a repeat
    with pytest.raises(sqlite3.IntegrityError):
        chain.storage.commit_block(twice, cert, diff)
    nothing_of(chain.reopen(), block, before)


# ---- the account index ---------------------------------------------------------------------

TOP = (2**62, 0)  # before every position: the whole history


def expected_history(chain: Chain, address: bytes) -> list[tuple[int, int, bytes]]:
    """(height, index, raw) of the chain's transactions that touch ``address``, newest first."""
    return [
        (block.header.height, index, t.raw)
        for block in reversed(chain.blocks)
        for index, t in reversed(list(enumerate(block.txs)))
        if address in (t.sender, t.to)
    ]


def history(storage: Storage, address: bytes, before=TOP, limit=100) -> list[tuple]:
    return [(c.height, c.index, c.tx.raw) for c in storage.account_txs(address, before, limit)]


def index_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM account_txs ORDER BY address, height").fetchall()


ACCOUNTS = [*(w.address for w in WALLETS), FRESH, OUTSIDER.address]


def test_each_account_lists_the_transactions_it_sends_or_receives_newest_first(chain):
    storage = chain.reopen()
    a, b = WALLETS[:2]
    assert [(h, i) for h, i, _ in history(storage, a.address)] == [(2, 1), (2, 0), (1, 0)]
    assert [(h, i) for h, i, _ in history(storage, FRESH)] == [
        *((4, i) for i in range(4, -1, -1)),
        (2, 1),
        (1, 2),
    ]
    for address in ACCOUNTS:
        assert history(storage, address) == expected_history(chain, address)
    assert history(storage, OUTSIDER.address) == []
    times = {b.header.height: b.header.time_ms for b in chain.blocks}
    for found in storage.account_txs(b.address, TOP, 100):
        assert found.time_ms == times[found.height]
        assert found.to_json()["id"] == found.tx.id.hex()


def test_a_transfer_to_oneself_is_listed_once(chain):
    a = WALLETS[0]
    own = [(h, i) for h, i, raw in history(chain.reopen(), a.address) if (h, i) == (2, 0)]
    assert own == [(2, 0)] and chain.blocks[1].txs[0].to == a.address


def test_pages_end_where_asked(chain):
    storage = chain.reopen()
    everything = history(storage, FRESH)
    assert len(everything) == 7
    assert history(storage, FRESH, limit=7) == everything  # exactly the limit
    assert history(storage, FRESH, limit=3) == everything[:3]
    after = everything[2][:2]  # the position of the third
    assert history(storage, FRESH, before=after, limit=3) == everything[3:6]
    assert history(storage, FRESH, before=everything[-1][:2]) == []  # below the oldest
    assert history(storage, FRESH, before=(1, 0)) == []  # before the first block
    assert history(storage, FRESH, before=(4, 2)) == everything[3:]  # within a block


def test_committed_transactions_are_read_back_by_id_with_their_place(chain):
    storage = chain.reopen()
    for block in chain.blocks:
        for index, t in enumerate(block.txs):
            found = storage.committed_tx(t.id)
            assert (found.height, found.index, found.time_ms, found.tx.raw) == (
                block.header.height,
                index,
                block.header.time_ms,
                t.raw,
            )
    assert storage.committed_tx(pay(WALLETS[1], 5, WALLETS[0].address).id) is None


def id_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM tx_index ORDER BY height, idx").fetchall()


def offset_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM frame_offsets ORDER BY height").fetchall()


def forget_index(path, down_to: int | None) -> None:
    """Make the database look as an earlier version left it: no account index or frame
    offsets at all (``down_to`` None), or those an upgraded node kept to ``down_to`` before a
    rollback to such a version committed the blocks above it (tx_index, which that version
    writes too, complete)."""
    with sqlite3.connect(path) as conn:
        if down_to is None:
            conn.execute("DROP TABLE account_txs")
            conn.execute("DROP TABLE frame_offsets")
            conn.execute("DELETE FROM meta WHERE key = 'account_txs_height'")
        else:
            conn.execute("DELETE FROM account_txs WHERE height > ?", (down_to,))
            conn.execute("DELETE FROM frame_offsets WHERE height > ?", (down_to,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'account_txs_height'", (down_to,))


@pytest.mark.parametrize("down_to", [None, 0, 2])
def test_a_database_of_an_earlier_version_gets_its_index_at_open(chain, down_to):
    chain.storage.close()
    complete, ids, offsets = index_rows(chain.path), id_rows(chain.path), offset_rows(chain.path)
    assert len(complete) == 4 + 2 + 2 + 2  # a row per block and account it touches
    assert len(ids) == 11 and all(len(row) == 3 for row in ids)  # as the first release's
    assert len(offsets) == 4
    forget_index(chain.path, down_to)
    assert len(index_rows(chain.path) if down_to is not None else []) < len(complete)
    chain.storage = Storage(chain.path)
    assert index_rows(chain.path) == complete
    assert id_rows(chain.path) == ids
    assert offset_rows(chain.path) == offsets
    assert chain.storage.get_meta("account_txs_height") == "4"
    for address in ACCOUNTS:
        assert history(chain.storage, address) == expected_history(chain, address)
    for block in chain.blocks:
        for t in block.txs:
            assert chain.storage.committed_tx(t.id).tx.raw == t.raw
    chain.commit([pay(WALLETS[0], 3, FRESH)])  # and it goes on from there
    storage = chain.reopen()
    assert history(storage, FRESH)[0][:2] == (5, 0)
    assert storage.committed_tx(chain.blocks[-1].txs[0].id).height == 5


def test_an_index_interrupted_at_open_is_done_whole_at_the_next(chain, monkeypatch):
    chain.storage.close()
    complete = index_rows(chain.path)
    forget_index(chain.path, None)
    rows_of = storage_mod.BlockIndex.of
    calls = []

    def crash_on_the_third_block(height, txs):
        calls.append(height)
        if len(calls) == 3:
            raise OSError("power cut")
        return rows_of(height, txs)

    monkeypatch.setattr(storage_mod.BlockIndex, "of", crash_on_the_third_block)
    with pytest.raises(OSError):
        Storage(chain.path)
    assert index_rows(chain.path) == []  # the two blocks before the crash are not there
    assert len(id_rows(chain.path)) == 11  # the first release's index is left as it was
    with sqlite3.connect(chain.path) as conn:
        assert (
            conn.execute("SELECT value FROM meta WHERE key = 'account_txs_height'").fetchall() == []
        )
    monkeypatch.setattr(storage_mod.BlockIndex, "of", rows_of)
    chain.storage = Storage(chain.path)
    assert index_rows(chain.path) == complete


@pytest.mark.parametrize("damage", ["framing", "transaction"])
def test_a_block_body_the_index_cannot_read_is_reported_as_damage(chain, damage, monkeypatch):
    chain.storage.close()
    forget_index(chain.path, None)
    with sqlite3.connect(chain.path) as conn:
        (body,) = conn.execute("SELECT body FROM blocks WHERE height = 2").fetchone()
        broken = body[:-1] if damage == "framing" else body[:4] + b"\xff" * (len(body) - 4)
        conn.execute("UPDATE blocks SET body = ? WHERE height = 2", (broken,))
    closed = []
    connect = storage_mod._connect

    def tracked(path):
        conn = connect(path)
        closed.append(conn)
        return conn

    monkeypatch.setattr(storage_mod, "_connect", tracked)
    with pytest.raises(DamagedStorage, match="damaged: the body of block 2 is not readable"):
        Storage(chain.path)
    monkeypatch.setattr(storage_mod, "_connect", connect)
    assert len(closed) == 1
    with pytest.raises(sqlite3.ProgrammingError):  # closed, not left open
        closed[0].execute("SELECT 1")
    assert index_rows(chain.path) == []  # and nothing written
    chain.storage = Storage(chain.path, index=False)  # as it is, for a look


def test_opened_without_indexing_it_writes_nothing(chain):
    chain.storage.close()
    forget_index(chain.path, None)
    before = chain.path.read_bytes()
    storage = Storage(chain.path, index=False)
    try:
        assert storage.load_state().height == 4
    finally:
        storage.close()
    assert chain.path.read_bytes() == before
    with sqlite3.connect(chain.path) as conn:
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'account_txs'").fetchall()
    chain.storage = Storage(chain.path)


def test_rebuild_replaces_an_index_it_cannot_trust(chain):
    chain.storage.close()
    complete = index_rows(chain.path)
    with sqlite3.connect(chain.path) as conn:  # what a crafted snapshot could hold
        conn.execute("DELETE FROM account_txs WHERE height = 3")
        conn.execute("INSERT INTO account_txs VALUES (?, 2, ?)", (OUTSIDER.address, bytes(8)))
    chain.storage = Storage(chain.path)
    assert index_rows(chain.path) != complete  # complete by its record: trusted as it is
    chain.storage.close()
    chain.storage = Storage(chain.path, rebuild_index=True)
    assert index_rows(chain.path) == complete


def test_a_restored_snapshot_has_the_index_of_its_blocks_whatever_it_held(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    chain = Chain(source / "chain.db")
    four_blocks(chain)
    chain.storage.close()
    chain.genesis.save(source / "genesis.json")
    (source / "node_key").write_text(VALIDATOR.seed.hex())
    complete = index_rows(chain.path)
    with sqlite3.connect(chain.path) as conn:
        conn.execute("DELETE FROM account_txs WHERE address = ?", (FRESH,))
    snapshot.create(source, tmp_path / "snap.tar.gz")
    snapshot.restore(tmp_path / "snap.tar.gz", tmp_path / "restored", genesis=chain.genesis)
    assert index_rows(tmp_path / "restored" / "chain.db") == complete


# ---- pages of history, as the API gives them -------------------------------------------------


def test_history_pages_walk_the_whole_history_by_cursor(chain):
    storage = chain.reopen()
    everything = [
        (c.height, c.index) for c in storage.account_txs(FRESH, TOP, 100)
    ]  # 7, newest first
    pages, cursor_before = [], TOP
    while True:
        page = history_page(storage, FRESH, cursor_before, 3)
        assert page["address"] == crypto.encode_address(FRESH)
        pages.append([(t["height"], t["index"]) for t in page["transactions"]])
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
        assert re.fullmatch("[0-9a-f]{24}", cursor)
        cursor_before = (int(cursor[:16], 16), int(cursor[16:], 16))
        assert cursor_before == pages[-1][-1]
    assert pages == [everything[:3], everything[3:6], everything[6:]]
    first = history_page(storage, FRESH, TOP, 3)["transactions"][0]
    assert first == storage.committed_tx(chain.blocks[-1].txs[-1].id).to_json()
    assert (first["status"], first["kind"], first["to"]) == (
        "committed",
        "transfer",
        crypto.encode_address(FRESH),
    )


def test_history_pages_at_their_boundaries(chain):
    storage = chain.reopen()
    exact = history_page(storage, FRESH, TOP, 7)  # exactly the limit: no next page
    assert len(exact["transactions"]) == 7 and exact["next_cursor"] is None
    one_short = history_page(storage, FRESH, TOP, 6)
    assert len(one_short["transactions"]) == 6 and one_short["next_cursor"] is not None
    empty = history_page(storage, OUTSIDER.address, TOP, 20)
    assert (empty["transactions"], empty["next_cursor"]) == ([], None)
    past_the_end = history_page(storage, FRESH, (1, 2), 20)  # at the oldest: nothing below
    assert (past_the_end["transactions"], past_the_end["next_cursor"]) == ([], None)


def test_the_first_release_still_commits_on_a_database_this_one_opened(chain):
    """A rolling upgrade rolls a broken release back: the first release's own inserts (the
    tables it knows, as it wrote them) must still fit, and what it commits is indexed when a
    later version opens the database again."""
    chain.storage.close()
    complete = index_rows(chain.path)
    forget_index(chain.path, 2)  # an upgraded node indexed to block 2, then was rolled back
    with sqlite3.connect(chain.path) as conn:
        conn.execute("INSERT INTO tx_index VALUES (?,?,?)", (b"\x01" * 32, 99, 0))
        conn.execute("DELETE FROM tx_index WHERE height = 99")
    chain.storage = Storage(chain.path)
    assert index_rows(chain.path) == complete
