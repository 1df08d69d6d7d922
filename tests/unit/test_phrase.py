"""Recovery phrases: BIP-39's own vectors for 256-bit entropy, round trips, clear refusals."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnet import crypto
from qnet.phrase import PhraseError, phrase_of, seed_of

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "recovery_phrase.json").read_text())[
    "vectors"
]
ZERO_PHRASE = " ".join(["abandon"] * 23 + ["art"])


def test_the_all_zero_seed_is_abandon_art():
    assert phrase_of(bytes(32)) == ZERO_PHRASE
    assert seed_of(ZERO_PHRASE) == bytes(32)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["seed"][:8] for v in VECTORS])
def test_bip39_vectors(vector):
    seed = bytes.fromhex(vector["seed"])
    assert phrase_of(seed) == vector["phrase"]
    assert seed_of(vector["phrase"]) == seed
    assert crypto.encode_address(crypto.KeyPair(seed).address) == vector["address"]


def test_the_table_holds_the_official_32_byte_vectors():
    # the 8 of BIP-39's English vectors with 256-bit entropy, none lost in an edit
    assert len(VECTORS) == 8 == len({v["seed"] for v in VECTORS})
    assert VECTORS[0]["phrase"] == ZERO_PHRASE


@given(st.binary(min_size=32, max_size=32))
def test_round_trip(seed):
    phrase = phrase_of(seed)
    assert len(phrase.split(" ")) == 24
    assert seed_of(phrase) == seed


@given(st.binary(min_size=32, max_size=32), st.sampled_from([" ", "\n", "  ", "\t", " \r\n "]))
def test_layout_and_case_do_not_matter(seed, separator):
    words = phrase_of(seed).split(" ")
    typed = "  " + separator.join(w.upper() if i % 2 else w.title() for i, w in enumerate(words))
    assert seed_of(typed + "\n") == seed


@pytest.mark.parametrize("count", [0, 12, 23, 25])
def test_wrong_word_count(count):
    with pytest.raises(PhraseError, match=f"is 24 words; this one has {count}$"):
        seed_of(" ".join(["abandon"] * count))


def test_unknown_word_is_named_with_its_position():
    words = ZERO_PHRASE.split()
    words[6] = "abandn"
    with pytest.raises(PhraseError, match=r"word 7 of the recovery phrase, 'abandn', is not"):
        seed_of(" ".join(words))


def test_bad_checksum():
    # the last word carries the checksum: "abandon" there is a valid word, wrong checksum
    with pytest.raises(PhraseError, match="checksum does not match"):
        seed_of(" ".join(["abandon"] * 24))


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_seed_must_be_32_bytes(size):
    with pytest.raises(PhraseError, match="32 bytes"):
        phrase_of(bytes(size))


INPUTS = json.loads((Path(__file__).parents[1] / "vectors" / "phrase_inputs.json").read_text())


@pytest.mark.parametrize("case", INPUTS["accepted"], ids=lambda c: c["why"])
def test_the_shared_phrase_layouts_read_as_the_seed(case):
    """tests/vectors/phrase_inputs.json, which the browser wallet reads alike: numbered
    lists, commas, any case, the whitespace left after NFKD."""
    assert seed_of(case["text"]).hex() == INPUTS["seed"]


@pytest.mark.parametrize("case", INPUTS["refused"], ids=lambda c: c["why"])
def test_the_shared_bad_phrases_are_refused(case):
    with pytest.raises(PhraseError):
        seed_of(case["text"])
