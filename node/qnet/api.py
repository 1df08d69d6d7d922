"""The node's HTTP API (documented in openapi.yaml): thin handlers over ``Node``."""

import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import crypto
from .amounts import format_qnc
from .errors import Rejected
from .node import Node
from .tx import DecodeError, from_json, split_batch

log = logging.getLogger("qnet.api")

NODE: web.AppKey[Node] = web.AppKey("node", Node)
MAX_HEADERS_PER_PAGE = 1000

STATUS_FOR = {"malformed": 400, "duplicate": 409, "mempool_full": 503}


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request")
        return error(exc.status, code, exc.reason if code != "too_large" else
                     f"request body larger than {request.app[NODE].config.max_batch_bytes} "
                     "bytes")


def _require_type(request: web.Request, content_type: str) -> None:
    if request.content_type != content_type:
        raise _Refusal(415, "unsupported_media_type",
                       f"Content-Type must be {content_type}, not {request.content_type!r}")


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str):
        self.response = error(status, code, message)


@web.middleware
async def refusals(request: web.Request, handler):
    try:
        return await handler(request)
    except _Refusal as exc:
        return exc.response


def _rejection(exc: Rejected) -> web.Response:
    return error(STATUS_FOR.get(exc.code, 422), exc.code, exc.message)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _Refusal(413, "too_large", f"request body larger than {limit} bytes")
    body = await request.read()
    if len(body) > limit:
        raise _Refusal(413, "too_large", f"request body larger than {limit} bytes")
    return body


# ---- handlers ------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response({"status": "ok", "height": node.state.height})


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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return error(400, "malformed", f"body is not valid JSON: {exc}")
    try:
        tx = from_json(obj)
    except DecodeError as exc:
        return _rejection(node.refuse(None, Rejected("malformed", str(exc))))
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
    outcomes = await node.submit_raw(frames)
    rejected = [{"index": i, "code": o.code, "message": o.message}
                for i, o in enumerate(outcomes) if o is not None]
    return web.json_response({"accepted": len(frames) - len(rejected), "rejected": rejected})


def _hex_id(text: str) -> bytes:
    try:
        tx_id = bytes.fromhex(text)
    except ValueError:
        tx_id = b""
    if len(tx_id) != 32:
        raise _Refusal(400, "malformed", "transaction id must be 64 hex characters")
    return tx_id


async def transaction(request: web.Request) -> web.Response:
    node = request.app[NODE]
    tx_id = _hex_id(request.match_info["tx_id"])
    found = node.tx_status(tx_id)
    if found is None:
        return error(404, "not_found", "no pending, committed or recently rejected "
                                       "transaction has this id")
    return web.json_response(found)


async def account(request: web.Request) -> web.Response:
    node = request.app[NODE]
    text = request.match_info["address"]
    try:
        address = crypto.decode_address(text)
    except crypto.EncodingError as exc:
        return error(400, "malformed", str(exc))
    balance, nonce = node.state.account(address)
    queue = node.mempool.shard_of(address).senders.get(address)
    pending = len(queue.entries) if queue else 0
    return web.json_response({
        "address": text, "balance": str(balance), "balance_qnc": format_qnc(balance),
        "nonce": nonce, "pending": pending, "next_nonce": nonce + pending})


def _int_param(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _Refusal(400, "malformed", f"{name} must be a non-negative integer")
    return int(text)


async def block(request: web.Request) -> web.Response:
    node = request.app[NODE]
    height = _int_param(request.match_info["height"], "height")
    got = node.storage.block(height) if height else None
    if got is None:
        return error(404, "not_found", f"no committed block at height {height} "
                                       f"(head is {node.state.height})")
    blk, cert = got
    return web.json_response({
        "header": blk.header.to_json(), "signature": blk.signature.hex(),
        "transactions": [t.id.hex() for t in blk.txs], "certificate": cert.to_json()})


async def blocks(request: web.Request) -> web.Response:
    node = request.app[NODE]
    head = node.state.height
    first = _int_param(request.query.get("from", "1"), "from")
    last = _int_param(request.query.get("to", str(head)), "to")
    if first < 1 or last < first:
        return error(400, "malformed", "need 1 <= from <= to")
    last = min(last, first + MAX_HEADERS_PER_PAGE - 1)
    return web.json_response({"head": head,
                              "headers": [h.to_json() for h in node.storage.headers(first, last)]})


def create_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[json_errors, refusals],
                          client_max_size=node.config.max_batch_bytes)
    app[NODE] = node
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", status)
    app.router.add_post("/api/v1/transactions", submit_transaction)
    app.router.add_post("/api/v1/transactions/batch", submit_batch)
    app.router.add_get("/api/v1/transactions/{tx_id}", transaction)
    app.router.add_get("/api/v1/accounts/{address}", account)
    app.router.add_get("/api/v1/blocks", blocks)
    app.router.add_get("/api/v1/blocks/{height}", block)
    return app
