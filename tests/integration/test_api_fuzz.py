"""The API against a schema-driven fuzzer: schemathesis generates requests from openapi.yaml,
well-formed by the document (positive) and not (negative), and sends them to a running node.
Every answer is documented for its operation, matches its schema and content type, is never
a 5xx, and every error is the JSON error shape; none of the requests changes the node's
state (head, state digest, mempool, balances, node registry), since none carries a valid
signature. The chain holds a few transfers between the wallets, whose histories the
well-formed history requests ask for.

QNET_FUZZ_SEED=<n> replays a run (each run prints its seed)."""

import os
import random
import time
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode, checks

from qnet import crypto, tx
from qnet.genesis import Params
from qnet.localnode import NO_EMPTY_BLOCKS, LocalNode, wait_for

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_dict(
    yaml.safe_load(resources.files("qnet").joinpath("openapi.yaml").read_text())
)
MIN_REQUESTS = 10_000
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
HISTORY = "GET /api/v1/accounts/{address}/transactions"
# Examples per operation and mode, weighted towards the requests that are cheap to generate
# (a transaction body takes ~50 ms, a binary batch or a path parameter a few): what the run
# sends in well under three minutes on a busy 2-core machine. An operation without
# parameters has one request; a path parameter of any string has no negative examples.
EXAMPLES = {
    ("POST /api/v1/transactions", POSITIVE): 150,
    ("POST /api/v1/transactions", NEGATIVE): 150,
    ("POST /api/v1/transactions/batch", POSITIVE): 2500,
    ("POST /api/v1/transactions/batch", NEGATIVE): 500,
    ("GET /api/v1/transactions/{tx_id}", POSITIVE): 600,
    ("GET /api/v1/transactions/{tx_id}", NEGATIVE): 400,
    ("GET /api/v1/accounts/{address}", POSITIVE): 1000,
    (HISTORY, POSITIVE): 400,
    (HISTORY, NEGATIVE): 200,
    ("GET /api/v1/blocks", POSITIVE): 600,
    ("GET /api/v1/blocks", NEGATIVE): 300,
    ("GET /api/v1/blocks/{height}", POSITIVE): 1500,
    ("GET /api/v1/blocks/{height}", NEGATIVE): 500,
    ("GET /api/v1/nodes", POSITIVE): 500,
    ("GET /api/v1/nodes", NEGATIVE): 300,
    ("GET /api/v1/nodes/{node_id}", POSITIVE): 1500,
}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
FUNDS = 1_000 * 10**9


def is_error(body: object) -> bool:
    """``{"error": {"code": <label>, "message": <words>}}`` and nothing else."""
    return (
        isinstance(body, dict)
        and body.keys() == {"error"}
        and isinstance(body["error"], dict)
        and body["error"].keys() == {"code", "message"}
        and all(isinstance(v, str) and v for v in body["error"].values())
    )


def described(case, response) -> str:
    return f"{case.as_curl_command()} -> {response.status_code} {response.text[:300]}"


def state_of(node: LocalNode, wallets: list[crypto.KeyPair]) -> dict:
    """What a refused request must not change, as the API shows it."""
    status = node.status()
    return {
        "head": (status["height"], status["block_hash"], status["state_digest"]),
        "mempool_size": status["mempool_size"],
        "accounts": [
            node.get(f"/api/v1/accounts/{crypto.encode_address(w.address)}")[1] for w in wallets
        ],
        "nodes": node.get("/api/v1/nodes")[1],
    }


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A single validator whose chain only moves when a transaction is admitted: after its
    own heartbeat for the (endless) epoch and a few transfers between the wallets are
    committed, its state must stand still."""
    wallets = [crypto.KeyPair.generate() for _ in range(2)]
    params = Params(epoch_ms=10**12)
    node = LocalNode.single(
        tmp_path_factory.mktemp("fuzz"),
        {w.address: FUNDS for w in wallets},
        params,
        NO_EMPTY_BLOCKS,
    )

    def settled() -> bool:
        record = node.get(f"/api/v1/nodes/{node.key.node_id}")[1]
        return record["last_heartbeat_epoch"] is not None and node.status()["mempool_size"] == 0

    network, (a, b) = node.genesis.network, wallets
    transfers = [
        *(tx.make_transfer(a, network, n, params.min_fee, b.address, n + 1) for n in range(3)),
        *(tx.make_transfer(b, network, n, params.min_fee, a.address, n + 1) for n in range(2)),
    ]
    node.start()
    try:
        body = tx.encode_batch(transfers)
        code, answer = node.post("/api/v1/transactions/batch", body, "application/octet-stream")
        assert (code, answer["accepted"]) == (200, len(transfers)), answer
        wait_for(settled, 30, "the validator's heartbeat and the transfers to commit")
        yield node, wallets
    finally:
        node.stop()


class Pipeline:
    """Each request is sent on a thread of its own while the next is generated (generating
    takes the CPU, an answer is a wait); the answers are checked in order on the caller's
    thread, and what fails is kept with the request that shows it."""

    IN_FLIGHT = 16

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy look-up from the environment per request
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="fuzz-send")
        self.pending: deque[tuple[object, Future]] = deque()
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def send(self, case) -> None:
        answer = self.sender.submit(case.call, base_url=self.url, session=self.session, timeout=30)
        self.pending.append((case, answer))
        while self.pending and (self.pending[0][1].done() or len(self.pending) > self.IN_FLIGHT):
            self._check_oldest()

    def drain(self) -> list[str]:
        while self.pending:
            self._check_oldest()
        return self.failures

    def close(self) -> None:
        self.sender.shutdown(cancel_futures=True)
        self.session.close()

    def _check_oldest(self) -> None:
        case, answer = self.pending.popleft()
        try:
            response = answer.result()
        except requests.RequestException as exc:
            self.failures.append(f"{case.as_curl_command()} -> no answer: {exc!r}")
            return
        self.sent[case.operation.label] += 1
        self.statuses[response.status_code] += 1
        try:
            if response.status_code >= 400:
                content_type = response.headers.get("content-type", [""])[0].split(";")[0]
                assert response.status_code < 500, "a server error"
                assert content_type == "application/json", f"an error as {content_type}"
                assert is_error(response.json()), "an error not in the JSON error shape"
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # an assertion above, or schemathesis's failed checks
            self.failures.append(f"{described(case, response)}\n  {exc}")


def fuzz(operation, mode: GenerationMode, examples: int, run_seed: int, send) -> None:
    """Send ``examples`` requests of ``operation`` that ``mode`` generates (through ``send``,
    which may fill in a parameter)."""

    @seed(run_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        send(case)

    run()


def test_fuzzed_requests_get_documented_answers_no_5xx_and_change_nothing(fuzzed):
    node, wallets = fuzzed
    run_seed = int(os.environ.get("QNET_FUZZ_SEED", random.getrandbits(64)))
    print(f"QNET_FUZZ_SEED={run_seed}")
    before = state_of(node, wallets)
    pipeline = Pipeline(node.url)
    # Most history requests name an account that has one (a wallet's, the validator's with
    # its heartbeat): the generated ones rarely are an address at all.
    known = [crypto.encode_address(k.address) for k in (*wallets, node.key)]
    rng = random.Random(run_seed)

    def send(case) -> None:
        if case.operation.label == HISTORY and rng.random() < 0.75:
            case.path_parameters["address"] = rng.choice(known)
        pipeline.send(case)

    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # schemathesis and hypothesis notes on the schema
            for result in SCHEMA.get_all_operations():
                operation = result.ok()
                for mode in (POSITIVE, NEGATIVE):
                    examples = EXAMPLES.get((operation.label, mode))
                    if examples is None and mode is POSITIVE:
                        examples = 1  # no parameters: one request says all
                    if examples is not None:
                        fuzz(operation, mode, examples, run_seed, send)
                failures = pipeline.drain()
                assert failures == [], f"{len(failures)} failed:\n" + "\n".join(failures[:5])
                after = state_of(node, wallets)
                assert after == before, f"{operation.label} changed the node's state"
    finally:
        pipeline.close()
    elapsed = time.monotonic() - started
    total = sum(pipeline.sent.values())
    print(
        f"fuzzed {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s); "
        f"statuses {dict(sorted(pipeline.statuses.items()))}; per operation {dict(pipeline.sent)}"
    )
    assert total >= MIN_REQUESTS
    assert set(pipeline.sent) == {op.ok().label for op in SCHEMA.get_all_operations()}
