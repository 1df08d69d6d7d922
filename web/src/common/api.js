// Requests to the API of the node that served the page (same origin: the CSP allows no
// other), each with a deadline, and one error type that says what went wrong.

export const DEFAULT_TIMEOUT_MS = 8000;

// kind: "unreachable" (no answer: the node is down, or the network), "timeout" (no answer
// within the deadline), "http" (the node answered with an error: status, code, message are
// the API's), "malformed" (an answer that is not the JSON the API sends).
export class ApiError extends Error {
  constructor(kind, message, { status = null, code = null, retryAfterS = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }

  // True when the node could not be reached at all (as opposed to refusing the request).
  get unreachable() {
    return this.kind === "unreachable" || this.kind === "timeout";
  }
}

function retryAfter(response) {
  const value = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return Number.isFinite(value) && value >= 0 ? value : null;
}

// The decoded JSON answer of `method path`; ApiError on any failure.
export async function request(method, path, { body, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  if (!path.startsWith("/")) {
    throw new Error(`API paths are absolute on this node, not ${JSON.stringify(path)}`);
  }
  const init = { method, headers: { Accept: "application/json" }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  init.signal = AbortSignal.timeout(timeoutMs);
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "TimeoutError") {
      throw new ApiError("timeout", `the node did not answer within ${timeoutMs / 1000} s`);
    }
    throw new ApiError("unreachable", "the node cannot be reached (it is down, or the network)");
  }
  let decoded;
  try {
    decoded = await response.json();
  } catch (error) {
    if (error.name === "TimeoutError") {
      throw new ApiError("timeout", `the node did not answer within ${timeoutMs / 1000} s`);
    }
    throw new ApiError("malformed", `${method} ${path}: HTTP ${response.status}, not JSON`, {
      status: response.status,
    });
  }
  if (!response.ok) {
    const failure = decoded?.error;
    const message =
      typeof failure?.message === "string" ? failure.message : `HTTP ${response.status}`;
    throw new ApiError("http", message, {
      status: response.status,
      code: typeof failure?.code === "string" ? failure.code : null,
      retryAfterS: retryAfter(response),
    });
  }
  return decoded;
}

export function getJSON(path, options) {
  return request("GET", path, options);
}

export function postJSON(path, body, options) {
  return request("POST", path, { ...options, body });
}
