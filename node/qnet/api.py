"""The node's HTTP API (documented in openapi.yaml): thin handlers over ``Node``.

Every error, including aiohttp's own 404/405/413 and unexpected failures, is answered with
one JSON shape: ``{"error": {"code": ..., "message": ...}}``. That includes what aiohttp's
HTTP parser refuses before any handler runs (a bad request line, method, header or chunked
body) and a body that does not decode: served through ``httpserver.Runner``, such a request gets a
JSON 400 and costs the log no traceback, only a DEBUG line and at most one WARNING a minute
that counts them. (A chunked body whose framing breaks in a later packet than its headers
is not reported to the handler by aiohttp's parser: that body times out, 408.)

Strangers can reach the API, so what one client can take is bounded: per-client token buckets
on transaction submission (counted in transactions) and on the reads that touch the chain
database (counted in requests), a cap on open connections in all and per client, a time
limit on request headers (aiohttp's keep-alive timer) and bodies. Committed blocks and
transactions never change: they are read off the event loop once and kept encoded in a
bounded cache. A page of an account's history is read off the loop too; it costs a read of
each of its transactions (at most ``MAX_HISTORY_PAGE``), not of their blocks.
"""

import asyncio
import json
import logging
import math
import re
import signal
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import crypto
from . import web as web_pages
from .amounts import format_qnc
from .discovery import ScrapeTargets
from .errors import Rejected
from .genesis import NODE_TYPES, REGIONS
from .httpserver import MALFORMED, Runner, error, printable
from .node import Node
from .storage import Storage
from .topology import address_group
from .tx import DecodeError, from_json, split_batch

log = logging.getLogger("qnet.api")

NODE: web.AppKey[Node] = web.AppKey("node", object)
SCRAPE_TARGETS: web.AppKey[ScrapeTargets] = web.AppKey("scrape_targets", ScrapeTargets)
MAX_HEADERS_PER_PAGE = 1000
# Clients whose buckets are remembered; the least recently seen is forgotten first (it comes
# back with a full bucket: bounded memory matters more than a stranger's reset).
MAX_CLIENTS = 16_384
BLOCK_CACHE_BYTES = 32 * 1024 * 1024  # encoded committed blocks and header pages
BLOCK_READ_THREADS = 1  # the storage serialises its reads; one thread keeps them in order
TX_ID = re.compile(r"[0-9a-fA-F]{64}")
HISTORY_PAGE = 20  # transactions in a page of an account's history, unless the client asks
MAX_HISTORY_PAGE = 100
# Where a page of history ends: height (u64) and index in its block (u32), 24 hex digits.
CURSOR = re.compile(r"[0-9a-fA-F]{24}")

STATUS_FOR = {"malformed": 400, "duplicate": 409, "mempool_full": 503}
CODE_FOR = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class TokenBuckets:
    """One token bucket per client: ``burst`` tokens, refilled at ``rate`` a second; a table
    of at most ``capacity`` clients, least recently seen forgotten first."""

    def __init__(
        self,
        rate: float,
        burst: int,
        capacity: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate, self.burst, self.capacity, self._clock = rate, burst, capacity, clock
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def __len__(self) -> int:
        return len(self._table)

    def take(self, client: str, cost: int) -> float:
        """Take ``cost`` tokens of ``client``'s bucket: 0 if they were there, else the seconds
        until they will be (and nothing is taken)."""
        now = self._clock()
        entry = self._table.pop(client, None)
        if entry is None:
            tokens = float(self.burst)
            if len(self._table) >= self.capacity:
                self._table.popitem(last=False)
        else:
            tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
        if tokens >= cost:
            self._table[client] = (tokens - cost, now)
            return 0.0
        self._table[client] = (tokens, now)
        return (cost - tokens) / self.rate


class OpenConnections:
    """The connections (by transport) that have made a request, counted in all and per client,
    past which a new connection's request is refused. Counts only grow between recounts; a
    recount (of at most ``total`` connections) happens only when a cap seems reached."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self._client_of: weakref.WeakKeyDictionary[asyncio.BaseTransport, str] = (
            weakref.WeakKeyDictionary()
        )
        self._counts: dict[str, int] = {}

    def admit(self, connection: asyncio.BaseTransport | None, client: str) -> bool:
        if connection is None or connection in self._client_of:  # gone, or counted
            return True
        if not self._fits(client):
            self._recount()
            if not self._fits(client):
                return False
        self._client_of[connection] = client
        self._counts[client] = self._counts.get(client, 0) + 1
        return True

    def _fits(self, client: str) -> bool:
        return len(self._client_of) < self.total and self._counts.get(client, 0) < self.per_client

    def _recount(self) -> None:
        for connection in [c for c in self._client_of if c.is_closing()]:
            del self._client_of[connection]
        self._counts = {}
        for client in self._client_of.values():
            self._counts[client] = self._counts.get(client, 0) + 1


class EncodedCache:
    """Encoded answers by key, least recently used dropped first past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> bytes | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        self._bytes += len(value) - (len(old) if old is not None else 0)
        self._entries[key] = value
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


@dataclass
class Guards:
    """What the API keeps beside the node, from its config: the bounds on its clients, and the
    cache of committed blocks with the thread that reads them."""

    submissions: TokenBuckets
    reads: TokenBuckets
    connections: OpenConnections
    request_timeout_s: float
    blocks: EncodedCache
    reader: ThreadPoolExecutor

    @classmethod
    def of(cls, config) -> "Guards":
        return cls(
            TokenBuckets(config.api_submit_rate, config.api_submit_burst),
            TokenBuckets(config.api_read_rate, config.api_read_burst),
            OpenConnections(config.api_max_connections, config.api_max_client_connections),
            config.api_request_timeout_s,
            EncodedCache(BLOCK_CACHE_BYTES),
            ThreadPoolExecutor(BLOCK_READ_THREADS, thread_name_prefix="api-blocks"),
        )


GUARDS: web.AppKey[Guards] = web.AppKey("guards", Guards)


def client_key(remote: str | None) -> str:
    """Whose buckets and connections a request counts in, from its peer address: an IPv4
    address, or an IPv6 /64 (``topology.address_group``)."""
    return address_group(remote or "")


async def serve(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    """Serve ``app`` on ``host:port`` through ``httpserver.Runner`` until SIGTERM or SIGINT, then
    stop as ``web.run_app`` does: on_shutdown, open requests given ``shutdown_timeout``,
    cleanup."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = Runner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


class _Refusal(Exception):
    """Raised by request parsing helpers; the middleware answers it as an Error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict | None = None,
        close: bool = False,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.close = close  # the connection, after the answer


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (no route, wrong method, body over client_max_size) as JSON."""
    if exc.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ())))
        message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    else:  # e.g. 413: "Maximum request body size N exceeded, actual body size M"
        message = exc.text or exc.reason
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error(exc.status, CODE_FOR.get(exc.status, "bad_request"), message, allow)


@web.middleware
async def json_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except _Refusal as exc:
        refusal = error(exc.status, exc.code, exc.message, exc.headers)
        if exc.close:
            refusal.force_close()
        return refusal
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal", "the node failed to handle this request; see its log")


def _retry_after(seconds: float) -> dict:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


@web.middleware
async def connection_limits(request: web.Request, handler):
    """A request on a connection past the caps is refused, and its connection closed."""
    guards, client = request.app[GUARDS], client_key(request.remote)
    if not guards.connections.admit(request.transport, client):
        raise _Refusal(
            429,
            "too_many_connections",
            f"too many open connections (at most {guards.connections.per_client} from one "
            f"client, {guards.connections.total} in all): reuse one, or close some",
            _retry_after(1),
            close=True,
        )
    return await handler(request)


def _take(request: web.Request, buckets: TokenBuckets, cost: int, what: str) -> None:
    """Draw ``cost`` from the client's bucket, or refuse with 429 and when to come back."""
    wait = buckets.take(client_key(request.remote), cost)
    if wait:
        raise _Refusal(
            429,
            "rate_limited",
            f"too many {what} from this client (at most {buckets.rate:g} a second, "
            f"{buckets.burst} at once): retry after {wait:.3g} s",
            _retry_after(wait),
        )


def _take_read(request: web.Request) -> None:
    _take(request, request.app[GUARDS].reads, 1, "reads of the chain database")


def _take_submissions(request: web.Request, count: int) -> None:
    _take(request, request.app[GUARDS].submissions, count, "transactions")


def _require_type(request: web.Request, content_type: str) -> None:
    given = request.headers.get("Content-Type", "").strip()  # aiohttp defaults a missing one
    if not given or request.content_type != content_type:
        raise _Refusal(
            415,
            "unsupported_media_type",
            f"Content-Type must be {content_type}, "
            f"not {repr(request.content_type) if given else 'missing'}",
        )


def _check_admitting(node: Node) -> None:
    """Once a graceful stop begins, nothing more is admitted (the pending transactions are
    being handed on)."""
    if node.stopping:
        raise _Refusal(
            503,
            "stopping",
            "the node is shutting down and admits no new transactions: send them to another "
            "node, or again once this one is back",
        )


def _rejection(exc: Rejected) -> web.Response:
    return error(STATUS_FOR.get(exc.code, 422), exc.code, exc.message)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` (declared or streamed) or when it
    is not in within the request timeout."""
    message = f"request body larger than {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal(413, "too_large", message)
    timeout_s = request.app[GUARDS].request_timeout_s
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    raise _Refusal(413, "too_large", message)
    except TimeoutError:
        raise _Refusal(
            408, "timeout", f"request body not received within {timeout_s:g} s", close=True
        ) from None
    except web.RequestPayloadError as exc:  # e.g. a content encoding that does not decode
        reason = printable(getattr(exc.__cause__, "message", None) or str(exc))
        MALFORMED.note(request.remote, reason)
        raise _Refusal(
            400, "bad_request", f"malformed request body: {reason}", close=True
        ) from None
    return bytes(body)


async def _committed(
    request: web.Request,
    key: Hashable,
    encode: Callable[[], bytes | None],
    before_read: Callable[[web.Request], None] | None = None,
) -> bytes | None:
    """The encoded answer about committed blocks under ``key``: from the cache, or made by
    ``encode`` on the block reader thread and kept (``None``, not found, is not kept); a read
    is preceded by ``before_read``, which may refuse it."""
    guards = request.app[GUARDS]
    found = guards.blocks.get(key)
    if found is None:
        if before_read is not None:
            before_read(request)
        found = await asyncio.get_running_loop().run_in_executor(guards.reader, encode)
        if found is not None:
            guards.blocks.put(key, found)
    return found


def _encode_block(node: Node, height: int) -> bytes | None:
    got = node.storage.block(height)
    if got is None:
        return None
    blk, cert = got
    return json.dumps(
        {
            "header": blk.header.to_json(),
            "signature": blk.signature.hex(),
            "transactions": [t.id.hex() for t in blk.txs],
            "certificate": cert.to_json(),
        }
    ).encode()


def _encode_headers(node: Node, first: int, last: int) -> bytes:
    return json.dumps([h.to_json() for h in node.storage.headers(first, last)]).encode()


def _json_body(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


# ---- handlers ------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "height": request.app[NODE].height})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[NODE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].status())


async def submit_transaction(request: web.Request) -> web.Response:
    node = request.app[NODE]
    _require_type(request, "application/json")
    _take_submissions(request, 1)
    body = await _read_body(request, node.config.max_json_bytes)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also too deep, or a number too long
        return error(400, "malformed", f"body is not valid JSON: {exc}")
    try:
        tx = from_json(obj)
    except DecodeError as exc:
        return _rejection(node.refuse(None, Rejected("malformed", str(exc))))
    _check_admitting(node)
    (outcome,) = await node.submit([tx])
    if outcome is not None:
        return _rejection(outcome)
    return web.json_response({"id": tx.id.hex(), "status": "pending"}, status=202)


async def submit_batch(request: web.Request) -> web.Response:
    node = request.app[NODE]
    _require_type(request, "application/octet-stream")
    _take_submissions(request, 1)  # before reading a body of up to max_batch_bytes
    body = await _read_body(request, node.config.max_batch_bytes)
    try:
        frames = split_batch(body)
    except DecodeError as exc:
        return error(400, "malformed", str(exc))
    if not frames:
        return error(400, "malformed", "batch is empty")
    if len(frames) > node.config.max_batch_txs:
        return error(
            413,
            "too_large",
            f"batch holds {len(frames)} transactions; at most "
            f"{node.config.max_batch_txs} per request",
        )
    if len(frames) > 1:
        _take_submissions(request, len(frames) - 1)
    _check_admitting(node)
    outcomes = await node.submit_raw(frames)
    rejected = [
        {"index": i, "code": o.code, "message": o.message}
        for i, o in enumerate(outcomes)
        if o is not None
    ]
    return web.json_response({"accepted": len(frames) - len(rejected), "rejected": rejected})


def _hex_id(text: str) -> bytes:
    if not TX_ID.fullmatch(text):
        raise _Refusal(400, "malformed", "transaction id must be 64 hex characters")
    return bytes.fromhex(text)


def _encode_committed_tx(node: Node, tx_id: bytes) -> bytes | None:
    found = node.storage.committed_tx(tx_id)
    return None if found is None else json.dumps(found.to_json()).encode()


async def transaction(request: web.Request) -> web.Response:
    """Pending (from the mempool), else committed (from the chain database, where a
    transaction is before it leaves the mempool), else recently rejected. Only a look in the
    database takes a read token: polling a pending transaction, or a committed one read
    before, costs none."""
    node = request.app[NODE]
    tx_id = _hex_id(request.match_info["tx_id"])
    known = node.tx_status(tx_id)
    if known is None or known["status"] != "pending":
        committed = await _committed(
            request, ("tx", tx_id), lambda: _encode_committed_tx(node, tx_id), _take_read
        )
        if committed is not None:
            return _json_body(committed)
    if known is None:
        return error(
            404, "not_found", "no pending, committed or recently rejected transaction has this id"
        )
    return web.json_response(known)


def _address_param(request: web.Request) -> bytes:
    try:
        return crypto.decode_address(request.match_info["address"])
    except crypto.EncodingError as exc:
        raise _Refusal(400, "malformed", str(exc)) from None


def _cursor_param(request: web.Request) -> tuple[int, int] | None:
    """The position a page of history starts below, from a ``next_cursor`` given back."""
    text = request.query.get("cursor")
    if text is None:
        return None
    if not CURSOR.fullmatch(text):
        raise _Refusal(
            400,
            "malformed",
            f"cursor must be a next_cursor this API returned (24 hex digits), not {text[:40]!r}",
        )
    return int(text[:16], 16), int(text[16:], 16)


def history_page(storage: Storage, address: bytes, before: tuple[int, int], limit: int) -> dict:
    """A page of ``address``'s history: ``limit`` transactions below ``before`` and the
    cursor of the next page (one more is read to know whether there is one)."""
    found = storage.account_txs(address, before, limit + 1)
    page = found[:limit]
    last = page[-1] if len(found) > limit else None
    return {
        "address": crypto.encode_address(address),
        "transactions": [t.to_json() for t in page],
        "next_cursor": None if last is None else f"{last.height:016x}{last.index:08x}",
    }


async def account_transactions(request: web.Request) -> web.Response:
    """The committed transactions that touch an address, newest first, a page at a time."""
    node = request.app[NODE]
    _take_read(request)
    address = _address_param(request)
    limit = _int_param(request.query.get("limit", str(HISTORY_PAGE)), "limit")
    if not 1 <= limit <= MAX_HISTORY_PAGE:
        return error(400, "malformed", f"limit must be 1 to {MAX_HISTORY_PAGE}, not {limit}")
    # Up to the head this node has merged (what its balances show); a cursor from a node
    # further ahead starts there too.
    top = (node.state.height + 1, 0)
    before = min(_cursor_param(request) or top, top)
    body = await asyncio.get_running_loop().run_in_executor(
        request.app[GUARDS].reader,
        lambda: json.dumps(history_page(node.storage, address, before, limit)).encode(),
    )
    return _json_body(body)


async def account(request: web.Request) -> web.Response:
    node = request.app[NODE]
    address = _address_param(request)
    balance, nonce = node.state.account(address)
    pending = node.mempool.pending_count(address)
    return web.json_response(
        {
            "address": crypto.encode_address(address),
            "balance": str(balance),
            "balance_qnc": format_qnc(balance),
            "nonce": nonce,
            "pending": pending,
            "next_nonce": nonce + pending,
        }
    )


def _int_param(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _Refusal(
            400, "malformed", f"{name} must be a non-negative integer, not {text[:40]!r}"
        )
    return int(text)


async def block(request: web.Request) -> web.Response:
    node = request.app[NODE]
    _take_read(request)
    height = _int_param(request.match_info["height"], "height")
    head = node.state.height  # committed: its block is on disk before the head moves to it
    found = None
    if 1 <= height <= head:
        found = await _committed(request, ("block", height), lambda: _encode_block(node, height))
    if found is None:
        return error(404, "not_found", f"no committed block at height {height} (head is {head})")
    return _json_body(found)


async def blocks(request: web.Request) -> web.Response:
    """Headers ``from``..``to`` (default: 1 to the head), at most MAX_HEADERS_PER_PAGE."""
    node = request.app[NODE]
    _take_read(request)
    head = node.state.height
    first = _int_param(request.query.get("from", "1"), "from")
    if first < 1:
        return error(400, "malformed", "from must be at least 1")
    if "to" in request.query:
        last = _int_param(request.query["to"], "to")
        if last < first:
            return error(400, "malformed", f"to ({last}) must not be below from ({first})")
    else:
        last = head
    last = min(last, first + MAX_HEADERS_PER_PAGE - 1, head)
    headers = b"[]"
    if first <= last:
        key = ("headers", first, last)
        headers = await _committed(request, key, lambda: _encode_headers(node, first, last))
    return _json_body(b'{"head": %d, "headers": %s}' % (head, headers))


async def node_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    _take_read(request)
    try:
        node_key = crypto.decode_node_id(request.match_info["node_id"])
    except crypto.EncodingError as exc:
        return error(400, "malformed", str(exc))
    found = await node.node_info(node_key, request.app[GUARDS].reader)
    if found is None:
        return error(404, "not_found", f"node {request.match_info['node_id']} is not activated")
    return web.json_response(found)


def _choice_param(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in choices:
        raise _Refusal(
            400, "malformed", f"{name} must be one of {', '.join(choices)}, not {value[:40]!r}"
        )
    return value


async def nodes(request: web.Request) -> web.Response:
    node = request.app[NODE]
    _take_read(request)
    owner = request.query.get("owner")
    try:
        owner_address = None if owner is None else crypto.decode_address(owner)
    except crypto.EncodingError as exc:
        return error(400, "malformed", str(exc))
    stats = node.node_stats(
        _choice_param(request, "type", NODE_TYPES),
        _choice_param(request, "region", REGIONS),
        owner_address,
    )
    return web.json_response(stats)


async def network_peers(request: web.Request) -> web.Response:
    return web.json_response({"peers": request.app[NODE].network_peers()})


async def arrivals(request: web.Request) -> web.Response:
    rows = [{"height": h, "time_ms": t} for h, t in request.app[NODE].arrivals]
    return web.json_response({"arrivals": rows})


async def scrape_targets(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SCRAPE_TARGETS].document())


async def current_epoch(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].epoch_info())


async def not_served(request: web.Request) -> web.Response:
    return error(
        404,
        "not_found",
        f"{request.path} needs ledger state, which a light node does not keep: "
        "ask a full or super node",
    )


# What a light node answers itself; the other routes answer 404 with a reason.
LIGHT_ROUTES = {"/health", "/metrics", "/api/v1/status", "/api/v1/network/peers",
                "/api/v1/network/arrivals"}  # fmt: skip


def create_app(node, targets: ScrapeTargets | None) -> web.Application:
    """The API of a ``Node`` with the source of its service discovery document, or of a
    ``light.LightNode`` (which serves ``LIGHT_ROUTES`` and has no ``targets``)."""
    guards = Guards.of(node.config)
    app = web.Application(
        middlewares=[json_errors, connection_limits],
        client_max_size=node.config.max_batch_bytes,
        # aiohttp's keep-alive timer runs from a connection's opening and from each answer
        # until the next request's headers are in: the header read timeout too.
        handler_args={"keepalive_timeout": guards.request_timeout_s},
    )
    app[NODE] = node
    app[GUARDS] = guards

    async def block_reader(app: web.Application) -> AsyncIterator[None]:
        yield
        guards.reader.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(block_reader)
    light = node.config.node_type == "light"
    if (targets is None) != light:
        raise ValueError("a node with ledger state serves service discovery, a light one not")
    if targets is not None:
        app[SCRAPE_TARGETS] = targets

        async def close_targets(app: web.Application) -> None:
            await targets.close()

        app.on_cleanup.append(close_targets)
    # add_route, not add_get: no implicit HEAD routes beside the documented operations
    for method, path, handler in (
        ("GET", "/health", health),
        ("GET", "/metrics", metrics),
        ("GET", "/api/v1/status", status),
        ("POST", "/api/v1/transactions", submit_transaction),
        ("POST", "/api/v1/transactions/batch", submit_batch),
        ("GET", "/api/v1/transactions/{tx_id}", transaction),
        ("GET", "/api/v1/accounts/{address}", account),
        ("GET", "/api/v1/accounts/{address}/transactions", account_transactions),
        ("GET", "/api/v1/blocks", blocks),
        ("GET", "/api/v1/blocks/{height}", block),
        ("GET", "/api/v1/nodes", nodes),
        ("GET", "/api/v1/nodes/{node_id}", node_record),
        ("GET", "/api/v1/epochs/current", current_epoch),
        ("GET", "/api/v1/network/peers", network_peers),
        ("GET", "/api/v1/network/arrivals", arrivals),
        ("GET", "/api/v1/network/sd", scrape_targets),
        *web_pages.routes(),
    ):
        served = not light or path in LIGHT_ROUTES
        app.router.add_route(method, path, handler if served else not_served)
    return app
