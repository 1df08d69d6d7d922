"""The wallet keystore: encrypted at rest, private file modes, never overwrites."""

import json
import stat

import pytest

from qnet import crypto
from qnet.keystore import Keystore, KeystoreError, WrongPassword

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


@pytest.mark.parametrize("name", ["", "a b", "../escape", "a/b", ".hidden", "é", "x" * 65])
def test_bad_names_are_refused(keystore, name):
    with pytest.raises(KeystoreError, match="wallet name"):
        keystore.add(name, PASSWORD)
    assert not keystore.directory.exists()


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
