"""ScrapeTargets: which peers the service discovery document lists, and how little a
stranger can make a node do (one small probe per address and TTL, to the host it came from)."""

import asyncio
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestServer

from qnet import crypto
from qnet.discovery import MAX_STATUS_BYTES, ScrapeTargets
from qnet.p2p import PeerInfo

RECORD = SimpleNamespace(node_type="full", region="oc")


def peer(key: crypto.KeyPair, api: str) -> PeerInfo:
    # What it announces (light, na) is not what the document says: the chain's record is.
    return PeerInfo(key.node_id, key.public_key, "light", "na", "", False, api)


async def status_server(answers: dict[str, object], hits: list[str]) -> TestServer:
    """A fake node API on loopback: ``answers["status"]`` is the body of /api/v1/status."""

    async def status(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        body = answers["status"]
        if isinstance(body, bytes):
            return web.Response(body=body, content_type="application/json")
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/api/v1/status", status)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def run(coro):
    return asyncio.run(coro)


def test_lists_an_activated_peer_whose_api_names_it_and_probes_once_per_ttl():
    key = crypto.KeyPair.generate()

    async def scenario():
        hits: list[str] = []
        server = await status_server({"status": {"node_id": key.node_id}}, hits)
        api = f"127.0.0.1:{server.port}"
        targets = ScrapeTargets(lambda: [peer(key, api)], lambda pk: RECORD)
        try:
            together = await asyncio.gather(*(targets.document() for _ in range(5)))
            again = await targets.document()
        finally:
            await targets.close()
            await server.close()
        return together, again, hits

    together, again, hits = run(scenario())
    expected = [
        {
            "targets": [together[0][0]["targets"][0]],
            "labels": {
                "__meta_qnet_node_id": key.node_id,
                "__meta_qnet_node_type": "full",
                "__meta_qnet_region": "oc",
            },
        }
    ]
    assert all(doc == expected for doc in together) and again == expected
    assert hits == ["/api/v1/status"]  # six documents, one probe


def test_not_activated_not_answering_or_answering_for_another_node_is_not_listed():
    key, other = crypto.KeyPair.generate(), crypto.KeyPair.generate()

    async def scenario(answer: object, activated: bool = True, port: int | None = None):
        hits: list[str] = []
        server = await status_server({"status": answer}, hits)
        api = f"127.0.0.1:{port or server.port}"
        targets = ScrapeTargets(
            lambda: [peer(key, api)], lambda pk: RECORD if activated else None, timeout_s=1
        )
        try:
            return await targets.document(), hits
        finally:
            await targets.close()
            await server.close()

    assert run(scenario({"node_id": key.node_id}, activated=False)) == ([], [])  # not probed
    assert run(scenario({"node_id": other.node_id}))[0] == []
    assert run(scenario(b"not json"))[0] == []
    assert run(scenario([key.node_id]))[0] == []
    padded = {"node_id": key.node_id, "pad": "x" * MAX_STATUS_BYTES}
    assert run(scenario(padded))[0] == []
    closed = TestServer(web.Application(), host="127.0.0.1")  # a port nobody listens on

    async def unused_port() -> int:
        await closed.start_server()
        port = closed.port
        await closed.close()
        return port

    port = run(unused_port())
    assert run(scenario({"node_id": key.node_id}, port=port))[0] == []


def test_a_peer_without_an_api_port_is_not_listed_and_gone_peers_are_forgotten():
    key = crypto.KeyPair.generate()
    peers: list[PeerInfo] = [peer(key, "")]

    async def scenario():
        hits: list[str] = []
        server = await status_server({"status": {"node_id": key.node_id}}, hits)
        targets = ScrapeTargets(lambda: list(peers), lambda pk: RECORD)
        try:
            first = await targets.document()
            peers[:] = [peer(key, f"127.0.0.1:{server.port}")]
            second = await targets.document()
            peers.clear()
            third = await targets.document()
            remembered = len(targets._probed)
        finally:
            await targets.close()
            await server.close()
        return first, second, third, remembered

    first, second, third, remembered = run(scenario())
    assert first == [] and len(second) == 1 and third == [] and remembered == 0
