// The node's API as the wallet uses it (node/qnet/openapi.yaml), on the page's own origin,
// through common/api.js: every failure is an ApiError (`unreachable` when no answer came,
// else the HTTP status and the API's error code and message).

import { getJSON, postJSON } from "../common/api.js";

export { ApiError } from "../common/api.js";

const HISTORY_PAGE = 20;
const enc = encodeURIComponent;

export const status = () => getJSON("/api/v1/status");
export const account = (address) => getJSON(`/api/v1/accounts/${enc(address)}`);
/** POST a transaction's JSON form (tx.from_json): {"id", "status": "pending"} when admitted. */
export const submit = (json) => postJSON("/api/v1/transactions", json);
export const transaction = (id) => getJSON(`/api/v1/transactions/${enc(id)}`);
export const ownedNodes = (address) => getJSON(`/api/v1/nodes?owner=${enc(address)}`);
export const nodeRecord = (nodeId) => getJSON(`/api/v1/nodes/${enc(nodeId)}`);

/** A page of the account's transactions, newest first: {address, transactions, next_cursor}. */
export function history(address, cursor = null) {
  const query = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  if (cursor !== null) query.set("cursor", String(cursor));
  return getJSON(`/api/v1/accounts/${enc(address)}/transactions?${query}`);
}
