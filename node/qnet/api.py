"""The node's HTTP API (documented in openapi.yaml): thin handlers over ``Node``.

Every error, including aiohttp's own 404/405/413 and unexpected failures, is answered with
one JSON shape: ``{"error": {"code": ..., "message": ...}}``.
"""

import json
import logging
import re

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import crypto
from .amounts import format_qnc
from .discovery import ScrapeTargets
from .errors import Rejected
from .genesis import NODE_TYPES, REGIONS
from .node import Node
from .tx import DecodeError, from_json, split_batch

log = logging.getLogger("qnet.api")

NODE: web.AppKey[Node] = web.AppKey("node", object)
SCRAPE_TARGETS: web.AppKey[ScrapeTargets] = web.AppKey("scrape_targets", ScrapeTargets)
MAX_HEADERS_PER_PAGE = 1000
TX_ID = re.compile(r"[0-9a-fA-F]{64}")

STATUS_FOR = {"malformed": 400, "duplicate": 409, "mempool_full": 503}
CODE_FOR = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class _Refusal(Exception):
    """Raised by request parsing helpers; the middleware answers it as an Error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


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
        return error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal", "the node failed to handle this request; see its log")


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
    """The whole body, refused as soon as it passes ``limit`` (declared or streamed)."""
    message = f"request body larger than {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal(413, "too_large", message)
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise _Refusal(413, "too_large", message)
    return bytes(body)


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


async def transaction(request: web.Request) -> web.Response:
    node = request.app[NODE]
    tx_id = _hex_id(request.match_info["tx_id"])
    found = node.tx_status(tx_id)
    if found is None:
        return error(
            404, "not_found", "no pending, committed or recently rejected transaction has this id"
        )
    return web.json_response(found)


async def account(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        address = crypto.decode_address(request.match_info["address"])
    except crypto.EncodingError as exc:
        return error(400, "malformed", str(exc))
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
    height = _int_param(request.match_info["height"], "height")
    got = node.storage.block(height) if height else None
    if got is None:
        return error(
            404, "not_found", f"no committed block at height {height} (head is {node.state.height})"
        )
    blk, cert = got
    return web.json_response(
        {
            "header": blk.header.to_json(),
            "signature": blk.signature.hex(),
            "transactions": [t.id.hex() for t in blk.txs],
            "certificate": cert.to_json(),
        }
    )


async def blocks(request: web.Request) -> web.Response:
    """Headers ``from``..``to`` (default: 1 to the head), at most MAX_HEADERS_PER_PAGE."""
    node = request.app[NODE]
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
    last = min(last, first + MAX_HEADERS_PER_PAGE - 1)
    return web.json_response(
        {"head": head, "headers": [h.to_json() for h in node.storage.headers(first, last)]}
    )


async def node_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        node_key = crypto.decode_node_id(request.match_info["node_id"])
    except crypto.EncodingError as exc:
        return error(400, "malformed", str(exc))
    found = node.node_info(node_key)
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
    app = web.Application(middlewares=[json_errors], client_max_size=node.config.max_batch_bytes)
    app[NODE] = node
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
        ("GET", "/api/v1/blocks", blocks),
        ("GET", "/api/v1/blocks/{height}", block),
        ("GET", "/api/v1/nodes", nodes),
        ("GET", "/api/v1/nodes/{node_id}", node_record),
        ("GET", "/api/v1/epochs/current", current_epoch),
        ("GET", "/api/v1/network/peers", network_peers),
        ("GET", "/api/v1/network/arrivals", arrivals),
        ("GET", "/api/v1/network/sd", scrape_targets),
    ):
        served = not light or path in LIGHT_ROUTES
        app.router.add_route(method, path, handler if served else not_served)
    return app
