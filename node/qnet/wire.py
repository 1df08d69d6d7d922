"""The peer protocol's messages: every message kind, one frozen dataclass and one codec each.

A frame on a link is ``kind:u8 payload``; ``p2p.py`` carries frames (sealed, after the
handshake) and this module says what each kind's payload is. Kinds below FIRST_APP_KIND
belong to the link itself (the handshake and peer exchange, handled in ``p2p.py``); the node
handles the others (``bft.py`` on full and super nodes, ``light.py`` on light nodes).

Every message class has ``KIND``, ``encode() -> bytes`` and ``decode(payload)``, which raises
``ProtocolError`` and nothing else on any malformed payload. Counts and lengths are checked
against their caps before anything is allocated for them (the link already bounds a frame by
``max_message_bytes``). Decoding checks the form only: signatures, certificates and a block's
rules are checked by whoever takes the message in, after the cheap checks (DESIGN §5). The
signed encodings stay with what they sign and the messages here carry them as they are: a
transaction's in ``tx.py`` (with the batch framing that blocks and the HTTP batch endpoint
share), a proposal's and a vote's in ``tendermint.py``, a block's, a header's and a commit
certificate's in ``block.py``.

Payloads, big-endian, ``str8 = len:u8 utf-8``, ``address = str8 "host:port"``::

     0 HELLO       version:u8 chain_id:str8 genesis_hash(32) public_key(32) node_type:str8
                   region:str8 listen:address api_port:u16 ephemeral(32)
     1 AUTH        signature(64)
     2 GET_PEERS   (empty)
     3 PEERS       count:u16 (public_key(32) node_type:str8 region:str8 listen:address)*,
                   count <= MAX_PEER_RECORDS
    16 CONSENSUS   a proposal (carrying the encoded block) or a vote, as signed
    17 TXS         (len:u16 transaction)*, at most TX_BATCH (``tx.frame_batch``)
    18 STATUS      height:u64 certificate: the commit certificate of that height (none at 0)
    19 GET_BLOCKS  first:u64 last:u64
    20 BLOCKS      (block_len:u32 block cert_len:u32 certificate)*, at most MAX_BLOCKS pairs
    21 PING        token:u64, answered by
    22 PONG        the same token
    23 HEADERS     (header_len:u32 header cert_len:u32 certificate)*, at most MAX_BLOCKS pairs
    24 GET_HEADERS first:u64 last:u64
    25 GET_NODE    public_key(32): a light node asks what it needs for its heartbeat
    26 NODE        public_key(32) activated:u8 last_epoch:u64 nonce:u64 pending:u32 epoch:u64
                   (last_epoch ``ledger.NEVER``: none yet)

When each kind is sent and what a node does with it: ``p2p.py`` (0-3); ``bft.py``, ``sync.py``
and ``gossip.py`` (16-26) on full and super nodes, ``light.py`` on light nodes.

``check_block_size`` is the cheap check of an encoded block a peer sends (in a proposal or in
BLOCKS) against the genesis limits: on its header, before the block is decoded.
"""

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Self

from . import crypto, ledger, tendermint, tx
from .block import Block, BlockError, CommitCertificate, Header
from .genesis import NODE_TYPES, REGIONS

KIND_HELLO = 0
KIND_AUTH = 1
KIND_GET_PEERS = 2
KIND_PEERS = 3
FIRST_APP_KIND = 16  # kinds below this are the link's own
KIND_CONSENSUS = 16
KIND_TXS = 17
KIND_STATUS = 18
KIND_GET_BLOCKS = 19
KIND_BLOCKS = 20
KIND_PING = 21
KIND_PONG = 22
KIND_HEADERS = 23
KIND_GET_HEADERS = 24
KIND_GET_NODE = 25
KIND_NODE = 26
KIND_NAMES = {
    KIND_HELLO: "HELLO",
    KIND_AUTH: "AUTH",
    KIND_GET_PEERS: "GET_PEERS",
    KIND_PEERS: "PEERS",
    KIND_CONSENSUS: "CONSENSUS",
    KIND_TXS: "TXS",
    KIND_STATUS: "STATUS",
    KIND_GET_BLOCKS: "GET_BLOCKS",
    KIND_BLOCKS: "BLOCKS",
    KIND_PING: "PING",
    KIND_PONG: "PONG",
    KIND_HEADERS: "HEADERS",
    KIND_GET_HEADERS: "GET_HEADERS",
    KIND_GET_NODE: "GET_NODE",
    KIND_NODE: "NODE",
}

EPHEMERAL_LEN = 32  # an X25519 public key
SIGNATURE_LEN = 64
MAX_PEER_RECORDS = 100  # per PEERS frame
TX_BATCH = 5_000  # transactions per TXS frame, sent and accepted
MAX_FRAMED_TX = len(tx.frame_batch([bytes(tx.MAX_TX_BYTES)]))  # the most one takes in a batch
MAX_BLOCKS = 64  # (block or header, certificate) pairs per BLOCKS or HEADERS frame

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_LEN = struct.Struct(">I")
_RANGE = struct.Struct(">QQ")


class ProtocolError(ValueError):
    """Bytes that are not a well-formed frame of this protocol."""


class Reader:
    """Reads fields off a frame payload; any shortfall or leftover is a ProtocolError."""

    def __init__(self, data: bytes):
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise ProtocolError("frame is truncated")
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def text(self) -> str:
        (length,) = self.unpack(_U8)
        try:
            return self.take(length).decode()
        except UnicodeDecodeError:
            raise ProtocolError("text field is not UTF-8") from None

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._at)

    def at_end(self) -> bool:
        return self._at == len(self._data)

    def end(self) -> None:
        if not self.at_end():
            raise ProtocolError("frame has trailing bytes")


def _text(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:20]!r}... is longer than 255 bytes")
    return _U8.pack(len(raw)) + raw


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError if it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_identity(public_key: bytes, node_type: str, region: str, listen: str) -> None:
    if len(public_key) != crypto.PUBKEY_LEN:
        raise ProtocolError("public key must be 32 bytes")
    if node_type not in NODE_TYPES:
        raise ProtocolError(f"unknown node type {node_type!r}")
    if region not in REGIONS:
        raise ProtocolError(f"unknown region {region!r}")
    if listen:
        try:
            split_address(listen)
        except ValueError as exc:
            raise ProtocolError(f"listen address: {exc}") from None


def _public_key(data: bytes, what: str) -> bytes:
    if len(data) != crypto.PUBKEY_LEN:
        raise ProtocolError(f"{what} carries a {crypto.PUBKEY_LEN}-byte public key")
    return bytes(data)


def check_block_size(value: bytes, limits: ledger.BlockLimits) -> Header:
    """The header of an encoded block that keeps to the genesis limits (``BlockLimits``: at
    most ``max_block_txs`` transactions and ``max_block_bytes`` of them) and holds no more
    bytes than its transactions can take. Cheap (the header only), so it runs before
    anything stores, relays or decodes the block; raises BlockError."""
    header = Block.decode_header(value)
    body = len(value) - len(Block.encode_parts(header.encode(), bytes(64), b""))
    if not limits.fits(header.tx_count, body):
        raise BlockError(
            f"block {header.height} holds {header.tx_count} transactions of {body} bytes, "
            f"beyond the genesis limits ({limits.max_txs} transactions, {limits.max_bytes} bytes)"
        )
    if body > header.tx_count * MAX_FRAMED_TX:
        raise BlockError(
            f"block {header.height} has {body} bytes of transactions, more than its "
            f"{header.tx_count} transactions can take"
        )
    return header


# ---- the link's own: handshake and peer exchange (p2p.py) ----------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    """0 HELLO: who the sender is and the ephemeral key of this connection (in the clear)."""

    KIND: ClassVar[int] = KIND_HELLO

    version: int
    chain_id: str
    genesis_hash: bytes
    public_key: bytes
    node_type: str
    region: str
    listen: str
    api_port: int
    ephemeral: bytes  # X25519 public key of this connection

    def encode(self) -> bytes:
        return b"".join(
            (
                _U8.pack(self.version),
                _text(self.chain_id),
                self.genesis_hash,
                self.public_key,
                _text(self.node_type),
                _text(self.region),
                _text(self.listen),
                _U16.pack(self.api_port),
                self.ephemeral,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> "Hello":
        r = Reader(data)
        (version,) = r.unpack(_U8)
        hello = cls(
            version,
            r.text(),
            r.take(32),
            r.take(crypto.PUBKEY_LEN),
            r.text(),
            r.text(),
            r.text(),
            r.unpack(_U16)[0],
            r.take(EPHEMERAL_LEN),
        )
        r.end()
        check_identity(hello.public_key, hello.node_type, hello.region, hello.listen)
        return hello


@dataclass(frozen=True, slots=True)
class Auth:
    """1 AUTH: the node key's signature over ``p2p.auth_message`` (the first sealed frame)."""

    KIND: ClassVar[int] = KIND_AUTH

    signature: bytes

    def encode(self) -> bytes:
        return self.signature

    @classmethod
    def decode(cls, data: bytes) -> "Auth":
        if len(data) != SIGNATURE_LEN:
            raise ProtocolError(f"AUTH carries a {SIGNATURE_LEN}-byte signature")
        return cls(bytes(data))


@dataclass(frozen=True, slots=True)
class GetPeers:
    """2 GET_PEERS: ask for peers worth dialling (one PEERS answers it)."""

    KIND: ClassVar[int] = KIND_GET_PEERS

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes) -> "GetPeers":
        if data:
            raise ProtocolError("GET_PEERS with a payload")
        return cls()


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer as announced in peer exchange: enough to dial it and to decide whether to."""

    public_key: bytes
    node_type: str
    region: str
    listen: str

    def encode(self) -> bytes:
        return b"".join(
            (self.public_key, _text(self.node_type), _text(self.region), _text(self.listen))
        )


@dataclass(frozen=True, slots=True)
class Peers:
    """3 PEERS: the answer to GET_PEERS, at most MAX_PEER_RECORDS records."""

    KIND: ClassVar[int] = KIND_PEERS

    records: tuple[PeerRecord, ...]

    def encode(self) -> bytes:
        if len(self.records) > MAX_PEER_RECORDS:
            raise ValueError(f"at most {MAX_PEER_RECORDS} peer records fit in one frame")
        return _U16.pack(len(self.records)) + b"".join(r.encode() for r in self.records)

    @classmethod
    def decode(cls, data: bytes) -> "Peers":
        r = Reader(data)
        (count,) = r.unpack(_U16)
        if count > MAX_PEER_RECORDS:
            raise ProtocolError(f"{count} peer records, more than {MAX_PEER_RECORDS}")
        records = []
        for _ in range(count):
            record = PeerRecord(r.take(crypto.PUBKEY_LEN), r.text(), r.text(), r.text())
            check_identity(record.public_key, record.node_type, record.region, record.listen)
            if not record.listen:
                raise ProtocolError("a peer record without a listen address is useless")
            records.append(record)
        r.end()
        return cls(tuple(records))


# ---- the node's: consensus, transactions, sync, light nodes (bft.py, light.py) ------------
@dataclass(frozen=True, slots=True)
class Consensus:
    """16 CONSENSUS: a proposal or a vote in the encoding its signer signed."""

    KIND: ClassVar[int] = KIND_CONSENSUS

    message: tendermint.Message

    def encode(self) -> bytes:
        return self.message.encode()

    @classmethod
    def decode(cls, data: bytes) -> "Consensus":
        try:
            return cls(tendermint.decode_message(data))
        except tendermint.MessageError as exc:
            raise ProtocolError(f"consensus message: {exc}") from None


@dataclass(frozen=True, slots=True)
class Txs:
    """17 TXS: at most TX_BATCH signed transactions, still encoded (admission decodes and
    verifies them)."""

    KIND: ClassVar[int] = KIND_TXS

    raws: tuple[bytes, ...]

    @classmethod
    def of(cls, txs: Iterable[tx.Transaction]) -> "Txs":
        return cls(tuple(t.raw for t in txs))

    def encode(self) -> bytes:
        if len(self.raws) > TX_BATCH:
            raise ValueError(f"at most {TX_BATCH} transactions fit in one frame")
        return tx.frame_batch(list(self.raws))

    @classmethod
    def decode(cls, data: bytes) -> "Txs":
        if len(data) > TX_BATCH * MAX_FRAMED_TX:
            raise ProtocolError(f"a {len(data)}-byte TXS frame: no batch is as big")
        try:
            raws = tx.split_batch(data, TX_BATCH)
        except tx.DecodeError as exc:
            raise ProtocolError(f"TXS: {exc}") from None
        return cls(tuple(raws))


@dataclass(frozen=True, slots=True)
class Status:
    """18 STATUS: a height and the commit certificate that proves it (none at height 0),
    sent on connect, after every commit and periodically. The certificate is decoded and
    verified only when the height matters (``sync.PeerStats.on_status``)."""

    KIND: ClassVar[int] = KIND_STATUS

    height: int
    certificate: bytes

    def encode(self) -> bytes:
        return _U64.pack(self.height) + self.certificate

    @classmethod
    def decode(cls, data: bytes) -> "Status":
        r = Reader(data)
        (height,) = r.unpack(_U64)
        return cls(height, r.rest())


@dataclass(frozen=True, slots=True)
class _Range:
    first: int
    last: int

    def encode(self) -> bytes:
        return _RANGE.pack(self.first, self.last)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        first, last = r.unpack(_RANGE)
        r.end()
        return cls(first, last)


@dataclass(frozen=True, slots=True)
class GetBlocks(_Range):
    """19 GET_BLOCKS: the blocks of heights first..last, with their certificates."""

    KIND: ClassVar[int] = KIND_GET_BLOCKS


@dataclass(frozen=True, slots=True)
class GetHeaders(_Range):
    """24 GET_HEADERS: the headers of heights first..last, with their certificates."""

    KIND: ClassVar[int] = KIND_GET_HEADERS


@dataclass(frozen=True, slots=True)
class _Pairs:
    """(block or header, certificate) pairs, still encoded: a node checks the cheap parts
    (heights, sizes) before it decodes them."""

    items: tuple[tuple[bytes, bytes], ...]

    def encode(self) -> bytes:
        return b"".join(_LEN.pack(len(b)) + b + _LEN.pack(len(c)) + c for b, c in self.items)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        items = []
        while not r.at_end():
            if len(items) == MAX_BLOCKS:
                raise ProtocolError(f"more than {MAX_BLOCKS} blocks in one message")
            first = r.take(r.unpack(_LEN)[0])
            items.append((first, r.take(r.unpack(_LEN)[0])))
        return cls(tuple(items))


def _certified(decode_first, items: tuple[tuple[bytes, bytes], ...]) -> list:
    try:
        return [(decode_first(b), CommitCertificate.decode(c)) for b, c in items]
    except BlockError as exc:
        raise ProtocolError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Blocks(_Pairs):
    """20 BLOCKS: the answer to GET_BLOCKS, or one committed block pushed to a follower."""

    KIND: ClassVar[int] = KIND_BLOCKS

    def blocks(self) -> list[tuple[Block, CommitCertificate]]:
        """The blocks and certificates decoded (not verified); ProtocolError if malformed."""
        return _certified(Block.decode, self.items)


@dataclass(frozen=True, slots=True)
class Headers(_Pairs):
    """23 HEADERS: the answer to GET_HEADERS, or a committed header pushed to a light node."""

    KIND: ClassVar[int] = KIND_HEADERS

    def headers(self) -> list[tuple[Header, CommitCertificate]]:
        """The headers and certificates decoded (not verified); ProtocolError if malformed."""
        return _certified(Header.decode, self.items)


@dataclass(frozen=True, slots=True)
class _Token:
    token: int

    def encode(self) -> bytes:
        return _U64.pack(self.token)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        (token,) = r.unpack(_U64)
        r.end()
        return cls(token)


@dataclass(frozen=True, slots=True)
class Ping(_Token):
    """21 PING: a token (the sender's clock), answered by PONG with the same token."""

    KIND: ClassVar[int] = KIND_PING


@dataclass(frozen=True, slots=True)
class Pong(_Token):
    """22 PONG: the token of the PING it answers: the round trip of ``network peers``."""

    KIND: ClassVar[int] = KIND_PONG


@dataclass(frozen=True, slots=True)
class GetNode:
    """25 GET_NODE: a light node asks what it needs to send its heartbeat."""

    KIND: ClassVar[int] = KIND_GET_NODE

    public_key: bytes

    def encode(self) -> bytes:
        return self.public_key

    @classmethod
    def decode(cls, data: bytes) -> "GetNode":
        return cls(_public_key(data, "GET_NODE"))


@dataclass(frozen=True, slots=True)
class HeartbeatView:
    """What a node needs to know to send its heartbeat, as a node with state sees it; a
    light node asks a full one for it (GET_NODE, answered by NODE)."""

    activated: bool
    last_epoch: int | None  # of its latest heartbeat on chain
    nonce: int  # next nonce of the node key's account, pending transactions included
    pending: int  # transactions of the node key's account waiting in the mempool
    epoch: int  # the epoch the next block will be in

    _WIRE: ClassVar[struct.Struct] = struct.Struct(">BQQIQ")

    def due(self) -> int | None:
        """The epoch to send a heartbeat for now, or None (not activated, on chain, or one
        is pending)."""
        if not self.activated or self.last_epoch == self.epoch or self.pending:
            return None
        return self.epoch

    def encode(self) -> bytes:
        last = ledger.NEVER if self.last_epoch is None else self.last_epoch
        return self._WIRE.pack(self.activated, last, self.nonce, self.pending, self.epoch)

    @classmethod
    def decode(cls, data: bytes) -> "HeartbeatView":
        r = Reader(data)
        activated, last, nonce, pending, epoch = r.unpack(cls._WIRE)
        r.end()
        return cls(bool(activated), None if last == ledger.NEVER else last, nonce, pending, epoch)


@dataclass(frozen=True, slots=True)
class NodeView:
    """26 NODE: the answer to GET_NODE, the key it asked about and what the chain knows."""

    KIND: ClassVar[int] = KIND_NODE

    public_key: bytes
    view: HeartbeatView

    def encode(self) -> bytes:
        return self.public_key + self.view.encode()

    @classmethod
    def decode(cls, data: bytes) -> "NodeView":
        r = Reader(data)
        public_key = r.take(crypto.PUBKEY_LEN)
        return cls(public_key, HeartbeatView.decode(r.rest()))


Message = (
    Hello
    | Auth
    | GetPeers
    | Peers
    | Consensus
    | Txs
    | Status
    | GetBlocks
    | Blocks
    | Ping
    | Pong
    | Headers
    | GetHeaders
    | GetNode
    | NodeView
)
# The codec of each kind.
MESSAGES: dict[int, type[Message]] = {cls.KIND: cls for cls in Message.__args__}
