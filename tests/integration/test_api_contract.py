"""openapi.yaml is the API's contract: it lists exactly the app's routes, and every answer the
running node gives (valid and invalid input alike) validates against the schema documented for
its operation and status code."""

import asyncio
import http.client
import io
import json
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from qnet import crypto, tx
from qnet import web as web_pages
from qnet.api import create_app
from qnet.config import NodeConfig, load_config
from qnet.discovery import ScrapeTargets
from qnet.errors import Rejected
from qnet.genesis import Params, make_genesis
from qnet.light import LightNode
from qnet.localnode import CHAIN_ID, NO_EMPTY_BLOCKS, LocalNode
from qnet.node import Node

SPEC = yaml.safe_load(resources.files("qnet").joinpath("openapi.yaml").read_text())
BASE_URI = "urn:qnet:openapi"
REGISTRY = Registry().with_resource(
    BASE_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012)
)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
REQUEST_CODES = {
    "not_found",
    "too_large",
    "unsupported_media_type",
    "bad_request",
    "method_not_allowed",
    "internal",
    "stopping",
    "rate_limited",
    "too_many_connections",
    "timeout",
    "unavailable",
}
FUNDS = 1_000 * 10**9
FEE = Params().min_fee
MAX_JSON_BYTES = NodeConfig.max_json_bytes  # the defaults the node under test runs with
MAX_BATCH_BYTES = NodeConfig.max_batch_bytes


def spec_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _at(pointer: str) -> object:
    obj = SPEC
    for part in pointer.lstrip("/").split("/"):
        obj = obj[part.replace("~1", "/").replace("~0", "~")]
    return obj


def _follow(pointer: str) -> tuple[str, dict]:
    """The object at ``pointer``, following local ``$ref``s (OpenAPI response references)."""
    obj = _at(pointer)
    while isinstance(obj, dict) and "$ref" in obj:
        pointer = obj["$ref"].removeprefix("#")
        obj = _at(pointer)
    return pointer, obj


def schema_validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer``; ``$ref``s resolve within the document."""
    return Draft202012Validator({"$ref": f"{BASE_URI}#{pointer}"}, registry=REGISTRY)


def _response_pointer(method: str, template: str, status: int) -> str:
    return f"/paths/{_escape(template)}/{method.lower()}/responses/{status}"


def _json_schema_pointer(response_pointer: str) -> str:
    pointer, _ = _follow(response_pointer)
    return f"{pointer}/content/{_escape('application/json')}/schema"


def _error_schema_refs(pointer: str) -> set[str]:
    """The ``$ref``s an error response's schema is built from (itself or its allOf)."""
    schema = _at(pointer)
    parts = schema.get("allOf", [schema])
    return {p["$ref"] for p in parts if "$ref" in p}


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


TEMPLATES = [(t, _template_regex(t)) for t in SPEC["paths"]]


# ---- (a) routes: the app and the document list the same operations -----------------------


@pytest.fixture
def in_process_node(tmp_path):
    """A Node that is not serving: enough to build the app and look at its router."""
    key = crypto.KeyPair.generate()
    genesis = make_genesis("routes", [(key.node_id, "eu")], {})
    node = Node(load_config(tmp_path, region="eu", max_batch_bytes=1024), genesis, key)
    yield node
    node.close()


def app_of(node: Node) -> web.Application:
    return create_app(node, ScrapeTargets(list, node.state.node))


@pytest.fixture
def app_routes(in_process_node) -> set[tuple[str, str]]:
    app = app_of(in_process_node)
    return {(r.method, r.resource.canonical) for r in app.router.routes()}


def test_every_route_is_documented_and_every_documented_operation_is_routed(app_routes):
    documented = spec_operations()
    assert app_routes - documented == set(), "routes missing from openapi.yaml"
    assert documented - app_routes == set(), "documented operations the app does not serve"


def test_unexpected_failures_and_aiohttp_refusals_are_json_errors(in_process_node):
    """Paths no handler reaches today, checked on the app with two extra routes."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def reads_whole_body(request: web.Request) -> web.Response:
        await request.read()  # aiohttp enforces client_max_size here (HTTP 413)
        return web.json_response({})

    async def exchange() -> list[tuple[int, dict]]:
        app = app_of(in_process_node)
        app.router.add_get("/broken", broken)
        app.router.add_post("/reads", reads_whole_body)
        async with TestClient(TestServer(app)) as client:
            answers = []
            for method, path, body in (("GET", "/broken", None), ("POST", "/reads", b"x" * 2048)):
                resp = await client.request(method, path, data=body)
                assert resp.content_type == "application/json"
                answers.append((resp.status, await resp.json()))
            return answers

    (internal, internal_body), (too_large, too_large_body) = asyncio.run(exchange())
    assert internal == 500 and "a bug" not in internal_body["error"]["message"]
    assert (
        list(
            schema_validator(_json_schema_pointer("/components/responses/Internal")).iter_errors(
                internal_body
            )
        )
        == []
    )
    assert too_large == 413 and "1024" in too_large_body["error"]["message"]
    assert (
        list(
            schema_validator(_json_schema_pointer("/components/responses/TooLarge")).iter_errors(
                too_large_body
            )
        )
        == []
    )


# Requests aiohttp's HTTP parser refuses before any handler runs, and a body that breaks its
# framing after the headers were fine.
MALFORMED_HTTP = {
    "request line": b"GET\r\n\r\n",
    "method": b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "header": b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "header value": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: \x01\x02\r\n\r\n",
    "version": b"GET /health HTTP/9.Z\r\nHost: x\r\n\r\n",
    "tls": bytes.fromhex("160301020001000200fc0303") + b"\x00" * 32,
    "chunked body": b"POST /api/v1/transactions HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    "encoded body": b"POST /api/v1/transactions HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 27\r\n"
    b"\r\n\x1f\x8b\x08\x00garbage-garbage-garbage",
}


def _raw_exchange(port: int, raw: bytes) -> tuple[int, str, dict]:
    """Send ``raw`` on a new connection; the status, content type and JSON body of the one
    answer (the connection is closed after it)."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        try:
            return await asyncio.wait_for(reader.read(), 10)  # to EOF: closed
        finally:
            writer.close()

    answer = asyncio.run(exchange())
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = http.client.parse_headers(io.BytesIO(head.split(b"\r\n", 1)[1] + b"\r\n\r\n"))
    return int(head.split()[1]), headers.get_content_type(), json.loads(body)


def test_malformed_http_gets_a_json_400_and_floods_no_log(tmp_path):
    """On a real node, on its API port and on its peer port: every request the HTTP parser
    refuses is answered with the API's JSON error, and a hundred of them on each leave no
    traceback and one warning line in its log."""
    node = LocalNode.single(tmp_path / "node", {}, config=NO_EMPTY_BLOCKS)
    node.start()
    try:
        logged = len(node.log())
        malformed = schema_validator(_json_schema_pointer("/components/responses/Malformed"))
        # The peer port has no route that reads a body: what its parser refuses.
        at_parse = {k: v for k, v in MALFORMED_HTTP.items() if k != "encoded body"}
        for port, cases in ((node.port, MALFORMED_HTTP), (node.p2p_port, at_parse)):
            for name, raw in cases.items():
                status, content_type, body = _raw_exchange(port, raw)
                assert (status, content_type) == (400, "application/json"), (port, name)
                assert list(malformed.iter_errors(body)) == [], (port, name, body)
                assert body["error"]["code"] == "bad_request", (port, name)
            for _ in range(100):
                assert _raw_exchange(port, MALFORMED_HTTP["method"])[0] == 400
        assert node.get("/health")[0] == 200
        log = node.log()[logged:]
    finally:
        node.stop()
    assert "Traceback" not in log and "Error handling request" not in log, log
    assert log.count("malformed HTTP request") == 1, log


# ---- the document itself -------------------------------------------------------------------


def _objects(schema: object, where: str):
    """Every object schema (one with ``properties``) nested in ``schema``, with its location."""
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("type") == "object":
            yield where, schema
        for key, value in schema.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _objects(value, f"{where}/{i}")


def test_schemas_are_valid_and_closed():
    for name, schema in SPEC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        for where, obj in _objects(schema, name):
            assert obj.get("additionalProperties") is False, f"{where} admits unknown fields"
            assert set(obj.get("required", [])) <= set(obj["properties"]), where
    for name in SPEC["components"]["responses"]:
        Draft202012Validator.check_schema(
            _at(_json_schema_pointer(f"/components/responses/{name}"))
        )


def _examples() -> list[tuple[str, object]]:
    """Every example of a documented answer, with the pointer of the schema it illustrates."""
    found = []
    for method, template in spec_operations():
        for status in SPEC["paths"][template][method.lower()]["responses"]:
            pointer = _response_pointer(method, template, int(status))
            for media_type, content in _follow(pointer)[1].get("content", {}).items():
                schema = f"{_follow(pointer)[0]}/content/{_escape(media_type)}/schema"
                if "example" in content:
                    found.append((schema, content["example"]))
                for example in content.get("examples", {}).values():
                    found.append((schema, example["value"]))
    return found


def test_examples_are_valid_answers():
    examples = _examples()
    assert len(examples) >= 4  # the transaction's three states, a page of history
    for pointer, example in examples:
        errors = [e.message for e in schema_validator(pointer).iter_errors(example)]
        assert errors == [], f"{pointer}: {errors}"


def test_error_codes_are_the_servers():
    schemas = SPEC["components"]["schemas"]
    assert set(schemas["ErrorCode"]["enum"]) == set(Rejected.CODES) | REQUEST_CODES
    assert schemas["RejectCode"]["enum"] == list(Rejected.CODES)


def test_every_error_response_is_the_shared_error():
    for method, template in spec_operations():
        responses = SPEC["paths"][template][method.lower()]["responses"]
        assert "default" not in responses, "every status must be listed, not defaulted"
        for status in responses:
            pointer = _response_pointer(method, template, int(status))
            if int(status) >= 400:
                refs = _error_schema_refs(_json_schema_pointer(pointer))
                assert "#/components/schemas/Error" in refs, f"{method} {template} {status}"
                assert list(_follow(pointer)[1]["content"]) == ["application/json"]
    for name in ("NotFound", "MethodNotAllowed", "Internal"):
        refs = _error_schema_refs(_json_schema_pointer(f"/components/responses/{name}"))
        assert "#/components/schemas/Error" in refs


def test_validation_fails_on_an_extra_or_a_missing_field():
    status = {
        "node_id": crypto.KeyPair.generate().node_id,
        "node_type": "super",
        "region": "eu",
        "region_rtt_ms": {"eu": 1.25, "na": None},
        "version": "0.1.0",
        "chain_id": CHAIN_ID,
        "genesis_hash": "00" * 32,
        "min_fee": "1000",
        "height": 0,
        "block_hash": "00" * 32,
        "block_time_ms": 0,
        "state_digest": "11" * 32,
        "mempool_size": 0,
        "uptime_s": 1.5,
        "peers": 3,
        "sync_lag_blocks": 0,
        "consensus_round": 0,
    }
    check = schema_validator(_json_schema_pointer(_response_pointer("GET", "/api/v1/status", 200)))
    assert list(check.iter_errors(status)) == []
    assert list(check.iter_errors({**status, "validators": 4}))
    assert list(check.iter_errors({k: v for k, v in status.items() if k != "height"}))
    error = schema_validator(
        _json_schema_pointer(_response_pointer("POST", "/api/v1/transactions", 422))
    )
    assert list(error.iter_errors({"error": {"code": "nonce_gap", "message": "ahead"}})) == []
    assert list(error.iter_errors({"error": {"code": "nonce_gap", "message": "x", "at": 1}}))
    assert list(error.iter_errors({"error": {"code": "not_found", "message": "x"}}))
    assert list(error.iter_errors({"error": "nonce_gap"}))


# ---- (b) the running node against the document ---------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    headers: http.client.HTTPMessage
    body: object


@dataclass
class Api:
    """Sends requests to a node and checks every answer against openapi.yaml."""

    node: LocalNode
    wallets: list[crypto.KeyPair]
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)

    def call(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict | None = None,
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=30)
        try:
            conn.request(
                method,
                target,
                body=body,
                headers={
                    **({"Content-Type": content_type} if content_type else {}),
                    **(headers or {}),
                },
            )
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        ctype = resp.headers.get_content_type()
        if method == "HEAD":  # headers only: nothing to parse
            parsed = None
        else:
            parsed = json.loads(raw) if ctype == "application/json" else raw.decode()
        answer = Answer(resp.status, ctype, resp.headers, parsed)
        self._check(method, urlsplit(target).path, answer)
        return answer

    def _check(self, method: str, path: str, answer: Answer) -> None:
        where = f"{method} {path} -> {answer.status}"
        matching = [t for t, rx in TEMPLATES if rx.match(path)]
        serving = [t for t in matching if method.lower() in SPEC["paths"][t]]
        template = next((t for t in serving if "{" not in t), serving[0] if serving else None)
        if template is None:  # no such route or method: the shared answers for those
            name = "MethodNotAllowed" if matching else "NotFound"
            pointer = f"/components/responses/{name}"
            assert answer.status == (405 if matching else 404), where
            if matching:
                assert "Allow" in answer.headers, where
        else:
            pointer = _response_pointer(method, template, answer.status)
            self.seen.add((method, template, answer.status))
            try:
                _at(pointer)
            except KeyError:
                pytest.fail(f"{where}: status not documented for {method} {template}")
        response = _follow(pointer)[1]
        if "content" not in response:  # 304
            assert answer.body == "", where
            return
        assert answer.content_type in response["content"], where
        if answer.content_type == "application/json" and answer.body is not None:
            errors = [
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in schema_validator(_json_schema_pointer(pointer)).iter_errors(answer.body)
            ]
            assert errors == [], f"{where}: {answer.body!r} does not match the schema"

    def submit(self, obj: object) -> Answer:
        return self.call(
            "POST", "/api/v1/transactions", json.dumps(obj).encode(), "application/json"
        )

    def batch(self, body: bytes) -> Answer:
        return self.call("POST", "/api/v1/transactions/batch", body, "application/octet-stream")

    def wait(self, tx_id: bytes, status: str = "committed") -> dict:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = self.call("GET", f"/api/v1/transactions/{tx_id.hex()}")
            if got.status == 200 and got.body["status"] == status:
                return got.body
            time.sleep(0.05)
        raise TimeoutError(f"transaction {tx_id.hex()} never {status}")

    def settle(self) -> None:
        deadline = time.monotonic() + 20
        while self.call("GET", "/api/v1/status").body["mempool_size"]:
            assert time.monotonic() < deadline, "mempool never drained"
            time.sleep(0.05)

    def transfer(
        self, key: crypto.KeyPair, amount: int = 10**9, fee: int = FEE, nonce: int | None = None
    ) -> tx.Transaction:
        if nonce is None:
            account = self.call("GET", f"/api/v1/accounts/{crypto.encode_address(key.address)}")
            nonce = account.body["next_nonce"]
        network = self.node.genesis.network
        return tx.make_transfer(key, network, nonce, fee, self.wallets[-1].address, amount)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One node for the module: a 1-slot mempool and a slow block pace, so that a transaction
    stays pending long enough to be seen pending, duplicated and outbid (409, 503)."""
    wallets = [crypto.KeyPair.generate() for _ in range(3)]
    node = LocalNode.single(
        tmp_path_factory.mktemp("contract"),
        {w.address: FUNDS for w in wallets},
        Params(block_interval_ms=2500, epoch_ms=10**12),  # no epoch ends during the module
        {"mempool_shards": 1, "mempool_capacity": 1, **NO_EMPTY_BLOCKS},
    )
    node.start()
    # The validator's own heartbeat for the epoch takes the one slot first: let it commit.
    deadline = time.monotonic() + 20
    while node.get(f"/api/v1/nodes/{node.key.node_id}")[1]["last_heartbeat_epoch"] is None:
        assert time.monotonic() < deadline, "the validator's heartbeat never committed"
        time.sleep(0.1)
    yield Api(node, wallets)
    node.stop()


@pytest.fixture
def exercise(api, request):
    api.ran.add(request.node.name)
    return api


def test_op_operations(exercise):
    api = exercise
    assert api.call("GET", "/health").body["status"] == "ok"
    metrics = api.call("GET", "/metrics")
    assert metrics.status == 200 and "qnet_" in metrics.body
    status = api.call("GET", "/api/v1/status").body
    assert (status["chain_id"], status["min_fee"]) == (CHAIN_ID, str(FEE))
    assert api.call("POST", "/health", b"{}", "application/json").status == 405
    assert api.call("HEAD", "/health").status == 405
    assert api.call("DELETE", "/api/v1/status").status == 405
    assert api.call("GET", "/api/v1/nothing").status == 404
    assert api.call("GET", "/").status == 404


def test_op_submit_transaction(exercise):
    api = exercise
    alice, bob = api.wallets[0], api.wallets[1]
    api.settle()
    first = api.transfer(alice)
    assert api.submit(first.to_json()).status == 202
    api.wait(first.id)
    # the next block is at least 2.5 s away: ``second`` stays pending while we look at it
    second = api.transfer(alice)
    assert api.submit(second.to_json()).status == 202
    pending = api.call("GET", f"/api/v1/transactions/{second.id.hex()}").body
    assert pending == {"status": "pending", **second.to_json()}
    assert api.submit(second.to_json()).body["error"]["code"] == "duplicate"
    outbid = api.submit(api.transfer(bob).to_json())  # same fee, mempool holds one
    assert (outbid.status, outbid.body["error"]["code"]) == (503, "mempool_full")
    api.wait(second.id)

    forged = {**api.transfer(alice).to_json(), "signature": "00" * 64}
    del forged["id"]  # the id covers the signature; without it the forgery decodes
    assert api.submit(forged).body["error"]["code"] == "bad_signature"
    assert api.submit(api.transfer(alice, nonce=0).to_json()).status == 422
    assert api.submit({**first.to_json(), "memo": "x"}).status == 400
    assert api.submit([first.to_json()]).status == 400
    assert api.call("POST", "/api/v1/transactions", b"{", "application/json").status == 400
    assert api.call("POST", "/api/v1/transactions", b"{}", "text/plain").status == 415
    big = b'{"pad": "' + b"x" * MAX_JSON_BYTES + b'"}'
    assert api.call("POST", "/api/v1/transactions", big, "application/json").status == 413
    assert api.call("GET", "/api/v1/transactions").status == 405


def test_request_schema_describes_what_the_node_accepts(exercise):
    check = schema_validator("/components/schemas/TransactionIn")
    good = exercise.transfer(exercise.wallets[0]).to_json()
    assert list(check.iter_errors(good)) == []
    without_optional = {k: v for k, v in good.items() if k not in ("id", "from")}
    assert list(check.iter_errors(without_optional)) == []
    for bad in (
        {**good, "memo": "x"},
        {k: v for k, v in good.items() if k != "fee"},
        {**good, "amount": "1.5"},
        {**good, "amount": -1},
        {**good, "amount": "0"},
        {**good, "nonce": "1"},
        {**good, "nonce": -1},
        {**good, "kind": "claim"},
        {**good, "signature": "00"},
        {**good, "chain_id": ""},
    ):
        assert list(check.iter_errors(bad)), bad
        assert exercise.submit(bad).status == 400, bad


def test_request_schema_covers_every_kind(exercise):
    check = schema_validator("/components/schemas/TransactionIn")
    owner, node = exercise.wallets[0], crypto.KeyPair.generate()
    network = exercise.node.genesis.network
    proof = tx.prove_node(node, network, owner.address)
    activate = tx.make_activate(owner, network, 0, FEE, node.public_key, "full", "eu", 5, proof)
    heartbeat = tx.make_heartbeat(node, network, 0, 7)
    claim = tx.make_claim(owner, network, 0, FEE, node.public_key)
    for t in (activate, heartbeat, claim):
        assert list(check.iter_errors(t.to_json())) == [], t.to_json()
    for bad in (
        {**heartbeat.to_json(), "fee": "1000"},
        {**heartbeat.to_json(), "epoch": "7"},
        {**claim.to_json(), "to": crypto.encode_address(owner.address)},
        {**activate.to_json(), "node_type": "mega"},
        {**activate.to_json(), "region": "xx"},
        {k: v for k, v in activate.to_json().items() if k != "node_proof"},
        {**claim.to_json(), "node_id": crypto.encode_address(owner.address)},
    ):
        assert list(check.iter_errors(bad)), bad
        assert exercise.submit(bad).status == 400, bad


def _next_nonce(api: Api, key: crypto.KeyPair) -> int:
    return api.call("GET", f"/api/v1/accounts/{crypto.encode_address(key.address)}").body[
        "next_nonce"
    ]


def _refusal(answer: Answer) -> tuple[int, str]:
    return answer.status, answer.body["error"]["code"]


def test_op_nodes_and_epochs(exercise):
    """Activate a light node, send its heartbeat, read it back; refusals of each kind."""
    api = exercise
    api.settle()
    owner, stranger, node = api.wallets[0], api.wallets[1], crypto.KeyPair.generate()
    network = api.node.genesis.network
    epoch = api.call("GET", "/api/v1/epochs/current").body
    assert epoch["epoch"] == epoch["chain_epoch"] and epoch["last_closed"] is None
    burn = int(epoch["activation_fees"]["light"])

    def activation(proof: bytes, nonce: int) -> tx.Transaction:
        return tx.make_activate(
            owner, network, nonce, FEE, node.public_key, "light", "ap", burn, proof
        )

    forged = activation(tx.prove_node(stranger, network, owner.address), _next_nonce(api, owner))
    assert _refusal(api.submit(forged.to_json())) == (422, "bad_signature")
    proof = tx.prove_node(node, network, owner.address)
    activate = activation(proof, _next_nonce(api, owner))
    assert api.submit(activate.to_json()).status == 202
    activated = api.wait(activate.id)
    assert (activated["kind"], activated["node_id"], activated["amount"]) == (
        "activate",
        node.node_id,
        str(burn),
    )
    again = activation(proof, _next_nonce(api, owner))
    assert _refusal(api.submit(again.to_json())) == (422, "already_active")

    heartbeat = tx.make_heartbeat(node, network, 0, epoch["epoch"])
    late = tx.make_heartbeat(node, network, 0, epoch["epoch"] - 1)
    assert _refusal(api.submit(late.to_json())) == (422, "wrong_epoch")
    assert api.submit(heartbeat.to_json()).status == 202
    beat = api.wait(heartbeat.id)
    assert (beat["kind"], beat["epoch"], beat["fee"]) == ("heartbeat", epoch["epoch"], "0")
    assert beat["from"] == crypto.encode_address(node.address)
    twice = tx.make_heartbeat(node, network, 1, epoch["epoch"])
    assert _refusal(api.submit(twice.to_json())) == (422, "heartbeat_done")
    outsider = tx.make_heartbeat(stranger, network, _next_nonce(api, stranger), epoch["epoch"])
    assert _refusal(api.submit(outsider.to_json())) == (422, "unknown_node")
    claim = tx.make_claim(owner, network, _next_nonce(api, owner), FEE, node.public_key)
    assert _refusal(api.submit(claim.to_json())) == (422, "nothing_to_claim")
    theft = tx.make_claim(stranger, network, _next_nonce(api, stranger), FEE, node.public_key)
    assert _refusal(api.submit(theft.to_json())) == (422, "not_owner")

    got = api.call("GET", f"/api/v1/nodes/{node.node_id}").body
    assert (got["node_type"], got["region"], got["unclaimed"]) == ("light", "ap", "0")
    assert got["owner"] == crypto.encode_address(owner.address)
    assert got["last_heartbeat_epoch"] == epoch["epoch"]
    assert [(e["epoch"], e["closed"], e["reward"]) for e in got["epochs"]] == [
        (epoch["epoch"], False, None)
    ]
    assert api.call("GET", f"/api/v1/nodes/{node.node_id.upper()}").status == 200
    assert api.call("GET", f"/api/v1/nodes/{stranger.node_id}").status == 404
    assert api.call("GET", "/api/v1/nodes/qnode1xyz").status == 400
    assert api.call("GET", f"/api/v1/nodes/{crypto.encode_address(owner.address)}").status == 400
    now = api.call("GET", "/api/v1/epochs/current").body
    assert now["eligible"]["light"] == 1

    everyone = api.call("GET", "/api/v1/nodes").body
    assert (everyone["total"], everyone["by_type"]["super"]) == (2, 1)
    assert "node_ids" not in everyone
    light_ap = api.call("GET", "/api/v1/nodes?type=light&region=ap").body
    assert light_ap["total"] == light_ap["by_region"]["ap"] == 1
    assert light_ap["by_region"]["eu"] == 0
    mine = api.call("GET", f"/api/v1/nodes?owner={crypto.encode_address(owner.address)}").body
    assert mine["node_ids"] == [node.node_id]
    assert api.call("GET", "/api/v1/nodes?type=mega").status == 400
    assert api.call("GET", "/api/v1/nodes?region=moon").status == 400
    assert api.call("GET", "/api/v1/nodes?owner=qnc1nope").status == 400
    assert api.call("POST", "/api/v1/epochs/current", b"{}", "application/json").status == 405


def test_op_submit_batch(exercise):
    api = exercise
    api.settle()
    good = api.transfer(api.wallets[2])
    answer = api.batch(tx.encode_batch([good]) + b"\x00\x03abc")
    assert answer.status == 200
    assert answer.body["accepted"] == 1
    assert [r["index"] for r in answer.body["rejected"]] == [1]
    api.wait(good.id)
    assert api.batch(b"\x00\x10short").status == 400
    assert api.batch(b"").status == 400
    assert api.call("POST", "/api/v1/transactions/batch", b"{}", "application/json").status == 415
    assert api.batch(b"\x00" * (MAX_BATCH_BYTES + 1)).status == 413


def test_op_get_transaction(exercise):
    api = exercise
    api.settle()
    committed = api.transfer(api.wallets[0], amount=1_234_567_890)
    assert api.submit(committed.to_json()).status == 202
    found = api.wait(committed.id)
    block = api.call("GET", f"/api/v1/blocks/{found['height']}").body
    assert block["transactions"][found["index"]] == committed.id.hex()
    assert found == {
        "status": "committed",
        "height": block["header"]["height"],
        "index": found["index"],
        "time_ms": block["header"]["time_ms"],
        **committed.to_json(),
    }
    assert (found["kind"], found["amount"], found["fee"]) == ("transfer", "1234567890", str(FEE))
    assert found["from"] == crypto.encode_address(api.wallets[0].address)
    assert found["to"] == crypto.encode_address(api.wallets[-1].address)
    stale = api.transfer(api.wallets[0], amount=7, nonce=0)  # not the committed nonce-0 one
    assert api.submit(stale.to_json()).status == 422
    rejected = api.call("GET", f"/api/v1/transactions/{stale.id.hex()}").body
    assert (rejected["status"], rejected["reason"]) == ("rejected", "stale_nonce")
    upper = api.call("GET", f"/api/v1/transactions/{committed.id.hex().upper()}")
    assert upper.body["id"] == committed.id.hex()
    assert api.call("GET", "/api/v1/transactions/" + "ab" * 32).status == 404
    assert api.call("GET", "/api/v1/transactions/xyz").status == 400
    assert api.call("GET", "/api/v1/transactions/" + "a" * 63).status == 400
    assert api.call("GET", "/api/v1/transactions/batch").status == 400


def test_op_get_account(exercise):
    api = exercise
    text = crypto.encode_address(api.wallets[0].address)
    assert api.call("GET", f"/api/v1/accounts/{text}").body["address"] == text
    assert api.call("GET", f"/api/v1/accounts/{text.upper()}").body["address"] == text
    stranger = crypto.encode_address(bytes(range(20)))
    empty = api.call("GET", f"/api/v1/accounts/{stranger}").body
    assert (empty["balance"], empty["balance_qnc"], empty["nonce"]) == ("0", "0", 0)
    broken = text[:-1] + ("q" if text[-1] != "q" else "p")
    assert api.call("GET", f"/api/v1/accounts/{broken}").status == 400
    assert api.call("GET", f"/api/v1/accounts/{api.node.key.node_id}").status == 400
    assert api.call("POST", f"/api/v1/accounts/{text}", b"{}", "application/json").status == 405


def _history(api: Api, address: str, limit: int) -> list[dict]:
    """The whole history of ``address``, a page of ``limit`` at a time."""
    rows, query = [], f"limit={limit}"
    while True:
        page = api.call("GET", f"/api/v1/accounts/{address}/transactions?{query}").body
        assert page["address"] == address and len(page["transactions"]) <= limit
        rows += page["transactions"]
        if page["next_cursor"] is None:
            return rows
        query = f"limit={limit}&cursor={page['next_cursor']}"


def test_op_account_transactions(exercise):
    api = exercise
    api.settle()
    # The first wallet's history holds the transfers and the activation earlier tests of the
    # module committed, and this one on top.
    sender, sink = api.wallets[0], api.wallets[-1]
    sent = api.transfer(sender, amount=2)
    assert api.submit(sent.to_json()).status == 202
    committed = api.wait(sent.id)
    mine = crypto.encode_address(sender.address)
    everything = _history(api, mine, 100)
    newest = api.call("GET", f"/api/v1/accounts/{mine}/transactions?limit=1").body
    assert newest["transactions"] == [committed]
    assert (newest["next_cursor"] is None) == (len(everything) == 1)
    assert _history(api, mine, 1) == everything  # pages join up, one at a time too
    places = [(t["height"], t["index"]) for t in everything]
    assert places == sorted(places, reverse=True) and len(set(places)) == len(places)
    assert all(mine in (t["from"], t.get("to")) for t in everything)
    received = _history(api, crypto.encode_address(sink.address), 100)
    assert received[0] == committed and all(t["kind"] == "transfer" for t in received)
    own = _history(api, crypto.encode_address(api.node.key.address), 100)
    assert own and all(t["kind"] == "heartbeat" for t in own)  # the validator's heartbeats
    upper = api.call("GET", f"/api/v1/accounts/{mine.upper()}/transactions?limit=1").body
    assert upper == newest

    stranger = crypto.encode_address(bytes(range(20)))
    assert api.call("GET", f"/api/v1/accounts/{stranger}/transactions").body == {
        "address": stranger,
        "transactions": [],
        "next_cursor": None,
    }
    bottom = api.call("GET", f"/api/v1/accounts/{mine}/transactions?cursor={'0' * 24}").body
    assert (bottom["transactions"], bottom["next_cursor"]) == ([], None)
    ahead = api.call("GET", f"/api/v1/accounts/{mine}/transactions?cursor={'f' * 24}").body
    assert ahead["transactions"] == everything[:20]  # from a node further ahead: from the top
    for query, words in (
        ("limit=0", "limit must be 1 to 100"),
        ("limit=101", "limit must be 1 to 100"),
        ("limit=ten", "limit must be a non-negative integer"),
        ("cursor=abc", "cursor must be a next_cursor"),
        (f"cursor={'g' * 24}", "cursor must be a next_cursor"),
    ):
        refused = api.call("GET", f"/api/v1/accounts/{mine}/transactions?{query}")
        assert refused.status == 400 and words in refused.body["error"]["message"], query
    assert api.call("GET", "/api/v1/accounts/qnc1nope/transactions").status == 400
    target = f"/api/v1/accounts/{mine}/transactions"
    assert api.call("POST", target, b"{}", "application/json").status == 405


def test_op_list_blocks(exercise):
    api = exercise
    api.settle()
    done = api.transfer(api.wallets[1])
    api.submit(done.to_json())
    api.wait(done.id)
    page = api.call("GET", "/api/v1/blocks").body
    assert [h["height"] for h in page["headers"]] == list(range(1, page["head"] + 1))
    assert len(api.call("GET", "/api/v1/blocks?from=2&to=2").body["headers"]) == 1
    assert api.call("GET", "/api/v1/blocks?from=999999").body["headers"] == []
    assert api.call("GET", "/api/v1/blocks?from=abc").status == 400
    assert api.call("GET", "/api/v1/blocks?from=0").status == 400
    assert api.call("GET", "/api/v1/blocks?from=3&to=2").status == 400


def test_op_get_block(exercise):
    api = exercise
    got = api.call("GET", "/api/v1/blocks/1").body
    assert got["header"]["height"] == 1
    assert got["certificate"]["block_hash"] == got["header"]["hash"]
    assert api.call("GET", "/api/v1/blocks/999999").status == 404
    assert api.call("GET", "/api/v1/blocks/0").status == 404
    assert api.call("GET", "/api/v1/blocks/abc").status == 400
    assert api.call("GET", "/api/v1/blocks/-1").status == 400


def test_op_network_peers(exercise):
    """The contract node runs alone; peers of a real network: test_bft_network.py."""
    assert exercise.call("GET", "/api/v1/network/peers").body == {"peers": []}


def test_op_network_sd(exercise):
    """Alone, the node discovers nothing; what a network lists: test_discovery.py."""
    assert exercise.call("GET", "/api/v1/network/sd").body == []


def test_op_network_arrivals(exercise):
    """When this node took each block: the heights it committed, in order, with its clock."""
    api = exercise
    height = api.call("GET", "/api/v1/status").body["height"]
    assert height > 0  # the heartbeat's block at least
    rows = api.call("GET", "/api/v1/network/arrivals").body["arrivals"]
    assert [r["height"] for r in rows] == list(range(1, height + 1))
    times = [r["time_ms"] for r in rows]
    assert times == sorted(times) and times[-1] <= time.time() * 1000


def test_op_web_pages(exercise, tmp_path, monkeypatch):
    """The pages and their files with their cache validators; 404 for a file the build did
    not make and on a light node, 503 where the package has no built pages."""
    api = exercise
    for page in ("/wallet", "/status"):
        answer = api.call("GET", page)
        assert answer.status == 200 and "<html" in answer.body
        for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', answer.body):
            loaded = api.call("GET", url)
            assert loaded.status == 200 and loaded.body
            etag = {"If-None-Match": loaded.headers["ETag"]}
            assert api.call("GET", url, headers=etag).status == 304
        etag = {"If-None-Match": answer.headers["ETag"]}
        assert api.call("GET", page, headers=etag).status == 304
    assert api.call("GET", "/static/wallet.js").status == 404

    async def exchange(app: web.Application) -> list[tuple[str, Answer]]:
        async with TestClient(TestServer(app)) as client:
            answers = []
            for path in ("/wallet", "/status", "/static/x.js"):
                resp = await client.get(path)
                body = await resp.json()
                answers.append((path, Answer(resp.status, resp.content_type, resp.headers, body)))
            return answers

    light_dir, full_dir = tmp_path / "light", tmp_path / "full"
    light_dir.mkdir()
    full_dir.mkdir()
    light_config = load_config(light_dir, node_type="light", region="eu")
    light = LightNode(light_config, api.node.genesis, crypto.KeyPair.generate())
    for path, answer in asyncio.run(exchange(create_app(light, None))):
        api._check("GET", path, answer)
        assert (answer.status, answer.body["error"]["code"]) == (404, "not_found"), path
    monkeypatch.setattr(web_pages, "WEBROOT", tmp_path / "no-webroot")
    node = _limited_node(full_dir)
    try:
        answers = asyncio.run(exchange(app_of(node)))
    finally:
        node.close()
    for path, answer in answers:
        api._check("GET", path, answer)
        assert (answer.status, answer.body["error"]["code"]) == (503, "unavailable"), path


def test_op_a_stopping_node_admits_nothing(exercise, in_process_node):
    """Once a graceful stop begins, both submit operations answer 503 stopping (checked on an
    in-process node: a stopping server closes its listening socket first)."""
    api, node = exercise, in_process_node
    alice = crypto.KeyPair.generate()
    transfer = tx.make_transfer(alice, node.network, 0, FEE, alice.address, 1)

    async def exchange() -> list[Answer]:
        async with TestClient(TestServer(app_of(node))) as client:
            node.stopping = True
            answers = []
            for path, body, ctype in (
                ("/api/v1/transactions", json.dumps(transfer.to_json()).encode(),
                 "application/json"),
                ("/api/v1/transactions/batch", tx.encode_batch([transfer]),
                 "application/octet-stream"),
            ):  # fmt: skip
                resp = await client.post(path, data=body, headers={"Content-Type": ctype})
                answers.append(Answer(resp.status, resp.content_type, resp.headers,
                                      await resp.json()))  # fmt: skip
                api._check("POST", path, answers[-1])
            return answers

    for answer in asyncio.run(exchange()):
        assert answer.status == 503 and answer.body["error"]["code"] == "stopping", answer
        assert "shutting down" in answer.body["error"]["message"]
    assert len(node.mempool) == 0 and node.tx_status(transfer.id) is None


def _example_target(template: str, api: Api) -> str:
    """A path of ``template`` with well-formed parameters."""
    examples = {
        "tx_id": "ab" * 32,
        "address": crypto.encode_address(api.wallets[0].address),
        "height": "1",
        "node_id": api.node.key.node_id,
        "name": "x.js",
    }
    return re.sub(r"\{(\w+)\}", lambda m: examples[m[1]], template)


def _limited_node(tmp_path, **limits) -> Node:
    key = crypto.KeyPair.generate()
    genesis = make_genesis("limits", [(key.node_id, "eu")], {})
    return Node(load_config(tmp_path, region="eu", **limits), genesis, key)


def test_op_every_operation_refuses_a_connection_past_the_cap(exercise, tmp_path):
    """With one connection allowed per client and one held open, a request on another
    connection is refused (429, Retry-After) on every operation, and that connection closed."""
    api, node = exercise, _limited_node(tmp_path, api_max_client_connections=1)

    async def exchange() -> list[tuple[str, str, Answer]]:
        async with TestClient(TestServer(app_of(node))) as held:
            await (await held.get("/health")).read()  # keep-alive: stays open
            answers = []
            for method, template in sorted(spec_operations()):
                path = _example_target(template, api)
                reader, writer = await asyncio.open_connection("127.0.0.1", held.port)
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                raw = await asyncio.wait_for(reader.read(), 10)  # to EOF: closed
                writer.close()
                head, _, body = raw.partition(b"\r\n\r\n")
                status = int(head.split()[1])
                headers = http.client.parse_headers(
                    io.BytesIO(head.split(b"\r\n", 1)[1] + b"\r\n\r\n")
                )
                answer = Answer(status, headers.get_content_type(), headers, json.loads(body))
                answers.append((method, path, answer))
            return answers

    try:
        answers = asyncio.run(exchange())
    finally:
        node.close()
    for method, path, answer in answers:
        api._check(method, path, answer)
        assert (answer.status, answer.body["error"]["code"]) == (429, "too_many_connections")
        assert answer.headers["Retry-After"] == "1" and answer.headers["Connection"] == "close"


def test_op_rate_limited_reads_and_submissions_are_429_with_retry_after(exercise, tmp_path):
    """Past a client's bucket, the limited operations answer 429 rate_limited and admit
    nothing; the operations that are not limited still answer."""
    api = exercise
    node = _limited_node(
        tmp_path,
        api_read_rate=0.01,
        api_read_burst=1,
        api_submit_rate=0.01,
        api_submit_burst=1,
        max_batch_txs=1,
    )
    sender = crypto.KeyPair.generate()
    transfer = tx.make_transfer(sender, node.network, 0, FEE, sender.address, 1)
    address = crypto.encode_address(sender.address)
    limited = [
        ("GET", f"/api/v1/transactions/{transfer.id.hex()}", None, None),
        ("GET", f"/api/v1/accounts/{address}/transactions", None, None),
        ("GET", "/api/v1/blocks", None, None),
        ("GET", "/api/v1/blocks/1", None, None),
        ("GET", "/api/v1/nodes", None, None),
        ("GET", f"/api/v1/nodes/{node.key.node_id}", None, None),
        ("POST", "/api/v1/transactions", json.dumps(transfer.to_json()).encode(),
         "application/json"),
        ("POST", "/api/v1/transactions/batch", tx.encode_batch([transfer]),
         "application/octet-stream"),
    ]  # fmt: skip

    async def exchange() -> list[tuple[str, str, Answer]]:
        async with TestClient(TestServer(app_of(node))) as client:
            await client.get("/api/v1/blocks")  # the read bucket's one token
            await client.post("/api/v1/transactions", data=b"{", headers={
                "Content-Type": "application/json"})  # fmt: skip
            answers = []
            for method, path, body, ctype in [*limited, ("GET", "/api/v1/status", None, None)]:
                headers = {"Content-Type": ctype} if ctype else {}
                resp = await client.request(method, path, data=body, headers=headers)
                answer = Answer(resp.status, resp.content_type, resp.headers, await resp.json())
                answers.append((method, path, answer))
            return answers

    try:
        answers = asyncio.run(exchange())
        assert len(node.mempool) == 0 and node.tx_status(transfer.id) is None
    finally:
        node.close()
    *refused, (_, _, status) = answers
    for method, path, answer in refused:
        api._check(method, path, answer)
        assert (answer.status, answer.body["error"]["code"]) == (429, "rate_limited"), path
        assert int(answer.headers["Retry-After"]) >= 50, path  # a token takes 100 s here
    assert status.status == 200


def test_op_a_body_that_does_not_arrive_in_time_is_408(exercise, tmp_path):
    api, node = exercise, _limited_node(tmp_path, api_request_timeout_s=0.2)

    async def exchange() -> list[tuple[str, Answer]]:
        async with TestClient(TestServer(app_of(node))) as client:
            answers = []
            for path, ctype in (
                ("/api/v1/transactions", "application/json"),
                ("/api/v1/transactions/batch", "application/octet-stream"),
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
                writer.write(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                    "Content-Length: 64\r\n\r\n{".encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                headers = http.client.parse_headers(io.BytesIO(head.split(b"\r\n", 1)[1]))
                body = await reader.readexactly(int(headers["Content-Length"]))
                writer.close()
                status = int(head.split()[1])
                answers.append((path, Answer(status, headers.get_content_type(), headers,
                                             json.loads(body))))  # fmt: skip
            return answers

    try:
        answers = asyncio.run(exchange())
    finally:
        node.close()
    for path, answer in answers:
        api._check("POST", path, answer)
        assert (answer.status, answer.body["error"]["code"]) == (408, "timeout"), path


def test_every_documented_response_was_produced(api):
    """Documented answers are real ones: each (operation, status) came up above, except 500."""
    exercises = {name for name in globals() if name.startswith("test_op_")}
    if not exercises <= api.ran:
        pytest.skip("needs every test_op_* test of this module to have run first")
    documented = {
        (method, template, int(status))
        for method, template in spec_operations()
        for status in SPEC["paths"][template][method.lower()]["responses"]
        if status != "500"
    }
    assert documented - api.seen == set(), "documented but never produced"
