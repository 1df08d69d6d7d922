"""Block sync: how a node that is behind catches up, and what it knows of its peers'
heights (DESIGN §4: a node that is behind fetches blocks with their commit certificates
from peers, verifies and applies them, then joins consensus).

- STATUS heights above ours count only with a commit certificate that verifies
  (``PeerStats``), so a peer cannot draw sync towards heights that do not exist; blocks it
  served raise its height only once their certificates verified.
- Sync asks one peer at a time, rotating among the peers that are ahead, with a deadline:
  a peer that lets it pass is demoted for a while and banned after ``SYNC_STRIKES``; BLOCKS
  that answer no request are taken only as the push of the next block to a follower.
- A node serves at most SYNC_BATCH blocks (SYNC_BYTES of them) per GET_BLOCKS, and as many
  headers per GET_HEADERS.

The driver (``bft.py``) applies the blocks that sync takes, in its turn; light nodes
(``light.py``) share ``PeerStats``.
"""

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from . import crypto
from .block import BlockError, CommitCertificate
from .genesis import NODE_TYPES, REGIONS
from .node import Node
from .p2p import PeerInfo, PeerNetwork
from .wire import (
    KIND_BLOCKS,
    KIND_GET_BLOCKS,
    KIND_HEADERS,
    KIND_PING,
    KIND_PONG,
    MAX_BLOCKS,
    Blocks,
    GetBlocks,
    Headers,
    Ping,
    Pong,
    Status,
    check_block_size,
)

log = logging.getLogger("qnet.sync")

SYNC_BATCH = MAX_BLOCKS  # blocks per GET_BLOCKS: as many as one BLOCKS frame may hold
SYNC_BYTES = 8 * 2**20  # what one BLOCKS answer may carry
SYNC_TIMEOUT_S = 5.0  # a GET_BLOCKS not answered by then counts against the peer
SYNC_STRIKES = 3  # unanswered requests in a row before the peer is banned
SYNC_BAN_S = 600.0
SYNC_GRACE_S = 1.5
STATUS_EVERY_S = 2.0
STATUS_CERTS_KEPT = 64  # certificates of STATUS claims already verified, by digest


@dataclass(slots=True)
class SyncRequest:
    """A GET_BLOCKS sent: the heights asked for and when the answer is due."""

    first: int
    last: int
    deadline: float  # time.monotonic()
    expired: bool = False


class PeerStats:
    """What a node knows of its connected peers beyond the handshake: their heights (from
    STATUS) and round-trip times (PING/PONG), for sync, ``network peers`` and metrics.

    A peer's height rises above ours only with a commit certificate that verifies: a claim
    at or below our own height cannot make us sync, so it is taken as said."""

    def __init__(self, net: PeerNetwork, metrics, network: crypto.Network, validators):
        self.net = net
        self.metrics = metrics
        self.network = network
        self.validators = validators
        self.heights: dict[str, int] = {}
        self._certified: OrderedDict[bytes, int] = OrderedDict()  # digest -> its height
        self._pings: dict[str, int] = {}  # node id -> token (perf_counter_ns) of the ping out
        self._rtt_ms: dict[str, float] = {}
        self.count_peers()

    async def ping(self, node_id: str) -> None:
        token = time.perf_counter_ns()
        self._pings[node_id] = token
        await self.net.send(node_id, KIND_PING, Ping(token).encode())

    async def on_ping(self, peer: PeerInfo, ping: Ping) -> None:
        await self.net.send(peer.node_id, KIND_PONG, Pong(ping.token).encode())

    def on_pong(self, peer: PeerInfo, pong: Pong) -> None:
        if self._pings.pop(peer.node_id, None) == pong.token:
            self._rtt_ms[peer.node_id] = (time.perf_counter_ns() - pong.token) / 1e6

    def saw(self, peer: PeerInfo, height: int) -> None:
        """The peer served a block of ``height`` whose certificate verified."""
        self.heights[peer.node_id] = max(self.heights.get(peer.node_id, 0), height)

    def on_status(self, peer: PeerInfo, status: Status, ours: int) -> None:
        """Take a STATUS; raises BlockError if it claims a height above ours that its
        certificate does not prove."""
        height, certificate = status.height, status.certificate
        if height > max(ours, self.heights.get(peer.node_id, 0)):
            key = crypto.digest(certificate)
            if self._certified.get(key) != height:
                cert = CommitCertificate.decode(certificate)
                if cert.height != height:
                    raise BlockError(
                        f"STATUS of height {height} carries the certificate of height {cert.height}"
                    )
                cert.verify(self.network, self.validators)
                self._certified[key] = height
                while len(self._certified) > STATUS_CERTS_KEPT:
                    self._certified.popitem(last=False)
        self.heights[peer.node_id] = height

    def count_peers(self) -> None:
        """qnet_peers{type,region}: every type and region, zero where none is connected, so no
        series appears or goes as peers come and go."""
        counts = Counter((p.node_type, p.region) for p in self.net.peers())
        for node_type in NODE_TYPES:
            for region in REGIONS:
                self.metrics.peers.labels(node_type, region).set(counts[node_type, region])

    def changed(self, peer: PeerInfo, connected: bool) -> None:
        """A peer came or went: recount qnet_peers{type,region}, forget what went."""
        self.count_peers()
        if not connected:
            for known in (self.heights, self._pings, self._rtt_ms):
                known.pop(peer.node_id, None)

    def lag(self, ours: int) -> int:
        return max(0, max(self.heights.values(), default=ours) - ours)

    def rows(self) -> list[dict]:
        return [
            {
                "node_id": p.node_id,
                "node_type": p.node_type,
                "region": p.region,
                "address": p.listen,
                "direction": "outbound" if p.outbound else "inbound",
                "latency_ms": self._rtt_ms.get(p.node_id),
                "height": self.heights.get(p.node_id),
                "validator": p.public_key in self.validators,
            }
            for p in sorted(self.net.peers(), key=lambda p: p.node_id)
        ]


class BlockSync:
    """The requests of a node that is behind, and its answers to peers that are.

    ``spawn`` and ``ban`` are the driver's: a request is sent in a task of its own, and what
    a banned link still had in flight is dropped unread."""

    def __init__(
        self,
        node: Node,
        net: PeerNetwork,
        stats: PeerStats,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        ban: Callable[..., None],
    ):
        self.node = node
        self.net = net
        self._spawn = spawn
        self._ban = ban
        self._peer_heights = stats.heights
        # Requests by peer (one live at a time; expired ones wait for a late answer),
        # unanswered requests in a row, when each peer was last asked and demoted until.
        self._requests: dict[str, SyncRequest] = {}
        self._strikes: dict[str, int] = {}
        self._asked_at: dict[str, float] = {}
        self._demoted_until: dict[str, float] = {}
        self._behind_since: tuple[int, float] | None = None  # (our height, since when)

    def forget(self, node_id: str) -> None:
        """The peer went: what sync knew of it goes too."""
        for known in (self._requests, self._strikes, self._asked_at, self._demoted_until):
            known.pop(node_id, None)

    def answered(self, node_id: str) -> None:
        """Blocks the peer served were applied: its strikes are cleared."""
        self._strikes.pop(node_id, None)

    def maybe_sync(self) -> None:
        """Ask a peer that is ahead for the next blocks, one request at a time.

        Heights come from verified certificates only (``PeerStats``), the peers ahead take
        turns (the one asked longest ago first), and a request not answered within
        SYNC_TIMEOUT_S demotes its peer, for longer each time, until it is banned. A peer
        one block ahead is normal while a height's precommits are still arriving; consensus
        catches up by itself then, so sync waits unless the gap is two blocks or lasts
        longer than SYNC_GRACE_S.
        """
        now = time.monotonic()
        self._expire_requests(now)
        if any(not request.expired for request in self._requests.values()):
            return
        ours = self.node.state.height
        ahead = {
            node_id: height
            for node_id, height in self._peer_heights.items()
            if height > ours and self._demoted_until.get(node_id, 0.0) <= now
        }
        if not ahead:
            self._behind_since = None
            return
        if max(ahead.values()) == ours + 1:
            if self._behind_since is None or self._behind_since[0] != ours:
                self._behind_since = (ours, now)
            if now - self._behind_since[1] < SYNC_GRACE_S:
                return
        peer = min(ahead, key=lambda node_id: (self._asked_at.get(node_id, 0.0), node_id))
        last = min(ahead[peer], ours + SYNC_BATCH)
        self._requests[peer] = SyncRequest(ours + 1, last, now + SYNC_TIMEOUT_S)
        self._asked_at[peer] = now
        self._spawn(self.net.send(peer, KIND_GET_BLOCKS, GetBlocks(ours + 1, last).encode()))

    def _expire_requests(self, now: float) -> None:
        for node_id, request in list(self._requests.items()):
            if not request.expired and now >= request.deadline:
                request.expired = True  # a late answer is still welcome, not unsolicited
                self._strike(
                    node_id,
                    f"did not answer for blocks {request.first}-{request.last} "
                    f"within {SYNC_TIMEOUT_S:g} s",
                )

    def _strike(self, node_id: str, what: str) -> None:
        """Demote a peer that failed sync, for longer each time; ban it at SYNC_STRIKES."""
        strikes = self._strikes[node_id] = self._strikes.get(node_id, 0) + 1
        if strikes >= SYNC_STRIKES:
            self._ban(node_id, f"{what}, {strikes} times in a row", SYNC_BAN_S)
            return
        self._demoted_until[node_id] = time.monotonic() + strikes * SYNC_TIMEOUT_S
        log.warning(
            "%s %s: asking other peers for blocks for %g s",
            node_id,
            what,
            strikes * SYNC_TIMEOUT_S,
        )

    def take(self, peer: PeerInfo, payload: bytes, is_validator: bool) -> Blocks | None:
        """BLOCKS answer our request, or push the next committed block to a follower; None
        if these do neither. Framing, heights and sizes are checked on the headers, so the
        blocks are decoded only once taken; raises ProtocolError or BlockError."""
        message = Blocks.decode(payload)
        pairs = message.items
        heights = [
            check_block_size(block, self.node.rules.block_limits).height for block, _ in pairs
        ]
        request = self._requests.get(peer.node_id)
        if request is not None and heights[:1] == [request.first]:
            del self._requests[peer.node_id]
            if heights != list(range(request.first, request.first + len(heights))) or (
                heights[-1] > request.last
            ):
                self._ban(
                    peer.node_id,
                    f"answered a request for blocks {request.first}-{request.last} with {heights}",
                )
                return None
        elif len(heights) == 1 and not is_validator:
            if heights[0] != self.node.state.height + 1:
                return None  # pushed by several upstream peers, or we are further behind
        else:
            # Validators get no pushes, and a push is one block. A late answer to a
            # request since renewed comes here too, hence no ban at once.
            self._strike(peer.node_id, f"sent blocks {heights} nobody asked for")
            return None
        return message

    async def serve_blocks(self, peer: PeerInfo, first: int, last: int) -> None:
        last = min(last, first + SYNC_BATCH - 1, self.node.state.height)
        items, size = [], 0
        for height in range(first, last + 1):
            item = await asyncio.to_thread(self.node.storage.encoded_block, height)
            if item is None:
                break
            size += len(item[0]) + len(item[1])
            if items and size > SYNC_BYTES:
                break
            items.append(item)
        if items:
            await self.net.send(peer.node_id, KIND_BLOCKS, Blocks(tuple(items)).encode())

    async def serve_headers(self, peer: PeerInfo, first: int, last: int) -> None:
        last = min(last, first + SYNC_BATCH - 1, self.node.state.height)
        items = []
        for height in range(first, last + 1):
            item = await asyncio.to_thread(self.node.storage.encoded_header, height)
            if item is None:
                break
            items.append(item)
        if items:
            await self.net.send(peer.node_id, KIND_HEADERS, Headers(tuple(items)).encode())
