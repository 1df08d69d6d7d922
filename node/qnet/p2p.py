"""Peer-to-peer transport: authenticated, encrypted websocket connections between nodes.

A node listens on its own port (apart from the HTTP API). A frame is ``kind:u8 payload``.
Kinds below 16 belong to this layer (handshake, peer exchange); the node owns the others and
sees them as ``on_message(peer, kind, payload)``. There is no consensus logic here: the
layer connects, authenticates, encrypts, limits and forwards.

Handshake, both sides at once (each sends its frame before reading the other's)::

    HELLO  version chain_id genesis_hash public_key node_type region listen api_port ephemeral
    AUTH   signature by the node key over auth_message(...), sealed (the first sealed frame)

``ephemeral`` is a fresh X25519 public key. Both sides compute the X25519 shared secret and
derive one ChaCha20-Poly1305 key per direction from it and the transcript (both hellos,
the dialler's first): ``link_keys``. The signed message binds both public keys, both
ephemeral keys, the chain id, the genesis hash and the transcript, in signer-then-verifier
order: a signature is good for this one connection in this one direction, so it cannot be
replayed later, reflected back to its maker, or relayed to a third node, and a
man in the middle who swaps the ephemeral keys cannot produce it; sent sealed, it also
shows the sender holds the link's keys. This is the shape of CometBFT's SecretConnection
(and of SIGMA): ephemeral Diffie-Hellman, each side signing both ephemeral keys.

After the two hellos (AUTH included) each direction is a stream of frames, each
``length:u32 frame``, cut into sealed records, each record one websocket message::

    record    = ChaCha20-Poly1305-IETF(key of the direction, nonce, 1..RECORD_DATA stream bytes)
    nonce     = 0(4) counter:u64-little-endian   (the record's number in its direction)

A frame larger than a record spans several; frames queued together share records (one
seal and one websocket message for many small frames). The receiver expects the counter it
is at, so a record tampered with, replayed, reordered, dropped or cut short fails
authentication, and the connection is closed (not banned: a third party on the path can
cause it). No websocket message larger than ``RECORD_LIMIT`` is ever read, so before a peer
is authenticated it can make this node buffer at most that; the frame limit
(``max_message_bytes``, 16 MiB by default) applies after it, to each frame's length before
its bytes arrive. A handshake frame is at most ``MAX_HANDSHAKE_FRAME``.

The frames' payloads (HELLO, AUTH, GET_PEERS, PEERS and the node's kinds) are defined, with
their codecs, in ``wire.py``.

``api_port`` is the port of the node's HTTP API (0: none). Only the address the peer
connected from is ever paired with it (``PeerInfo.api``), so a peer cannot make this node
reach out to an address of its choosing; service discovery (``discovery.py``) probes it.

Peer exchange: PEERS is accepted only as the answer to our own GET_PEERS (one outstanding
per connection); an unsolicited one gets its sender dropped and banned. What a peer tells
us goes into a ``PeerTable`` bucketed by that peer, which never lets a third party rewrite
what we know of a node, nor one source take more than its share of the table.

Admission: on a validator (or a node without a topology policy) validators and configured
peers always get in; strangers share ``max_peers`` and the policy's slots, at most
``max_inbound_per_group`` of them from one (non-loopback) address group: an IPv4 /24 or an
IPv6 /64 (``topology.address_group``). Those are the blocks one party commonly holds (a
rented server's subnet, one subscriber's IPv6 prefix), so a new address in the same block
buys the attacker nothing. Bitcoin's wider netgroups (/16, /32) serve another purpose, the
diversity of the peers it dials; capping inbound strangers per /16 would also cap honest
community nodes that share a cloud provider's block. Slots are not first come, first served
for everyone: when they are full, an inbound node that is activated on chain as the type it
claims (``is_activated``, a callback of the node's: this layer knows no ledger) evicts an
inbound stranger that is not activated, the newest of the address group holding the most of
them. Many connections from one group are the mark of one party, so that party loses
first; within it the newest goes, since the longest-held slot is the likeliest honest and an
attacker gains nothing from reconnecting. A stranger that is not activated is refused when
full. At most ``max_pending_handshakes`` handshakes run at once,
``max_pending_handshakes_per_host`` from one address, each within ``handshake_timeout_s``
(and the HTTP upgrade request before it).

Delivery is at most once and in order per connection: frames in flight when a connection
closes may be lost, so the node re-requests what it needs after ``on_peer(.., True)``.
"""

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import logging
import random
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import nacl.bindings
import nacl.exceptions
import prometheus_client
from aiohttp import WSCloseCode, WSMsgType, web

from . import crypto
from .httpserver import Runner
from .topology import PeerPolicy, address_group
from .wire import (
    FIRST_APP_KIND,
    KIND_AUTH,
    KIND_GET_PEERS,
    KIND_HELLO,
    KIND_NAMES,
    KIND_PEERS,
    MAX_PEER_RECORDS,
    Auth,
    GetPeers,
    Hello,
    PeerRecord,
    Peers,
    ProtocolError,
    check_identity,
    join_address,
    split_address,
)

log = logging.getLogger("qnet.p2p")

PROTOCOL_VERSION = 3  # 2: HELLO carries the API port; 3: ephemeral keys, sealed records
PATH = "/p2p"

TAG_PEER_AUTH = 0x30  # signed-message tag; block.py uses 0x2x for headers and votes

# Sealed records (see the module docstring).
RECORD_DATA = 16 * 1024  # frame bytes per record, as a TLS record
RECORD_TAG = nacl.bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
RECORD_LIMIT = 1 + RECORD_DATA + RECORD_TAG  # the largest websocket message ever read
MAX_RECORDS = 2**64  # per direction: the counter never wraps
MAX_HANDSHAKE_FRAME = 1024  # a HELLO (at most ~640 bytes) or a sealed AUTH (82)
# Frames this large are sealed in a worker thread (PyNaCl releases the GIL), this many
# records at a time, so a large broadcast does not hold up the event loop.
SEAL_IN_THREAD_BYTES = 256 * 1024
SEAL_IN_THREAD_RECORDS = 64

# Before authentication: handshakes in flight at once, overall and from one address.
MAX_PENDING_HANDSHAKES = 128
MAX_PENDING_HANDSHAKES_PER_HOST = 8
# After it: strangers (not validators, not configured peers) admitted from one address
# group, an IPv4 block of this prefix or an IPv6 /64 (see the module docstring). Loopback is
# exempt: a local network runs every node on it.
MAX_INBOUND_PER_GROUP = 4
INBOUND_GROUP_IPV4_PREFIX = 24

MAINTAIN_EVERY_S = 0.5  # how often a node with a topology policy looks after its peers
MAX_KNOWN = 2_000  # peers remembered from peer exchange, to dial when the topology needs them
MAX_KNOWN_PER_SOURCE = 100  # of those, told by one peer (the most one PEERS frame holds)
MAX_POLICY_DIALS = 2  # dials in flight at once on the policy's behalf
STABLE_S = 10.0  # a connection that lasted less (a peer that was full, say) counts as failed
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
PROTOCOL_BAN_S = 60.0  # how long a peer that broke the protocol is refused
MAX_BANNED = 10_000  # bans remembered at once
CLOSE_TIMEOUT_S = 1.0  # a peer that does not answer our close frame gets its socket cut
DRAIN_S = 3.0  # at a stop, how long the frames already queued for peers may take to leave
FRAME_OVERHEAD = 64  # bytes charged per queued frame, so a flood of tiny frames is bounded

# Labels of qnet_p2p_dropped_peers_total, all exported from the start so alerts see them.
DROP_REASONS = (
    "handshake",
    "wrong_chain",
    "self",
    "banned",
    "max_peers",
    "rate_limit",
    "oversize",
    "malformed",
    "unknown_kind",
    "queue_full",
    "timeout",
    "topology",
    "tampered",
    "unsolicited",
    "busy",
    "per_host",
    "evicted",
)

OnMessage = Callable[["PeerInfo", int, bytes], Awaitable[None]]
OnPeer = Callable[["PeerInfo", bool], Awaitable[None]]
IsActivated = Callable[["PeerInfo"], bool]
WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def transcript(dialler_hello: bytes, acceptor_hello: bytes) -> bytes:
    """Digest of both encoded hellos, the dialler's first (length-prefixed: unambiguous)."""
    return crypto.digest(_U16.pack(len(dialler_hello)) + dialler_hello + acceptor_hello)


def auth_message(signer: bytes, verifier: bytes) -> bytes:
    """What a node signs to prove its key: both encoded hellos, signer's first.

    Each hello holds its sender's public key, ephemeral key, chain id and genesis hash; the
    tag, the chain id and the genesis hash are repeated up front so the message can never
    be mistaken for another signed QNet message (which all start with tag and chain id).
    """
    s, v = Hello.decode(signer), Hello.decode(verifier)
    cid = s.chain_id.encode()
    return b"".join(
        (
            bytes((TAG_PEER_AUTH, len(cid))),
            cid,
            s.genesis_hash,
            s.public_key,
            v.public_key,
            s.ephemeral,
            v.ephemeral,
            transcript(signer, verifier),
        )
    )


def link_keys(
    shared_secret: bytes, dialler_hello: bytes, acceptor_hello: bytes
) -> tuple[bytes, bytes]:
    """(dialler-to-acceptor key, acceptor-to-dialler key) from the X25519 shared secret and
    the transcript: keyed BLAKE2b, one personalisation per direction."""
    th = transcript(dialler_hello, acceptor_hello)
    return tuple(  # type: ignore[return-value]
        hashlib.blake2b(th, key=shared_secret, digest_size=32, person=person).digest()
        for person in (b"qnet-link-d2a", b"qnet-link-a2d")
    )


def ephemeral_keypair() -> tuple[bytes, bytes]:
    """(public, secret) X25519 keys for one handshake."""
    return nacl.bindings.crypto_box_keypair()


def shared_secret(our_secret: bytes, their_public: bytes) -> bytes:
    """X25519; ProtocolError for a public key of low order (the secret would be known)."""
    try:
        shared = nacl.bindings.crypto_scalarmult(our_secret, their_public)
    except nacl.exceptions.RuntimeError:
        raise ProtocolError("ephemeral key of low order") from None
    if shared == bytes(len(shared)):
        raise ProtocolError("ephemeral key of low order")
    return shared


class LinkError(ProtocolError):
    """A record this link refuses; ``reason`` is the drop reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SecretLink:
    """Both directions of one connection after the hellos. Each direction is a stream of
    length-prefixed frames cut into sealed records, with its own key and record counter.

    ``seal`` must be consumed in order by the one writer; ``open`` by the one reader.
    """

    def __init__(self, send_key: bytes, receive_key: bytes, max_frame: int):
        self._send_key = send_key
        self._receive_key = receive_key
        self.max_frame = max_frame
        self._sent = 0
        self._received = 0
        # The frame being received: its length prefix so far, then its bytes so far (views
        # of record plaintexts, joined once it is whole) and how many are still due.
        self._prefix = b""
        self._parts: list[memoryview] = []
        self._due = 0

    @classmethod
    def between(
        cls,
        our_secret: bytes,
        their_ephemeral: bytes,
        our_hello: bytes,
        their_hello: bytes,
        outbound: bool,
        max_frame: int,
    ) -> "SecretLink":
        secret = shared_secret(our_secret, their_ephemeral)
        if outbound:
            send, receive = link_keys(secret, our_hello, their_hello)
        else:
            receive, send = link_keys(secret, their_hello, our_hello)
        return cls(send, receive, max_frame)

    def seal(self, frames: list[bytes]) -> Iterator[bytes]:
        """The records carrying ``frames``, to send in this order (each stream byte is
        copied once, into its record)."""
        pieces: list[memoryview] = []
        room = RECORD_DATA
        for f in frames:
            for piece in (memoryview(_U32.pack(len(f))), memoryview(f)):
                while piece:
                    pieces.append(piece[:room])
                    room -= len(pieces[-1])
                    piece = piece[len(pieces[-1]) :]
                    if not room:
                        yield self._seal_record(b"".join(pieces))
                        pieces.clear()
                        room = RECORD_DATA
        if pieces:
            yield self._seal_record(b"".join(pieces))

    def _seal_record(self, plain: bytes) -> bytes:
        if self._sent >= MAX_RECORDS:
            raise LinkError("malformed", "record counter exhausted")
        nonce = _nonce(self._sent)
        self._sent += 1
        return nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plain, None, nonce, self._send_key
        )

    def open(self, record: bytes) -> list[bytes]:
        """The frames this record completes (maybe none); LinkError for a record that fails
        authentication or a frame that is empty or over the limit (checked on its length,
        before its bytes arrive: the buffer never holds more than one frame and a record)."""
        if self._received >= MAX_RECORDS:
            raise LinkError("malformed", "record counter exhausted")
        if not RECORD_TAG < len(record) <= RECORD_LIMIT:
            raise LinkError("tampered", f"a {len(record)}-byte message is not a sealed record")
        try:
            plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                record, None, _nonce(self._received), self._receive_key
            )
        except nacl.exceptions.CryptoError:
            raise LinkError(
                "tampered",
                f"record {self._received} failed authentication "
                "(tampered with, replayed, reordered or cut in flight)",
            ) from None
        self._received += 1
        view = memoryview(plain)
        frames = []
        while view:
            if not self._due:
                take = _U32.size - len(self._prefix)
                self._prefix += view[:take]
                view = view[take:]
                if len(self._prefix) < _U32.size:
                    break
                (length,) = _U32.unpack(self._prefix)
                self._prefix = b""
                if length == 0:
                    raise LinkError("malformed", "sent an empty frame")
                if length > self.max_frame:
                    raise LinkError(
                        "oversize", f"a {length}-byte frame, over the limit of {self.max_frame}"
                    )
                self._due = length
            part = view[: self._due]
            self._parts.append(part)
            self._due -= len(part)
            view = view[len(part) :]
            if not self._due:
                frames.append(b"".join(self._parts))
                self._parts.clear()
        return frames


def _nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def frame(kind: int, payload: bytes = b"") -> bytes:
    return _U8.pack(kind) + payload


# ---- peers, limits, queues -----------------------------------------------------------------
@dataclass(frozen=True)
class PeerInfo:
    """What the handshake proved (node id, key) and the peer announced (the rest)."""

    node_id: str  # bech32 'qnode1...' of public_key
    public_key: bytes
    node_type: str  # super|full|light
    region: str
    listen: str  # "host:port" where the peer accepts connections ('' if none)
    outbound: bool  # we dialled it
    api: str = ""  # "host:port" of its HTTP API: the host it connected from, its api_port

    @classmethod
    def of(
        cls, public_key: bytes, node_type: str, region: str, listen: str, outbound: bool
    ) -> "PeerInfo":
        return cls(
            crypto.encode_node_id(public_key), public_key, node_type, region, listen, outbound
        )

    def record(self) -> PeerRecord:
        return PeerRecord(self.public_key, self.node_type, self.region, self.listen)


class PeerTable:
    """Peers learnt from peer exchange, to dial when the topology needs them, bucketed by the
    peer that told us (the source).

    - A node already in the table keeps its address: a third party never rewrites it, and
      an address already held by one node is not given to another. Only the node itself,
      once authenticated, moves its entry (``confirm``).
    - One source holds at most ``per_source`` entries; past that its own oldest go.
    - When the table is full, a new entry evicts the oldest of the largest bucket (the
      adder's own when it is among the largest): a flood from one source can take no other
      source's bucket below the flooder's own size, so it cannot flush the table.
    """

    def __init__(self, limit: int = MAX_KNOWN, per_source: int = MAX_KNOWN_PER_SOURCE):
        self.limit = limit
        self.per_source = per_source
        self._entries: dict[str, tuple[PeerInfo, str]] = {}  # node id -> (info, source)
        self._buckets: dict[str, dict[str, None]] = {}  # source -> its node ids, oldest first
        self._addresses: dict[str, str] = {}  # listen address -> node id

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._entries

    def get(self, node_id: str) -> PeerInfo | None:
        entry = self._entries.get(node_id)
        return entry[0] if entry else None

    def infos(self) -> list[PeerInfo]:
        return [info for info, _ in self._entries.values()]

    def bucket_sizes(self) -> dict[str, int]:
        return {source: len(ids) for source, ids in self._buckets.items()}

    def add(self, info: PeerInfo, source: str) -> bool:
        """Remember ``info`` as told by ``source``; False if the node or its address is
        already known (the table is unchanged then)."""
        if info.node_id in self._entries or info.listen in self._addresses:
            return False
        bucket = self._buckets.get(source, {})
        if len(bucket) >= self.per_source:
            self._evict_oldest(source)
        elif len(self._entries) >= self.limit:
            largest = max(len(ids) for ids in self._buckets.values())
            if len(bucket) >= largest:
                self._evict_oldest(source)
            else:
                self._evict_oldest(
                    next(s for s, ids in self._buckets.items() if len(ids) == largest)
                )
        self._entries[info.node_id] = (info, source)
        self._buckets.setdefault(source, {})[info.node_id] = None
        self._addresses[info.listen] = info.node_id
        return True

    def confirm(self, info: PeerInfo) -> None:
        """The node itself, authenticated, says where it listens: its entry (if any) takes
        that address, and an entry of another node claiming the same address goes."""
        entry = self._entries.get(info.node_id)
        if entry is None or not info.listen or entry[0].listen == info.listen:
            return
        squatter = self._addresses.get(info.listen)
        if squatter is not None:
            self.remove(squatter)
        del self._addresses[entry[0].listen]
        self._entries[info.node_id] = (replace(entry[0], listen=info.listen), entry[1])
        self._addresses[info.listen] = info.node_id

    def remove(self, node_id: str) -> None:
        entry = self._entries.pop(node_id, None)
        if entry is None:
            return
        info, source = entry
        del self._addresses[info.listen]
        bucket = self._buckets[source]
        del bucket[node_id]
        if not bucket:
            del self._buckets[source]

    def _evict_oldest(self, source: str) -> None:
        self.remove(next(iter(self._buckets[source])))


class TokenBucket:
    """``rate`` events per second on average, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: int = 1) -> bool:
        """Take ``cost`` tokens if they are there (else take none)."""
        if self.refill(now) < cost:
            return False
        self.tokens -= cost
        return True

    def refill(self, now: float) -> float:
        """The tokens there are now."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def charge(self, cost: int) -> None:
        """Take ``cost`` tokens for events counted after they happened (at most ``refill``
        allowed them)."""
        self.tokens -= cost


class FrameQueue:
    """Frames waiting for a writer or a handler, bounded by bytes (plus a per-frame charge).

    ``offer`` refuses when full, for the outbound side, where a full queue means a slow
    peer; ``put`` waits, for the inbound side, so a slow handler stops the reader and TCP
    pushes back on the sender. ``None`` marks the end of the stream.
    """

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.size = 0
        self._frames: deque[bytes | None] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._frames)

    def _fits(self, frame: bytes) -> bool:
        return self.size + len(frame) + FRAME_OVERHEAD <= self.limit

    def offer(self, frame: bytes) -> bool:
        if not self._fits(frame):
            return False
        self._append(frame)
        return True

    async def put(self, frame: bytes) -> None:
        while self._frames and not self._fits(frame):
            self._room.clear()
            await self._room.wait()
        self._append(frame)

    def finish(self) -> None:
        self._frames.append(None)
        self._ready.set()

    def _append(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.size += len(frame) + FRAME_OVERHEAD
        self._ready.set()

    async def get(self) -> bytes | None:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        if frame is not None:
            self.size -= len(frame) + FRAME_OVERHEAD
            self._room.set()
        return frame

    def pop_ready(self, room: int) -> list[bytes]:
        """Frames waiting at the front whose bytes fit in ``room`` (the end mark stays)."""
        taken = []
        while self._frames and self._frames[0] is not None and len(self._frames[0]) <= room:
            frame = self._frames.popleft()
            assert frame is not None
            room -= len(frame)
            self.size -= len(frame) + FRAME_OVERHEAD
            taken.append(frame)
        if taken:
            self._room.set()
        return taken

    def clear(self) -> list[bytes]:
        """Empty the queue (keeping an end mark); returns the frames that were waiting."""
        waiting = [f for f in self._frames if f is not None]
        ended = len(waiting) < len(self._frames)
        self._frames.clear()
        if ended:
            self._frames.append(None)
        self.size = 0
        self._room.set()
        return waiting

    def take_over(self, other: "FrameQueue") -> list[bytes]:
        """Move ``other``'s waiting frames in front of ours (a connection replacing another);
        returns them."""
        waiting = other.clear()
        for f in reversed(waiting):
            self._frames.appendleft(f)
            self.size += len(f) + FRAME_OVERHEAD
        if waiting:
            self._ready.set()
        return waiting


class _Connection:
    """One authenticated websocket to a peer, with its queues and the tasks that serve it."""

    def __init__(
        self,
        ws: WebSocket,
        info: PeerInfo,
        link: SecretLink,
        address: str,
        queue_bytes: int,
        bucket: TokenBucket,
    ):
        self.ws = ws
        self.info = info
        self.link = link
        self.address = address  # where we reached it or it came from, for logs
        self.peers_due = 0  # GET_PEERS queued or sent on this connection, not yet answered
        self.outbox = FrameQueue(queue_bytes)
        self.inbox = FrameQueue(queue_bytes)
        self.bucket = bucket
        self.dropped_for = ""  # the drop reason once we decided to drop it
        self.opened = time.monotonic()
        self.closed = asyncio.Event()
        self.writer: asyncio.Task | None = None


class _Refused(Exception):
    """A connection we will not keep; ``reason`` is the metric label (None: not counted)."""

    def __init__(
        self, reason: str | None, detail: str, level: int = logging.WARNING, node_id: str = ""
    ):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.level = level
        self.node_id = node_id  # as claimed in the hello, if we got that far


# ---- the network ---------------------------------------------------------------------------
class PeerNetwork:
    """Listens, dials seeds and learnt peers, authenticates, and moves frames for the node."""

    def __init__(
        self,
        *,
        key: crypto.KeyPair,
        chain_id: str,
        genesis_hash: bytes,
        node_type: str,
        region: str,
        listen_host: str | None,
        listen_port: int,
        seeds: list[str],
        api_port: int = 0,
        on_message: OnMessage,
        on_peer: OnPeer | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
        max_peers: int = 50,
        max_message_bytes: int = 16 * 2**20,
        rate_limit_per_s: float = 2000.0,
        burst: int = 4000,
        max_queue_bytes: int | None = None,
        handshake_timeout_s: float = 5.0,
        heartbeat_s: float = 2.0,
        peer_exchange_s: float = 30.0,
        policy: PeerPolicy | None = None,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
        max_pending_handshakes_per_host: int = MAX_PENDING_HANDSHAKES_PER_HOST,
        max_inbound_per_group: int = MAX_INBOUND_PER_GROUP,
        is_activated: IsActivated | None = None,
    ):
        check_identity(key.public_key, node_type, region, "")
        for seed in seeds:
            split_address(seed)
        self.key = key
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.node_type = node_type
        self.region = region
        self.listen_host = listen_host
        self.listen_port = listen_port
        # No listen host: dial out only (light nodes), announcing no address.
        self.listen = join_address(listen_host, listen_port) if listen_host else ""
        self.seeds = list(seeds)
        self.api_port = api_port
        # Without a policy every peer is welcome up to max_peers and seeds stay dialled. With
        # one, the policy picks peers; seeds stay dialled only for a validator (its mesh), and
        # other nodes dial them to get started, or when the peers they know run out.
        self.policy = policy
        self.persistent_seeds = policy is None or policy.is_validator
        self.on_message = on_message
        self.on_peer = on_peer
        # Whether a peer's key is activated on chain as the node type it claims: such a
        # peer may take a stranger's slot (None: no ledger to ask, no priority).
        self.is_activated = is_activated
        self.max_peers = max_peers
        self.max_message_bytes = max_message_bytes
        self.rate_limit_per_s = rate_limit_per_s
        self.burst = burst
        self.max_queue_bytes = max_queue_bytes or 4 * max_message_bytes
        if self.max_queue_bytes < max_message_bytes + FRAME_OVERHEAD:
            raise ValueError("max_queue_bytes must hold at least one maximal message")
        self.handshake_timeout_s = handshake_timeout_s
        self.max_pending_handshakes = max_pending_handshakes
        self.max_pending_handshakes_per_host = max_pending_handshakes_per_host
        self.max_inbound_per_group = max_inbound_per_group
        self.heartbeat_s = heartbeat_s
        self.peer_exchange_s = peer_exchange_s
        self.registry = registry or prometheus_client.CollectorRegistry()
        # Frames are counted by kind, the protocol's (``wire.KIND_NAMES``); any other byte a
        # peer sends as a kind is "other", so no peer adds a series to /metrics.
        self._kind_labels = {k: str(k) for k in KIND_NAMES}
        self._init_metrics(self.registry)
        self._peers: dict[str, _Connection] = {}
        self._announced: set[str] = set()  # node ids the node was told are connected
        self._banned: dict[str, float] = {}  # node id -> monotonic deadline
        self._dialling: set[str] = set()
        self._self_addresses: set[str] = set()
        self._address_ids: dict[str, str] = {}  # dialled address -> node id found there
        self._known = PeerTable()  # learnt by peer exchange
        self._pending: dict[str, int] = {}  # remote host -> handshakes in flight from it
        self._retry: dict[str, tuple[float, float]] = {}  # address -> (not before, delay)
        self._tasks: set[asyncio.Task] = set()  # seed loops, dials, peer exchange, closes
        self._connection_tasks: set[asyncio.Task] = set()  # one per open connection
        self._sockets: set[WebSocket] = set()
        self._running = False
        self._runner: Runner | None = None
        self._session: aiohttp.ClientSession | None = None

    def _init_metrics(self, r: prometheus_client.CollectorRegistry) -> None:
        self._m_peers = prometheus_client.Gauge(
            "qnet_peers_connected", "Connected, authenticated peers", ["direction"], registry=r
        )
        self._m_bytes = prometheus_client.Counter(
            "qnet_p2p_bytes", "Peer-to-peer frame bytes", ["direction"], registry=r
        )
        self._m_messages = prometheus_client.Counter(
            "qnet_p2p_messages", "Peer-to-peer frames, by kind", ["direction", "kind"], registry=r
        )
        self._m_dropped = prometheus_client.Counter(
            "qnet_p2p_dropped_peers",
            "Peers refused or dropped by this node, by reason",
            ["reason"],
            registry=r,
        )
        for direction in ("in", "out"):
            self._m_peers.labels(direction)
            self._m_bytes.labels(direction)
            for kind in (*self._kind_labels.values(), "other"):
                self._m_messages.labels(direction, kind)
        for reason in DROP_REASONS:
            self._m_dropped.labels(reason)

    # ---- public interface --------------------------------------------------------------
    async def start(self) -> None:
        """Listen, then keep every seed dialled and exchange peers in the background."""
        self._running = True
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        if self.listen_host:
            app = web.Application()
            app.router.add_get(PATH, self._accept)
            # A stranger's malformed HTTP gets a JSON 400 and no traceback in the log.
            self._runner = Runner(
                app,
                access_log=None,
                shutdown_timeout=CLOSE_TIMEOUT_S,
                # A connection that has not sent its upgrade request by the handshake
                # deadline is cut (aiohttp arms this timer when the connection opens).
                keepalive_timeout=self.handshake_timeout_s,
            )
            try:
                await self._runner.setup()
                await web.TCPSite(self._runner, self.listen_host, self.listen_port).start()
            except OSError:
                await self.stop()
                raise
            self.listen_port = self._runner.addresses[0][1]
            self.listen = join_address(self.listen_host, self.listen_port)
            self._self_addresses.add(self.listen)
        if self.persistent_seeds:
            for seed in self.seeds:
                self._spawn(self._keep_dialled(seed), f"p2p-seed-{seed}")
        if self.policy is not None:
            self._spawn(self._maintain(), "p2p-maintain")
        self._spawn(self._exchange_peers(), "p2p-exchange")
        log.info(
            "p2p %s as %s (%s, %s), seeds %s",
            f"listening on {self.listen}" if self.listen else "dialling out only",
            self.key.node_id,
            self.node_type,
            self.region,
            ", ".join(self.seeds) or "none",
        )

    async def stop(self) -> None:
        """Stop dialling, let what is queued for each peer leave (for at most ``DRAIN_S``),
        close every connection politely (so peers notice at once rather than by
        heartbeat), then cancel whatever is still running."""
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        writers = []
        for conn in list(self._peers.values()):
            conn.outbox.finish()  # the writer ends after the frames queued before
            if conn.writer is not None:
                writers.append(conn.writer)
        if writers:
            await asyncio.wait(writers, timeout=DRAIN_S)
        await asyncio.gather(
            *(_close(ws, WSCloseCode.GOING_AWAY, "shutdown") for ws in list(self._sockets))
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*self._connection_tasks, return_exceptions=True)
        for task in list(self._connection_tasks):
            task.cancel()
        await asyncio.gather(*self._connection_tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        log.info("p2p stopped")

    def peers(self) -> list[PeerInfo]:
        return [conn.info for conn in self._peers.values()]

    async def send(self, node_id: str, kind: int, payload: bytes) -> bool:
        """Queue a frame for one peer; False if it is not connected (or was just dropped)."""
        data = self._app_frame(kind, payload)
        conn = self._peers.get(node_id)
        return conn is not None and self._enqueue(conn, data)

    async def broadcast(
        self,
        kind: int,
        payload: bytes,
        exclude: str | None = None,
        only: Callable[[PeerInfo], bool] | None = None,
    ) -> int:
        """Queue one frame for every peer but ``exclude`` (of those ``only`` accepts);
        returns how many took it."""
        data = self._app_frame(kind, payload)
        return sum(
            self._enqueue(conn, data)
            for node_id, conn in list(self._peers.items())
            if node_id != exclude and (only is None or only(conn.info))
        )

    def ban(self, node_id: str, reason: str, seconds: float = 60) -> None:
        """Drop the peer if connected and refuse it for ``seconds``."""
        self._ban_until(node_id, time.monotonic() + seconds)
        log.warning("banning peer %s for %g s: %s", node_id, seconds, reason)
        conn = self._peers.get(node_id)
        if conn is not None:
            self._drop(conn, "banned", reason, log_level=logging.DEBUG)

    def want_peer(self, info: PeerInfo) -> bool:
        """Whether to dial a peer learnt by peer exchange at once (with a topology policy,
        the maintenance loop dials instead). Self, connected, banned and already-dialling
        peers never get here."""
        return self.policy is None and len(self._peers) + len(self._dialling) < self.max_peers

    # ---- sending -------------------------------------------------------------------------
    def _app_frame(self, kind: int, payload: bytes) -> bytes:
        if not FIRST_APP_KIND <= kind <= 255:
            raise ValueError(f"application kinds are {FIRST_APP_KIND}..255, not {kind}")
        if 1 + len(payload) > self.max_message_bytes:
            raise ValueError(
                f"a {len(payload)}-byte payload exceeds the peers' limit of "
                f"{self.max_message_bytes - 1}"
            )
        return frame(kind, payload)

    def _enqueue(self, conn: _Connection, data: bytes) -> bool:
        """Hand a frame to the peer's writer; a peer whose queue is full is too slow: drop."""
        if conn.dropped_for:
            return False
        if conn.outbox.offer(data):
            return True
        self._drop(
            conn,
            "queue_full",
            f"outbound queue over {conn.outbox.limit} bytes; it reads too slowly",
        )
        return False

    async def _write(self, conn: _Connection) -> None:
        while (data := await conn.outbox.get()) is not None:
            frames = [data, *conn.outbox.pop_ready(RECORD_DATA - len(data))]
            try:
                await self._send_sealed(conn, frames)
            except (ConnectionError, aiohttp.ClientError) as exc:
                log.debug("cannot write to %s: %s", conn.info.node_id, exc)
                await _close(conn.ws, WSCloseCode.ABNORMAL_CLOSURE, "write failed")
                return
            for sent in frames:
                self._count("out", sent)

    @staticmethod
    async def _send_sealed(conn: _Connection, frames: list[bytes]) -> None:
        records = conn.link.seal(frames)
        if len(frames[0]) < SEAL_IN_THREAD_BYTES:
            for record in records:
                await conn.ws.send_bytes(record)
            return
        # Only this writer advances the generator, one slice at a time: records stay in order.
        while batch := await asyncio.to_thread(
            lambda: list(itertools.islice(records, SEAL_IN_THREAD_RECORDS))
        ):
            for record in batch:
                await conn.ws.send_bytes(record)

    async def _send_now(self, ws: WebSocket, data: bytes, link: SecretLink | None) -> None:
        """Write a handshake frame directly (no writer task exists yet): in the clear before
        the link exists (HELLO), sealed after."""
        for record in [data] if link is None else link.seal([data]):
            await ws.send_bytes(record)
        self._count("out", data)

    def _count(self, direction: str, data: bytes) -> None:
        self._m_bytes.labels(direction).inc(len(data))
        kind = self._kind_labels.get(data[0], "other") if data else "other"
        self._m_messages.labels(direction, kind).inc()

    # ---- accepting and dialling ----------------------------------------------------------
    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if not self._running:
            raise web.HTTPServiceUnavailable(text="node is stopping")
        host = request.remote or ""
        busy = self._handshakes_full(host)
        if busy:
            log.info("refusing a connection from %s before the handshake: %s", host, busy)
            self._m_dropped.labels("busy").inc()
            raise web.HTTPServiceUnavailable(text=busy)
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat_s,
            max_msg_size=RECORD_LIMIT + 1,  # aiohttp's limit is exclusive
            compress=False,
            timeout=CLOSE_TIMEOUT_S,
        )
        peername = request.transport.get_extra_info("peername") if request.transport else None
        address = join_address(*peername[:2]) if peername else "unknown"
        task = asyncio.current_task()
        assert task is not None
        self._connection_tasks.add(task)
        self._pending[host] = self._pending.get(host, 0) + 1
        try:
            try:
                await ws.prepare(request)
                conn = await self._open(ws, address, host, outbound=False)
            finally:
                self._pending[host] -= 1
                if not self._pending[host]:
                    del self._pending[host]
            if conn is not None:
                await self._serve(conn)
        finally:
            self._connection_tasks.discard(task)
        return ws

    def _handshakes_full(self, host: str) -> str:
        """Why another handshake from ``host`` must wait ('' if it need not)."""
        total = sum(self._pending.values())  # one entry per host with a handshake in flight
        if total >= self.max_pending_handshakes:
            return f"{total} handshakes in progress (limit {self.max_pending_handshakes})"
        mine = self._pending.get(host, 0)
        if mine >= self.max_pending_handshakes_per_host:
            return (
                f"{mine} handshakes in progress from {host} "
                f"(limit {self.max_pending_handshakes_per_host})"
            )
        return ""

    async def _dial(self, address: str) -> _Connection | None:
        """Connect to ``address`` and authenticate; returns the connection now serving that
        peer (maybe an older one). The caller has put ``address`` in ``_dialling``."""
        try:
            assert self._session is not None
            try:
                async with asyncio.timeout(self.handshake_timeout_s):
                    ws = await self._session.ws_connect(
                        f"http://{address}{PATH}",
                        heartbeat=self.heartbeat_s,
                        max_msg_size=RECORD_LIMIT + 1,  # aiohttp's limit is exclusive
                        timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.debug("cannot reach peer at %s: %s", address, exc or type(exc).__name__)
                return None
            host, _ = split_address(address)
            conn = await self._open(ws, address, host, outbound=True, seed=address in self.seeds)
            if conn is not None:
                self._address_ids[address] = conn.info.node_id
                if len(self._address_ids) > MAX_KNOWN + len(self.seeds):
                    self._forget_addresses()
                self._spawn(
                    self._serve(conn), f"p2p-peer-{conn.info.node_id}", self._connection_tasks
                )
            node_id = self._address_ids.get(address)
            return self._peers.get(node_id) if node_id else None
        finally:
            self._dialling.discard(address)

    async def _keep_dialled(self, address: str) -> None:
        """Dial a seed until it answers, again whenever it goes away; back off while it
        does not answer, with jitter so a restarted network does not redial in lockstep."""
        delay = BACKOFF_MIN_S
        while self._running:
            conn = self._peer_at(address)
            if conn is None and address not in self._dialling:
                self._dialling.add(address)
                conn = await self._dial(address)
            if address in self._self_addresses:
                log.info("seed %s is this node; not dialling it", address)
                return
            if conn is not None:
                await conn.closed.wait()
                delay = BACKOFF_MIN_S
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if conn is None:
                delay = min(2 * delay, BACKOFF_MAX_S)

    def _peer_at(self, address: str) -> _Connection | None:
        node_id = self._address_ids.get(address)
        if node_id in self._peers:
            return self._peers[node_id]
        return next((c for c in self._peers.values() if c.info.listen == address), None)

    # ---- handshake -----------------------------------------------------------------------
    async def _open(
        self, ws: WebSocket, address: str, remote_host: str, outbound: bool, seed: bool = False
    ) -> _Connection | None:
        """Run the handshake and admit the peer; on refusal log one line naming the peer
        and the reason, count it and close."""
        self._sockets.add(ws)
        shaken = None
        try:
            async with asyncio.timeout(self.handshake_timeout_s):
                shaken = await self._handshake(ws, address, remote_host, outbound)
            return self._admit(ws, *shaken, address, seed)
        except _Refused as exc:
            refusal = exc
            if shaken is not None and exc.reason in ("max_peers", "topology", "per_host"):
                # Full here: point the peer at others, as a seed would. The peer takes this
                # as the answer to the GET_PEERS it sends on admitting us.
                info, link = shaken
                with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                    records = Peers(tuple(self._records_for(info))).encode()
                    await self._send_now(ws, frame(KIND_PEERS, records), link)
        except TimeoutError:
            refusal = _Refused("handshake", f"no handshake within {self.handshake_timeout_s:g} s")
        except (ConnectionError, aiohttp.ClientError) as exc:
            refusal = _Refused(
                None, f"connection failed during the handshake: {exc}", logging.DEBUG
            )
        who = f"peer {refusal.node_id}" if refusal.node_id else "peer"
        log.log(refusal.level, "refusing %s at %s: %s", who, address, refusal.detail)
        if refusal.reason is not None:
            self._m_dropped.labels(refusal.reason).inc()
        self._sockets.discard(ws)
        await _close(ws, WSCloseCode.POLICY_VIOLATION, refusal.reason or "refused")
        return None

    async def _handshake(
        self, ws: WebSocket, address: str, remote_host: str, outbound: bool
    ) -> tuple[PeerInfo, SecretLink]:
        ephemeral, secret = ephemeral_keypair()
        ours = Hello(
            PROTOCOL_VERSION,
            self.chain_id,
            self.genesis_hash,
            self.key.public_key,
            self.node_type,
            self.region,
            self.listen,
            self.api_port,
            ephemeral,
        ).encode()
        await self._send_now(ws, frame(KIND_HELLO, ours), None)
        theirs_raw = await self._expect(ws, KIND_HELLO, None)
        try:
            theirs = Hello.decode(theirs_raw)
        except ProtocolError as exc:
            raise _Refused("handshake", f"malformed hello: {exc}") from None
        node_id = crypto.encode_node_id(theirs.public_key)
        try:
            self._check_hello(theirs, address, outbound)
            try:
                link = SecretLink.between(
                    secret, theirs.ephemeral, ours, theirs_raw, outbound, self.max_message_bytes
                )
            except ProtocolError as exc:
                raise _Refused("handshake", f"unusable hello: {exc}") from None
            auth = Auth(self.key.sign(auth_message(ours, theirs_raw)))
            await self._send_now(ws, frame(KIND_AUTH, auth.encode()), link)
            try:
                signature = Auth.decode(await self._expect(ws, KIND_AUTH, link)).signature
            except ProtocolError as exc:
                raise _Refused("handshake", f"malformed auth: {exc}") from None
        except _Refused as refusal:
            refusal.node_id = node_id
            raise
        if not crypto.verify(theirs.public_key, signature, auth_message(theirs_raw, ours)):
            # Not banned: the key is unproven, and banning it would let anyone get an
            # honest node refused by impersonating it badly.
            raise _Refused("handshake", "it did not prove its key (bad signature)", node_id=node_id)
        info = PeerInfo(
            node_id,
            theirs.public_key,
            theirs.node_type,
            theirs.region,
            _reachable(theirs.listen, remote_host),
            outbound,
            join_address(remote_host, theirs.api_port) if theirs.api_port and remote_host else "",
        )
        return info, link

    def _check_hello(self, hello: Hello, address: str, outbound: bool) -> None:
        if hello.public_key == self.key.public_key:
            if outbound:
                self._self_addresses.add(address)
            raise _Refused("self", "it is this node", logging.INFO)
        if hello.version != PROTOCOL_VERSION:
            raise _Refused(
                "handshake", f"it speaks p2p version {hello.version}, we speak {PROTOCOL_VERSION}"
            )
        if hello.chain_id != self.chain_id:
            raise _Refused(
                "wrong_chain", f"chain id {hello.chain_id!r} differs from ours {self.chain_id!r}"
            )
        if hello.genesis_hash != self.genesis_hash:
            raise _Refused(
                "wrong_chain",
                f"genesis hash {hello.genesis_hash.hex()} "
                f"differs from ours {self.genesis_hash.hex()}",
            )

    async def _expect(self, ws: WebSocket, kind: int, link: SecretLink | None) -> bytes:
        """The payload of the next handshake frame, which must be ``kind`` and small; in the
        clear without ``link``, one sealed record with it."""
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise _Refused(
                None,
                f"it closed the connection during the handshake ({msg.extra or msg.data})",
                logging.INFO,
            )
        if msg.type is WSMsgType.ERROR:
            raise _Refused("handshake", f"the connection failed: {msg.data}")
        if msg.type is not WSMsgType.BINARY:
            raise _Refused("handshake", f"it sent something other than {KIND_NAMES[kind]}")
        if len(msg.data) > MAX_HANDSHAKE_FRAME:
            raise _Refused(
                "oversize",
                f"a {len(msg.data)}-byte handshake frame, over the limit of {MAX_HANDSHAKE_FRAME}",
            )
        data = msg.data
        if link is not None:
            try:
                frames = link.open(data)
            except LinkError as exc:
                raise _Refused("handshake", f"its {KIND_NAMES[kind]}: {exc.detail}") from None
            if len(frames) != 1:
                raise _Refused("handshake", f"its {KIND_NAMES[kind]} is not one whole record")
            data = frames[0]
        if not data or data[0] != kind:
            raise _Refused("handshake", f"it sent something other than {KIND_NAMES[kind]}")
        self._count("in", data)
        return data[1:]

    def _admit(
        self, ws: WebSocket, info: PeerInfo, link: SecretLink, address: str, seed: bool
    ) -> _Connection:
        """Register an authenticated peer, or raise _Refused. No await between check and
        insert, so two handshakes finishing together cannot both get in. Validators and
        configured peers (reserved) always get in; strangers share ``max_peers`` and the
        policy's slots, at most ``max_inbound_per_group`` of them from one address group, and
        an activated one takes a stranger's place in its group when the group has its share
        (``_group_evictable``) and a stranger's slot when they are full (``_evictable``)."""
        if self._is_banned(info.node_id):
            raise _Refused("banned", "it is banned", logging.INFO, info.node_id)
        existing = self._peers.get(info.node_id)
        if existing is not None and (not self._preferred(info) or self._preferred(existing.info)):
            raise _Refused(None, "already connected", logging.DEBUG, info.node_id)
        reserved = seed or self._reserved(info)
        # A validator's mesh and configured peers are configured, not picked.
        bypass = (seed and self.persistent_seeds) or self._reserved(info)
        if existing is None:
            if not reserved:
                try:
                    self._check_group(info, address)
                except _Refused:
                    victim = self._group_evictable(info, address)
                    if victim is None:
                        raise
                    self._drop(
                        victim,
                        "evicted",
                        f"its place in {group_of(address)} goes to {info.node_id}, an "
                        f"activated {info.node_type} node",
                        log_level=logging.INFO,
                    )
            refusal = self._no_room(info, self.peers(), reserved, bypass)
            if refusal is not None:
                victim = self._evictable(info, reserved, bypass)
                if victim is None:
                    raise refusal
                self._drop(
                    victim,
                    "evicted",
                    f"its slot goes to {info.node_id}, an activated {info.node_type} node",
                    log_level=logging.INFO,
                )
        conn = _Connection(
            ws,
            info,
            link,
            address,
            self.max_queue_bytes,
            TokenBucket(self.rate_limit_per_s, self.burst, time.monotonic()),
        )
        if existing is not None:
            log.debug(
                "%s: keeping the connection %s dialled",
                info.node_id,
                "we" if info.outbound else "it",
            )
            moved = conn.outbox.take_over(existing.outbox)
            conn.peers_due = moved.count(frame(KIND_GET_PEERS))  # their answers come here
            self._spawn(_close(existing.ws, WSCloseCode.OK, "duplicate"), "p2p-close")
        self._peers[info.node_id] = conn
        self._known.confirm(info)  # its own word on where it listens
        self._update_gauge()
        return conn

    def _check_group(self, info: PeerInfo, address: str) -> None:
        """Refuse an inbound stranger whose address group has its share of slots already."""
        host = _host_of(address)
        if info.outbound or not _limited_host(host):
            return
        group = group_of(address)
        same = sum(
            1
            for c in self._peers.values()
            if not c.info.outbound and group_of(c.address) == group and not self._reserved(c.info)
        )
        if same >= self.max_inbound_per_group:
            raise _Refused(
                "per_host",
                f"already {same} peers from {group} (limit {self.max_inbound_per_group})",
                logging.INFO,
                info.node_id,
            )

    def _no_room(
        self, info: PeerInfo, peers: list[PeerInfo], reserved: bool, bypass: bool
    ) -> _Refused | None:
        """Why ``info`` finds no slot beside ``peers`` (None: it does): ``max_peers``, unless
        it is reserved, and the policy's slots, unless it bypasses them."""
        if not reserved and len(peers) >= self.max_peers:
            return _Refused("max_peers", f"already {len(peers)} peers", logging.INFO, info.node_id)
        if self.policy is not None and not bypass and not self.policy.accepts(peers, info):
            return _Refused(
                "topology",
                f"the topology has no room for a {info.node_type} node of {info.region}",
                logging.DEBUG,
                info.node_id,
            )
        return None

    def _group_evictable(self, info: PeerInfo, address: str) -> _Connection | None:
        """The stranger whose place in its address group an inbound activated node ``info``
        from that group takes when the group has its share, or None: the newest of the
        group's inbound strangers that are neither reserved nor activated."""
        if info.outbound or self.is_activated is None or not self.is_activated(info):
            return None
        group = group_of(address)
        strangers = [
            c
            for c in self._peers.values()
            if not c.info.outbound
            and group_of(c.address) == group
            and not self._reserved(c.info)
            and not self.is_activated(c.info)
        ]
        return max(strangers, key=lambda c: c.opened, default=None)

    def _evictable(self, info: PeerInfo, reserved: bool, bypass: bool) -> _Connection | None:
        """The stranger whose slot an inbound activated node ``info`` takes when the slots
        are full, or None: inbound, neither reserved nor activated, and one whose leaving
        makes room; of those, the newest of the address group holding the most."""
        if info.outbound or self.is_activated is None or not self.is_activated(info):
            return None
        strangers = [
            c
            for c in self._peers.values()
            if not c.info.outbound and not self._reserved(c.info) and not self.is_activated(c.info)
        ]
        groups = Counter(group_of(c.address) for c in strangers)
        strangers.sort(key=lambda c: (groups[group_of(c.address)], c.opened), reverse=True)
        peers = self.peers()
        for c in strangers:
            rest = [p for p in peers if p.node_id != c.info.node_id]
            if self._no_room(info, rest, reserved, bypass) is None:
                return c
        return None

    def _reserved(self, info: PeerInfo) -> bool:
        """Whether strangers can never take ``info``'s slot: on a node that keeps its seeds
        dialled (a validator, or one without a topology policy), a validator or a configured
        peer (one found at a seed address). Other nodes pick peers by the policy alone."""
        if not self.persistent_seeds:
            return False
        if self.policy is not None and info.public_key in self.policy.validators:
            return True
        return any(self._address_ids.get(seed) == info.node_id for seed in self.seeds)

    def _preferred(self, info: PeerInfo) -> bool:
        """Of two connections between the same nodes, both keep the one dialled by the node
        with the smaller public key: a rule both sides compute alike."""
        return info.outbound == (self.key.public_key < info.public_key)

    def _ban_until(self, node_id: str, deadline: float) -> None:
        """Record a ban; past ``MAX_BANNED`` the ban that ends soonest is forgotten (each
        costs the banned party a handshake with a fresh key)."""
        self._banned[node_id] = max(deadline, self._banned.get(node_id, 0.0))
        if len(self._banned) > MAX_BANNED:
            del self._banned[min(self._banned, key=self._banned.__getitem__)]

    def _is_banned(self, node_id: str) -> bool:
        now = time.monotonic()
        for expired in [n for n, until in self._banned.items() if until <= now]:
            del self._banned[expired]
        return node_id in self._banned

    def _update_gauge(self) -> None:
        outbound = sum(c.info.outbound for c in self._peers.values())
        self._m_peers.labels("out").set(outbound)
        self._m_peers.labels("in").set(len(self._peers) - outbound)

    # ---- serving a connection ------------------------------------------------------------
    async def _serve(self, conn: _Connection) -> None:
        """Tell the node, then read until the connection ends; frames already received are
        still delivered before the node hears of the disconnection."""
        info = conn.info
        if self._peers.get(info.node_id) is conn and info.node_id not in self._announced:
            self._announced.add(info.node_id)
            log.info(
                "peer %s connected (%s, %s, %s %s)",
                info.node_id,
                info.node_type,
                info.region,
                "dialled" if info.outbound else "from",
                conn.address,
            )
            await self._notify(info, True)
        writer = conn.writer = asyncio.create_task(
            self._write(conn), name=f"p2p-write-{info.node_id}"
        )
        dispatcher = asyncio.create_task(self._dispatch(conn), name=f"p2p-in-{info.node_id}")
        try:
            self._ask_peers(conn)  # before the first read: a refusing peer's PEERS answers it
            await self._read(conn)
        finally:
            writer.cancel()
            conn.inbox.finish()
            try:
                await _close(conn.ws, *_close_args(conn))
                await asyncio.gather(writer, dispatcher, return_exceptions=True)
            finally:
                self._sockets.discard(conn.ws)
                conn.closed.set()
                self._unregister(conn)
                if info.node_id in self._announced and info.node_id not in self._peers:
                    self._announced.discard(info.node_id)
                    log.info("peer %s disconnected", info.node_id)
                    await self._notify(info, False)

    def _unregister(self, conn: _Connection) -> None:
        """Stop routing to ``conn``, unless a duplicate connection has replaced it."""
        if self._peers.get(conn.info.node_id) is conn:
            del self._peers[conn.info.node_id]
            self._update_gauge()

    async def _notify(self, info: PeerInfo, connected: bool) -> None:
        if self.on_peer is None:
            return
        try:
            await self.on_peer(info, connected)
        except Exception:
            log.exception("on_peer failed for %s", info.node_id)

    async def _dispatch(self, conn: _Connection) -> None:
        """Hand application frames to the node in order, one at a time per peer."""
        while (data := await conn.inbox.get()) is not None:
            try:
                await self.on_message(conn.info, data[0], data[1:])
            except Exception:
                log.exception("on_message failed for kind %d from %s", data[0], conn.info.node_id)

    async def _read(self, conn: _Connection) -> None:
        while True:
            msg = await conn.ws.receive()
            if msg.type is WSMsgType.BINARY:
                violation = await self._on_record(conn, msg.data)
            elif msg.type is WSMsgType.TEXT:
                violation = ("malformed", "sent a text message")
            elif msg.type is WSMsgType.ERROR:
                violation = _classify_error(msg.data)
                if violation is None:
                    log.info("lost the connection to %s: %s", conn.info.node_id, msg.data)
                    return
            else:
                if msg.type is WSMsgType.CLOSE and not conn.dropped_for:
                    log.debug(
                        "%s closed the connection (%s %s)",
                        conn.info.node_id,
                        msg.data,
                        msg.extra or "",
                    )
                return
            if violation is not None:
                reason, detail = violation
                if reason == "timeout":  # gone, not misbehaving
                    self._drop(conn, reason, detail, log_level=logging.INFO)
                elif reason == "tampered":  # maybe not the peer: anyone on the path can do it
                    self._drop(conn, reason, detail)
                else:
                    self._drop(conn, reason, detail, PROTOCOL_BAN_S)
                return

    async def _on_record(self, conn: _Connection, record: bytes) -> tuple[str, str] | None:
        """Open one sealed record; route the frames it completes."""
        try:
            frames = conn.link.open(record)
        except LinkError as exc:
            return exc.reason, exc.detail
        for data in frames:
            violation = await self._on_frame(conn, data)
            if violation is not None:
                return violation
        return None

    async def _on_frame(self, conn: _Connection, data: bytes) -> tuple[str, str] | None:
        """Account for, police and route one frame; returns (reason, detail) to drop."""
        self._count("in", data)
        if not conn.bucket.take(time.monotonic()):
            return "rate_limit", (
                f"more than {self.rate_limit_per_s:g} messages/s (burst {self.burst})"
            )
        if not data:
            return "malformed", "sent an empty frame"
        kind, payload = data[0], data[1:]
        if kind >= FIRST_APP_KIND:
            await conn.inbox.put(data)
        elif kind == KIND_GET_PEERS:
            try:
                GetPeers.decode(payload)
            except ProtocolError as exc:
                return "malformed", str(exc)
            records = Peers(tuple(self._records_for(conn.info)))
            self._enqueue(conn, frame(KIND_PEERS, records.encode()))
        elif kind == KIND_PEERS:
            if not conn.peers_due:
                return "unsolicited", "sent PEERS it was not asked for"
            conn.peers_due -= 1
            try:
                self._learn(Peers.decode(payload).records, conn.info)
            except ProtocolError as exc:
                return "malformed", f"bad PEERS frame: {exc}"
        else:
            return "unknown_kind", f"sent reserved kind {kind} after the handshake"
        return None

    def _drop(
        self,
        conn: _Connection,
        reason: str,
        detail: str,
        ban_s: float = 0,
        log_level: int = logging.WARNING,
    ) -> None:
        """Stop routing to the peer now, log and count once, and close its connection
        (telling it why in the close frame)."""
        if conn.dropped_for:
            return
        conn.dropped_for = reason
        self._unregister(conn)  # at once: peers() and broadcasts stop including it
        if ban_s:
            self._ban_until(conn.info.node_id, time.monotonic() + ban_s)
            conn.inbox.clear()  # a peer that broke the rules has nothing more to say
            log.log(
                log_level,
                "dropping peer %s at %s and banning it for %g s: %s",
                conn.info.node_id,
                conn.address,
                ban_s,
                detail,
            )
        else:
            log.log(
                log_level, "dropping peer %s at %s: %s", conn.info.node_id, conn.address, detail
            )
        self._m_dropped.labels(reason).inc()
        self._spawn(_close(conn.ws, *_close_args(conn)), "p2p-close")

    # ---- peer exchange -------------------------------------------------------------------
    def _records_for(self, asker: PeerInfo) -> list[PeerRecord]:
        """Peers worth dialling for ``asker``: those of its region first, light nodes never
        (nobody dials them)."""
        infos = [
            c.info
            for c in self._peers.values()
            if c.info.node_id != asker.node_id and c.info.listen and c.info.node_type != "light"
        ]
        random.shuffle(infos)
        infos.sort(key=lambda i: i.region != asker.region)
        return [i.record() for i in infos[:MAX_PEER_RECORDS]]

    def _ask_peers(self, conn: _Connection) -> None:
        """Send GET_PEERS unless one is still unanswered: one PEERS is due per request."""
        if not conn.peers_due and self._enqueue(conn, frame(KIND_GET_PEERS)):
            conn.peers_due = 1

    def _learn(self, records: tuple[PeerRecord, ...], source: PeerInfo) -> None:
        """Take in what ``source`` answered: with a topology policy, remember new peers for
        the maintenance loop to dial; without, dial them once each (only seeds are kept)."""
        learnt = 0
        for record in records:
            info = PeerInfo.of(
                record.public_key, record.node_type, record.region, record.listen, outbound=True
            )
            if (
                not self._running
                or info.public_key == self.key.public_key
                or info.node_id in self._peers
                or self._is_banned(info.node_id)
                or info.listen in self._dialling
                or info.listen in self._self_addresses
            ):
                continue
            if self.policy is not None:
                learnt += self._known.add(info, source.node_id)
            elif self.want_peer(info):
                learnt += 1
                self._dialling.add(info.listen)
                self._spawn(self._dial(info.listen), f"p2p-dial-{info.listen}")
        log.debug(
            "peer %s told of %d peers, %d new to us (%d remembered)",
            source.node_id,
            len(records),
            learnt,
            len(self._known),
        )

    def _forget_addresses(self) -> None:
        """Bound what we keep per dialled address (peer exchange can name new ones without
        end): forget backoffs that have run out, and where nodes were found, except at the
        seeds and for nodes connected now."""
        now = time.monotonic()
        for address in [a for a, (not_before, _) in self._retry.items() if not_before <= now]:
            del self._retry[address]
        for address in [
            a
            for a, node_id in self._address_ids.items()
            if a not in self.seeds and node_id not in self._peers
        ]:
            del self._address_ids[address]

    def _may_dial(self, address: str, now: float) -> bool:
        return (
            address not in self._dialling
            and address not in self._self_addresses
            and self._retry.get(address, (0.0, 0.0))[0] <= now
        )

    def _dial_for_policy(self, address: str) -> None:
        """Dial once; an address that gave no lasting connection waits longer each time."""

        async def attempt() -> None:
            conn = await self._dial(address)
            if conn is not None:
                opened = time.monotonic()
                await conn.closed.wait()
                if time.monotonic() - opened > STABLE_S:
                    self._retry.pop(address, None)
                    return
            delay = min(2 * self._retry.get(address, (0.0, BACKOFF_MIN_S))[1], BACKOFF_MAX_S)
            self._retry[address] = (time.monotonic() + delay * random.uniform(0.5, 1.0), delay)
            if len(self._retry) > MAX_KNOWN + len(self.seeds):
                self._forget_addresses()

        self._dialling.add(address)
        self._spawn(attempt(), f"p2p-dial-{address}")

    async def _maintain(self) -> None:
        """Keep the peers the policy asks for: let surplus ones go, dial the best known
        candidates while it is hungry, fall back on the seeds when none is known, and ask
        peers for more."""
        policy = self.policy
        assert policy is not None
        asked = 0.0
        while self._running:
            now = time.monotonic()
            peers = self.peers()
            for info in policy.surplus(peers):
                conn = self._peers.get(info.node_id)
                if conn is not None:
                    self._drop(conn, "topology", "the topology no longer needs it", 0, logging.INFO)
            peers = self.peers()
            if policy.hungry(peers):
                room = MAX_POLICY_DIALS - len(self._dialling)
                candidates = sorted(
                    (
                        info
                        for info in self._known.infos()
                        if info.node_id not in self._peers
                        and not self._is_banned(info.node_id)
                        and self._may_dial(info.listen, now)
                        and policy.wants(peers, info)
                    ),
                    key=policy.rank,
                )
                for info in candidates[: max(0, room)]:
                    self._dial_for_policy(info.listen)
                if not candidates and room > 0:
                    for seed in random.sample(self.seeds, len(self.seeds)):  # spread the load
                        if self._peer_at(seed) is None and self._may_dial(seed, now):
                            self._dial_for_policy(seed)
                            break
                if now - asked > 2.0:
                    asked = now
                    for conn in list(self._peers.values()):
                        self._ask_peers(conn)
            await asyncio.sleep(MAINTAIN_EVERY_S * random.uniform(0.8, 1.2))

    async def _exchange_peers(self) -> None:
        """Ask every peer for its peers now and then, while there is room for more."""
        while self._running:
            await asyncio.sleep(self.peer_exchange_s * random.uniform(0.5, 1.0))
            if len(self._peers) < self.max_peers:
                for conn in list(self._peers.values()):
                    self._ask_peers(conn)

    # ---- tasks ---------------------------------------------------------------------------
    def _spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, group: set[asyncio.Task] | None = None
    ) -> asyncio.Task:
        """Start a task that stop() will find, and log it if it dies of a bug."""
        tasks = self._tasks if group is None else group
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(lambda t: _task_done(tasks, t))
        return task


def _task_done(tasks: set[asyncio.Task], task: asyncio.Task) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("p2p task %s failed", task.get_name(), exc_info=task.exception())


def _host_of(address: str) -> str:
    """The host of a ``host:port`` address ('' if it is not one)."""
    try:
        return split_address(address)[0]
    except ValueError:
        return ""


def group_of(address: str) -> str:
    """The address group of a ``host:port`` address, for the limits on inbound strangers."""
    return address_group(_host_of(address), INBOUND_GROUP_IPV4_PREFIX)


def party_of(info: PeerInfo) -> str:
    """Whom limits per party count a peer as: the address group it connected from, or its
    node id on loopback (where a local network runs all its nodes) or without an address."""
    host = _host_of(info.api)
    return group_of(info.api) if host and _limited_host(host) else info.node_id


def _limited_host(host: str) -> bool:
    """Whether per-address limits apply to ``host``: not to loopback, where a local network
    runs all its nodes."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def _reachable(listen: str, remote_host: str) -> str:
    """A peer listening on every interface announces 0.0.0.0; dial it where it came from."""
    if not listen:
        return ""
    host, port = split_address(listen)
    if host in ("0.0.0.0", "::") and remote_host:
        return join_address(remote_host, port)
    return listen


def _classify_error(exc: object) -> tuple[str, str] | None:
    """Drop reason for a websocket error, or None when the connection merely broke."""
    if isinstance(exc, aiohttp.WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG:
        return "oversize", str(exc)
    if isinstance(exc, aiohttp.WebSocketError):
        return "malformed", f"broke the websocket protocol: {exc}"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout", "it stopped answering heartbeats"
    return None


def _close_args(conn: _Connection) -> tuple[int, str]:
    """Whichever closes first, the reader or a drop, tells the peer the same thing."""
    if conn.dropped_for:
        return WSCloseCode.POLICY_VIOLATION, conn.dropped_for
    return WSCloseCode.OK, ""


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close politely but never wait long: aiohttp cuts the socket when close() is cancelled,
    so a peer that stopped reading cannot hold us up."""
    with contextlib.suppress(TimeoutError, ConnectionError, aiohttp.ClientError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close(code=code, message=reason.encode())
