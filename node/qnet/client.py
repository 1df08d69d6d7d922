"""A small synchronous client for the node's HTTP API, used by the CLI.

Synchronous on purpose: a command makes a handful of requests in order, and urllib needs
no event loop and no extra dependency. Every failure becomes one ``ApiError`` whose code is
the API's error code (or ``unreachable``/``timeout``/``bad_response`` for transport
problems), so the CLI can print one line and exit non-zero.
"""

import json
import time
import urllib.error
import urllib.parse
import urllib.request

from . import crypto
from .tx import Transaction

DEFAULT_URL = "http://127.0.0.1:7370"
# How long a client waits out a node's rate limit (429, as long as Retry-After says each
# time) before it gives up with the refusal. A refused request changed nothing, so it is
# sent again as it was.
RATE_LIMIT_PATIENCE_S = 60.0


class ApiError(Exception):
    def __init__(
        self, code: str, message: str, status: int | None = None, retry_after: float = 0.0
    ):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after  # seconds, from a 429's Retry-After


class Client:
    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 10.0,
        patience: float = RATE_LIMIT_PATIENCE_S,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.patience = patience

    def request(
        self, method: str, path: str, body: dict | None = None, raw: bytes | None = None
    ) -> dict:
        """``body`` goes as JSON, ``raw`` as application/octet-stream. A rate-limited request
        is sent again after the node's Retry-After, for up to ``patience`` seconds."""
        give_up = time.monotonic() + self.patience
        while True:
            try:
                return self._once(method, path, body, raw)
            except ApiError as exc:
                if exc.status != 429 or time.monotonic() + exc.retry_after > give_up:
                    raise
                time.sleep(exc.retry_after)

    def _once(self, method: str, path: str, body: dict | None, raw: bytes | None) -> dict:
        if raw is not None:
            data, headers = raw, {"Content-Type": "application/octet-stream"}
        elif body is not None:
            data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        else:
            data, headers = None, {}
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return self._decode(resp.read(), resp.status)
        except urllib.error.HTTPError as exc:
            error = self._decode(exc.read(), exc.code).get("error")
            if not isinstance(error, dict):
                raise ApiError(
                    "bad_response", f"HTTP {exc.code} from {self.base_url}", exc.code
                ) from None
            raise ApiError(
                str(error.get("code")),
                str(error.get("message")),
                exc.code,
                _retry_after(exc.headers.get("Retry-After")) if exc.code == 429 else 0.0,
            ) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                "unreachable", f"no node answering at {self.base_url} ({reason})"
            ) from None
        except TimeoutError:
            raise ApiError(
                "timeout", f"{self.base_url} did not answer within {self.timeout:g} s"
            ) from None

    def _decode(self, raw: bytes, status: int) -> dict:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if not isinstance(body, dict):
            raise ApiError(
                "bad_response",
                f"HTTP {status} from {self.base_url} is not a JSON object; is this a QNet node?",
                status,
            )
        return body

    def health(self) -> dict:
        return self.request("GET", "/health")

    def status(self) -> dict:
        return self.request("GET", "/api/v1/status")

    def network(self) -> crypto.Network:
        """The node's network (chain id and genesis hash, from its status): what a
        transaction for it must be signed for."""
        status = self.status()
        try:
            return crypto.Network(status["chain_id"], bytes.fromhex(status["genesis_hash"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(
                "bad_response", f"{self.base_url} names no valid chain id and genesis hash ({exc})"
            ) from None

    def account(self, address: str) -> dict:
        return self.request("GET", f"/api/v1/accounts/{address}")

    def node(self, node_id: str) -> dict:
        return self.request("GET", f"/api/v1/nodes/{node_id}")

    def node_stats(self, **filters: str | None) -> dict:
        """``type``, ``region`` and ``owner`` filters; None leaves one out."""
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
        return self.request("GET", "/api/v1/nodes" + (f"?{query}" if query else ""))

    def peers(self) -> list[dict]:
        return self.request("GET", "/api/v1/network/peers")["peers"]

    def headers(self, first: int, last: int) -> list[dict]:
        return self.request("GET", f"/api/v1/blocks?from={first}&to={last}")["headers"]

    def epoch(self) -> dict:
        return self.request("GET", "/api/v1/epochs/current")

    def submit(self, tx: Transaction) -> dict:
        return self.request("POST", "/api/v1/transactions", tx.to_json())

    def submit_batch(self, body: bytes) -> dict:
        """A batch body (``tx.frame_batch``): ``accepted`` and the ``rejected`` by index."""
        return self.request("POST", "/api/v1/transactions/batch", raw=body)

    def block(self, height: int) -> dict:
        """The block's header and the ids of its transactions."""
        return self.request("GET", f"/api/v1/blocks/{height}")

    def tx_status(self, tx_id: str) -> dict:
        return self.request("GET", f"/api/v1/transactions/{tx_id}")

    def wait_committed(self, tx_id: str, timeout: float = 30.0, poll: float = 0.1) -> dict:
        """Poll until the transaction leaves the mempool; returns its committed or rejected
        status. A brief ``not_found`` is tolerated: the node may not have recorded it yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.tx_status(tx_id)
                if found.get("status") != "pending":
                    return found
            except ApiError as exc:
                if exc.code != "not_found":
                    raise
            if time.monotonic() >= deadline:
                raise ApiError("timeout", f"transaction {tx_id} not committed within {timeout:g} s")
            time.sleep(poll)


def _retry_after(header: str | None) -> float:
    """Retry-After in seconds (RFC 9110: a number of seconds; a date or nothing: 1 s)."""
    try:
        return max(0.0, float(header)) if header is not None else 1.0
    except ValueError:
        return 1.0
