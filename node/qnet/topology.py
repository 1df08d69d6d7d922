"""Which peers a node keeps: the hierarchical topology of DESIGN §5, as a pure policy.

Validators form a mesh among themselves and take a bounded number of followers. A full node
(or a super node outside the validator set, a relay) keeps at least ``region_min`` super or
full peers in its own region, at most ``region_max`` of them, at most ``cross_region_max``
in other regions, and serves up to ``light_max`` light nodes. A light node attaches to
``upstreams`` super or full nodes of its region; while it has none there it takes nodes
of other regions, and lets them go once its own region can serve it.

``PeerNetwork`` asks ``accepts`` when a handshake completes (either direction), ``wants``
before dialling a peer it learnt of, ``hungry`` to decide whether to look for more, and
``surplus`` for peers to let go. The numbers count the peers connected now.

Limits per address count an address group (``address_group``), not one address: a party
holds its addresses in blocks.
"""

import ipaddress
from dataclasses import dataclass
from typing import Protocol


def address_group(host: str, ipv4_prefix: int = 32) -> str:
    """The block of addresses ``host`` is counted in by limits per party: an IPv6 address by
    its /64, the block one host or subscriber is given (whoever has one address has all
    2^64), an IPv4-mapped IPv6 address as IPv4, an IPv4 address by its ``/ipv4_prefix`` (as
    itself at /32); a name or anything else as itself. The API counts IPv4 clients one
    address each (many honest clients share a NAT's block); peer admission counts /24s."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        address = address.ipv4_mapped
    if ipv4_prefix == 32:
        return str(address)
    return str(ipaddress.IPv4Network((address, ipv4_prefix), strict=False))


class Peer(Protocol):
    public_key: bytes
    node_type: str
    region: str


@dataclass(frozen=True)
class PeerPolicy:
    me: bytes  # our public key
    node_type: str
    region: str
    validators: frozenset[bytes]
    region_min: int = 2
    region_max: int = 6
    cross_region_max: int = 3
    light_max: int = 32
    followers_max: int = 16  # non-validator super/full peers of a validator
    validator_light_max: int = 4  # light peers of a validator
    upstreams: int = 2  # the super/full nodes a light node attaches to

    @property
    def is_validator(self) -> bool:
        return self.me in self.validators

    def _counts(self, peers: list[Peer]) -> dict[str, int]:
        counts = {"validator": 0, "follower": 0, "light": 0, "same": 0, "cross": 0}
        for p in peers:
            if p.public_key in self.validators:
                counts["validator"] += 1
            if p.node_type == "light":
                counts["light"] += 1
                continue
            if p.public_key not in self.validators:
                counts["follower"] += 1
            counts["same" if p.region == self.region else "cross"] += 1
        return counts

    def accepts(self, peers: list[Peer], peer: Peer) -> bool:
        """Whether to keep a new connection to ``peer``, given those already open."""
        c = self._counts(peers)
        upstream = peer.node_type != "light"
        if self.is_validator:
            if peer.public_key in self.validators:
                return True  # the validator mesh
            if upstream:
                return c["follower"] < self.followers_max
            return c["light"] < self.validator_light_max
        if self.node_type == "light":
            if not upstream:
                return False
            if peer.region == self.region:
                return c["same"] < self.upstreams
            return c["same"] + c["cross"] < self.upstreams
        if not upstream:
            return c["light"] < self.light_max
        if peer.region == self.region:
            return c["same"] < self.region_max
        return c["cross"] < self.cross_region_max

    def wants(self, peers: list[Peer], peer: Peer) -> bool:
        """Whether to dial ``peer``: nodes dial up the hierarchy or across it, never down
        (a light node is dialled by nobody; validators do not dial followers)."""
        if peer.node_type == "light":
            return False
        if self.is_validator and peer.public_key not in self.validators:
            return False
        return self.accepts(peers, peer)

    def hungry(self, peers: list[Peer]) -> bool:
        """Whether the node lacks peers the topology asks for (so it should look)."""
        if self.is_validator:
            return False
        c = self._counts(peers)
        if self.node_type == "light":
            return c["same"] < self.upstreams
        return c["same"] < self.region_min or c["same"] + c["cross"] < self.region_min + 1

    def surplus(self, peers: list[Peer]) -> list[Peer]:
        """Peers to let go: a light node served by its own region drops the others."""
        if self.node_type != "light":
            return []
        same = [p for p in peers if p.node_type != "light" and p.region == self.region]
        if len(same) < self.upstreams:
            return []
        return [p for p in peers if p.region != self.region]

    def rank(self, peer: Peer) -> tuple:
        """Dial order among candidates: own region first, then validators."""
        return (peer.region != self.region, peer.public_key not in self.validators)


def policy_for(node_type: str, region: str, me: bytes, validators) -> PeerPolicy:
    return PeerPolicy(me, node_type, region, frozenset(validators))
