// The wallet page (/wallet): one view at a time, keys only in this page.
//
// The seed is decrypted into this module's memory on unlock and wiped on lock; localStorage
// holds only keystore documents (keystore.js) and signed transactions still on their way
// (outbox.js). Every few seconds the page asks the node for its status, moves the outbox on
// and, with a wallet open, refreshes the balance, the history and the rewards in view.

import * as address from "./address.js";
import * as amounts from "./amounts.js";
import * as codec from "./codec.js";
import * as keystore from "./keystore.js";
import * as api from "./node.js";
import { Outbox, advance, entryFor } from "./outbox.js";
import * as phrase from "./phrase.js";

const REFRESH_MS = 2_000;
// While a transaction of this browser is on its way, it is followed more closely.
const FOLLOW_MS = 500;
const CONFIRM_WORDS = 3;
const NEEDS_WALLET = new Set(["main", "send", "rewards", "forget"]);

const $ = (id) => document.getElementById(id);
const wallets = new keystore.WalletStore(window.localStorage);
const outbox = new Outbox(window.localStorage);

const state = {
  view: "",
  net: null, // codec.network of the node, once it answered
  genesis: "",
  height: null,
  minFee: null, // the network's minimum fee (units), from the node's status: the default fee
  wallet: null, // {name, doc, key: {seed, publicKey, address}}
  account: null,
  history: { rows: [], cursor: null, extended: false, missing: false, shown: "" },
  rewards: "",
  draft: null, // a wallet being created: {name, password, seed, words, asked}
  committed: [], // this session's committed transactions: {id, address, summary, height}
  following: "", // the id the send view reports on
  busy: false,
};

// ---- small helpers ------------------------------------------------------------------------

function say(id, text) {
  $(id).textContent = text;
}

function element(tag, { text, className, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

/**
 * Replace `container`'s children, unless they read the same as before (a refresh that
 * changed nothing moves nobody's reading position), keeping keyboard focus on the element
 * of the same id.
 */
function replaceKeepingFocus(container, children) {
  const now = children.map((c) => c.textContent).join("\n");
  if (container.childElementCount === children.length && container.dataset.shown === now) return;
  container.dataset.shown = now;
  const focused = document.activeElement;
  const focusedId = focused && container.contains(focused) ? focused.id : "";
  container.replaceChildren(...children);
  if (focusedId) $(focusedId)?.focus();
}

const qnc = (units) => amounts.formatQnc(units);

/** A message as a sentence: capital first letter, closing full stop. */
function sentence(text) {
  const capital = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

function errorText(exc) {
  if (exc instanceof api.ApiError && exc.kind === "http") {
    return exc.code ? `the node refused: ${exc.code}: ${exc.message}` : exc.message;
  }
  return exc.message ?? String(exc);
}

async function busy(task) {
  if (state.busy) return;
  state.busy = true;
  document.body.classList.add("busy");
  try {
    await task();
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
}

// ---- views ----------------------------------------------------------------------------------

const enter = {
  locked: enterLocked,
  create: () => {
    $("create-form").reset();
    $("create-name").value = freeName("wallet");
  },
  phrase: enterPhrase,
  confirm: enterConfirm,
  import: () => {
    $("import-file-form").reset();
    $("import-phrase-form").reset();
    $("import-phrase-name").value = freeName("imported");
  },
  main: enterMain,
  send: enterSend,
  rewards: () => {
    state.rewards = "";
    $("rewards-nodes").replaceChildren();
    say("rewards-status", "Looking up this wallet's nodes…");
    refreshRewards();
  },
  forget: () => {
    $("forget-form").reset();
    say("forget-name", state.wallet.name);
  },
};

function show(view) {
  if (NEEDS_WALLET.has(view) && !state.wallet) view = "locked";
  if (!["phrase", "confirm"].includes(view)) dropDraft();
  state.view = view;
  for (const section of document.querySelectorAll("[data-view]")) {
    section.hidden = section.dataset.view !== view;
  }
  const current = $(`view-${view}`);
  for (const msg of current.querySelectorAll(".msg")) msg.textContent = "";
  enter[view]();
  // Focus moves to the new view's heading, so keyboard and screen reader users start there.
  current.querySelector("h1").focus();
}

function freeName(base) {
  if (!wallets.has(base)) return base;
  for (let i = 2; ; i++) if (!wallets.has(`${base}-${i}`)) return `${base}-${i}`;
}

function enterLocked() {
  const names = wallets.names();
  const select = $("unlock-wallet");
  select.replaceChildren(...names.map((n) => element("option", { text: n, attrs: { value: n } })));
  $("unlock-form").hidden = names.length === 0;
  $("locked-empty").hidden = names.length > 0;
  $("unlock-password").value = "";
  renderLockedOutbox();
}

// ---- network and refresh --------------------------------------------------------------------

function setConnection(problem) {
  const banner = $("connection");
  const text = problem
    ? `The node cannot be reached: ${problem}. Figures may be out of date; signed ` +
      "transactions are kept in this browser and sent when it answers again."
    : "";
  if (banner.textContent !== text) banner.textContent = text;
}

async function refreshStatus() {
  try {
    const s = await api.status();
    if (s.genesis_hash !== state.genesis) {
      state.net = codec.network(s.chain_id, s.genesis_hash);
      state.genesis = s.genesis_hash;
    }
    state.height = s.height;
    const known = state.minFee;
    state.minFee = minFeeOf(s);
    if (known === null && state.minFee !== null && state.view === "send" && !$("send-fee").value) {
      $("send-fee").value = qnc(state.minFee);
    }
    say(
      "network",
      `Network: ${s.chain_id} (genesis ${s.genesis_hash.slice(0, 12)}…), block ${s.height}`,
    );
    setConnection("");
    return true;
  } catch (exc) {
    setConnection(errorText(exc));
    if (!state.net) say("network", "Network: unknown (the node has not answered)");
    return false;
  }
}

const inFlight = new Set(); // ids being advanced now: one step at a time per transaction

/** Move `entry` on by one step (outbox.advance); records it once it is done. */
async function step(entry) {
  if (inFlight.has(entry.id)) return null;
  inFlight.add(entry.id);
  try {
    const outcome = await advance(outbox, entry, api);
    if (outcome.done) record(entry, outcome);
    return outcome;
  } finally {
    inFlight.delete(entry.id);
  }
}

/**
 * Move every transaction of this network's outbox on by one step, each account's in nonce
 * order (nonce n+1 reaches the node after n, or it would be refused with nonce_gap).
 */
async function advanceOutbox() {
  for (const entry of outbox.waiting().filter((e) => e.genesis === state.genesis)) {
    await step(entry);
  }
}

function record(entry, outcome) {
  if (outcome.committed) {
    // Refusals stay in the outbox until dismissed; what committed is in the history.
    const { id, address, summary } = entry;
    state.committed.unshift({ id, address, summary, height: outcome.height });
    state.committed.length = Math.min(state.committed.length, 10);
  }
  if (state.following === entry.id) reportFollowed(entry, outcome);
}

function reportFollowed(entry, outcome) {
  state.following = "";
  const view = entry.json.kind === "claim" ? "rewards" : "send";
  if (outcome.committed) {
    say(`${view}-error`, ""); // "signed but not sent", if its first answer was lost
    say(`${view}-status`, `${entry.summary}: committed in block ${outcome.height}.`);
    if (view === "rewards") reportClaim(entry.json.node_id, outcome.height);
  } else {
    say(`${view}-error`, `${entry.summary}: the node refused it: ${outcome.code}: ${outcome.message}. ` +
      "Nothing changed on chain.");
    say(`${view}-status`, "");
  }
}

/** The network's minimum fee in a status answer (`min_fee`, base units), or null. */
function minFeeOf(s) {
  try {
    return amounts.parseUnits(s.min_fee, "min_fee");
  } catch {
    return null; // a node of a version that does not say it
  }
}

const NO_MIN_FEE = "The node does not say the network's minimum fee (its version is older " +
  "than this page's)";

let ticking = false;

async function tick() {
  if (ticking) return;
  ticking = true;
  try {
    if (await refreshStatus()) {
      await advanceOutbox();
      if (state.wallet) await refreshWallet();
    }
    renderOutbox();
    renderLockedOutbox();
  } finally {
    ticking = false;
  }
}

async function refreshWallet() {
  const view = state.view;
  try {
    state.account = await api.account(state.wallet.key.address);
    $("main-error").textContent = "";
  } catch (exc) {
    say("main-error", `The balance could not be read: ${errorText(exc)}`);
    return;
  }
  renderAccount();
  if (view === "main") await refreshHistory();
  if (view === "rewards") await refreshRewards();
}

// ---- outbox display ------------------------------------------------------------------------

function describeEntry(entry) {
  if (entry.state === "refused") {
    return `refused by the node: ${entry.code}: ${entry.message}. Nothing changed on chain`;
  }
  if (entry.state === "sent") return "admitted by the node, waiting for a block";
  return `waiting to be sent${entry.note ? ` (${entry.note})` : ""}`;
}

/** What a committed claim credited: the node's last claim, if it is this one. */
async function reportClaim(nodeId, height) {
  state.rewards = "";
  try {
    const n = await api.nodeRecord(nodeId);
    if (n.last_claim && n.last_claim.height === height) {
      say("rewards-status", `Claim committed in block ${height}: credited ` +
        `${qnc(BigInt(n.last_claim.amount))} QNC to this wallet.`);
    }
  } catch {
    // the commit message already shown stands
  }
}

function renderOutbox() {
  if (!state.wallet) return;
  const mine = state.wallet.key.address;
  const items = [];
  for (const entry of outbox.entries().filter((e) => e.address === mine)) {
    const other = entry.genesis !== state.genesis ? " — signed for another network than this node's" : "";
    const li = element("li", {}, [
      element("span", { text: `${entry.summary}: ${describeEntry(entry)}${other}` }),
    ]);
    if (entry.state === "refused") {
      li.append(" ", removeButton(entry, "Dismiss", "dismiss"));
    } else if (entry.state === "unsent" || other) {
      const retry = element("button", { text: "Send now", attrs: { type: "button", id: `retry-${entry.id}` } });
      retry.addEventListener("click", () => busy(() => resend(entry.id)));
      li.append(" ", ...(other ? [] : [retry, " "]), removeButton(entry, "Discard", "discard"));
    }
    items.push(li);
  }
  // What committed is in the history below, unless this node keeps none.
  if (state.history.missing) {
    for (const c of state.committed.filter((c) => c.address === mine)) {
      items.push(element("li", { text: `${c.summary}: committed in block ${c.height}` }));
    }
  }
  $("outbox").hidden = items.length === 0;
  replaceKeepingFocus($("outbox-list"), items);
}

/** A button that takes `entry` out of the outbox (kept nowhere else). */
function removeButton(entry, text, idPrefix) {
  const button = element("button", { text, attrs: { type: "button", id: `${idPrefix}-${entry.id}` } });
  button.addEventListener("click", () => {
    outbox.remove(entry.id);
    renderOutbox();
    $("outbox-title").focus();
  });
  return button;
}

function renderLockedOutbox() {
  const waiting = outbox.waiting();
  $("outbox-locked").hidden = waiting.length === 0;
  replaceKeepingFocus(
    $("outbox-locked-list"),
    waiting.map((e) => element("li", { text: `${e.summary} (from ${e.address}): ${describeEntry(e)}` })),
  );
}

async function resend(id) {
  const entry = outbox.waiting().find((e) => e.id === id);
  if (!entry) return;
  const outcome = await step(entry);
  if (outcome && !outcome.done && outcome.entry.state === "unsent") {
    say("main-error", `Still not sent: ${outcome.entry.note}`);
  }
  renderOutbox();
}

// ---- unlock, create, import -------------------------------------------------------------

function openWallet(doc, seed) {
  state.wallet = { name: doc.name, doc, key: codec.keyPair(seed) };
  state.account = null;
  state.history = { rows: [], cursor: null, extended: false, missing: false, shown: "" };
  show("main");
  tick();
}

function lock() {
  if (state.wallet) state.wallet.key.seed.fill(0);
  state.wallet = null;
  state.account = null;
  show("locked");
}

function dropDraft() {
  if (state.draft) state.draft.seed.fill(0);
  state.draft = null;
}

$("unlock-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(async () => {
    say("unlock-error", "");
    const name = $("unlock-wallet").value;
    const password = $("unlock-password").value;
    if (!password) {
      say("unlock-error", "Enter the wallet's password.");
      $("unlock-password").focus();
      return;
    }
    say("unlock-status", "Unlocking (deriving the key from your password)…");
    try {
      const doc = wallets.get(name);
      const seed = await keystore.unseal(doc, password);
      say("unlock-status", "");
      openWallet(doc, seed);
    } catch (exc) {
      say("unlock-status", "");
      const text = exc instanceof keystore.WrongPassword
        ? `Wrong password for wallet "${name}": it stays locked. Check the password and try again.`
        : `The wallet cannot be opened: ${errorText(exc)}`;
      say("unlock-error", text);
      $("unlock-password").select();
      $("unlock-password").focus();
    }
  });
});

function checkNewWallet(name, password, again) {
  keystore.checkName(name);
  if (wallets.has(name)) {
    throw new keystore.KeystoreError(`a wallet named "${name}" is already kept in this browser`);
  }
  if (!password) throw new keystore.KeystoreError("choose a password: it encrypts the key here");
  if (password !== again) throw new keystore.KeystoreError("the two passwords differ");
}

$("create-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("create-name").value.trim();
  const password = $("create-password").value;
  try {
    checkNewWallet(name, password, $("create-password2").value);
  } catch (exc) {
    say("create-error", sentence(errorText(exc)));
    return;
  }
  const seed = codec.randomSeed();
  state.draft = { name, password, seed, words: phrase.seedToWords(seed), asked: pickPositions() };
  show("phrase");
});

/** CONFIRM_WORDS distinct word positions (0-based), ascending, drawn at random. */
function pickPositions() {
  const chosen = new Set();
  const draw = new Uint32Array(1);
  while (chosen.size < CONFIRM_WORDS) {
    crypto.getRandomValues(draw);
    chosen.add(draw[0] % phrase.WORDS);
  }
  return [...chosen].sort((a, b) => a - b);
}

function enterPhrase() {
  $("phrase-form").reset();
  $("phrase-words").replaceChildren(...state.draft.words.map((w) => element("li", { text: w })));
}

$("phrase-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!$("phrase-written").checked) {
    say("phrase-error", "Tick the box once the 24 words are written down: they are shown only here.");
    $("phrase-written").focus();
    return;
  }
  show("confirm");
});

function enterConfirm() {
  const fields = state.draft.asked.map((position) => {
    const id = `confirm-word-${position + 1}`;
    return element("div", { className: "field" }, [
      element("label", { text: `Word ${position + 1}`, attrs: { for: id } }),
      element("input", {
        attrs: { id, name: id, autocomplete: "off", autocapitalize: "none", spellcheck: "false", required: "" },
      }),
    ]);
  });
  $("confirm-fields").replaceChildren(...fields);
}

$("confirm-back").addEventListener("click", () => show("phrase"));

$("confirm-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(async () => {
    const draft = state.draft;
    say("confirm-error", "");
    for (const position of draft.asked) {
      const input = $(`confirm-word-${position + 1}`);
      if (input.value.trim().toLowerCase() !== draft.words[position]) {
        say(
          "confirm-error",
          `Word ${position + 1} does not match your phrase. Check what you wrote down, or show ` +
            "the phrase again. Nothing was created.",
        );
        input.focus();
        return;
      }
    }
    say("confirm-status", "Encrypting the wallet with your password…");
    try {
      const doc = await keystore.seal(draft.name, draft.seed, draft.password);
      wallets.add(doc);
      const seed = draft.seed.slice();
      openWallet(doc, seed);
    } catch (exc) {
      say("confirm-status", "");
      say("confirm-error", `The wallet was not created: ${errorText(exc)}`);
    }
  });
});

$("import-file-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(async () => {
    say("import-file-error", "");
    const file = $("import-file").files[0];
    const password = $("import-file-password").value;
    if (!file) {
      say("import-file-error", "Choose the wallet file first.");
      $("import-file").focus();
      return;
    }
    try {
      if (file.size > keystore.MAX_FILE_BYTES) {
        throw new keystore.KeystoreError(`not a wallet file: larger than ${keystore.MAX_FILE_BYTES} bytes`);
      }
      const doc = keystore.parseFile(new Uint8Array(await file.arrayBuffer()));
      if (wallets.has(doc.name)) {
        throw new keystore.KeystoreError(
          `a wallet named "${doc.name}" is already kept in this browser: forget it first`,
        );
      }
      say("import-file-status", "Opening the file (deriving the key from its password)…");
      const seed = await keystore.unseal(doc, password);
      wallets.add(doc);
      say("import-file-status", "");
      openWallet(doc, seed);
    } catch (exc) {
      say("import-file-status", "");
      const text = exc instanceof keystore.WrongPassword
        ? `Wrong password for the wallet file: nothing was imported.`
        : `The file was not imported: ${errorText(exc)}`;
      say("import-file-error", text);
    }
  });
});

$("import-phrase-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(async () => {
    say("import-phrase-error", "");
    const name = $("import-phrase-name").value.trim();
    let seed;
    try {
      seed = phrase.phraseToSeed($("import-phrase").value);
    } catch (exc) {
      say("import-phrase-error", `The phrase was not imported: ${exc.message}.`);
      $("import-phrase").focus();
      return;
    }
    try {
      checkNewWallet(name, $("import-phrase-password").value, $("import-phrase-password2").value);
      say("import-phrase-status", "Encrypting the wallet with your password…");
      const doc = await keystore.seal(name, seed, $("import-phrase-password").value);
      wallets.add(doc);
      say("import-phrase-status", "");
      openWallet(doc, seed);
    } catch (exc) {
      seed.fill(0);
      say("import-phrase-status", "");
      say("import-phrase-error", `The phrase was not imported: ${errorText(exc)}.`);
    }
  });
});

// ---- the open wallet ----------------------------------------------------------------------

function enterMain() {
  say("main-title", `Wallet “${state.wallet.name}”`);
  $("main-address").value = state.wallet.key.address;
  renderAccount();
  renderOutbox();
  state.history.shown = "";
  renderHistory();
}

function renderAccount() {
  const a = state.account;
  say("main-balance", a ? qnc(amounts.parseUnits(a.balance, "balance")) : "…");
  say("main-pending", a ? String(a.pending) : "…");
  say("main-nonce", a ? String(a.next_nonce) : "…");
  if (a) say("main-updated", `As of block ${state.height}.`);
  if (state.view === "send") showAvailable();
}

async function refreshHistory() {
  const h = state.history;
  try {
    const page = await api.history(state.wallet.key.address);
    if (h.extended) {
      // Older pages were loaded by hand: keep them, put what is new on top.
      const fresh = new Set(page.transactions.map((t) => t.id));
      h.rows = [...page.transactions, ...h.rows.filter((t) => !fresh.has(t.id))];
    } else {
      h.rows = page.transactions;
      h.cursor = page.next_cursor ?? null;
    }
    h.missing = false;
  } catch (exc) {
    if (!(exc instanceof api.ApiError && exc.status === 404)) {
      say("history-message", `The history could not be read: ${errorText(exc)}`);
      return;
    }
    h.missing = true;
  }
  renderHistory();
}

function describeTx(t) {
  const mine = state.wallet.key.address;
  if (t.kind === "transfer") {
    if (t.from === mine && t.to === mine) return { what: "Sent to yourself", sign: "" };
    if (t.from === mine) return { what: `Sent to ${t.to}`, sign: "−" };
    return { what: `Received from ${t.from}`, sign: "+" };
  }
  if (t.kind === "claim") return { what: `Claimed the rewards of node ${t.node_id}`, sign: "" };
  if (t.kind === "activate") return { what: `Activated ${t.node_type} node ${t.node_id} (burned)`, sign: "−" };
  return { what: t.kind, sign: "" };
}

function renderHistory() {
  const h = state.history;
  if (h.missing) {
    say("history-message", "This node does not list account transactions (its version has no " +
      "history route); the balance above is current.");
    $("history").hidden = true;
    $("history-more").hidden = true;
    return;
  }
  const shown = JSON.stringify(h.rows.map((t) => t.id)) + String(h.cursor);
  if (shown === h.shown) return;
  h.shown = shown;
  const mine = state.wallet.key.address;
  const rows = h.rows.map((t) => {
    const { what, sign } = describeTx(t);
    const amount = "amount" in t ? `${sign}${qnc(BigInt(t.amount))}` : "—";
    const fee = t.from === mine ? qnc(BigInt(t.fee)) : "—";
    return element("tr", {}, [
      element("td", { text: new Date(t.time_ms).toLocaleString(), attrs: { "data-label": "Time" } }),
      element("td", { text: what, className: "what", attrs: { "data-label": "What" } }),
      element("td", { text: amount, className: "num", attrs: { "data-label": "Amount (QNC)" } }),
      element("td", { text: fee, className: "num", attrs: { "data-label": "Fee (QNC)" } }),
      element("td", { text: String(t.height), className: "num", attrs: { "data-label": "Block" } }),
    ]);
  });
  $("history-rows").replaceChildren(...rows);
  $("history").hidden = rows.length === 0;
  say("history-message", rows.length === 0 ? "No transactions yet." : "");
  $("history-more").hidden = h.cursor === null;
}

$("history-more").addEventListener("click", () =>
  busy(async () => {
    try {
      const h = state.history;
      const page = await api.history(state.wallet.key.address, h.cursor);
      const known = new Set(h.rows.map((t) => t.id));
      h.rows.push(...page.transactions.filter((t) => !known.has(t.id)));
      h.cursor = page.next_cursor ?? null;
      h.extended = true;
      renderHistory();
      $("history-title").focus();
    } catch (exc) {
      say("history-message", `Older transactions could not be read: ${errorText(exc)}`);
    }
  }),
);

$("copy-address").addEventListener("click", async () => {
  const field = $("main-address");
  field.select();
  let copied = false;
  try {
    // The clipboard API exists only in secure contexts; plain http falls back to execCommand.
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(field.value);
      copied = true;
    } else {
      copied = document.execCommand("copy");
    }
  } catch {
    copied = false;
  }
  say("main-status", copied ? "Address copied." : "Selected: copy it with your keyboard or menu.");
});

$("export-wallet").addEventListener("click", () => {
  const blob = new Blob([keystore.fileText(state.wallet.doc)], { type: "application/json" });
  const link = element("a", { attrs: { href: URL.createObjectURL(blob), download: `${state.wallet.name}.json` } });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  say("main-status", `Exported ${state.wallet.name}.json: it opens with this wallet's password ` +
    `(qnet-cli wallet import NAME --file ${state.wallet.name}.json).`);
});

$("lock-wallet").addEventListener("click", lock);

$("forget-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!$("forget-sure").checked) {
    say("forget-error", "Tick the box to confirm you can restore this wallet elsewhere.");
    $("forget-sure").focus();
    return;
  }
  const name = state.wallet.name;
  wallets.remove(name);
  lock();
  say("unlock-status", `Wallet "${name}" is no longer kept in this browser.`);
});

// ---- sending --------------------------------------------------------------------------------

/** Units of this wallet's own transactions signed but not committed yet. */
function onTheirWay() {
  return outbox
    .forAccount(state.wallet.key.address, state.genesis)
    .reduce((sum, e) => sum + BigInt(e.cost), 0n);
}

function showAvailable() {
  const a = state.account;
  if (!a) {
    say("send-available", "");
    return;
  }
  const balance = amounts.parseUnits(a.balance, "balance");
  const away = onTheirWay();
  const free = balance > away ? balance - away : 0n;
  say("send-available", `Available: ${qnc(free)} QNC` + (away ? ` (${qnc(away)} QNC is on its way)` : ""));
}

function enterSend() {
  $("send-form").reset();
  $("send-fee").value = state.minFee === null ? "" : qnc(state.minFee);
  state.following = "";
  showAvailable();
}

/**
 * Sign what `build(nonce)` makes for the open wallet and send it, keeping it in the outbox
 * until the node has it. `view` is where messages go; `cost` what the balance must cover.
 */
async function signAndSend(view, cost, summary, build) {
  if (!state.net) {
    say(`${view}-error`, "The node has not answered yet, so its network is unknown: nothing was signed.");
    return;
  }
  say(`${view}-status`, "Reading the balance…");
  let account;
  try {
    account = await api.account(state.wallet.key.address);
  } catch (exc) {
    say(`${view}-status`, "");
    say(`${view}-error`, `${sentence(errorText(exc))} Nothing was signed or sent: try again when the node answers.`);
    return;
  }
  state.account = account;
  renderAccount();
  const balance = amounts.parseUnits(account.balance, "balance");
  const away = onTheirWay();
  if (cost > balance - away) {
    say(`${view}-status`, "");
    const detail = away ? `, of which ${qnc(away)} QNC is on its way in earlier transactions` : "";
    say(
      `${view}-error`,
      `Insufficient funds: this needs ${qnc(cost)} QNC with the fee, and the balance is ` +
        `${qnc(balance)} QNC${detail}. Nothing was signed.`,
    );
    return;
  }
  const mine = outbox.forAccount(state.wallet.key.address, state.genesis);
  const nonce = Math.max(account.next_nonce, ...mine.map((e) => e.nonce + 1));
  const tx = build(nonce);
  const entry = entryFor(tx, state.genesis, cost, summary);
  outbox.put(entry);
  state.following = tx.id;
  say(`${view}-status`, "");
  const outcome = await step(entry);
  if (outcome === null || outcome.done) {
    // recorded and reported by step; or a refresh is moving it on right now
  } else if (outcome.entry.state === "unsent") {
    say(
      `${view}-error`,
      `Signed but not sent: ${outcome.entry.note}. The transaction is kept in this browser and ` +
        "sent as soon as the node answers (see \"Sent from this browser\" in the wallet).",
    );
  } else {
    say(`${view}-status`, `${summary}: sent (id ${tx.id.slice(0, 16)}…), waiting for a block…`);
  }
  renderOutbox();
  showAvailable();
}

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy(async () => {
    say("send-error", "");
    say("send-status", "");
    let to, amount, fee;
    const fail = (id, exc) => {
      say("send-error", `${sentence(exc.message)} Nothing was signed.`);
      $(id).focus();
    };
    try {
      to = address.normalizeAddress($("send-to").value);
    } catch (exc) {
      return fail("send-to", exc);
    }
    try {
      amount = amounts.parseQnc($("send-amount").value, "amount");
    } catch (exc) {
      return fail("send-amount", exc);
    }
    if (!$("send-fee").value.trim() && state.minFee === null) {
      return fail("send-fee", new Error(`${NO_MIN_FEE}: enter the fee`));
    }
    try {
      fee = amounts.parseQnc($("send-fee").value, "fee", { allowZero: true });
    } catch (exc) {
      return fail("send-fee", exc);
    }
    if (amount + fee > amounts.MAX_AMOUNT) {
      return fail("send-amount", new amounts.AmountError("amount plus fee is too large"));
    }
    const key = state.wallet.key;
    const summary = `Send ${qnc(amount)} QNC to ${to}`;
    await signAndSend("send", amount + fee, summary, (nonce) =>
      codec.makeTransfer(key, state.net, nonce, fee, to, amount),
    );
    if (!$("send-error").textContent) $("send-amount").value = "";
  });
});

// ---- rewards --------------------------------------------------------------------------------

async function refreshRewards() {
  let records;
  try {
    const owned = await api.ownedNodes(state.wallet.key.address);
    records = await Promise.all(owned.node_ids.map((id) => api.nodeRecord(id)));
  } catch (exc) {
    say("rewards-error", `The rewards could not be read: ${errorText(exc)}`);
    return;
  }
  if ($("rewards-error").textContent.startsWith("The rewards could not")) say("rewards-error", "");
  const shown = JSON.stringify(records);
  if (shown === state.rewards || state.view !== "rewards") return;
  state.rewards = shown;
  if ($("rewards-status").textContent.startsWith("Looking up")) say("rewards-status", "");
  if (records.length === 0) {
    $("rewards-nodes").replaceChildren(
      element("p", {
        text: "This wallet owns no activated node. Activate one with " +
          `qnet-cli node activate --owner ${state.wallet.name}.`,
      }),
    );
    return;
  }
  replaceKeepingFocus($("rewards-nodes"), records.map(renderNode));
}

function renderNode(n) {
  const unclaimed = amounts.parseUnits(n.unclaimed, "unclaimed");
  const headId = `node-${n.node_id}`;
  const figures = element("dl", { className: "figures" }, [
    pair("Type and region", `${n.node_type}, ${n.region}`),
    pair("Activated in block", String(n.activated_at)),
    pair("Last heartbeat epoch", n.last_heartbeat_epoch === null ? "none yet" : String(n.last_heartbeat_epoch)),
    pair("Unclaimed", `${qnc(unclaimed)} QNC`),
    pair("Last claim", n.last_claim ? `${qnc(BigInt(n.last_claim.amount))} QNC in block ${n.last_claim.height}` : "none"),
  ]);
  const rows = n.epochs.map((e) =>
    element("tr", {}, [
      element("td", { text: String(e.epoch), className: "num", attrs: { "data-label": "Epoch" } }),
      element("td", { text: e.closed ? "closed" : "open (paid once it closes)", attrs: { "data-label": "State" } }),
      element("td", {
        text: String(Object.values(e.eligible).reduce((a, b) => a + b, 0)),
        className: "num",
        attrs: { "data-label": "Eligible nodes" },
      }),
      element("td", {
        text: e.reward === null ? "—" : qnc(BigInt(e.reward)),
        className: "num",
        attrs: { "data-label": "Reward (QNC)" },
      }),
    ]),
  );
  const table = element("table", {}, [
    element("caption", { text: "Unclaimed epochs with a heartbeat" }),
    element("thead", {}, [
      element("tr", {}, [["Epoch", "num"], ["State", ""], ["Eligible nodes", "num"], ["Reward (QNC)", "num"]]
        .map(([h, className]) => element("th", { text: h, className, attrs: { scope: "col" } }))),
    ]),
    element("tbody", {}, rows),
  ]);
  const claim = element("button", {
    text: unclaimed > 0n ? `Claim ${qnc(unclaimed)} QNC` : "Nothing to claim yet",
    className: "primary",
    attrs: { type: "button", id: `claim-${n.node_id}` },
  });
  claim.disabled = unclaimed === 0n;
  claim.addEventListener("click", () => busy(() => claimRewards(n.node_id)));
  return element("article", { className: "card", attrs: { "aria-labelledby": headId } }, [
    element("h2", { attrs: { id: headId } }, [
      "Node ",
      element("code", { text: n.node_id }),
    ]),
    figures,
    n.epochs.length ? element("div", { className: "scroll" }, [table]) : element("p", { text: "No unclaimed epoch." }),
    element("div", { className: "actions" }, [claim]),
  ]);
}

function pair(term, value) {
  return element("div", {}, [element("dt", { text: term }), element("dd", { text: value })]);
}

async function claimRewards(nodeId) {
  say("rewards-error", "");
  say("rewards-status", "");
  const fee = state.minFee;
  if (fee === null) {
    say("rewards-error", `${NO_MIN_FEE}, so the claim's fee is unknown: nothing was signed.`);
    return;
  }
  const key = state.wallet.key;
  const summary = `Claim of the rewards of node ${nodeId}`;
  await signAndSend("rewards", fee, summary, (nonce) =>
    codec.makeClaim(key, state.net, nonce, fee, nodeId),
  );
}

// ---- start ----------------------------------------------------------------------------------

for (const button of document.querySelectorAll("[data-go]")) {
  button.addEventListener("click", () => show(button.dataset.go));
}

// The wallet's modules, for checking its encoding from the browser console (and by the
// tests): no key or password is reachable from here.
window.qnet = Object.freeze({
  address,
  amounts,
  codec,
  phrase,
  keystore: Object.freeze({
    seal: keystore.seal,
    unseal: keystore.unseal,
    parseFile: keystore.parseFile,
    kdfCalls: keystore.kdfCalls,
  }),
});

async function refreshForever() {
  try {
    await tick();
  } finally {
    const waiting = outbox.waiting().some((e) => e.genesis === state.genesis);
    setTimeout(refreshForever, waiting ? FOLLOW_MS : REFRESH_MS);
  }
}

show("locked");
refreshForever();
