// Wallet files in the CLI keystore's format (node/qnet/keystore.py), so one file moves both
// ways between `qnet-cli wallet export/import` and the browser:
//
//   {"version": 1, "name", "address", "kdf": "argon2id", "opslimit", "memlimit",
//    "salt": hex(16), "nonce": hex(24), "ciphertext": hex(16-byte MAC || sealed 32-byte seed)}
//
// The key is libsodium's crypto_pwhash argon2id (t_cost = opslimit, m_cost = memlimit / 1024
// KiB, one lane, 32 bytes) computed by hash-wasm; the box is NaCl's secretbox
// (XSalsa20-Poly1305, MAC first) from @noble/ciphers. The browser keeps these documents,
// never a bare seed, in localStorage.

import { xsalsa20poly1305 } from "@noble/ciphers/salsa.js";
import { argon2id } from "hash-wasm";
import { fromHex, keyPair, toHex } from "./codec.js";

export const VERSION = 1;
export const KDF = "argon2id";
// libsodium's limits (nacl.pwhash.argon2id): a file's limits must lie within MIN..SENSITIVE,
// as keystore.unseal checks, so a crafted file cannot make the page allocate without bound.
export const OPSLIMIT_MIN = 1;
export const OPSLIMIT_INTERACTIVE = 2;
export const OPSLIMIT_SENSITIVE = 4;
export const MEMLIMIT_MIN = 8192;
export const MEMLIMIT_INTERACTIVE = 67108864;
export const MEMLIMIT_SENSITIVE = 1073741824;
const SALT_LEN = 16;
const NONCE_LEN = 24;
const KEY_LEN = 32;
const SEALED_LEN = 16 + 32;
// keystore.NAME_RE: the names JavaScript objects hold specially are no wallet's name.
const NAME_RE = /^(?!(?:__proto__|constructor|prototype)$)[A-Za-z0-9_-]{1,64}$/;
export const MAX_FILE_BYTES = 16 * 1024; // keystore.MAX_FILE_BYTES: a wallet file is ~500 bytes
const MEMBERS = ["version", "name", "address", "kdf", "opslimit", "memlimit", "salt", "nonce",
  "ciphertext"];
const LOWER_HEX = /^[0-9a-f]*$/;
// A JSON number Python's json reads as an int (1.0 and 1e0 are floats there, so no count).
const JSON_INTEGER = /^-?(?:0|[1-9][0-9]*)$/;
const STORAGE_KEY = "qnet.wallets.v1";

export class KeystoreError extends Error {
  constructor(message) {
    super(message);
    this.name = "KeystoreError";
  }
}

export class WrongPassword extends KeystoreError {
  constructor(message) {
    super(message);
    this.name = "WrongPassword";
  }
}

export function checkName(name) {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw new KeystoreError(
      "a wallet name is 1-64 characters of A-Z a-z 0-9 _ -, other than __proto__, " +
        "constructor and prototype",
    );
  }
  return name;
}

// Counted so tests can tell how many key derivations a step cost (each takes ~0.5 s).
export const kdfCalls = { count: 0 };

async function deriveKey(password, salt, opslimit, memlimit) {
  kdfCalls.count += 1;
  return argon2id({
    password: new TextEncoder().encode(password),
    salt,
    iterations: opslimit,
    parallelism: 1,
    memorySize: Math.floor(memlimit / 1024),
    hashLength: KEY_LEN,
    outputType: "binary",
  });
}

function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

/** The wallet document of `seed` under `password`, with libsodium's interactive limits. */
export async function seal(name, seed, password) {
  checkName(name);
  if (!password) throw new KeystoreError("the wallet password must not be empty");
  const key = keyPair(seed);
  const salt = randomBytes(SALT_LEN);
  const nonce = randomBytes(NONCE_LEN);
  const boxKey = await deriveKey(password, salt, OPSLIMIT_INTERACTIVE, MEMLIMIT_INTERACTIVE);
  const ciphertext = xsalsa20poly1305(boxKey, nonce).encrypt(seed);
  return {
    version: VERSION,
    name,
    address: key.address,
    kdf: KDF,
    opslimit: OPSLIMIT_INTERACTIVE,
    memlimit: MEMLIMIT_INTERACTIVE,
    salt: toHex(salt),
    nonce: toHex(nonce),
    ciphertext: toHex(ciphertext),
  };
}

function limit(doc, field, low, high) {
  const value = doc[field];
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new KeystoreError(`${field} must be an integer`);
  }
  if (value < low || value > high) {
    throw new KeystoreError(`kdf limits out of range: ${field} ${value} not in ${low}..${high}`);
  }
  return value;
}

function hexMember(doc, field, size) {
  const value = doc[field];
  if (typeof value !== "string" || value.length !== 2 * size || !LOWER_HEX.test(value)) {
    throw new KeystoreError(`${field} must be ${size} bytes as ${2 * size} lowercase hex digits`);
  }
}

/**
 * Check a document's shape (before any key derivation) exactly as keystore.unseal does:
 * the same members, JSON types, bounds and hex; returns it, or KeystoreError.
 */
export function checkDocument(doc) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new KeystoreError("the wallet is malformed: not a JSON object");
  }
  const what = typeof doc.name === "string" && NAME_RE.test(doc.name) ? `wallet "${doc.name}"` : "the wallet";
  const missing = MEMBERS.filter((m) => !Object.hasOwn(doc, m));
  const unknown = Object.keys(doc).filter((m) => !MEMBERS.includes(m));
  if (missing.length) throw new KeystoreError(`${what} is malformed: missing ${missing.join(", ")}`);
  if (unknown.length) {
    const names = unknown.sort().map((m) => JSON.stringify(m.slice(0, 40)));
    throw new KeystoreError(`${what} is malformed: unknown member ${names.join(", ")}`);
  }
  if (doc.version !== VERSION) throw new KeystoreError(`${what}: unsupported version (not ${VERSION})`);
  if (doc.kdf !== KDF) throw new KeystoreError(`${what}: unsupported kdf (not "${KDF}")`);
  try {
    checkName(doc.name);
    if (typeof doc.address !== "string") throw new KeystoreError("address must be a string");
    limit(doc, "opslimit", OPSLIMIT_MIN, OPSLIMIT_SENSITIVE);
    const memlimit = limit(doc, "memlimit", MEMLIMIT_MIN, MEMLIMIT_SENSITIVE);
    if (memlimit % 1024 !== 0) throw new KeystoreError("memlimit must be a multiple of 1024 bytes");
    hexMember(doc, "salt", SALT_LEN);
    hexMember(doc, "nonce", NONCE_LEN);
    hexMember(doc, "ciphertext", SEALED_LEN);
  } catch (exc) {
    throw new KeystoreError(`${what} is malformed: ${exc.message}`);
  }
  return doc;
}

/** The seed in `doc`; WrongPassword if `password` does not open it. */
export async function unseal(doc, password) {
  checkDocument(doc);
  const salt = fromHex(doc.salt, SALT_LEN);
  const nonce = fromHex(doc.nonce, NONCE_LEN);
  const boxKey = await deriveKey(password, salt, doc.opslimit, doc.memlimit);
  let seed;
  try {
    seed = xsalsa20poly1305(boxKey, nonce).decrypt(fromHex(doc.ciphertext, SEALED_LEN));
  } catch {
    throw new WrongPassword(`wrong password for wallet "${doc.name}"`);
  }
  if (keyPair(seed).address !== doc.address) {
    throw new KeystoreError(`wallet "${doc.name}": stored address does not match its key`);
  }
  return seed;
}

/**
 * A wallet file (its bytes, or its text as UTF-8) to its checked document, read as
 * keystore.read_document and keystore.unseal read it: at most MAX_FILE_BYTES bytes of UTF-8
 * (no byte-order mark) holding one JSON object, whose counts are JSON integers.
 */
export function parseFile(data) {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  if (!(bytes instanceof Uint8Array) || bytes.length > MAX_FILE_BYTES) {
    throw new KeystoreError(`not a wallet file: larger than ${MAX_FILE_BYTES} bytes`);
  }
  let doc;
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
    // A number that is no JSON integer is kept as its text: no count, so refused below.
    doc = JSON.parse(text, (key, value, context) =>
      typeof value === "number" && context && !JSON_INTEGER.test(context.source) ? context.source : value,
    );
  } catch (exc) {
    throw new KeystoreError(`not a wallet file: ${exc.message}`);
  }
  return checkDocument(doc);
}

/** The file text of a document, as the CLI keystore writes it. */
export function fileText(doc) {
  return JSON.stringify(doc, null, 2) + "\n";
}

/**
 * The wallets this browser keeps, by name, in `storage` (window.localStorage): encrypted
 * documents only. A name is never silently replaced: a lost seed is lost money.
 */
export class WalletStore {
  constructor(storage) {
    this.storage = storage;
  }

  /** The kept documents by name (a Map: no name can reach an object's prototype). */
  _all() {
    const text = this.storage.getItem(STORAGE_KEY);
    if (text === null) return new Map();
    let all;
    try {
      all = JSON.parse(text);
    } catch {
      throw new KeystoreError("the wallets kept in this browser are unreadable (storage corrupted)");
    }
    return all !== null && typeof all === "object" && !Array.isArray(all)
      ? new Map(Object.entries(all))
      : new Map();
  }

  _save(all) {
    this.storage.setItem(STORAGE_KEY, JSON.stringify(Object.fromEntries(all)));
  }

  names() {
    return [...this._all().keys()].sort();
  }

  get(name) {
    const doc = this._all().get(name);
    if (doc === undefined) throw new KeystoreError(`no wallet named "${name}" in this browser`);
    return checkDocument(doc);
  }

  has(name) {
    return this._all().has(name);
  }

  add(doc) {
    checkDocument(doc);
    const all = this._all();
    if (all.has(doc.name)) {
      throw new KeystoreError(`a wallet named "${doc.name}" is already kept in this browser`);
    }
    const sameKey = [...all.values()].find((d) => d.address === doc.address);
    if (sameKey) {
      throw new KeystoreError(`this wallet is already kept in this browser as "${sameKey.name}"`);
    }
    all.set(doc.name, doc);
    this._save(all);
  }

  remove(name) {
    const all = this._all();
    all.delete(name);
    this._save(all);
  }
}
