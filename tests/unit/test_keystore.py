"""The wallet keystore: encrypted at rest, private file modes, never overwrites, and its file
format read strictly as documented."""

import json
import re
import stat
from pathlib import Path

import nacl.bindings
import pytest

from qnet import crypto
from qnet import keystore as keystore_module
from qnet.keystore import (
    MAX_FILE_BYTES,
    MEMBERS,
    Keystore,
    KeystoreError,
    WrongPassword,
    read_document,
    seal,
    unseal,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture
def keystore(tmp_path) -> Keystore:
    return Keystore(tmp_path / "nested" / "wallets")


def test_round_trip(keystore):
    key = crypto.KeyPair.generate()
    info = keystore.add("alice", PASSWORD, key)
    assert info.address == crypto.encode_address(key.address)
    assert keystore.load("alice", PASSWORD).seed == key.seed
    assert keystore.info("alice").address == info.address


def test_file_holds_no_plaintext_seed(keystore):
    key = crypto.KeyPair.generate()
    keystore.add("alice", PASSWORD, key)
    text = keystore.path("alice").read_text()
    doc = json.loads(text)
    assert key.seed.hex() not in text
    assert doc["version"] == 1 and doc["kdf"] == "argon2id" and doc["name"] == "alice"
    assert {"opslimit", "memlimit", "salt", "nonce", "ciphertext", "address"} <= doc.keys()


def test_wrong_password_is_refused_clearly(keystore):
    keystore.add("alice", PASSWORD)
    with pytest.raises(WrongPassword, match="wrong password for wallet 'alice'"):
        keystore.load("alice", PASSWORD + "!")


def test_file_and_directory_are_private(keystore):
    keystore.add("alice", PASSWORD)
    assert stat.S_IMODE(keystore.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(keystore.path("alice").stat().st_mode) == 0o600


def test_refuses_to_overwrite_a_wallet(keystore):
    first = keystore.add("alice", PASSWORD)
    before = first.path.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        keystore.add("alice", PASSWORD)
    assert first.path.read_bytes() == before
    assert sorted(p.name for p in keystore.directory.iterdir()) == ["alice.json"]


@pytest.mark.parametrize(
    "name",
    ["", "a b", "../escape", "a/b", ".hidden", "é", "x" * 65, "__proto__", "constructor",
     "prototype", "a\n"],
)  # fmt: skip
def test_bad_names_are_refused(keystore, name):
    with pytest.raises(KeystoreError, match="wallet name"):
        keystore.add(name, PASSWORD)
    assert not keystore.directory.exists()


def test_names_that_only_contain_a_reserved_word_are_accepted(keystore):
    for name in ("__proto__x", "constructors", "my-prototype"):
        keystore.add(name, PASSWORD)


def test_the_browser_wallet_checks_names_with_the_same_rule():
    """web/src/wallet/keystore.js's NAME_RE is this module's, anchored (one rule)."""
    source = (Path(__file__).parents[2] / "web/src/wallet/keystore.js").read_text()
    found = re.search(r"^const NAME_RE = /\^(.*)\$/;$", source, re.MULTILINE)
    assert found, "keystore.js defines NAME_RE as /^...$/"
    assert found.group(1) == keystore_module.NAME_RE.pattern


def test_longest_name_is_accepted(keystore):
    keystore.add("A-z_0" + "x" * 59, PASSWORD)


def test_empty_password_is_refused(keystore):
    with pytest.raises(KeystoreError, match="must not be empty"):
        keystore.add("alice", "")


def test_missing_wallet(keystore):
    with pytest.raises(KeystoreError, match="no wallet named 'bob'"):
        keystore.load("bob", PASSWORD)


def test_tampered_address_is_detected(keystore):
    keystore.add("alice", PASSWORD)
    path = keystore.path("alice")
    doc = json.loads(path.read_text())
    doc["address"] = crypto.encode_address(crypto.KeyPair.generate().address)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="does not match"):
        keystore.load("alice", PASSWORD)


def test_kdf_limits_from_the_file_are_bounded(keystore):
    keystore.add("alice", PASSWORD)
    path = keystore.path("alice")
    doc = json.loads(path.read_text())
    doc["memlimit"] = 2**40
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="out of range"):
        keystore.load("alice", PASSWORD)


def test_lists_wallets_by_name(keystore):
    assert keystore.wallets() == []
    for name in ("carol", "alice", "bob"):
        keystore.add(name, PASSWORD)
    assert [w.name for w in keystore.wallets()] == ["alice", "bob", "carol"]


def test_locate_prefers_argument_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("QNET_KEYSTORE", raising=False)
    assert Keystore.locate().directory == tmp_path / ".qnet" / "wallets"
    monkeypatch.setenv("QNET_KEYSTORE", str(tmp_path / "env"))
    assert Keystore.locate().directory == tmp_path / "env"
    assert Keystore.locate(tmp_path / "arg").directory == tmp_path / "arg"


# ---- the file format, as documented for the browser wallet ------------------------------


def test_a_document_built_from_the_documented_format_opens():
    """Built with libsodium's primitives straight from keystore.py's docstring, not with
    seal(): what the browser wallet writes from that description must open here."""
    seed = bytes(range(32))
    key = crypto.KeyPair(seed)
    salt, nonce = bytes([7] * 16), bytes([9] * 24)
    derived = nacl.bindings.crypto_pwhash_alg(
        32, "pässwörd".encode(), salt, 1, 8192, nacl.bindings.crypto_pwhash_ALG_ARGON2ID13
    )
    doc = {
        "version": 1,
        "name": "from-browser",
        "address": crypto.encode_address(key.address),
        "kdf": "argon2id",
        "opslimit": 1,
        "memlimit": 8192,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "ciphertext": nacl.bindings.crypto_secretbox_easy(seed, nonce, derived).hex(),
    }
    assert unseal(doc, "pässwörd").seed == seed
    with pytest.raises(WrongPassword):
        unseal(doc, "passwörd")


def test_sealed_documents_have_the_documented_members_and_limits():
    doc = seal("alice", crypto.KeyPair.generate(), PASSWORD)
    assert list(doc) == list(MEMBERS)
    assert (doc["opslimit"], doc["memlimit"]) == (2, 64 * 1024 * 1024)
    assert [len(doc[m]) for m in ("salt", "nonce", "ciphertext")] == [32, 48, 96]


@pytest.fixture(scope="module")
def sealed() -> tuple[dict, crypto.KeyPair]:
    key = crypto.KeyPair.generate()
    return seal("alice", key, PASSWORD), key


def test_unseal_opens_a_sealed_document(sealed):
    doc, key = sealed
    assert unseal(doc, PASSWORD).seed == key.seed


def _without(doc: dict, member: str) -> dict:
    return {k: v for k, v in doc.items() if k != member}


MALFORMED = {
    "not an object": (lambda d: [d], "not a JSON object"),
    "missing salt": (lambda d: _without(d, "salt"), "missing salt"),
    "unknown member": (lambda d: {**d, "seed": "00"}, "unknown member 'seed'"),
    "version 2": (lambda d: {**d, "version": 2}, "unsupported version 2"),
    "version true": (lambda d: {**d, "version": True}, "unsupported version True"),
    "version '1'": (lambda d: {**d, "version": "1"}, "unsupported version '1'"),
    "kdf scrypt": (lambda d: {**d, "kdf": "scrypt"}, "unsupported kdf 'scrypt'"),
    "bad name": (lambda d: {**d, "name": "my wallet"}, "'name' must be"),
    "address not text": (lambda d: {**d, "address": 5}, "'address' must be a string"),
    "opslimit text": (lambda d: {**d, "opslimit": "2"}, "'opslimit' must be an integer"),
    "opslimit float": (lambda d: {**d, "opslimit": 2.0}, "'opslimit' must be an integer"),
    "opslimit 0": (lambda d: {**d, "opslimit": 0}, "out of range: opslimit 0"),
    "opslimit 5": (lambda d: {**d, "opslimit": 5}, "out of range: opslimit 5"),
    "memlimit 2 GiB": (lambda d: {**d, "memlimit": 2**31}, "out of range: memlimit"),
    "memlimit 4 KiB": (lambda d: {**d, "memlimit": 4096}, "out of range: memlimit"),
    "memlimit odd": (lambda d: {**d, "memlimit": 67108865}, "multiple of 1024"),
    "salt short": (lambda d: {**d, "salt": d["salt"][:30]}, "'salt' must be 16 bytes"),
    "salt upper": (lambda d: {**d, "salt": d["salt"].upper()}, "'salt' must be 16 bytes"),
    "nonce spaced": (lambda d: {**d, "nonce": " " + d["nonce"][1:]}, "'nonce' must be 24"),
    "ciphertext long": (lambda d: {**d, "ciphertext": d["ciphertext"] + "00"}, "'ciphertext'"),
    "ciphertext list": (lambda d: {**d, "ciphertext": [1]}, "'ciphertext' must be 48 bytes"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_documents_are_refused_before_any_key_is_derived(sealed, case, monkeypatch):
    doc, _ = sealed
    change, message = MALFORMED[case]
    monkeypatch.setattr(keystore_module, "_derive_key", pytest.fail)  # refused before the kdf
    with pytest.raises(KeystoreError, match=re.escape(message)) as refused:
        unseal(change(dict(doc)), PASSWORD)
    assert not isinstance(refused.value, WrongPassword)


def test_flipped_ciphertext_bits_read_as_a_wrong_password(sealed):
    doc, _ = sealed
    flipped = f"{int(doc['ciphertext'][0], 16) ^ 1:x}" + doc["ciphertext"][1:]
    with pytest.raises(WrongPassword, match="wrong password for wallet 'alice'"):
        unseal({**doc, "ciphertext": flipped}, PASSWORD)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a wallet file"),
        (b"\xff\xfe", "not a wallet file"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"opslimit": ' + b"9" * 5000 + b"}", "not a wallet file"),
        (b" " * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES} bytes"),
    ],
    ids=["empty", "not utf-8", "array", "huge integer", "too large"],
)
def test_read_document_refuses_what_is_no_wallet_file(tmp_path, content, message):
    path = tmp_path / "file.json"
    path.write_bytes(content)
    with pytest.raises(KeystoreError, match=re.escape(message)):
        read_document(path)


def test_read_document_of_a_missing_file(tmp_path):
    with pytest.raises(KeystoreError, match="does not exist"):
        read_document(tmp_path / "nowhere.json")


# ---- export ----------------------------------------------------------------------------


def test_export_copies_the_stored_file_privately(keystore, tmp_path):
    keystore.add("alice", PASSWORD)
    target = tmp_path / "alice-backup.json"
    info = keystore.export("alice", PASSWORD, target)
    assert info.path == target and info.address == keystore.info("alice").address
    assert target.read_bytes() == keystore.path("alice").read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_export_refuses_to_overwrite(keystore, tmp_path):
    keystore.add("alice", PASSWORD)
    target = tmp_path / "taken.json"
    target.write_text("precious")
    with pytest.raises(KeystoreError, match="already exists; refusing to overwrite"):
        keystore.export("alice", PASSWORD, target)
    assert target.read_text() == "precious"


def test_export_with_a_wrong_password_writes_nothing(keystore, tmp_path):
    keystore.add("alice", PASSWORD)
    with pytest.raises(WrongPassword):
        keystore.export("alice", "guess", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_export_into_a_missing_directory(keystore, tmp_path):
    keystore.add("alice", PASSWORD)
    with pytest.raises(KeystoreError, match="no such directory"):
        keystore.export("alice", PASSWORD, tmp_path / "absent" / "out.json")


WALLET_FILES = json.loads(
    (Path(__file__).parents[1] / "vectors" / "bad_wallet_files.json").read_text()
)


def _vector_file(tmp_path: Path, case: dict) -> Path:
    path = tmp_path / "wallet.json"
    path.write_bytes((case["text"] + " " * case.get("pad", 0)).encode())
    return path


@pytest.mark.parametrize("case", WALLET_FILES["bad"], ids=lambda c: c["why"])
def test_the_shared_bad_wallet_files_are_refused_before_any_key_is_derived(
    case, tmp_path, monkeypatch
):
    """tests/vectors/bad_wallet_files.json, which the browser wallet refuses too."""
    monkeypatch.setattr(keystore_module, "_derive_key", pytest.fail)
    with pytest.raises(KeystoreError) as refused:
        unseal(read_document(_vector_file(tmp_path, case)), WALLET_FILES["password"])
    assert not isinstance(refused.value, WrongPassword)


@pytest.mark.parametrize("case", WALLET_FILES["accepted"], ids=lambda c: c["why"])
def test_the_shared_good_wallet_files_open(case, tmp_path):
    doc = read_document(_vector_file(tmp_path, case))
    key = unseal(doc, WALLET_FILES["password"])
    assert crypto.encode_address(key.address) == WALLET_FILES["address"]
