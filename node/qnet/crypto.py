"""Keys, hashes, human-readable identifiers and the network every signature is bound to.

Wallet addresses are bech32 strings with prefix ``qnc`` over the first 20 bytes of the
BLAKE2b hash of the Ed25519 public key. Node ids are bech32 strings with prefix ``qnode``
over the whole public key, so a node id is enough to check a node's signature.

Every signed message is ``tagged``: a tag byte that says what it is, then the ``Network``
(chain id and genesis hash), then the payload. The chain id alone does not tell networks
apart: a testnet reset, or a second network made from the same inventory, has the same chain
id and the same keys, and would take the old network's transactions and certificates. The
genesis hash differs (another genesis time or other funds), so nothing signed for one
network verifies on the other. The genesis hash never travels with what is signed: the
verifier supplies the one of its own network.
"""

import hashlib
from dataclasses import dataclass

import bech32
import nacl.bindings
import nacl.exceptions
import nacl.signing

ADDRESS_HRP = "qnc"
NODE_HRP = "qnode"
ADDRESS_LEN = 20
PUBKEY_LEN = 32
SIGNATURE_LEN = 64
HASH_LEN = 32


class EncodingError(ValueError):
    pass


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


@dataclass(frozen=True, slots=True)
class Network:
    """Which network a signature is for: its chain id and the hash of its genesis
    (``Genesis.network``; a client learns both from a node's ``/api/v1/status``)."""

    chain_id: str
    genesis_hash: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.chain_id, str) or not 1 <= len(self.chain_id.encode()) <= 255:
            raise EncodingError("a chain id is 1..255 bytes of text")
        if not isinstance(self.genesis_hash, bytes) or len(self.genesis_hash) != HASH_LEN:
            raise EncodingError(f"a genesis hash is {HASH_LEN} bytes")

    def __str__(self) -> str:
        return f"chain {self.chain_id!r} (genesis {self.genesis_hash.hex()[:16]})"


def prefixed(tag: int, chain_id: str, payload: bytes) -> bytes:
    """Tag byte, chain id, payload: how a block header or a consensus message travels (the
    genesis hash is left out there; ``tagged`` adds it to what is signed)."""
    cid = chain_id.encode()
    return bytes((tag, len(cid))) + cid + payload


def tagged(tag: int, network: Network, payload: bytes) -> bytes:
    """A message to sign: tag byte, chain id, genesis hash(32), payload. Each tag is one
    kind of message, so a signature made for one purpose is never valid for another."""
    return prefixed(tag, network.chain_id, network.genesis_hash + payload)


def address_bytes(public_key: bytes) -> bytes:
    return hashlib.blake2b(public_key, digest_size=ADDRESS_LEN).digest()


def _encode(hrp: str, payload: bytes) -> str:
    return bech32.bech32_encode(hrp, bech32.convertbits(payload, 8, 5))


def _decode(hrp: str, text: str, length: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise EncodingError(f"{what} must be a string")
    got_hrp, data = bech32.bech32_decode(text)
    if got_hrp is None or data is None:
        raise EncodingError(f"{what} {text!r} is not valid bech32 (bad character or checksum)")
    if got_hrp != hrp:
        raise EncodingError(f"{what} {text!r} must start with {hrp}1")
    payload = bech32.convertbits(data, 5, 8, False)
    if payload is None or len(payload) != length:
        raise EncodingError(f"{what} {text!r} has the wrong length")
    return bytes(payload)


def encode_address(raw: bytes) -> str:
    return _encode(ADDRESS_HRP, raw)


def decode_address(text: str) -> bytes:
    return _decode(ADDRESS_HRP, text, ADDRESS_LEN, "address")


def encode_node_id(public_key: bytes) -> str:
    return _encode(NODE_HRP, public_key)


def decode_node_id(text: str) -> bytes:
    return _decode(NODE_HRP, text, PUBKEY_LEN, "node id")


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification; releases the GIL, so threads verify in parallel."""
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


class KeyPair:
    """An Ed25519 key pair (wallet key or node key)."""

    __slots__ = ("_signing", "public_key")

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise EncodingError("an Ed25519 seed is 32 bytes")
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._signing.verify_key)

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    @property
    def address(self) -> bytes:
        return address_bytes(self.public_key)

    @property
    def node_id(self) -> str:
        return encode_node_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature
