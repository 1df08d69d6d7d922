"""Transactions: one canonical byte encoding per kind, signed by the sender's Ed25519 key.

    raw  = signature(64) || body
    body = version:u8 kind:u8 chain_id_len:u8 chain_id sender_public_key(32)
           nonce:u64 fee:u64 payload

    kind 1 transfer   payload = recipient_address(20) amount:u64
    kind 2 activate   payload = node_key(32) node_type:u8 region:u8 amount:u64 node_proof(64)
    kind 3 heartbeat  payload = epoch:u64
    kind 4 claim      payload = node_key(32)

All integers are big-endian. The signature covers ``signing_message``: ``body`` tagged with
the network (``crypto.tagged``: chain id and genesis hash), so a transaction signed for one
network never verifies on another that shares its chain id and keys. The genesis hash is not
in ``raw``: the verifier supplies its own. The transaction id is the BLAKE2b-256 hash of
``raw``. Batches for load generators are frames of ``length:u16 raw``.

``activate`` is signed by the owner wallet and burns ``amount``, which must be the activation
fee of ``node_type`` (codes index ``genesis.NODE_TYPES`` and ``genesis.REGIONS``). Its
``node_proof`` is the node key's signature over ``node_proof_message``: tagged, bound to the
network and to the owner, so nobody registers a node whose key they do not hold and a proof
cannot be reused for another owner or network. ``heartbeat`` is signed by the node key
itself, uses the nonce of the node key's own account and is free (its fee must be 0): the
ledger admits one per activated node and epoch. ``claim`` is signed by the owner wallet.
"""

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import crypto
from .amounts import MAX_AMOUNT, AmountError, parse_units
from .genesis import NODE_TYPES, REGIONS

VERSION = 1
KIND_TRANSFER = 1
KIND_ACTIVATE = 2
KIND_HEARTBEAT = 3
KIND_CLAIM = 4
KIND_NAMES = {
    KIND_TRANSFER: "transfer",
    KIND_ACTIVATE: "activate",
    KIND_HEARTBEAT: "heartbeat",
    KIND_CLAIM: "claim",
}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
# Signed-message tags: block.py and tendermint.py 0x2x, p2p.py 0x30, these 0x4x.
TAG_NODE_PROOF = 0x40
TAG_TRANSACTION = 0x41
MAX_CHAIN_ID_LEN = 64
MAX_TX_BYTES = 1024
# A heartbeat ranks above every fee in the mempool: it is free, valid once per node and
# epoch, and worthless once its epoch is over, so it must not wait behind paying traffic.
# It ranks so only within a bounded share of each mempool shard and of each block
# (``mempool.HEARTBEAT_SHARE_PERCENT``).
HEARTBEAT_PRIORITY = MAX_AMOUNT + 1

_HEAD = struct.Struct(">BBB")
_COMMON = struct.Struct(">32sQQ")
_FRAME = struct.Struct(">H")
_HEX = re.compile(r"[0-9a-fA-F]*")
_COMMON_JSON = ("kind", "chain_id", "public_key", "nonce", "fee", "signature")


class DecodeError(ValueError):
    """The bytes or JSON are not a well-formed transaction."""


@dataclass(slots=True, eq=False)
class Transaction:
    kind: int
    chain_id: str
    public_key: bytes
    nonce: int
    fee: int
    signature: bytes
    body: bytes
    raw: bytes
    id: bytes
    sender: bytes
    # Fields of the kind's payload (see the module docstring); other kinds leave them empty.
    to: bytes = b""
    amount: int = 0  # transfer: moved to ``to``; activate: burned
    node_key: bytes = b""  # the node an activate, heartbeat (its signer) or claim is about
    node_type: str = ""
    region: str = ""
    node_proof: bytes = b""
    epoch: int = 0

    @property
    def cost(self) -> int:
        """What the sender's balance must cover."""
        return self.amount + self.fee

    @property
    def priority(self) -> int:
        return HEARTBEAT_PRIORITY if self.kind == KIND_HEARTBEAT else self.fee

    def verify_signature(self, network: crypto.Network) -> bool:
        """The sender's signature and, for an activation, the node key's proof, as made for
        ``network`` (the verifier's own; a transaction signed for another never verifies)."""
        if not crypto.verify(self.public_key, self.signature, signing_message(network, self.body)):
            return False
        if self.kind != KIND_ACTIVATE:
            return True
        message = node_proof_message(network, self.sender, self.node_key)
        return crypto.verify(self.node_key, self.node_proof, message)

    def to_json(self) -> dict:
        return {
            "id": self.id.hex(),
            "kind": KIND_NAMES[self.kind],
            "chain_id": self.chain_id,
            "from": crypto.encode_address(self.sender),
            "public_key": self.public_key.hex(),
            "nonce": self.nonce,
            "fee": str(self.fee),
            **KINDS[self.kind].to_json(self),
            "signature": self.signature.hex(),
        }


def signing_message(network: crypto.Network, body: bytes) -> bytes:
    """What the sender signs: the body, tagged with the network it is for."""
    return crypto.tagged(TAG_TRANSACTION, network, body)


def node_proof_message(network: crypto.Network, owner: bytes, node_key: bytes) -> bytes:
    """What a node key signs to let ``owner`` (an address) activate it on ``network``."""
    return crypto.tagged(TAG_NODE_PROOF, network, owner + node_key)


def prove_node(node: crypto.KeyPair, network: crypto.Network, owner: bytes) -> bytes:
    return node.sign(node_proof_message(network, owner, node.public_key))


# ---- one codec per kind: payload bytes, JSON fields, structural checks --------------------


def _hex_field(obj: dict, field: str, length: int) -> bytes:
    value = obj.get(field)
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise DecodeError(f"{field} must be a string of hex digits")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise DecodeError(f"{field} is not valid hex") from None
    if len(data) != length:
        raise DecodeError(f"{field} must be {length} bytes")
    return data


def _units_field(obj: dict, field: str) -> int:
    try:
        return parse_units(obj[field], field)
    except AmountError as exc:
        raise DecodeError(str(exc)) from None


def _node_id_field(obj: dict) -> bytes:
    try:
        return crypto.decode_node_id(obj["node_id"])
    except crypto.EncodingError as exc:
        raise DecodeError(str(exc)) from None


def _choice_field(obj: dict, field: str, choices: tuple[str, ...]) -> str:
    value = obj[field]
    if value not in choices:
        raise DecodeError(f"{field} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _u64_field(obj: dict, field: str) -> int:
    value = obj[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{field} must be an integer")
    return value


class _Transfer:
    layout = struct.Struct(">20sQ")
    json_fields = ("to", "amount")

    @staticmethod
    def pack(p: dict) -> bytes:
        return _Transfer.layout.pack(p["to"], p["amount"])

    @staticmethod
    def unpack(fields: tuple) -> dict:
        to, amount = fields
        return {"to": to, "amount": amount}

    @staticmethod
    def check(p: dict, fee: int) -> None:
        if not 0 < p["amount"] <= MAX_AMOUNT:
            raise DecodeError("amount must be positive and fit an unsigned 64-bit integer")

    @staticmethod
    def to_json(t: Transaction) -> dict:
        return {"to": crypto.encode_address(t.to), "amount": str(t.amount)}

    @staticmethod
    def from_json(obj: dict) -> dict:
        try:
            to = crypto.decode_address(obj["to"])
        except crypto.EncodingError as exc:
            raise DecodeError(str(exc)) from None
        amount = _units_field(obj, "amount")
        if amount == 0:
            raise DecodeError("amount must be positive")
        return {"to": to, "amount": amount}


class _Activate:
    layout = struct.Struct(">32sBBQ64s")
    json_fields = ("node_id", "node_type", "region", "amount", "node_proof")

    @staticmethod
    def pack(p: dict) -> bytes:
        return _Activate.layout.pack(
            p["node_key"],
            NODE_TYPES.index(p["node_type"]),
            REGIONS.index(p["region"]),
            p["amount"],
            p["node_proof"],
        )

    @staticmethod
    def unpack(fields: tuple) -> dict:
        node_key, type_code, region_code, amount, node_proof = fields
        if type_code >= len(NODE_TYPES):
            raise DecodeError(f"unknown node type code {type_code}")
        if region_code >= len(REGIONS):
            raise DecodeError(f"unknown region code {region_code}")
        return {
            "node_key": node_key,
            "node_type": NODE_TYPES[type_code],
            "region": REGIONS[region_code],
            "amount": amount,
            "node_proof": node_proof,
        }

    @staticmethod
    def check(p: dict, fee: int) -> None:
        if p["node_type"] not in NODE_TYPES:
            raise DecodeError(f"node type must be one of {', '.join(NODE_TYPES)}")
        if p["region"] not in REGIONS:
            raise DecodeError(f"region must be one of {', '.join(REGIONS)}")
        if not 0 <= p["amount"] <= MAX_AMOUNT:
            raise DecodeError("amount must fit an unsigned 64-bit integer")
        if len(p["node_key"]) != crypto.PUBKEY_LEN or len(p["node_proof"]) != 64:
            raise DecodeError("node key must be 32 bytes and node proof 64 bytes")

    @staticmethod
    def to_json(t: Transaction) -> dict:
        return {
            "node_id": crypto.encode_node_id(t.node_key),
            "node_type": t.node_type,
            "region": t.region,
            "amount": str(t.amount),
            "node_proof": t.node_proof.hex(),
        }

    @staticmethod
    def from_json(obj: dict) -> dict:
        return {
            "node_key": _node_id_field(obj),
            "node_type": _choice_field(obj, "node_type", NODE_TYPES),
            "region": _choice_field(obj, "region", REGIONS),
            "amount": _units_field(obj, "amount"),
            "node_proof": _hex_field(obj, "node_proof", crypto.SIGNATURE_LEN),
        }


class _Heartbeat:
    layout = struct.Struct(">Q")
    json_fields = ("epoch",)

    @staticmethod
    def pack(p: dict) -> bytes:
        return _Heartbeat.layout.pack(p["epoch"])

    @staticmethod
    def unpack(fields: tuple) -> dict:
        return {"epoch": fields[0]}

    @staticmethod
    def check(p: dict, fee: int) -> None:
        if fee != 0:
            raise DecodeError("a heartbeat is free: its fee must be 0")
        if not 0 <= p["epoch"] <= MAX_AMOUNT:
            raise DecodeError("epoch must be an unsigned 64-bit integer")

    @staticmethod
    def to_json(t: Transaction) -> dict:
        return {"epoch": t.epoch}

    @staticmethod
    def from_json(obj: dict) -> dict:
        return {"epoch": _u64_field(obj, "epoch")}


class _Claim:
    layout = struct.Struct(">32s")
    json_fields = ("node_id",)

    @staticmethod
    def pack(p: dict) -> bytes:
        return _Claim.layout.pack(p["node_key"])

    @staticmethod
    def unpack(fields: tuple) -> dict:
        return {"node_key": fields[0]}

    @staticmethod
    def check(p: dict, fee: int) -> None:
        if len(p["node_key"]) != crypto.PUBKEY_LEN:
            raise DecodeError("node key must be 32 bytes")

    @staticmethod
    def to_json(t: Transaction) -> dict:
        return {"node_id": crypto.encode_node_id(t.node_key)}

    @staticmethod
    def from_json(obj: dict) -> dict:
        return {"node_key": _node_id_field(obj)}


KINDS = {
    KIND_TRANSFER: _Transfer,
    KIND_ACTIVATE: _Activate,
    KIND_HEARTBEAT: _Heartbeat,
    KIND_CLAIM: _Claim,
}


# ---- building, encoding, decoding --------------------------------------------------------


def encode_body(
    kind: int, chain_id: str, public_key: bytes, nonce: int, fee: int, payload: dict
) -> bytes:
    cid = chain_id.encode()
    return b"".join(
        (
            _HEAD.pack(VERSION, kind, len(cid)),
            cid,
            _COMMON.pack(public_key, nonce, fee),
            KINDS[kind].pack(payload),
        )
    )


def check_fields(kind: int, chain_id: str, nonce: int, fee: int, payload: dict) -> None:
    try:
        cid_len = len(chain_id.encode())
    except UnicodeEncodeError:
        raise DecodeError("chain id is not valid Unicode text") from None
    if not 0 < cid_len <= MAX_CHAIN_ID_LEN:
        raise DecodeError(f"chain id must be 1..{MAX_CHAIN_ID_LEN} bytes")
    if not 0 <= nonce <= MAX_AMOUNT:
        raise DecodeError("nonce must be an unsigned 64-bit integer")
    if not 0 <= fee <= MAX_AMOUNT:
        raise DecodeError("fee must be an unsigned 64-bit integer")
    KINDS[kind].check(payload, fee)


def _finish(
    head: tuple[int, str, bytes, int, int], payload: dict, body: bytes, signature: bytes
) -> Transaction:
    kind, chain_id, public_key, nonce, fee = head
    raw = signature + body
    if kind == KIND_HEARTBEAT:
        payload = {**payload, "node_key": public_key}
    return Transaction(
        kind,
        chain_id,
        public_key,
        nonce,
        fee,
        signature,
        body,
        raw,
        crypto.digest(raw),
        crypto.address_bytes(public_key),
        **payload,
    )


def _sign(
    key: crypto.KeyPair,
    kind: int,
    network: crypto.Network,
    nonce: int,
    fee: int,
    payload: dict,
) -> Transaction:
    chain_id = network.chain_id
    check_fields(kind, chain_id, nonce, fee, payload)
    body = encode_body(kind, chain_id, key.public_key, nonce, fee, payload)
    signature = key.sign(signing_message(network, body))
    return _finish((kind, chain_id, key.public_key, nonce, fee), payload, body, signature)


def make_transfer(
    key: crypto.KeyPair, network: crypto.Network, nonce: int, fee: int, to: bytes, amount: int
) -> Transaction:
    return _sign(key, KIND_TRANSFER, network, nonce, fee, {"to": to, "amount": amount})


def make_activate(
    owner: crypto.KeyPair,
    network: crypto.Network,
    nonce: int,
    fee: int,
    node_key: bytes,
    node_type: str,
    region: str,
    amount: int,
    node_proof: bytes,
) -> Transaction:
    """``node_proof`` comes from ``prove_node`` run with the node key for ``network``."""
    payload = {
        "node_key": node_key,
        "node_type": node_type,
        "region": region,
        "amount": amount,
        "node_proof": node_proof,
    }
    return _sign(owner, KIND_ACTIVATE, network, nonce, fee, payload)


def make_heartbeat(
    node: crypto.KeyPair, network: crypto.Network, nonce: int, epoch: int
) -> Transaction:
    return _sign(node, KIND_HEARTBEAT, network, nonce, 0, {"epoch": epoch})


def make_claim(
    owner: crypto.KeyPair, network: crypto.Network, nonce: int, fee: int, node_key: bytes
) -> Transaction:
    return _sign(owner, KIND_CLAIM, network, nonce, fee, {"node_key": node_key})


def decode(raw: bytes) -> Transaction:
    """Parse canonical bytes; refuses anything that is not exactly one transaction."""
    if len(raw) > MAX_TX_BYTES:
        raise DecodeError(f"transaction larger than {MAX_TX_BYTES} bytes")
    sig_end = crypto.SIGNATURE_LEN
    if len(raw) < sig_end + _HEAD.size:
        raise DecodeError("transaction truncated")
    version, kind, cid_len = _HEAD.unpack_from(raw, sig_end)
    if version != VERSION:
        raise DecodeError(f"unsupported transaction version {version}")
    if kind not in KIND_NAMES:
        raise DecodeError(f"unknown transaction kind {kind}")
    codec = KINDS[kind]
    pos = sig_end + _HEAD.size
    expected = pos + cid_len + _COMMON.size + codec.layout.size
    if len(raw) != expected:
        raise DecodeError(f"transaction is {len(raw)} bytes, expected {expected}")
    try:
        chain_id = raw[pos : pos + cid_len].decode()
    except UnicodeDecodeError:
        raise DecodeError("chain id is not UTF-8") from None
    pos += cid_len
    public_key, nonce, fee = _COMMON.unpack_from(raw, pos)
    payload = codec.unpack(codec.layout.unpack_from(raw, pos + _COMMON.size))
    check_fields(kind, chain_id, nonce, fee, payload)
    head = (kind, chain_id, public_key, nonce, fee)
    return _finish(head, payload, raw[sig_end:], raw[:sig_end])


def _json_kind(obj: dict) -> int:
    missing = [f for f in _COMMON_JSON if f not in obj]
    if missing:
        raise DecodeError(f"missing field(s): {', '.join(missing)}")
    kind = KIND_CODES.get(obj["kind"]) if isinstance(obj["kind"], str) else None
    if kind is None:
        raise DecodeError(f"unknown transaction kind {obj['kind']!r}")
    return kind


def from_json(obj: object) -> Transaction:
    """Build a transaction from its JSON form; the signature is checked later, not here."""
    if not isinstance(obj, dict):
        raise DecodeError("transaction must be a JSON object")
    kind = _json_kind(obj)
    codec = KINDS[kind]
    required = {*_COMMON_JSON, *codec.json_fields}
    missing = sorted(required - obj.keys())
    if missing:
        raise DecodeError(f"missing field(s): {', '.join(missing)} (a {KIND_NAMES[kind]} has them)")
    unknown = sorted(obj.keys() - required - {"id", "from"})
    if unknown:
        raise DecodeError(f"unknown field(s): {', '.join(unknown)} (not in a {KIND_NAMES[kind]})")
    chain_id = obj["chain_id"]
    if not isinstance(chain_id, str):
        raise DecodeError("chain_id must be a string")
    nonce = _u64_field(obj, "nonce")
    fee = _units_field(obj, "fee")
    payload = codec.from_json(obj)
    public_key = _hex_field(obj, "public_key", crypto.PUBKEY_LEN)
    signature = _hex_field(obj, "signature", crypto.SIGNATURE_LEN)
    check_fields(kind, chain_id, nonce, fee, payload)
    body = encode_body(kind, chain_id, public_key, nonce, fee, payload)
    tx = _finish((kind, chain_id, public_key, nonce, fee), payload, body, signature)
    if "id" in obj and obj["id"] != tx.id.hex():
        raise DecodeError("id does not match the transaction's contents")
    if "from" in obj and obj["from"] != crypto.encode_address(tx.sender):
        raise DecodeError("from is not the address of public_key")
    return tx


def encode_batch(txs: list[Transaction]) -> bytes:
    return frame_batch([t.raw for t in txs])


def framed_size(t: Transaction) -> int:
    """What ``t`` adds to a batch body: ``len(encode_batch(txs)) == sum(map(framed_size, txs))``."""
    return _FRAME.size + len(t.raw)


def frame_batch(raws: list[bytes]) -> bytes:
    """A batch body of transactions already encoded (``split_batch`` cuts it again)."""
    return b"".join(_FRAME.pack(len(raw)) + raw for raw in raws)


def read_frame(read: Callable[[int], bytes]) -> bytes:
    """The raw transaction of the batch frame that ``read`` (a file's or SQLite blob's read,
    at the frame's first byte) returns next."""
    (length,) = _FRAME.unpack(read(_FRAME.size))
    return read(length)


def split_batch(data: bytes, limit: int | None = None) -> list[bytes]:
    """Cut a batch body into raw transactions; refuses the whole body if framing is broken
    or, given a ``limit``, it holds more transactions (counted before they are cut out)."""
    frames = []
    pos, end = 0, len(data)
    while pos < end:
        if len(frames) == limit:
            raise DecodeError(f"batch holds over {limit} transactions")
        if pos + _FRAME.size > end:
            raise DecodeError(f"batch truncated in the length prefix at byte {pos}")
        (length,) = _FRAME.unpack_from(data, pos)
        pos += _FRAME.size
        if length == 0 or pos + length > end:
            raise DecodeError(f"batch frame at byte {pos - _FRAME.size} is empty or truncated")
        frames.append(data[pos : pos + length])
        pos += length
    return frames
