// Signed transactions this browser sent or still has to send, kept in localStorage until the
// node says they are committed or refused: a transaction signed while the node is down, or
// whose answer was lost, is never silently dropped. Each entry holds the transaction's JSON
// (no key: resending needs none) and the network it was signed for.
//
//   state "unsent":  no node is known to have admitted it yet; sent again at every refresh,
//                    or by hand. An answer may have been lost (a timeout, a reload during the
//                    request), so before a refusal of it is believed the node is asked
//                    whether it holds or committed it already.
//   state "sent":    a node admitted it; followed until committed (then removed, with its
//                    height) or refused.
//   state "refused": the node refused it (code and message kept): shown until the user
//                    dismisses it, even after a reload or with the wallet locked meanwhile.

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

  /** Entries still on their way (not refused), by account, then oldest nonce first. */
  waiting() {
    return this.entries()
      .filter((e) => e.state !== "refused")
      .sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : a.nonce - b.nonce));
  }

  /** Entries of `address` on the network of `genesis` still on their way, oldest nonce first. */
  forAccount(address, genesis) {
    return this.waiting().filter((e) => e.address === address && e.genesis === genesis);
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
 * {done: true, committed, height, code, message} once it is committed (removed) or refused
 * (kept as "refused" until dismissed).
 */
export async function advance(outbox, entry, api) {
  if (entry.state === "refused") return { done: false, entry };
  if (entry.state === "unsent") {
    try {
      await api.submit(entry.json);
    } catch (exc) {
      // No answer, or not the API's (a proxy's error page): maybe delivered, maybe not.
      if (exc.unreachable || exc.kind === "malformed" || RETRY_LATER.has(exc.status)) {
        return keep(outbox, entry, exc.message);
      }
      return refusedUnlessKnown(outbox, entry, api, exc);
    }
    return keep(outbox, { ...entry, state: "sent" }, "");
  }
  let found;
  try {
    found = await api.transaction(entry.id);
  } catch (exc) {
    if (exc.status === 404) {
      // The node no longer knows it (restarted, or its mempool let it go): send it again;
      // if its nonce was used meanwhile, the node says so and it is refused then.
      return keep(outbox, { ...entry, state: "unsent" }, "the node lost it: sending it again");
    }
    return keep(outbox, entry, exc.message);
  }
  return settle(outbox, entry, found) ?? { done: false, entry };
}

function keep(outbox, entry, note) {
  const kept = { ...entry, note };
  outbox.put(kept);
  return { done: false, entry: kept };
}

/** The outcome of what the node said of `entry`, if it is final (else null). */
function settle(outbox, entry, found) {
  if (found.status === "committed") {
    outbox.remove(entry.id);
    return { done: true, committed: true, height: found.height };
  }
  if (found.status === "rejected") return refuse(outbox, entry, found.reason, found.message);
  return null;
}

function refuse(outbox, entry, code, message) {
  outbox.put({ ...entry, state: "refused", code, message, note: "" });
  return { done: true, committed: false, code, message };
}

/**
 * The node refused to admit `entry` (`exc`). An earlier copy may have reached it (the answer
 * lost), and may even be committed by now ("stale_nonce"), or pending ("duplicate"): the
 * node is asked about the id before the refusal is believed. A refusal stands only when the
 * node knows nothing of this transaction (a different one with the same nonce is a real
 * refusal); "nonce_gap" while a lower nonce of the account is still on its way waits.
 */
async function refusedUnlessKnown(outbox, entry, api, exc) {
  let found = null;
  try {
    found = await api.transaction(entry.id);
  } catch (lookup) {
    if (lookup.status !== 404) return keep(outbox, entry, lookup.message);
  }
  if (found !== null) {
    const settled = settle(outbox, entry, found);
    if (settled) return settled;
    if (found.status === "pending") return keep(outbox, { ...entry, state: "sent" }, "");
  }
  const code = exc.code || `HTTP ${exc.status}`;
  if (code === "nonce_gap") {
    const lower = outbox
      .forAccount(entry.address, entry.genesis)
      .find((e) => e.nonce < entry.nonce);
    if (lower) return keep(outbox, entry, `waiting for the transaction of nonce ${lower.nonce}`);
  }
  return refuse(outbox, entry, code, exc.message);
}
