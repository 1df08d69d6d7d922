"""What bounds the API's clients: token buckets per client in a bounded table, the open
connection caps, the header and body time limits, the cache of committed blocks read off
the event loop, and node records whose chain reads are off the loop too."""

import asyncio
import json
import re
import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from qnet import crypto, tx
from qnet.api import (
    GUARDS,
    EncodedCache,
    OpenConnections,
    TokenBuckets,
    client_key,
    create_app,
)
from qnet.config import ConfigError, NodeConfig, load_config
from qnet.discovery import ScrapeTargets
from qnet.genesis import Params, make_genesis
from qnet.node import Node


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- token buckets ----------------------------------------------------------------------


def test_a_bucket_admits_its_burst_then_tells_when_to_come_back():
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=5, clock=clock)
    assert [buckets.take("a", 1) for _ in range(5)] == [0.0] * 5
    assert buckets.take("a", 1) == pytest.approx(0.1)
    assert buckets.take("b", 5) == 0.0  # another client has its own bucket
    clock.now += 0.25  # 2.5 tokens back
    assert buckets.take("a", 2) == 0.0
    assert buckets.take("a", 1) == pytest.approx(0.05)


def test_a_refused_take_takes_nothing_and_a_bucket_never_holds_more_than_its_burst():
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=4, clock=clock)
    assert buckets.take("a", 3) == 0.0
    assert buckets.take("a", 4) == pytest.approx(3.0)  # 1 there, 3 missing
    assert buckets.take("a", 1) == 0.0  # the refused take left the token
    clock.now += 3600
    assert buckets.take("a", 4) == 0.0
    assert buckets.take("a", 1) == pytest.approx(1.0)


def test_the_table_is_bounded_and_forgets_the_least_recently_seen_client():
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=1, capacity=3, clock=clock)
    for client in ("a", "b", "c"):
        assert buckets.take(client, 1) == 0.0
    assert buckets.take("a", 1) > 0  # refused, but seen: now the most recent
    for n in range(100):
        buckets.take(f"stranger{n}", 1)
        assert len(buckets) <= 3
    assert buckets.take("stranger99", 1) > 0  # remembered: its bucket is empty
    assert buckets.take("a", 1) == 0.0  # forgotten: back with a full bucket


@pytest.mark.parametrize(("rate", "batch"), [(12_000, 500), (6_000, 100), (1_000, 1)])
def test_the_default_limits_let_a_load_campaign_through_one_address(rate, batch):
    """bench.py's default (12,000 tx/s in batches of 500) and a campaign's steps, each for a
    minute from one address (loopback is not exempt), with a full batch sent on top."""
    clock = Clock()
    buckets = TokenBuckets(NodeConfig.api_submit_rate, NodeConfig.api_submit_burst, clock=clock)
    assert buckets.take("127.0.0.1", NodeConfig.max_batch_txs) == 0.0
    for _ in range(60 * rate // batch):
        clock.now += batch / rate
        assert buckets.take("127.0.0.1", batch) == 0.0


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, ""),
        ("not-an-address", "not-an-address"),
    ],
)
def test_a_client_is_its_ipv4_address_or_its_ipv6_slash_64(remote, key):
    assert client_key(remote) == key


# ---- connections and cache --------------------------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


def test_open_connections_are_capped_per_client_and_in_all_and_closed_ones_free_a_slot():
    connections = OpenConnections(total=3, per_client=2)
    a1, a2, a3, b1, b2, c1 = (Transport() for _ in range(6))
    assert connections.admit(a1, "a") and connections.admit(a2, "a")
    assert not connections.admit(a3, "a")  # a third from one client
    assert connections.admit(a1, "a")  # a counted connection goes on
    assert connections.admit(b1, "b")
    assert not connections.admit(b2, "b")  # three in all
    assert not connections.admit(c1, "c")
    a1.closing = True
    assert connections.admit(c1, "c")
    assert connections.admit(None, "d")  # a connection already gone is not counted


def test_the_cache_is_bounded_by_bytes_and_drops_the_least_recently_used():
    cache = EncodedCache(max_bytes=10)
    cache.put(1, b"aaaa")
    cache.put(2, b"bbbb")
    assert cache.get(1) == b"aaaa"  # 1 is now the most recent
    cache.put(3, b"cccc")
    assert (cache.get(1), cache.get(2), cache.get(3)) == (b"aaaa", None, b"cccc")
    cache.put(4, b"x" * 11)  # larger than the whole cache: not kept, nothing dropped
    assert cache.get(4) is None and len(cache) == 2
    cache.put(1, b"a")
    cache.put(5, b"eeeeeeeee")
    assert (cache.get(1), cache.get(3), cache.get(5)) == (b"a", None, b"eeeeeeeee")


# ---- settings ---------------------------------------------------------------------------


def test_limits_are_settings_checked_with_what_they_must_hold(tmp_path):
    config = load_config(tmp_path, api_read_rate=2.5, api_submit_burst=20_000)
    assert (config.api_read_rate, config.api_submit_burst) == (2.5, 20_000)
    with pytest.raises(ConfigError, match="api_submit_burst = 100 must be at least max_batch_txs"):
        load_config(tmp_path, api_submit_burst=100)
    (tmp_path / "config.toml").write_text("api_max_client_connections = 2000\n")
    with pytest.raises(ConfigError, match=r"config\.toml: api_max_connections = 1024 must be"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text("api_read_rate = 0\n")
    with pytest.raises(ConfigError, match="api_read_rate = 0: must be a number above 0"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text('api_request_timeout_s = "30"\n')
    with pytest.raises(ConfigError, match="api_request_timeout_s"):
        load_config(tmp_path)


# ---- the API ------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path):
    """A Node that is not running consensus, with tight limits."""
    key = crypto.KeyPair.generate()
    funded = {crypto.encode_address(key.address): 10**12}
    genesis = make_genesis("limits", [(key.node_id, "eu")], funded, Params())
    config = load_config(
        tmp_path,
        region="eu",
        api_read_rate=0.01,
        api_read_burst=2,
        api_submit_rate=0.01,
        api_submit_burst=3,
        max_batch_txs=3,
        api_request_timeout_s=0.3,
    )
    node = Node(config, genesis, key)
    yield node
    node.close()


def serve(app, exchange):
    async def run():
        async with TestClient(TestServer(app)) as client:
            return await exchange(client)

    return asyncio.run(run())


def app_of(node) -> object:
    return create_app(node, ScrapeTargets(list, lambda public_key: None))


def test_reads_past_the_bucket_are_429_with_retry_after_and_cheap_reads_are_not_limited(node):
    async def exchange(client):
        answers = []
        for path in ("/api/v1/blocks", "/api/v1/nodes", "/api/v1/blocks/1", "/api/v1/status"):
            resp = await client.get(path)
            answers.append((resp.status, resp.headers.get("Retry-After"), await resp.json()))
        return answers

    (blocks, nodes, refused, status) = serve(app_of(node), exchange)
    assert (blocks[0], nodes[0], status[0]) == (200, 200, 200)
    assert refused[0] == 429 and int(refused[1]) >= 1
    assert refused[2]["error"]["code"] == "rate_limited"
    assert "at most 0.01 a second, 2 at once" in refused[2]["error"]["message"]


def test_a_batch_takes_one_token_per_transaction_and_a_refused_one_admits_nothing(node):
    sender = node.key
    transfers = [
        tx.make_transfer(sender, node.network, n, Params().min_fee, sender.address, 1)
        for n in range(3)
    ]

    async def exchange(client):
        headers = {"Content-Type": "application/octet-stream"}
        first = await client.post(
            "/api/v1/transactions/batch", data=tx.encode_batch(transfers[:2]), headers=headers
        )
        after_first = len(node.mempool)
        second = await client.post(
            "/api/v1/transactions/batch", data=tx.encode_batch(transfers[2:]), headers=headers
        )
        third = await client.post(
            "/api/v1/transactions",
            data=json.dumps(transfers[2].to_json()),
            headers={"Content-Type": "application/json"},
        )
        return first.status, after_first, second.status, third, await third.json()

    first, after_first, second, third, body = serve(app_of(node), exchange)
    assert (first, after_first, second) == (200, 2, 200)  # 3 tokens: 2 + 1
    assert third.status == 429 and body["error"]["code"] == "rate_limited"
    assert int(third.headers["Retry-After"]) >= 1
    assert len(node.mempool) == 3 and node.tx_status(transfers[2].id)["status"] == "pending"


async def _raw(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def _answer(port: int, request: bytes) -> tuple[bytes, dict]:
    """Send ``request`` and read one answer: (its head, its JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])
        return head, json.loads(await reader.readexactly(length))
    finally:
        writer.close()


def test_a_connection_without_complete_headers_is_closed_after_the_request_timeout(node):
    async def exchange(client):
        # no blank line ending the headers: the server waits for more, then closes
        return await _raw(client.port, b"GET /health HTTP/1.1\r\nHost: x\r\n")

    assert serve(app_of(node), exchange) == b""


def test_a_body_not_in_within_the_request_timeout_is_408(node):
    async def exchange(client):
        return await _answer(
            client.port,
            b"POST /api/v1/transactions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )

    head, body = serve(app_of(node), exchange)
    assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head
    assert body["error"]["code"] == "timeout"


def test_a_connection_past_the_client_cap_is_refused_429_and_closed(node):
    node.config.api_max_client_connections = 1

    async def exchange(client):
        held = await client.get("/health")  # keep-alive: its connection stays open
        await held.read()
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        refused = await asyncio.wait_for(reader.read(), 5)  # read to EOF: it closes
        writer.close()
        await client.session.close()  # the held connection goes away
        again = await _raw(
            client.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        return refused, again

    refused, again = serve(app_of(node), exchange)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429") and b"Retry-After: 1" in head
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    assert again.startswith(b"HTTP/1.1 200")


# ---- committed blocks: off the loop, once ------------------------------------------------


class Storage:
    """Committed blocks as the API reads them, counting reads and the threads they ran on."""

    def __init__(self, height: int):
        self.height = height
        self.reads: list[tuple[str, str]] = []

    def block(self, height: int):
        self.reads.append(("block", threading.current_thread().name))
        if height > self.height:
            return None
        header = SimpleNamespace(to_json=lambda: {"height": height})
        blk = SimpleNamespace(header=header, signature=b"\x01", txs=[])
        return blk, SimpleNamespace(to_json=lambda: {"height": height})

    def headers(self, first: int, last: int):
        self.reads.append(("headers", threading.current_thread().name))
        return [SimpleNamespace(to_json=lambda h=h: {"height": h}) for h in range(first, last + 1)]


def test_committed_blocks_are_read_off_the_event_loop_once_and_served_from_the_cache(tmp_path):
    storage = Storage(height=3)
    fake = SimpleNamespace(
        config=load_config(tmp_path, region="eu"),
        state=SimpleNamespace(height=3),
        storage=storage,
    )
    app = app_of(fake)

    async def exchange(client):
        got = []
        for path in (
            "/api/v1/blocks/2",
            "/api/v1/blocks/2",
            "/api/v1/blocks/4",  # above the head: not read at all
            "/api/v1/blocks?from=2&to=9",
            "/api/v1/blocks?from=2&to=9",
        ):
            resp = await client.get(path)
            got.append((resp.status, await resp.json()))
        fake.state.height = 4  # a block is committed: the page grows, the old one stays
        storage.height = 4
        resp = await client.get("/api/v1/blocks?from=2&to=9")
        got.append((resp.status, await resp.json()))
        return got

    one, again, above, page, page_again, grown = serve(app, exchange)
    assert one == again == (200, {
        "header": {"height": 2}, "signature": "01", "transactions": [],
        "certificate": {"height": 2},
    })  # fmt: skip
    assert above[0] == 404
    assert page == page_again == (200, {"head": 3, "headers": [{"height": 2}, {"height": 3}]})
    assert grown == (200, {"head": 4, "headers": [{"height": h} for h in (2, 3, 4)]})
    assert [what for what, _ in storage.reads] == ["block", "headers", "headers"]
    assert all(thread.startswith("api-blocks") for _, thread in storage.reads)
    assert len(app[GUARDS].blocks) == 3


def test_a_node_record_reads_the_chain_database_off_the_event_loop(node):
    """The heartbeat epochs come from SQLite on the reader thread; a block that commits the
    node's next heartbeat while that read runs is in the answer all the same."""
    key = node.key.public_key
    read = node.storage.heartbeat_epochs
    threads = []

    def heartbeat_epochs(node_key: bytes, first: int) -> list[int]:
        threads.append(threading.current_thread().name)
        found = read(node_key, first)
        record = node.state.node(node_key)
        node.state.nodes[node_key] = replace(record, last_heartbeat=5)  # committed meanwhile
        return found

    node.storage.heartbeat_epochs = heartbeat_epochs

    async def exchange(client):
        resp = await client.get(f"/api/v1/nodes/{node.key.node_id}")
        return resp.status, await resp.json()

    status, body = serve(app_of(node), exchange)
    assert status == 200 and threads and all(t.startswith("api-blocks") for t in threads)
    assert body["last_heartbeat_epoch"] == 5
    assert [entry["epoch"] for entry in body["epochs"]] == [5]
    assert node.state.node(key).last_heartbeat == 5
