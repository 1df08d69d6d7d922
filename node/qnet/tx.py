"""Transactions: one canonical byte encoding, signed by the sender's Ed25519 key.

    raw  = signature(64) || body
    body = version:u8 kind:u8 chain_id_len:u8 chain_id sender_public_key(32)
           nonce:u64 fee:u64 payload
    transfer payload = recipient_address(20) amount:u64

All integers are big-endian. The signature covers ``body``; the transaction id is the
BLAKE2b-256 hash of ``raw``. Batches for load generators are frames of ``length:u16 raw``.
"""

import re
import struct
from dataclasses import dataclass

from . import crypto
from .amounts import MAX_AMOUNT, AmountError, parse_units

VERSION = 1
KIND_TRANSFER = 1
KIND_NAMES = {KIND_TRANSFER: "transfer"}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
MAX_CHAIN_ID_LEN = 64
MAX_TX_BYTES = 1024

_HEAD = struct.Struct(">BBB")
_COMMON = struct.Struct(">32sQQ")
_TRANSFER = struct.Struct(">20sQ")
_FRAME = struct.Struct(">H")
_HEX = re.compile(r"[0-9a-fA-F]*")


class DecodeError(ValueError):
    """The bytes or JSON are not a well-formed transaction."""


@dataclass(slots=True, eq=False)
class Transaction:
    kind: int
    chain_id: str
    public_key: bytes
    nonce: int
    fee: int
    to: bytes
    amount: int
    signature: bytes
    body: bytes
    raw: bytes
    id: bytes
    sender: bytes

    @property
    def cost(self) -> int:
        return self.amount + self.fee

    def verify_signature(self) -> bool:
        return crypto.verify(self.public_key, self.signature, self.body)

    def to_json(self) -> dict:
        return {
            "id": self.id.hex(),
            "kind": KIND_NAMES[self.kind],
            "chain_id": self.chain_id,
            "from": crypto.encode_address(self.sender),
            "public_key": self.public_key.hex(),
            "nonce": self.nonce,
            "fee": str(self.fee),
            "to": crypto.encode_address(self.to),
            "amount": str(self.amount),
            "signature": self.signature.hex(),
        }


def encode_body(
    kind: int, chain_id: str, public_key: bytes, nonce: int, fee: int, to: bytes, amount: int
) -> bytes:
    cid = chain_id.encode()
    return b"".join(
        (
            _HEAD.pack(VERSION, kind, len(cid)),
            cid,
            _COMMON.pack(public_key, nonce, fee),
            _TRANSFER.pack(to, amount),
        )
    )


def _finish(fields: tuple, body: bytes, signature: bytes) -> Transaction:
    kind, chain_id, public_key, nonce, fee, to, amount = fields
    raw = signature + body
    return Transaction(
        kind,
        chain_id,
        public_key,
        nonce,
        fee,
        to,
        amount,
        signature,
        body,
        raw,
        crypto.digest(raw),
        crypto.address_bytes(public_key),
    )


def make_transfer(
    key: crypto.KeyPair, chain_id: str, nonce: int, fee: int, to: bytes, amount: int
) -> Transaction:
    check_fields(chain_id, nonce, fee, amount)
    body = encode_body(KIND_TRANSFER, chain_id, key.public_key, nonce, fee, to, amount)
    fields = (KIND_TRANSFER, chain_id, key.public_key, nonce, fee, to, amount)
    return _finish(fields, body, key.sign(body))


def check_fields(chain_id: str, nonce: int, fee: int, amount: int) -> None:
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
    if not 0 < amount <= MAX_AMOUNT:
        raise DecodeError("amount must be positive and fit an unsigned 64-bit integer")


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
    pos = sig_end + _HEAD.size
    expected = pos + cid_len + _COMMON.size + _TRANSFER.size
    if len(raw) != expected:
        raise DecodeError(f"transaction is {len(raw)} bytes, expected {expected}")
    try:
        chain_id = raw[pos : pos + cid_len].decode()
    except UnicodeDecodeError:
        raise DecodeError("chain id is not UTF-8") from None
    pos += cid_len
    public_key, nonce, fee = _COMMON.unpack_from(raw, pos)
    to, amount = _TRANSFER.unpack_from(raw, pos + _COMMON.size)
    check_fields(chain_id, nonce, fee, amount)
    fields = (kind, chain_id, public_key, nonce, fee, to, amount)
    return _finish(fields, raw[sig_end:], raw[:sig_end])


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


def from_json(obj: object) -> Transaction:
    """Build a transaction from its JSON form; the signature is checked later, not here."""
    if not isinstance(obj, dict):
        raise DecodeError("transaction must be a JSON object")
    required = {"kind", "chain_id", "public_key", "nonce", "fee", "to", "amount", "signature"}
    allowed = required | {"id", "from"}
    missing = sorted(required - obj.keys())
    if missing:
        raise DecodeError(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(obj.keys() - allowed)
    if unknown:
        raise DecodeError(f"unknown field(s): {', '.join(unknown)}")
    kind = KIND_CODES.get(obj["kind"]) if isinstance(obj["kind"], str) else None
    if kind is None:
        raise DecodeError(f"unknown transaction kind {obj['kind']!r}")
    chain_id = obj["chain_id"]
    if not isinstance(chain_id, str):
        raise DecodeError("chain_id must be a string")
    nonce = obj["nonce"]
    if not isinstance(nonce, int) or isinstance(nonce, bool):
        raise DecodeError("nonce must be an integer")
    try:
        fee = parse_units(obj["fee"], "fee")
        amount = parse_units(obj["amount"], "amount")
        to = crypto.decode_address(obj["to"])
    except (AmountError, crypto.EncodingError) as exc:
        raise DecodeError(str(exc)) from None
    if amount == 0:
        raise DecodeError("amount must be positive")
    public_key = _hex_field(obj, "public_key", crypto.PUBKEY_LEN)
    signature = _hex_field(obj, "signature", crypto.SIGNATURE_LEN)
    check_fields(chain_id, nonce, fee, amount)
    body = encode_body(kind, chain_id, public_key, nonce, fee, to, amount)
    tx = _finish((kind, chain_id, public_key, nonce, fee, to, amount), body, signature)
    if "id" in obj and obj["id"] != tx.id.hex():
        raise DecodeError("id does not match the transaction's contents")
    if "from" in obj and obj["from"] != crypto.encode_address(tx.sender):
        raise DecodeError("from is not the address of public_key")
    return tx


def encode_batch(txs: list[Transaction]) -> bytes:
    return b"".join(_FRAME.pack(len(t.raw)) + t.raw for t in txs)


def split_batch(data: bytes) -> list[bytes]:
    """Cut a batch body into raw transactions; refuses the whole body if framing is broken."""
    frames = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + _FRAME.size > end:
            raise DecodeError(f"batch truncated in the length prefix at byte {pos}")
        (length,) = _FRAME.unpack_from(data, pos)
        pos += _FRAME.size
        if length == 0 or pos + length > end:
            raise DecodeError(f"batch frame at byte {pos - _FRAME.size} is empty or truncated")
        frames.append(data[pos : pos + length])
        pos += length
    return frames
