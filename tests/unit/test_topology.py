"""The topology policy (DESIGN §5): who keeps whom, as numbers of peers by kind."""

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnet import crypto
from qnet.genesis import REGIONS
from qnet.topology import PeerPolicy, address_group

VALIDATORS = [crypto.KeyPair.generate().public_key for _ in range(4)]


@dataclass(frozen=True)
class P:
    public_key: bytes
    node_type: str
    region: str


def peer(node_type: str, region: str) -> P:
    return P(crypto.KeyPair.generate().public_key, node_type, region)


def validator(i: int, region: str = "na") -> P:
    return P(VALIDATORS[i], "super", region)


def policy(node_type: str, region: str = "eu", me: bytes | None = None) -> PeerPolicy:
    return PeerPolicy(me or crypto.KeyPair.generate().public_key, node_type, region,
                      frozenset(VALIDATORS))  # fmt: skip


def fill(p: PeerPolicy, candidates: list[P]) -> list[P]:
    """Connect candidates in order as the network would: each if the policy accepts it."""
    peers: list[P] = []
    for c in candidates:
        if p.accepts(peers, c):
            peers.append(c)
    return peers


def test_a_validator_keeps_the_mesh_and_bounds_its_followers():
    v = policy("super", "na", VALIDATORS[0])
    fulls = [peer("full", REGIONS[i % 7]) for i in range(40)]
    lights = [peer("light", "na") for i in range(20)]
    peers = fill(v, [validator(1), *fulls, *lights, validator(2), validator(3)])
    assert sum(p.public_key in VALIDATORS for p in peers) == 3  # the mesh, whatever the load
    assert sum(p.node_type == "full" for p in peers) == v.followers_max
    assert sum(p.node_type == "light" for p in peers) == v.validator_light_max
    assert not v.hungry(peers) and v.surplus(peers) == []
    assert v.wants(peers, validator(1)) and not v.wants([], peer("full", "na"))


def test_a_full_node_wants_its_region_first_and_bounds_the_rest():
    f = policy("full", "eu")
    assert f.hungry([])
    far = [peer("full", "ap") for _ in range(10)]
    near = [peer("full", "eu") for _ in range(10)]
    lights = [peer("light", "eu") for _ in range(50)]
    peers = fill(f, [*far, *near, *lights])
    same = [p for p in peers if p.node_type == "full" and p.region == "eu"]
    cross = [p for p in peers if p.region != "eu"]
    assert len(same) == f.region_max and len(cross) == f.cross_region_max
    assert sum(p.node_type == "light" for p in peers) == f.light_max
    assert not f.hungry(peers)
    # Two same-region upstreams and one more are enough; it never dials a light node.
    assert not f.hungry([*near[:2], far[0]]) and f.hungry([*near[:1], *far[:3]])
    assert not f.wants([], peer("light", "eu"))
    assert policy("full", "eu").rank(near[0]) < policy("full", "eu").rank(far[0])


def test_a_light_node_attaches_to_its_region_and_lets_fallbacks_go():
    lt = policy("light", "oc")
    far = [peer("full", "ap") for _ in range(3)]
    assert lt.accepts([], far[0])  # nothing in its region yet: take what there is
    peers = fill(lt, far)
    assert len(peers) == lt.upstreams and lt.hungry(peers)
    near = [peer("super", "oc"), peer("full", "oc"), peer("full", "oc")]
    peers = fill(lt, [*peers, *near])
    same = [p for p in peers if p.region == "oc"]
    assert len(same) == lt.upstreams and not lt.hungry(peers)
    assert set(lt.surplus(peers)) == set(far[: lt.upstreams])  # the fallbacks go
    assert not lt.accepts([], peer("light", "oc"))  # light nodes serve nobody


@given(
    st.sampled_from(["super", "full", "light"]),
    st.sampled_from(REGIONS),
    st.lists(st.tuples(st.sampled_from(["super", "full", "light"]), st.sampled_from(REGIONS))),
)
def test_whatever_arrives_the_counts_stay_within_bounds(node_type, region, arrivals):
    p = policy(node_type, region)
    peers = fill(p, [peer(t, r) for t, r in arrivals])
    kept = [q for q in peers if q not in p.surplus(peers)]
    upstream = [q for q in kept if q.node_type != "light"]
    same = [q for q in upstream if q.region == region]
    if node_type == "light":
        assert len(upstream) == len(kept) <= 2 * p.upstreams
        assert len(same) <= p.upstreams
    else:
        assert len(same) <= p.region_max
        assert len(upstream) - len(same) <= p.cross_region_max
        assert len(kept) - len(upstream) <= p.light_max


@pytest.mark.parametrize("node_type", ["full", "light"])
def test_nodes_outside_the_validator_set_never_refuse_their_region_when_short(node_type):
    p = policy(node_type, "me")
    assert p.accepts([peer("full", "ap")], peer("full", "me"))


@pytest.mark.parametrize(
    ("host", "prefix", "group"),
    [
        ("203.0.113.77", 24, "203.0.113.0/24"),
        ("203.0.113.77", 16, "203.0.0.0/16"),
        ("203.0.113.77", 32, "203.0.113.77"),
        ("::ffff:203.0.113.77", 24, "203.0.113.0/24"),
        ("2001:db8:1:2:aaaa::1", 24, "2001:db8:1:2::/64"),
        ("fe80::1%eth0", 24, "fe80::/64"),
        ("localhost", 24, "localhost"),
        ("", 24, ""),
    ],
)
def test_an_address_group_is_an_ipv4_block_or_an_ipv6_slash_64(host, prefix, group):
    assert address_group(host, prefix) == group
