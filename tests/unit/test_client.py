"""qnet.client against a tiny HTTP server on loopback: a rate-limited request is sent again
after the node's Retry-After, within the client's patience, and refused beyond it."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qnet.client import ApiError, Client


class Limited(BaseHTTPRequestHandler):
    """Answers 429 (Retry-After: 1) to the first ``refusals`` requests, then 200."""

    refusals = 0
    seen: list[float] = []

    def do_GET(self):
        Limited.seen.append(time.monotonic())
        if len(Limited.seen) <= Limited.refusals:
            status, headers = 429, {"Retry-After": "1"}
            body = {"error": {"code": "rate_limited", "message": "too many reads"}}
        else:
            status, headers, body = 200, {}, {"ok": True}
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Limited)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Limited.seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_rate_limited_request_is_sent_again_after_retry_after(server):
    Limited.refusals = 2
    assert Client(server, patience=10).request("GET", "/x") == {"ok": True}
    assert len(Limited.seen) == 3
    gaps = [b - a for a, b in zip(Limited.seen, Limited.seen[1:], strict=False)]
    assert all(gap >= 1.0 for gap in gaps), gaps


def test_beyond_its_patience_the_client_gives_up_with_the_refusal(server):
    Limited.refusals = 5
    with pytest.raises(ApiError) as refused:
        Client(server, patience=0.5).request("GET", "/x")
    assert (refused.value.code, refused.value.status, refused.value.retry_after) == (
        "rate_limited",
        429,
        1.0,
    )
    assert len(Limited.seen) == 1


def test_a_status_without_a_chain_id_and_genesis_hash_names_no_network(server):
    """What a client signs for comes from the node's status; an answer without a usable
    chain id and genesis hash is a bad response, not a network to sign for."""
    Limited.refusals = 0
    with pytest.raises(ApiError, match="names no valid chain id and genesis hash") as refused:
        Client(server).network()
    assert refused.value.code == "bad_response"
