// The canonical transaction encoding of node/qnet/tx.py, for the kinds a wallet sends:
//
//   raw  = signature(64) || body
//   body = version:u8 kind:u8 chain_id_len:u8 chain_id sender_public_key(32)
//          nonce:u64 fee:u64 payload                       (big-endian integers)
//   kind 1 transfer   payload = recipient_address(20) amount:u64
//   kind 4 claim      payload = node_key(32)
//
// The signature is Ed25519 over crypto.tagged(0x41, network, body) =
// 0x41 || len(chain_id) || chain_id || genesis_hash(32) || body, so it verifies only on the
// network whose genesis hash the page read from the node. The id is BLAKE2b-256(raw).
// Ed25519 is @noble/ed25519 with @noble/hashes' SHA-512: the page may not be a secure context,
// where crypto.subtle (noble's default hash) is missing.

import * as ed from "@noble/ed25519";
import { blake2b } from "@noble/hashes/blake2.js";
import { sha512 } from "@noble/hashes/sha2.js";
import { addressOf, decodeAddress, decodeNodeId, encodeAddress, encodeNodeId } from "./address.js";
import { MAX_AMOUNT } from "./amounts.js";

ed.hashes.sha512 = sha512;

export const VERSION = 1;
export const KIND_TRANSFER = 1;
export const KIND_CLAIM = 4;
export const KIND_NAMES = { 1: "transfer", 2: "activate", 3: "heartbeat", 4: "claim" };
export const TAG_TRANSACTION = 0x41;
export const MAX_CHAIN_ID_LEN = 64;
export const SEED_LEN = 32;
const HASH_LEN = 32;

export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = "CodecError";
  }
}

const utf8 = new TextEncoder();

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text, length, what = "value") {
  if (typeof text !== "string" || !/^(?:[0-9a-fA-F]{2})*$/.test(text)) {
    throw new CodecError(`${what} must be hex digits`);
  }
  if (length !== undefined && text.length !== 2 * length) {
    throw new CodecError(`${what} must be ${length} bytes`);
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function u64(value, what) {
  const n = BigInt(value);
  if (n < 0n || n > MAX_AMOUNT) throw new CodecError(`${what} must be an unsigned 64-bit integer`);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, n, false);
  return out;
}

export function digest(bytes) {
  return blake2b(bytes, { dkLen: HASH_LEN });
}

/** A key pair from its 32-byte seed (the RFC 8032 secret key, as the CLI keystore holds). */
export function keyPair(seed) {
  if (!(seed instanceof Uint8Array) || seed.length !== SEED_LEN) {
    throw new CodecError(`an Ed25519 seed is ${SEED_LEN} bytes`);
  }
  const publicKey = ed.getPublicKey(seed);
  return { seed, publicKey, address: addressOf(publicKey) };
}

/** Ed25519 (RFC 8032) signature of `message` by the key of `seed`. */
export function sign(message, seed) {
  return ed.sign(message, seed);
}

export function randomSeed() {
  return crypto.getRandomValues(new Uint8Array(SEED_LEN));
}

/**
 * The network every signature is bound to, from GET /api/v1/status: its chain id and the
 * hex genesis hash. Checked like crypto.Network and tx.check_fields.
 */
export function network(chainId, genesisHashHex) {
  if (typeof chainId !== "string") throw new CodecError("the node's chain id is not text");
  const cid = utf8.encode(chainId);
  if (cid.length < 1 || cid.length > MAX_CHAIN_ID_LEN) {
    throw new CodecError(`a chain id is 1..${MAX_CHAIN_ID_LEN} bytes`);
  }
  return { chainId, chainIdBytes: cid, genesisHash: fromHex(genesisHashHex, HASH_LEN, "genesis hash") };
}

export function encodeBody(kind, net, publicKey, nonce, fee, payload) {
  const head = Uint8Array.of(VERSION, kind, net.chainIdBytes.length);
  return concat(head, net.chainIdBytes, publicKey, u64(nonce, "nonce"), u64(fee, "fee"), payload);
}

/** What the sender signs: crypto.tagged(0x41, network, body). */
export function signingMessage(net, body) {
  return concat(Uint8Array.of(TAG_TRANSACTION, net.chainIdBytes.length), net.chainIdBytes, net.genesisHash, body);
}

function finish(kind, net, key, nonce, fee, payload, fields) {
  const body = encodeBody(kind, net, key.publicKey, nonce, fee, payload);
  const signature = sign(signingMessage(net, body), key.seed);
  const raw = concat(signature, body);
  const id = toHex(digest(raw));
  // The JSON form of Transaction.to_json, which POST /api/v1/transactions (tx.from_json)
  // rebuilds into these same bytes and checks against `id`.
  const json = {
    id,
    kind: KIND_NAMES[kind],
    chain_id: net.chainId,
    from: key.address,
    public_key: toHex(key.publicKey),
    nonce: Number(nonce),
    fee: BigInt(fee).toString(),
    ...fields,
    signature: toHex(signature),
  };
  return { id, raw, body, signature, json };
}

function checkNonce(nonce) {
  const n = BigInt(nonce);
  // JSON carries the nonce as a number: it must stay exact in a double.
  if (n < 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CodecError("nonce out of range");
  }
  return n;
}

/** A signed transfer of `amount` units to `to` (an address string), paying `fee` units. */
export function makeTransfer(key, net, nonce, fee, to, amount) {
  const recipient = decodeAddress(to);
  const units = BigInt(amount);
  if (units <= 0n || units > MAX_AMOUNT) {
    throw new CodecError("amount must be positive and fit an unsigned 64-bit integer");
  }
  const payload = concat(recipient, u64(units, "amount"));
  const fields = { to: encodeAddress(recipient), amount: units.toString() };
  return finish(KIND_TRANSFER, net, key, checkNonce(nonce), BigInt(fee), payload, fields);
}

/** A signed claim of the rewards of node `nodeId` (a qnode id), by its owner's key. */
export function makeClaim(key, net, nonce, fee, nodeId) {
  const nodeKey = decodeNodeId(nodeId);
  const fields = { node_id: encodeNodeId(nodeKey) };
  return finish(KIND_CLAIM, net, key, checkNonce(nonce), BigInt(fee), nodeKey, fields);
}
