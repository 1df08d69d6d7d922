"""What peer exchange remembers (PeerTable) and who gets a connection slot (admission):
a third party never rewrites what we know of a node, one source cannot flush the table,
strangers cannot take the slots of validators and configured peers, nor many from one
address group, nor keep activated nodes out."""

import asyncio
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import bft, crypto, p2p
from qnet.topology import PeerPolicy

KEYS = [crypto.KeyPair.generate().public_key for _ in range(60)]
SOURCES = [f"source-{i}" for i in range(5)]


def info(i: int, port: int | None = None, node_type: str = "full") -> p2p.PeerInfo:
    return p2p.PeerInfo.of(KEYS[i], node_type, "eu", f"10.0.0.{i}:{port or 7000 + i}", True)


adds = st.lists(st.tuples(st.integers(0, 39), st.integers(1, 3), st.sampled_from(SOURCES)))


@settings(max_examples=200)
@given(adds)
def test_the_table_stays_bounded_and_never_rewrites_a_known_node(steps: list) -> None:
    table = p2p.PeerTable(limit=12, per_source=5)
    first_seen: dict[str, str] = {}
    for i, port, source in steps:
        entry = info(i, 7000 + port)
        known = table.get(entry.node_id)
        added = table.add(entry, source)
        if known is not None:
            assert not added and table.get(entry.node_id) == known  # never overwritten
        if added:
            first_seen[entry.node_id] = entry.listen
        assert len(table) <= 12
        assert all(size <= 5 for size in table.bucket_sizes().values())
        assert sum(table.bucket_sizes().values()) == len(table)
        listens = [i.listen for i in table.infos()]
        assert len(listens) == len(set(listens))  # one node per address
        for peer in table.infos():
            assert peer.listen == first_seen[peer.node_id]


@settings(max_examples=100)
@given(st.integers(1, 4), st.lists(st.integers(0, 39), max_size=200))
def test_a_flood_from_one_source_cannot_flush_another(sources: int, flood: list[int]) -> None:
    table = p2p.PeerTable(limit=20, per_source=5)
    honest = {f"honest-{s}": [info(40 + 5 * s + i) for i in range(5)] for s in range(sources)}
    for source, entries in honest.items():
        for entry in entries:
            assert table.add(entry, source)
    for i in flood:
        table.add(p2p.PeerInfo.of(KEYS[i], "full", "eu", f"10.9.{i}.1:1", True), "attacker")
    # The attacker gets no more than a fair share; every honest source keeps at least that.
    share = min(5, 20 // (sources + 1))
    assert table.bucket_sizes().get("attacker", 0) <= 5
    for entries in honest.values():
        assert sum(table.get(e.node_id) == e for e in entries) >= share


def test_a_full_table_evicts_from_the_largest_bucket() -> None:
    table = p2p.PeerTable(limit=6, per_source=4)
    for i in range(4):
        table.add(info(i), "big")
    for i in range(4, 6):
        table.add(info(i), "small")
    table.add(info(6), "small")  # full: the oldest of the largest bucket goes
    assert info(0).node_id not in table
    assert table.bucket_sizes() == {"big": 3, "small": 3}
    table.add(info(7), "small")  # now "small" is among the largest: its own oldest goes
    assert info(4).node_id not in table and info(1).node_id in table


def test_only_the_node_itself_moves_its_entry() -> None:
    table = p2p.PeerTable()
    assert table.add(info(1), "a")
    moved = info(1, port=9999)
    assert not table.add(moved, "b")  # a third party's word
    assert table.get(moved.node_id).listen == info(1).listen
    assert table.add(info(2), "b")
    squatted = p2p.PeerInfo.of(KEYS[1], "full", "eu", info(2).listen, False)
    table.confirm(squatted)  # the node itself, authenticated, says it is there
    assert table.get(info(1).node_id).listen == info(2).listen
    assert info(2).node_id not in table  # the entry that claimed that address went
    claim = p2p.PeerInfo.of(KEYS[3], "full", "eu", info(2).listen, True)
    assert not table.add(claim, "c")  # that address is taken now


# ---- admission -----------------------------------------------------------------------------
VALIDATOR = crypto.KeyPair.generate()
ME = crypto.KeyPair.generate()


def network(**options) -> p2p.PeerNetwork:
    async def on_message(*_) -> None:
        return None

    return p2p.PeerNetwork(
        key=ME,
        chain_id="c",
        genesis_hash=bytes(32),
        node_type="super",
        region="eu",
        listen_host=None,
        listen_port=0,
        seeds=[],
        on_message=on_message,
        **options,
    )


def stranger(node_type: str = "full", key: crypto.KeyPair | None = None) -> p2p.PeerInfo:
    key = key or crypto.KeyPair.generate()
    return p2p.PeerInfo.of(key.public_key, node_type, "eu", "", outbound=False)


class Socket:
    """Where an admitted peer's connection would be: remembers how it was closed."""

    def __init__(self) -> None:
        self.closed_with: tuple[int, bytes] | None = None

    async def close(self, code: int, message: bytes) -> None:
        self.closed_with = (code, message)


def admit(net: p2p.PeerNetwork, who: p2p.PeerInfo, address: str) -> str:
    """'' if admitted, else the drop reason."""
    link = p2p.SecretLink(bytes(32), bytes(32), 1024)
    try:
        net._admit(Socket(), who, link, address, seed=False)  # type: ignore[arg-type]
    except p2p._Refused as refused:
        return refused.reason or "refused"
    return ""


def test_strangers_from_one_address_group_are_capped_but_validators_are_not() -> None:
    policy = PeerPolicy(
        ME.public_key, "super", "eu", frozenset({ME.public_key, VALIDATOR.public_key})
    )
    net = network(policy=policy, max_inbound_per_group=2)
    assert [admit(net, stranger(), f"203.0.113.5:{port}") for port in (1, 2, 3)] == [
        "",
        "",
        "per_host",
    ]
    assert admit(net, stranger(), "203.0.114.6:1") == ""  # another group
    assert admit(net, stranger(key=VALIDATOR), "203.0.113.5:4") == ""  # always gets in
    assert admit(net, stranger(), "127.0.0.1:5") == ""  # loopback: a local network


def test_the_cap_on_strangers_counts_an_ipv4_slash_24_or_an_ipv6_slash_64() -> None:
    net = network(max_inbound_per_group=2)
    first = [admit(net, stranger(), address) for address in ("203.0.113.5:1", "203.0.113.77:1")]
    assert first == ["", ""]
    assert admit(net, stranger(), "203.0.113.200:1") == "per_host"  # another address, same /24
    assert admit(net, stranger(), "[::ffff:203.0.113.9]:1") == "per_host"  # the same, mapped
    assert admit(net, stranger(), "203.0.114.5:1") == ""  # the next /24
    six = ["[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff::9]:1", "[2001:db8:1:2:abcd::1]:1"]
    assert [admit(net, stranger(), address) for address in six] == ["", "", "per_host"]
    assert admit(net, stranger(), "[2001:db8:1:3::1]:1") == ""  # the next /64


def test_an_activated_node_takes_the_place_of_a_stranger_in_its_full_address_group() -> None:
    activated: set[bytes] = set()
    net = network(max_inbound_per_group=2, is_activated=lambda p: p.public_key in activated)
    old, newest = stranger(), stranger()
    assert admit(net, old, "203.0.113.5:1") == ""
    assert admit(net, newest, "203.0.113.6:1") == ""
    assert admit(net, stranger(), "203.0.113.7:1") == "per_host"  # a stranger: refused
    member = crypto.KeyPair.generate()
    activated.add(member.public_key)

    async def scenario() -> None:
        assert admit(net, stranger(key=member), "203.0.113.8:1") == ""  # the newest goes
        assert {p.node_id for p in net.peers()} == {old.node_id, member.node_id}
        # Activated nodes hold their place: another one from the group finds none to take.
        other = crypto.KeyPair.generate()
        activated.add(other.public_key)
        assert admit(net, stranger(key=other), "203.0.113.9:1") == ""  # took ``old``'s
        third = crypto.KeyPair.generate()
        activated.add(third.public_key)
        assert admit(net, stranger(key=third), "203.0.113.10:1") == "per_host"

    asyncio.run(scenario())


def test_strangers_cannot_fill_the_slots_of_validators() -> None:
    policy = PeerPolicy(
        ME.public_key,
        "super",
        "eu",
        frozenset({ME.public_key, VALIDATOR.public_key}),
        followers_max=2,
    )
    net = network(policy=policy, max_peers=2, max_inbound_per_group=100)
    assert [admit(net, stranger(), f"198.51.100.{i}:1") for i in range(3)] == [
        "",
        "",
        "max_peers",
    ]
    assert admit(net, stranger(key=VALIDATOR), "198.51.100.9:1") == ""  # beyond max_peers
    assert len(net.peers()) == 3


def test_an_activated_node_takes_the_slot_of_the_newest_stranger_of_the_largest_group() -> None:
    policy = PeerPolicy(
        ME.public_key,
        "super",
        "eu",
        frozenset({ME.public_key, VALIDATOR.public_key}),
        followers_max=3,
    )
    activated: set[bytes] = set()
    net = network(
        policy=policy,
        max_inbound_per_group=100,
        is_activated=lambda peer: peer.public_key in activated,
    )

    def node(key: crypto.KeyPair) -> p2p.PeerInfo:
        activated.add(key.public_key)
        return stranger(key=key)

    async def scenario() -> None:
        keys = [crypto.KeyPair.generate() for _ in range(6)]
        old, newest, alone = stranger(), stranger(), stranger()
        assert admit(net, old, "198.51.100.1:1") == ""
        assert admit(net, alone, "192.0.2.1:1") == ""
        assert admit(net, newest, "198.51.100.2:1") == ""
        assert admit(net, stranger(), "203.0.113.1:1") == "topology"  # full: refused
        sockets = {p.node_id: net._peers[p.node_id].ws for p in (old, newest, alone)}
        # An activated node gets in, and the newest stranger of 198.51.100.0/24 goes.
        assert admit(net, node(keys[0]), "203.0.113.2:1") == ""
        assert {p.node_id for p in net.peers()} == {old.node_id, alone.node_id, keys[0].node_id}
        await asyncio.sleep(0)  # the close runs
        assert sockets[newest.node_id].closed_with[1] == b"evicted"
        assert (
            net.registry.get_sample_value("qnet_p2p_dropped_peers_total", {"reason": "evicted"})
            == 1
        )
        assert admit(net, node(keys[1]), "203.0.113.3:1") == ""  # then the group of one each
        assert admit(net, node(keys[2]), "203.0.113.4:1") == ""
        assert len(net.peers()) == 3
        # Activated nodes are never evicted, nor a validator's slot taken.
        assert admit(net, node(keys[3]), "203.0.113.5:1") == "topology"
        assert admit(net, stranger(key=VALIDATOR), "203.0.113.6:1") == ""
        assert admit(net, stranger(), "203.0.113.7:1") == "topology"

    asyncio.run(scenario())


def test_a_node_counts_as_activated_only_as_the_type_it_was_activated_as() -> None:
    key = crypto.KeyPair.generate()
    records = {key.public_key: SimpleNamespace(node_type="light")}
    driver = SimpleNamespace(node=SimpleNamespace(state=SimpleNamespace(node=records.get)))
    claims = {t: p2p.PeerInfo.of(key.public_key, t, "eu", "", False) for t in ("light", "full")}
    assert bft.BftConsensus._is_activated(driver, claims["light"])  # type: ignore[arg-type]
    assert not bft.BftConsensus._is_activated(driver, claims["full"])  # type: ignore[arg-type]
    assert not bft.BftConsensus._is_activated(driver, stranger())  # type: ignore[arg-type]


def test_a_configured_peer_gets_in_when_strangers_filled_the_slots() -> None:
    net = network(max_peers=1)
    configured = crypto.KeyPair.generate()
    net.seeds = ["192.0.2.1:7000"]
    net._address_ids["192.0.2.1:7000"] = configured.node_id  # dialled it once before
    assert admit(net, stranger(), "198.51.100.1:1") == ""
    assert admit(net, stranger(), "198.51.100.2:1") == "max_peers"
    assert admit(net, stranger(key=configured), "192.0.2.1:40000") == ""


def test_what_is_kept_per_dialled_address_stays_bounded() -> None:
    net = network()
    net.seeds = ["192.0.2.1:7000"]
    net._address_ids["192.0.2.1:7000"] = "seed-node"
    for i in range(3 * p2p.MAX_KNOWN):
        net._address_ids[f"10.1.{i // 250}.{i % 250}:1"] = f"node-{i}"
        net._retry[f"10.2.{i // 250}.{i % 250}:1"] = (0.0, 10.0)  # backoff run out
    net._retry["10.3.0.1:1"] = (float("inf"), 10.0)  # still waiting
    net._forget_addresses()
    assert net._address_ids == {"192.0.2.1:7000": "seed-node"}
    assert net._retry == {"10.3.0.1:1": (float("inf"), 10.0)}
