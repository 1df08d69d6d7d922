// The recovery phrase: BIP-39 English words over the wallet's 32-byte Ed25519 seed taken as
// the entropy (24 words: 256 bits and an 8-bit checksum). No BIP-39 passphrase or PBKDF2
// seed stretching: the words are the seed itself, so `qnet-cli wallet import --phrase`
// gives the same key and address.

import { entropyToMnemonic, mnemonicToEntropy } from "@scure/bip39";
import { wordlist } from "@scure/bip39/wordlists/english.js";
import { SEED_LEN } from "./codec.js";

export const WORDS = 24;
const MAX_TEXT_LEN = 1000; // characters (code points)
// qnet.phrase's rule: whitespace left after NFKD (which turns the other Unicode spaces into
// " ") and commas, spelled out (\s is not Python's whitespace); list numbers left out.
const SEPARATORS = /[\t\n\v\f\r \u0085\u1680\u2028\u2029\ufeff,]+/;
const LIST_NUMBER = /^[0-9]+[.)]?$/;
const known = new Set(wordlist);

export class PhraseError extends Error {
  constructor(message) {
    super(message);
    this.name = "PhraseError";
  }
}

/** The 24 words of `seed`, as an array. */
export function seedToWords(seed) {
  if (!(seed instanceof Uint8Array) || seed.length !== SEED_LEN) {
    throw new PhraseError(`a seed is ${SEED_LEN} bytes`);
  }
  return entropyToMnemonic(seed, wordlist).split(" ");
}

/**
 * The words a user typed or pasted, as qnet.phrase.words_of reads them: NFKD, lowercase,
 * split on whitespace and commas, list numbers dropped ("1. abandon 2. ability" reads as
 * the words alone).
 */
export function splitWords(text) {
  // A code point is one or two UTF-16 units: count them only when it could matter.
  if (typeof text !== "string" || (text.length > MAX_TEXT_LEN &&
      (text.length > 2 * MAX_TEXT_LEN || [...text].length > MAX_TEXT_LEN))) {
    throw new PhraseError(`a recovery phrase is ${WORDS} words, in at most ${MAX_TEXT_LEN} characters`);
  }
  return text
    .normalize("NFKD")
    .toLowerCase()
    .split(SEPARATORS)
    .filter((w) => w !== "" && !LIST_NUMBER.test(w));
}

/** The seed of a 24-word phrase; PhraseError says which word or why. */
export function phraseToSeed(text) {
  const words = splitWords(text);
  if (words.length !== WORDS) {
    throw new PhraseError(`a recovery phrase is ${WORDS} words; this has ${words.length}`);
  }
  const unknown = words.findIndex((w) => !known.has(w));
  if (unknown >= 0) {
    throw new PhraseError(
      `word ${unknown + 1} ("${words[unknown]}") is not in the BIP-39 English word list`,
    );
  }
  let seed;
  try {
    seed = mnemonicToEntropy(words.join(" "), wordlist);
  } catch {
    throw new PhraseError(
      "the words do not fit together (checksum): a word is wrong or two are swapped",
    );
  }
  return Uint8Array.from(seed);
}
