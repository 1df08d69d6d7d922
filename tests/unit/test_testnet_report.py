"""ops/testnet.py's status report (what ``make testnet`` prints at the end), against fake
node APIs on loopback: each node's row, and the API, wallet and status page URLs of the full
and super nodes (light nodes serve no pages)."""

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))
import testnet


def fake_node(node_type: str, region: str) -> ThreadingHTTPServer:
    body = json.dumps(
        {"node_type": node_type, "region": region, "height": 42, "peers": 3, "version": "0.1.0"}
    ).encode()

    class Status(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/api/v1/status"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if ok else b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def nodes():
    servers = {
        "v1": fake_node("super", "na"),
        "f1": fake_node("full", "eu"),
        "l1": fake_node("light", "eu"),
    }
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_report_lists_the_wallet_and_status_pages_of_full_and_super_nodes(nodes, tmp_path):
    hostvars = {
        name: {"ansible_host": "127.0.0.1", "qnet_api_port": server.server_address[1]}
        for name, server in nodes.items()
    }
    hostvars["v2"] = {
        "ansible_host": "127.0.0.1",
        "qnet_api_port": closed_port(),
        "qnet_region": "ap",
    }
    inventory = testnet.tb.write_inventory(
        tmp_path / "inventory.yml",
        {"genesis": ["v1", "v2"], "full": ["f1"], "light": ["l1"]},
        hostvars,
    )
    report = testnet.status_report(inventory)
    lines = report.splitlines()
    assert lines[0].split() == ["host", "address", "region", "type", "height", "peers", "version"]
    assert lines[1].split() == ["v1", "127.0.0.1", "na", "super", "42", "3", "0.1.0"]
    assert lines[2].split() == ["v2", "127.0.0.1", "ap", "-", "down"]
    assert lines[4].split() == ["l1", "127.0.0.1", "eu", "light", "42", "3", "0.1.0"]
    urls = [line.split() for line in lines if "http://" in line]
    expected = []
    for name in ("v1", "f1", "l1"):
        api = f"http://127.0.0.1:{nodes[name].server_address[1]}"
        expected.append(["node", "API", f"{name}:", f"{api}/api/v1/status"])
        if name != "l1":
            expected += [["wallet", f"{name}:", f"{api}/wallet"]]
            expected += [["status", "page", f"{name}:", f"{api}/status"]]
    assert urls == expected


def test_the_api_port_is_the_roles(tmp_path):
    assert testnet.api_port({}, {}) == 7370
    assert testnet.api_port({}, {"qnet_api_port": 8000}) == 8000
    assert testnet.api_port({"qnet_api_port": 9000}, {"qnet_api_port": 8000}) == 9000
    with pytest.raises(testnet.TestnetError, match="not a port number"):
        testnet.api_port({"qnet_api_port": "{{ port }}"}, {})
