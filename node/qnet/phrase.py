"""Recovery phrase: a wallet's 32-byte Ed25519 seed written as 24 BIP-39 English words.

The seed *is* the BIP-39 entropy: ``phrase_of`` is BIP-39's entropy-to-mnemonic (256 bits
plus an 8-bit checksum, the first byte of SHA-256 of the seed, cut into 24 indices of 11
bits into the English wordlist) and ``seed_of`` its inverse. BIP-39's PBKDF2 "seed"
derivation is not used: no passphrase, no HD derivation, one phrase is one key. The browser
wallet computes the same with @scure/bip39's ``entropyToMnemonic``/``mnemonicToEntropy``
and its English wordlist; tests/vectors/recovery_phrase.json is the table both sides
are checked against.

Reading is forgiving about layout and strict about content: NFKD, any case, words
separated by whitespace or commas, and the numbers of a numbered list ("1." "2)" "3") left
out, in at most MAX_TEXT_LEN characters; the error says which word is unknown and where, how
many words there were, or that the checksum does not match. The browser wallet reads a phrase
by this same rule (web/src/wallet/phrase.js ``splitWords``); tests/vectors/phrase_inputs.json
holds texts both must read alike.
"""

import functools
import re
import unicodedata

from mnemonic import Mnemonic

SEED_BYTES = 32
WORDS = 24  # (256 + 8) / 11
MAX_TEXT_LEN = 1000  # characters (code points)
# Whitespace left after NFKD (which turns the other Unicode spaces into " "), and commas;
# spelled out rather than \s, whose meaning differs between Python and JavaScript.
SEPARATORS = re.compile("[\t\n\v\f\r \u0085\u1680\u2028\u2029\ufeff,]+")
LIST_NUMBER = re.compile("[0-9]+[.)]?")


class PhraseError(ValueError):
    """A recovery phrase that is not 24 BIP-39 English words with a valid checksum."""


@functools.cache
def _english() -> Mnemonic:
    return Mnemonic("english")


@functools.cache
def _index() -> frozenset[str]:
    return frozenset(_english().wordlist)


def words_of(phrase: str) -> list[str]:
    """The words of a phrase as typed or pasted: NFKD, lower case, split on whitespace and
    commas, list numbers left out."""
    if len(phrase) > MAX_TEXT_LEN:
        raise PhraseError(
            f"a recovery phrase is {WORDS} words, in at most {MAX_TEXT_LEN} characters"
        )
    words = SEPARATORS.split(unicodedata.normalize("NFKD", phrase).lower())
    return [w for w in words if w and not LIST_NUMBER.fullmatch(w)]


def phrase_of(seed: bytes) -> str:
    """The 24 words, separated by single spaces, of a 32-byte seed."""
    if len(seed) != SEED_BYTES:
        raise PhraseError(f"a wallet seed is {SEED_BYTES} bytes, not {len(seed)}")
    return _english().to_mnemonic(bytes(seed))


def seed_of(phrase: str) -> bytes:
    """The 32-byte seed of a recovery phrase; PhraseError says what is wrong with it."""
    words = words_of(phrase)
    if len(words) != WORDS:
        raise PhraseError(f"a recovery phrase is {WORDS} words; this one has {len(words)}")
    known = _index()
    for position, word in enumerate(words, 1):
        if word not in known:
            raise PhraseError(
                f"word {position} of the recovery phrase, {word!r}, is not a BIP-39 English word"
            )
    try:
        return bytes(_english().to_entropy(words))
    except ValueError:  # the checksum: the mnemonic library's only failure left here
        raise PhraseError(
            "the recovery phrase's checksum does not match: a word is wrong or out of order"
        ) from None
