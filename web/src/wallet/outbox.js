// Signed transactions this browser sent or still has to send, kept in localStorage until the
// node says they are committed or refused: a transaction signed while the node is down, or
// whose answer was lost, is never silently dropped. Each entry holds the transaction's JSON
// (no key: resending needs none) and the network it was signed for.
//
//   state "unsent": no node has admitted it yet; sent again at every refresh, or by hand.
//   state "sent":   a node admitted it; followed until committed (then removed, with its
//                   height) or refused (removed, with the node's reason).

const STORAGE_KEY = "qnet.outbox.v1";
// Answers after which sending again later may succeed: busy, shutting down, rate limited.
const RETRY_LATER = new Set([429, 503]);

export class Outbox {
  constructor(storage) {
    this.storage = storage;
  }

  entries() {
    const text = this.storage.getItem(STORAGE_KEY);
    if (text === null) return [];
    try {
      const all = JSON.parse(text);
      return Array.isArray(all) ? all : [];
    } catch {
      return [];
    }
  }

  _save(entries) {
    this.storage.setItem(STORAGE_KEY, JSON.stringify(entries));
  }

  /** Entries of `address` on the network of `genesis`, oldest nonce first. */
  forAccount(address, genesis) {
    return this.entries()
      .filter((e) => e.address === address && e.genesis === genesis)
      .sort((a, b) => a.nonce - b.nonce);
  }

  put(entry) {
    const others = this.entries().filter((e) => e.id !== entry.id);
    this._save([...others, entry]);
  }

  remove(id) {
    this._save(this.entries().filter((e) => e.id !== id));
  }
}

/** A new entry for a signed transaction (see codec.makeTransfer / makeClaim). */
export function entryFor(tx, genesis, cost, summary) {
  return {
    id: tx.id,
    json: tx.json,
    address: tx.json.from,
    genesis,
    nonce: tx.json.nonce,
    cost: cost.toString(),
    summary,
    state: "unsent",
    created_ms: Date.now(),
    note: "",
  };
}

/**
 * Move `entry` one step on (submit it, or ask how it stands) through `api` (node.js) and
 * return what happened: {done: false, entry} with the entry as it is now (kept), or
 * {done: true, committed, height, code, message} once it left the outbox.
 */
export async function advance(outbox, entry, api) {
  if (entry.state === "unsent") {
    try {
      await api.submit(entry.json);
    } catch (exc) {
      // No answer, or not the API's (a proxy's error page): maybe delivered, maybe not.
      if (exc.unreachable || exc.kind === "malformed" || RETRY_LATER.has(exc.status)) {
        const kept = { ...entry, note: exc.message };
        outbox.put(kept);
        return { done: false, entry: kept };
      }
      if (exc.code !== "duplicate") {
        outbox.remove(entry.id);
        return { done: true, committed: false, code: exc.code || `HTTP ${exc.status}`, message: exc.message };
      }
      // "already pending": a copy reached the node before (an answer lost on the way back)
    }
    const sent = { ...entry, state: "sent", note: "" };
    outbox.put(sent);
    return { done: false, entry: sent };
  }
  let found;
  try {
    found = await api.transaction(entry.id);
  } catch (exc) {
    if (exc.status === 404) {
      // The node no longer knows it (restarted, or its mempool let it go): send it again;
      // if its nonce was used meanwhile, the node says so and it leaves the outbox then.
      const again = { ...entry, state: "unsent", note: "the node lost it: sending it again" };
      outbox.put(again);
      return { done: false, entry: again };
    }
    const kept = { ...entry, note: exc.message };
    outbox.put(kept);
    return { done: false, entry: kept };
  }
  if (found.status === "committed") {
    outbox.remove(entry.id);
    return { done: true, committed: true, height: found.height };
  }
  if (found.status === "rejected") {
    outbox.remove(entry.id);
    return { done: true, committed: false, code: found.reason, message: found.message };
  }
  return { done: false, entry };
}
