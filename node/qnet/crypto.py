"""Keys, hashes and human-readable identifiers.

Wallet addresses are bech32 strings with prefix ``qnc`` over the first 20 bytes of the
BLAKE2b hash of the Ed25519 public key. Node ids are bech32 strings with prefix ``qnode``
over the whole public key, so a node id is enough to check a node's signature.
"""

import hashlib

import bech32
import nacl.bindings
import nacl.exceptions
import nacl.signing

ADDRESS_HRP = "qnc"
NODE_HRP = "qnode"
ADDRESS_LEN = 20
PUBKEY_LEN = 32
SIGNATURE_LEN = 64


class EncodingError(ValueError):
    pass


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def tagged(tag: int, chain_id: str, payload: bytes) -> bytes:
    """A message to sign: tag byte, chain id, payload. Tags are 0x20 and up, so no tagged
    message is ever a transaction body (those start with the version byte, 1)."""
    cid = chain_id.encode()
    return bytes((tag, len(cid))) + cid + payload


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
