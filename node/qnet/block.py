"""Blocks, their headers and commit certificates, each with one encoding.

Every signed message is ``crypto.tagged``: a tag byte, then the network (chain id and
genesis hash), so a signature made for one purpose (a header, a precommit) can never be
replayed as another, nor on another network with the same chain id and validator keys. A
header travels with its chain id but not the genesis hash (``Header.encode``, whose hash is
the block's id); what its proposer signs is ``Header.signing_message``.
"""

import struct
from dataclasses import dataclass

from . import crypto
from .crypto import Network, prefixed, tagged
from .tx import DecodeError, Transaction, decode, encode_batch, split_batch

TAG_HEADER = 0x20
TAG_PRECOMMIT = 0x22
_HEADER = struct.Struct(">QQ32s32sI32s32s")
_VOTE = struct.Struct(">QI32s")
_SIG = struct.Struct(">32s64s")
_BLOCK = struct.Struct(">H64s")


class BlockError(ValueError):
    """A block or certificate that does not verify."""


def tx_root(tx_ids: list[bytes]) -> bytes:
    """Merkle root with RFC 6962 leaf/node prefixes (no duplicated last leaf)."""
    if not tx_ids:
        return crypto.digest(b"")
    level = [crypto.digest(b"\0" + i) for i in tx_ids]
    while len(level) > 1:
        nxt = [crypto.digest(b"\1" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@dataclass(frozen=True, slots=True)
class Header:
    chain_id: str
    height: int
    time_ms: int
    parent: bytes
    tx_root: bytes
    tx_count: int
    state_digest: bytes
    proposer: bytes  # public key

    def _fields(self) -> bytes:
        return _HEADER.pack(
            self.height,
            self.time_ms,
            self.parent,
            self.tx_root,
            self.tx_count,
            self.state_digest,
            self.proposer,
        )

    def encode(self) -> bytes:
        return prefixed(TAG_HEADER, self.chain_id, self._fields())

    def signing_message(self, network: Network) -> bytes:
        """What the proposer signs: the header's fields, tagged with the network."""
        return tagged(TAG_HEADER, network, self._fields())

    @property
    def hash(self) -> bytes:
        return crypto.digest(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        if len(data) < 2 or data[0] != TAG_HEADER:
            raise BlockError("not a block header")
        n = data[1]
        if len(data) != 2 + n + _HEADER.size:
            raise BlockError("block header has the wrong length")
        try:
            chain_id = data[2 : 2 + n].decode()
        except UnicodeDecodeError:
            raise BlockError("block header chain id is not UTF-8") from None
        return cls(chain_id, *_HEADER.unpack_from(data, 2 + n))

    def to_json(self) -> dict:
        return {
            "height": self.height,
            "hash": self.hash.hex(),
            "time_ms": self.time_ms,
            "parent": self.parent.hex(),
            "tx_root": self.tx_root.hex(),
            "tx_count": self.tx_count,
            "state_digest": self.state_digest.hex(),
            "proposer": crypto.encode_node_id(self.proposer),
        }


def precommit_message(network: Network, height: int, round_: int, block_hash: bytes) -> bytes:
    return tagged(TAG_PRECOMMIT, network, _VOTE.pack(height, round_, block_hash))


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """Precommits from more than 2/3 of voting power for one block at one height and round."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]  # (validator public key, signature)

    def encode(self) -> bytes:
        return _VOTE.pack(self.height, self.round, self.block_hash) + b"".join(
            _SIG.pack(pk, sig) for pk, sig in self.signatures
        )

    @classmethod
    def decode(cls, data: bytes) -> "CommitCertificate":
        if len(data) < _VOTE.size or (len(data) - _VOTE.size) % _SIG.size:
            raise BlockError("commit certificate has the wrong length")
        height, round_, block_hash = _VOTE.unpack_from(data)
        sigs = tuple(_SIG.unpack_from(data, off) for off in range(_VOTE.size, len(data), _SIG.size))
        return cls(height, round_, block_hash, sigs)

    def verify(self, network: Network, powers: dict[bytes, int]) -> None:
        """Raise BlockError unless distinct known validators with > 2/3 power signed, for
        ``network`` (a certificate of another network never verifies)."""
        message = precommit_message(network, self.height, self.round, self.block_hash)
        seen: set[bytes] = set()
        signed = 0
        for pk, sig in self.signatures:
            if pk in seen or pk not in powers:
                raise BlockError("certificate has a duplicate or unknown signer")
            if not crypto.verify(pk, sig, message):
                raise BlockError("certificate has a bad precommit signature")
            seen.add(pk)
            signed += powers[pk]
        if 3 * signed <= 2 * sum(powers.values()):
            raise BlockError(f"certificate carries {signed} of {sum(powers.values())} power")

    def to_json(self) -> dict:
        return {
            "height": self.height,
            "round": self.round,
            "block_hash": self.block_hash.hex(),
            "precommits": [
                {"validator": crypto.encode_node_id(pk), "signature": sig.hex()}
                for pk, sig in self.signatures
            ],
        }


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    signature: bytes  # proposer's signature over the header
    txs: tuple[Transaction, ...]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def body(self) -> bytes:
        return encode_batch(list(self.txs))

    def verify_shape(self, network: Network) -> None:
        """Checks that need no state: proposer signature (for ``network``), tx count and
        root."""
        h = self.header
        if not crypto.verify(h.proposer, self.signature, h.signing_message(network)):
            raise BlockError(f"block {h.height} has a bad proposer signature")
        if h.tx_count != len(self.txs) or h.tx_root != tx_root([t.id for t in self.txs]):
            raise BlockError(f"block {h.height} transactions do not match its header")

    @classmethod
    def from_parts(cls, header: bytes, signature: bytes, body: bytes) -> "Block":
        return cls(Header.decode(header), signature, tuple(decode(r) for r in split_batch(body)))

    def encode(self) -> bytes:
        """header_len:u16 signature(64) header body: how blocks travel between nodes."""
        return self.encode_parts(self.header.encode(), self.signature, self.body())

    @staticmethod
    def encode_parts(header: bytes, signature: bytes, body: bytes) -> bytes:
        return _BLOCK.pack(len(header), signature) + header + body

    @staticmethod
    def decode_header(data: bytes) -> Header:
        """Only the header of an encoded block (its hash is the block's id)."""
        if len(data) < _BLOCK.size:
            raise BlockError("block truncated")
        n, _ = _BLOCK.unpack_from(data)
        return Header.decode(data[_BLOCK.size : _BLOCK.size + n])

    @classmethod
    def decode(cls, data: bytes) -> "Block":
        if len(data) < _BLOCK.size:
            raise BlockError("block truncated")
        n, signature = _BLOCK.unpack_from(data)
        end = _BLOCK.size + n
        if len(data) < end:
            raise BlockError("block header truncated")
        try:
            return cls.from_parts(data[_BLOCK.size : end], signature, data[end:])
        except DecodeError as exc:
            raise BlockError(f"block holds a malformed transaction: {exc}") from None
