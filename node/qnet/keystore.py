"""Wallet keystore: one password-encrypted JSON file per wallet.

A wallet file holds the 32-byte Ed25519 seed sealed with ``nacl.secret.SecretBox`` under a
key derived from the password by Argon2id (libsodium's interactive limits), so a copied
keystore is useless without the password. The address is stored in clear so that listing
wallets and funding them needs no password; loading re-derives it from the decrypted seed,
so a tampered address is caught.

Files are created 0600 in a 0700 directory, written completely to a temporary file first
and then linked into place: a crash never leaves half a wallet, and an existing wallet is
never replaced (a lost seed is lost money).

The wallet file format, version 1
---------------------------------
This is the one format a wallet moves in: the files of this keystore, ``qnet-cli wallet
export --file`` and ``wallet import --file``, and the browser wallet's stored and exported
wallets. A file is a UTF-8 JSON object with exactly these members (no others; order and
whitespace do not matter; this module writes them in this order, indented by 2)::

    version     1 (a JSON integer)
    name        the wallet's name: 1-64 characters of A-Z a-z 0-9 _ - other than __proto__,
                constructor and prototype; informational (an
                imported file is stored under the name it is imported as)
    address     the wallet's address, bech32 with hrp "qnc" of BLAKE2b-160 of the Ed25519
                public key of the seed; in clear, and checked against the key on unsealing
    kdf         "argon2id"
    opslimit    Argon2id passes (t_cost): an integer, 1..4; written: 2
    memlimit    Argon2id memory in bytes: an integer multiple of 1024, 8192..1073741824
                (1 GiB); written: 67108864 (64 MiB, m_cost 65536 KiB)
    salt        16 random bytes as 32 lowercase hex digits
    nonce       24 random bytes as 48 lowercase hex digits
    ciphertext  48 bytes as 96 lowercase hex digits: the 16-byte Poly1305 MAC first, then
                the 32-byte seed encrypted by XSalsa20 (libsodium crypto_secretbox_easy)

key = Argon2id version 0x13 (libsodium ``crypto_pwhash_argon2id``, ``ALG_ARGON2ID13``) of the
UTF-8 bytes of the password exactly as typed (no Unicode normalisation), with ``salt``,
t_cost ``opslimit``, m_cost ``memlimit / 1024`` KiB, parallelism 1, a 32-byte output and no
secret or associated data. ciphertext = XSalsa20-Poly1305 secretbox of the 32-byte seed
under key and ``nonce``. The seed is the wallet's Ed25519 private seed (RFC 8032), the same
32 bytes that its recovery phrase spells (``qnet.phrase``).

A reader refuses anything else, before it derives a key: a missing or unknown member, a
wrong JSON type (``true`` is not 1), other hex lengths or upper-case hex, limits out of
range (they come from the file: the bounds stop a crafted file from demanding unbounded
memory or time). A wrong password fails the MAC; an address that is not the seed's fails
the final check.
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
# The names JavaScript objects hold specially are refused too (the browser wallet's rule is
# this one: web/src/wallet/keystore.js NAME_RE).
NAME_RE = re.compile(r"(?!(?:__proto__|constructor|prototype)$)[A-Za-z0-9_-]{1,64}")
NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ -, other than __proto__, constructor and prototype"
SUFFIX = ".json"
SEED_BYTES = 32
MEMBERS = (
    "version", "name", "address", "kdf", "opslimit", "memlimit", "salt", "nonce", "ciphertext"
)  # fmt: skip
HEX_BYTES = {
    "salt": argon2id.SALTBYTES,
    "nonce": nacl.secret.SecretBox.NONCE_SIZE,
    "ciphertext": nacl.secret.SecretBox.MACBYTES + SEED_BYTES,
}
# Bounds on the limits a file asks for; libsodium's minimum and its "sensitive" maximum.
OPSLIMIT_RANGE = (argon2id.OPSLIMIT_MIN, argon2id.OPSLIMIT_SENSITIVE)
MEMLIMIT_RANGE = (argon2id.MEMLIMIT_MIN, argon2id.MEMLIMIT_SENSITIVE)
MAX_FILE_BYTES = 16 * 1024  # a wallet file is about 500 bytes
LOWER_HEX = re.compile(r"[0-9a-f]*")


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
        raise KeystoreError(f"wallet name {name!r} must be {NAME_RULE}")
    return name


def _derive_key(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE,
        password.encode(),
        salt,
        opslimit=opslimit,
        memlimit=memlimit,
    )


def check_password(password: str) -> str:
    """A password a new wallet may be sealed under."""
    if not password:
        raise KeystoreError("the wallet password must not be empty")
    return password


def seal(name: str, key: crypto.KeyPair, password: str) -> dict:
    """The JSON document of a wallet: the seed encrypted under the password."""
    check_password(password)
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


def _integer(doc: dict, member: str, bounds: tuple[int, int]) -> int:
    value = doc[member]
    if type(value) is not int:  # bool is an int subclass; a float or string is no count
        raise ValueError(f"{member!r} must be an integer")
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(
            f"kdf limits out of range: {member} {value} not in {bounds[0]}..{bounds[1]}"
        )
    return value


def _hex(doc: dict, member: str) -> bytes:
    value, size = doc[member], HEX_BYTES[member]
    if not (isinstance(value, str) and len(value) == 2 * size and LOWER_HEX.fullmatch(value)):
        raise ValueError(f"{member!r} must be {size} bytes as {2 * size} lowercase hex digits")
    return bytes.fromhex(value)


def unseal(doc: object, password: str, what: str | None = None) -> crypto.KeyPair:
    """Check a wallet document strictly against the format above and decrypt it.

    ``what`` names it in errors (default: "wallet '<its name>'"). WrongPassword if the
    password does not open it, KeystoreError for anything else wrong with it.
    """
    if not isinstance(doc, dict):
        raise KeystoreError(f"{what or 'wallet'} is malformed: not a JSON object")
    name = doc.get("name")
    what = what or (
        f"wallet {name!r}" if isinstance(name, str) and NAME_RE.fullmatch(name) else "wallet"
    )
    missing = [m for m in MEMBERS if m not in doc]
    unknown = [repr(m[:40]) for m in sorted(doc.keys() - set(MEMBERS))]
    if missing:
        raise KeystoreError(f"{what} is malformed: missing {', '.join(missing)}")
    if unknown:
        raise KeystoreError(f"{what} is malformed: unknown member {', '.join(unknown)}")
    if type(doc["version"]) is not int or doc["version"] != VERSION:
        raise KeystoreError(f"{what}: unsupported version {doc['version']!r:.20} (not {VERSION})")
    if doc["kdf"] != KDF:
        raise KeystoreError(f"{what}: unsupported kdf {doc['kdf']!r:.20} (not {KDF!r})")
    try:
        if not (isinstance(name, str) and NAME_RE.fullmatch(name)):
            raise ValueError(f"'name' must be {NAME_RULE}")
        address = doc["address"]
        if not isinstance(address, str):
            raise ValueError("'address' must be a string")
        opslimit = _integer(doc, "opslimit", OPSLIMIT_RANGE)
        memlimit = _integer(doc, "memlimit", MEMLIMIT_RANGE)
        if memlimit % 1024:
            raise ValueError("'memlimit' must be a multiple of 1024 bytes")
        salt, nonce, ciphertext = _hex(doc, "salt"), _hex(doc, "nonce"), _hex(doc, "ciphertext")
    except ValueError as exc:
        raise KeystoreError(f"{what} is malformed: {exc}") from None
    try:
        box = nacl.secret.SecretBox(_derive_key(password, salt, opslimit, memlimit))
        seed = box.decrypt(ciphertext, nonce)
    except nacl.exceptions.CryptoError:
        raise WrongPassword(f"wrong password for {what}") from None
    key = crypto.KeyPair(seed)
    if crypto.encode_address(key.address) != address:
        raise KeystoreError(f"{what}: stored address does not match its key")
    return key


def read_document(path: Path) -> dict:
    """The JSON object in a wallet file, read with a size bound; not yet checked or opened."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeystoreError(f"{path} does not exist") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read wallet file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeystoreError(f"{path} is not a wallet file: larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(data.decode())
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past Python's digit limit
        raise KeystoreError(f"{path} is not a wallet file: {exc}") from None
    if not isinstance(doc, dict):
        raise KeystoreError(f"{path} is not a wallet file: not a JSON object")
    return doc


def _link_new_file(target: Path, text: str) -> None:
    """Create ``target`` (0600) holding ``text`` whole or not at all: written to a temporary
    file beside it, synced, then linked into place. FileExistsError if ``target`` exists:
    unlike os.replace, a link never replaces a file that appeared meanwhile."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    try:
        write_secret(temp, text)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.link(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def document_text(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


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
        if not path.exists():
            raise KeystoreError(f"no wallet named {name!r} in {self.directory}")
        doc = read_document(path)
        if not isinstance(doc.get("address"), str):
            raise KeystoreError(f"wallet {path} is malformed")
        return doc

    def info(self, name: str) -> WalletInfo:
        """Name and address without the password (the address is stored in clear)."""
        return WalletInfo(name, self._read(name)["address"], self.path(name))

    def load(self, name: str, password: str) -> crypto.KeyPair:
        return unseal(self._read(name), password, f"wallet {name!r}")

    def add(self, name: str, password: str, key: crypto.KeyPair | None = None) -> WalletInfo:
        """Store ``key`` (a new one if None) as wallet ``name``; never replaces a wallet."""
        target = self.path(name)
        key = key or crypto.KeyPair.generate()
        doc = seal(name, key, password)
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self.directory.chmod(0o700)  # mkdir's mode is filtered by the umask
        try:
            _link_new_file(target, document_text(doc))
        except FileExistsError:
            raise KeystoreError(f"wallet {name!r} already exists in {self.directory}") from None
        return WalletInfo(name, doc["address"], target)

    def export(self, name: str, password: str, target: Path) -> WalletInfo:
        """Copy wallet ``name``'s file, as stored, to ``target`` (created 0600, never
        replacing a file), once ``password`` has opened it: the copy is checked whole, and
        whoever exported it knows the password it needs.

        Written in place rather than linked from a temporary file, so that it works on file
        systems without hard links (a FAT memory stick); a copy torn by a crash is refused by
        any reader, and the wallet itself stays in the keystore."""
        doc = self._read(name)
        unseal(doc, password, f"wallet {name!r}")
        try:  # O_EXCL: never replaces a file, nor follows a link planted there
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeystoreError(f"{target} already exists; refusing to overwrite it") from None
        except FileNotFoundError:
            raise KeystoreError(f"cannot export to {target}: no such directory") from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(document_text(doc))
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            target.unlink(missing_ok=True)  # ours: created above
            raise
        return WalletInfo(name, doc["address"], target)

    def wallets(self) -> list[WalletInfo]:
        if not self.directory.is_dir():
            return []
        names = sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob("*" + SUFFIX))
        return [self.info(n) for n in names if NAME_RE.fullmatch(n)]
