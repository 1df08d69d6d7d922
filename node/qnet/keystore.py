"""Wallet keystore: one password-encrypted JSON file per wallet.

A wallet file holds the 32-byte Ed25519 seed sealed with ``nacl.secret.SecretBox`` under a
key derived from the password by Argon2id (libsodium's interactive limits), so a copied
keystore is useless without the password. The address is stored in clear so that listing
wallets and funding them needs no password; loading re-derives it from the decrypted seed,
so a tampered address is caught.

Files are created 0600 in a 0700 directory, written completely to a temporary file first
and then linked into place: a crash never leaves half a wallet, and an existing wallet is
never replaced (a lost seed is lost money).
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from . import crypto
from .node import write_secret

KEYSTORE_ENV = "QNET_KEYSTORE"
DEFAULT_DIR = Path("~/.qnet/wallets")
VERSION = 1
KDF = "argon2id"
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
SUFFIX = ".json"


class KeystoreError(Exception):
    """A wallet cannot be created, found or read; the message says which and why."""


class WrongPassword(KeystoreError):
    pass


@dataclass(frozen=True)
class WalletInfo:
    name: str
    address: str
    path: Path


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise KeystoreError(f"wallet name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def _derive_key(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE,
        password.encode(),
        salt,
        opslimit=opslimit,
        memlimit=memlimit,
    )


def seal(name: str, key: crypto.KeyPair, password: str) -> dict:
    """The JSON document of a wallet: the seed encrypted under the password."""
    if not password:
        raise KeystoreError("the wallet password must not be empty")
    salt = nacl.utils.random(argon2id.SALTBYTES)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    opslimit, memlimit = argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE
    box = nacl.secret.SecretBox(_derive_key(password, salt, opslimit, memlimit))
    return {
        "version": VERSION,
        "name": name,
        "address": crypto.encode_address(key.address),
        "kdf": KDF,
        "opslimit": opslimit,
        "memlimit": memlimit,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": box.encrypt(key.seed, nonce).ciphertext.hex(),
    }


def unseal(doc: dict, password: str) -> crypto.KeyPair:
    """Decrypt a wallet document; WrongPassword if the password does not open it."""
    name = doc.get("name", "?")
    try:
        if doc["version"] != VERSION or doc["kdf"] != KDF:
            raise KeystoreError(f"wallet {name!r}: unsupported version or kdf")
        opslimit, memlimit = int(doc["opslimit"]), int(doc["memlimit"])
        # the limits come from the file: bound them so a crafted file cannot exhaust memory
        if not (
            argon2id.OPSLIMIT_MIN <= opslimit <= argon2id.OPSLIMIT_SENSITIVE
            and argon2id.MEMLIMIT_MIN <= memlimit <= argon2id.MEMLIMIT_SENSITIVE
        ):
            raise KeystoreError(f"wallet {name!r}: kdf limits out of range")
        salt, nonce = bytes.fromhex(doc["salt"]), bytes.fromhex(doc["nonce"])
        ciphertext = bytes.fromhex(doc["ciphertext"])
        address = doc["address"]
    except (KeyError, TypeError, ValueError) as exc:
        raise KeystoreError(f"wallet {name!r} is malformed: {exc}") from None
    try:
        box = nacl.secret.SecretBox(_derive_key(password, salt, opslimit, memlimit))
        seed = box.decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError:
        raise WrongPassword(f"wrong password for wallet {name!r}") from None
    key = crypto.KeyPair(seed)
    if crypto.encode_address(key.address) != address:
        raise KeystoreError(f"wallet {name!r}: stored address does not match its key")
    return key


class Keystore:
    """A directory of wallet files, ``<name>.json``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).expanduser()

    @classmethod
    def locate(cls, directory: Path | None = None) -> "Keystore":
        """The given directory, else $QNET_KEYSTORE, else ~/.qnet/wallets."""
        return cls(directory or Path(os.environ.get(KEYSTORE_ENV) or DEFAULT_DIR))

    def path(self, name: str) -> Path:
        return self.directory / (check_name(name) + SUFFIX)

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def _read(self, name: str) -> dict:
        path = self.path(name)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeystoreError(f"no wallet named {name!r} in {self.directory}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeystoreError(f"cannot read wallet {path}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str):
            raise KeystoreError(f"wallet {path} is malformed")
        return doc

    def info(self, name: str) -> WalletInfo:
        """Name and address without the password (the address is stored in clear)."""
        return WalletInfo(name, self._read(name)["address"], self.path(name))

    def load(self, name: str, password: str) -> crypto.KeyPair:
        return unseal(self._read(name), password)

    def add(self, name: str, password: str, key: crypto.KeyPair | None = None) -> WalletInfo:
        """Store ``key`` (a new one if None) as wallet ``name``; never replaces a wallet."""
        target = self.path(name)
        key = key or crypto.KeyPair.generate()
        doc = seal(name, key, password)
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self.directory.chmod(0o700)  # mkdir's mode is filtered by the umask
        if target.exists():
            raise KeystoreError(f"wallet {name!r} already exists in {self.directory}")
        temp = self.directory / f".{name}.{os.getpid()}.tmp"
        temp.unlink(missing_ok=True)
        try:
            write_secret(temp, json.dumps(doc, indent=2) + "\n")
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
            # link, unlike os.replace, fails if a wallet appeared meanwhile: no silent overwrite
            os.link(temp, target)
        except FileExistsError:
            raise KeystoreError(f"wallet {name!r} already exists in {self.directory}") from None
        finally:
            temp.unlink(missing_ok=True)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return WalletInfo(name, doc["address"], target)

    def wallets(self) -> list[WalletInfo]:
        if not self.directory.is_dir():
            return []
        names = sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob("*" + SUFFIX))
        return [self.info(n) for n in names if NAME_RE.fullmatch(n)]
