// Wallet addresses and node ids, as node/qnet/crypto.py makes them: an address is bech32
// "qnc" over the first 20 bytes of the BLAKE2b hash of the Ed25519 public key (BLAKE2b with
// a 20-byte digest, not a cut 32-byte one); a node id is bech32 "qnode" over the whole key.

import { blake2b } from "@noble/hashes/blake2.js";
import { bech32 } from "@scure/base";

export const ADDRESS_HRP = "qnc";
export const NODE_HRP = "qnode";
export const ADDRESS_LEN = 20;
export const PUBKEY_LEN = 32;
// bech32 strings are at most 90 characters (BIP-173); a qnc address is 42, a node id 63.
const BECH32_LIMIT = 90;

export class AddressError extends Error {
  constructor(message) {
    super(message);
    this.name = "AddressError";
  }
}

export function addressBytes(publicKey) {
  return blake2b(publicKey, { dkLen: ADDRESS_LEN });
}

export function encodeAddress(raw) {
  if (raw.length !== ADDRESS_LEN) throw new AddressError(`an address is ${ADDRESS_LEN} bytes`);
  return bech32.encode(ADDRESS_HRP, bech32.toWords(raw));
}

export function addressOf(publicKey) {
  return encodeAddress(addressBytes(publicKey));
}

export function encodeNodeId(publicKey) {
  if (publicKey.length !== PUBKEY_LEN) throw new AddressError(`a node key is ${PUBKEY_LEN} bytes`);
  return bech32.encode(NODE_HRP, bech32.toWords(publicKey), BECH32_LIMIT);
}

function decode(text, hrp, length, what) {
  if (typeof text !== "string") throw new AddressError(`the ${what} must be text`);
  const given = text.trim();
  if (given === "") throw new AddressError(`enter the ${what}`);
  if (given.length > BECH32_LIMIT) {
    throw new AddressError(`"${given.slice(0, 20)}…" is too long to be a ${what}`);
  }
  const separator = given.lastIndexOf("1");
  if (separator < 1) {
    throw new AddressError(`"${given}" is not a ${what}: it should look like ${hrp}1…`);
  }
  const prefix = given.slice(0, separator).toLowerCase();
  let decoded;
  try {
    decoded = bech32.decode(given, BECH32_LIMIT);
  } catch (exc) {
    // A checksum failure is the likely typo; name it, so the user rereads the characters.
    const reason = /checksum/i.test(String(exc.message))
      ? "its checksum does not match (a character is mistyped or missing)"
      : "it is not valid bech32 (too short, a character outside the bech32 alphabet, or mixed case)";
    throw new AddressError(`"${given}" is not a valid ${what}: ${reason}`);
  }
  if (decoded.prefix !== hrp) {
    if (what === "address" && prefix === NODE_HRP) {
      throw new AddressError(
        `"${given}" is a node id, not a wallet address: send to an address starting with ${hrp}1`,
      );
    }
    throw new AddressError(
      `"${given}" belongs to another network or kind (prefix ${decoded.prefix}1): ` +
        `${what === "address" ? "an" : "a"} ${what} here starts with ${hrp}1`,
    );
  }
  let bytes;
  try {
    bytes = bech32.fromWords(decoded.words);
  } catch {
    throw new AddressError(`"${given}" has the wrong length for a ${what}`);
  }
  if (bytes.length !== length) {
    throw new AddressError(`"${given}" has the wrong length for a ${what}`);
  }
  return Uint8Array.from(bytes);
}

/** The 20 bytes of a qnc address; AddressError says why text is not one. */
export function decodeAddress(text) {
  return decode(text, ADDRESS_HRP, ADDRESS_LEN, "address");
}

/** The 32-byte public key in a qnode id. */
export function decodeNodeId(text) {
  return decode(text, NODE_HRP, PUBKEY_LEN, "node id");
}

/** The canonical (lowercase) form of an address the user typed; throws AddressError. */
export function normalizeAddress(text) {
  return encodeAddress(decodeAddress(text));
}
