"""The web pages as the API serves them (qnet/web.py), from the webroot `make web` built: the
security headers, subresource integrity that matches the files, caching and ETags, nothing
served but the manifest's files, 503 without a build, and no pages on a light node."""

import asyncio
import hashlib
import json
import re
import shutil
from base64 import b64encode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from qnet import crypto
from qnet import web as web_pages
from qnet.api import create_app
from qnet.config import load_config
from qnet.discovery import ScrapeTargets
from qnet.genesis import make_genesis
from qnet.light import LightNode
from qnet.node import Node

BASE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
WALLET_CSP = BASE_CSP.replace("script-src 'self';", "script-src 'self' 'wasm-unsafe-eval';")
LOADED = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE)


@pytest.fixture(scope="module")
def webroot():
    if not (web_pages.WEBROOT / "manifest.json").exists():
        pytest.fail(f"no built web pages in {web_pages.WEBROOT}: run `make web` first")
    return web_pages.WEBROOT


def make_node(tmp_path, node_type: str = "super"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    key = crypto.KeyPair.generate()
    genesis = make_genesis("web", [(key.node_id, "eu")], {})
    config = load_config(tmp_path, region="eu", node_type=node_type)
    if node_type == "light":
        return LightNode(config, genesis, key)
    return Node(config, genesis, key)


@pytest.fixture
def node(tmp_path, webroot):
    node = make_node(tmp_path)
    yield node
    node.close()


def serve(node, exchange):
    targets = None if node.config.node_type == "light" else ScrapeTargets(list, lambda _: None)

    async def run():
        async with TestClient(TestServer(create_app(node, targets))) as client:
            return await exchange(client)

    return asyncio.run(run())


async def fetch(client, path: str, **headers) -> tuple[int, dict, bytes]:
    resp = await client.get(path, headers=headers)
    return resp.status, resp.headers, await resp.read()


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """A GET with ``target`` exactly as given on the request line (no client normalising)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def integrity(body: bytes) -> str:
    return "sha384-" + b64encode(hashlib.sha384(body).digest()).decode()


def test_pages_carry_the_policy_headers_and_are_revalidated(node):
    async def exchange(client):
        return {page: await fetch(client, f"/{page}") for page in ("wallet", "status")}

    for page, (status, headers, body) in serve(node, exchange).items():
        assert status == 200, page
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Security-Policy"] == (WALLET_CSP if page == "wallet" else BASE_CSP)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-cache"
        assert re.fullmatch(r'"[0-9a-f]{32}"', headers["ETag"])
        assert b"<!doctype html>" in body.lower()


def test_every_script_and_stylesheet_has_an_integrity_hash_that_matches_the_served_file(node):
    async def exchange(client):
        pages = {
            page: (await fetch(client, f"/{page}"))[2].decode() for page in ("wallet", "status")
        }
        files = {}
        for html in pages.values():
            for element in re.finditer(LOADED, html):
                url = re.search(r'\s(?:src|href)="([^"]+)"', element[0])
                if url and url[1].startswith("/static/"):
                    files[url[1]] = await fetch(client, url[1])
        return pages, files

    pages, files = serve(node, exchange)
    for page, html in pages.items():
        assert not re.search(r"<script\b(?![^>]*\ssrc=)", html), f"{page} has an inline script"
        assert not re.search(r"<style\b|\sstyle=", html), f"{page} has inline style"
        loaded = [e[0] for e in re.finditer(LOADED, html) if "data:" not in e[0]]
        kinds = sorted(re.match(r"<(\w+)", e)[1] for e in loaded)
        assert kinds == ["link", "script"], f"{page} loads {loaded}"
        for element in loaded:
            url = re.search(r'\s(?:src|href)="(/static/[^"]+)"', element)[1]
            status, headers, body = files[url]
            assert status == 200, url
            assert f'integrity="{integrity(body)}"' in element, f"{page}: {element}"
            assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Content-Type"] == (
                "text/javascript; charset=utf-8"
                if url.endswith(".js")
                else "text/css; charset=utf-8"
            )
            assert headers["Content-Security-Policy"] == BASE_CSP
            assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def test_a_page_or_file_the_browser_has_is_a_304_with_its_caching_headers(node, webroot):
    manifest = json.loads((webroot / "manifest.json").read_text())
    static = "/" + next(iter(manifest["files"]))

    async def exchange(client):
        answers = {}
        for path in ("/status", static):
            _, headers, _ = await fetch(client, path)
            etag = headers["ETag"]
            answers[path] = {
                "same": await fetch(client, path, **{"If-None-Match": etag}),
                "weak": await fetch(client, path, **{"If-None-Match": f"W/{etag}"}),
                "listed": await fetch(client, path, **{"If-None-Match": f'"00", {etag}'}),
                "any": await fetch(client, path, **{"If-None-Match": "*"}),
                "other": await fetch(client, path, **{"If-None-Match": '"0123"'}),
                "etag": etag,
            }
        return answers

    for path, answers in serve(node, exchange).items():
        for case in ("same", "weak", "listed", "any"):
            status, headers, body = answers[case]
            assert (status, body) == (304, b""), (path, case)
            assert headers["ETag"] == answers["etag"]
            assert headers["Cache-Control"] in ("no-cache", "public, max-age=31536000, immutable")
            assert headers["X-Content-Type-Options"] == "nosniff"
        status, _, body = answers["other"]
        assert status == 200 and body, path


TRAVERSALS = [
    "/static/nope.js",
    "/static/manifest.json",
    "/static/wallet.html",
    "/static/status.js",  # the name before the build hashed it
    "/static/../manifest.json",
    "/static/%2e%2e/manifest.json",
    "/static/%2E%2E/manifest.json",
    "/static/..%2fmanifest.json",
    "/static/..%2Fmanifest.json",
    "/static/%2e%2e%2fmanifest.json",
    "/static/..%5cmanifest.json",
    "/static/..%255c..%255cmanifest.json",
    "/static/%252e%252e%252fmanifest.json",
    "/static/.%2e/.%2e/web.py",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2fetc%2fpasswd",
    "/static//etc/passwd",
    "/static/./manifest.json",
    "/static/%00",
    "/webroot/manifest.json",
    "/manifest.json",
    "/wallet.html",
    "/static/",
]


def test_only_the_manifest_files_are_served_and_no_path_leaves_them(node, webroot):
    secrets = [
        (webroot / "manifest.json").read_bytes()[:40],
        b"root:x:0:0",
        b'"""The web pages',
    ]

    async def exchange(client):
        return [(target, *await raw_get(client.port, target)) for target in TRAVERSALS]

    for target, status, body in serve(node, exchange):
        assert status == 404, target
        assert json.loads(body)["error"]["code"] == "not_found", target
        assert not any(secret in body for secret in secrets), target


def test_pages_answer_get_only(node):
    async def exchange(client):
        post = await client.post("/wallet", data=b"x")
        head = await client.head("/status")
        return post.status, await post.json(), head.status

    post_status, post_body, head_status = serve(node, exchange)
    assert post_status == 405 and post_body["error"]["code"] == "method_not_allowed"
    assert head_status == 405


async def page_answers(client) -> list[tuple[str, int, dict]]:
    """(path, status, JSON body) of each page and of a static file."""
    answers = []
    for path in ("/wallet", "/status", "/static/x.js"):
        resp = await client.get(path)
        answers.append((path, resp.status, await resp.json()))
    return answers


@pytest.mark.parametrize("damage", ["missing", "unreadable", "altered", "unlisted page"])
def test_a_node_without_its_built_pages_answers_503_and_says_why(
    tmp_path, webroot, monkeypatch, damage
):
    root = tmp_path / "webroot"
    if damage == "unreadable":
        (root / "manifest.json").mkdir(parents=True)
    elif damage != "missing":
        shutil.copytree(webroot, root)
        if damage == "altered":
            target = root / next(iter(json.loads((root / "manifest.json").read_text())["files"]))
            target.write_bytes(target.read_bytes() + b"\n")
        else:
            (root / "status.html").unlink()
    monkeypatch.setattr(web_pages, "WEBROOT", root)
    loads = []
    load = web_pages.load
    monkeypatch.setattr(web_pages, "load", lambda root: loads.append(root) or load(root))
    node = make_node(tmp_path / "node")

    try:
        answers = serve(node, page_answers)
    finally:
        node.close()
    expected = {
        "missing": "build them with `make web`",
        "unreadable": "webroot/manifest.json cannot be read: Is a directory",
        "altered": "does not match its hash in the manifest",
        "unlisted page": "does not match its manifest: status.html: No such file",
    }[damage]
    for path, status, body in answers:
        assert status == 503, path
        assert body["error"]["code"] == "unavailable"
        assert expected in body["error"]["message"], body
        assert str(tmp_path) not in body["error"]["message"]  # nothing of the file system
    assert loads == [root]  # a failed load is not tried again on each request


def test_a_light_node_serves_no_pages(tmp_path, webroot):
    light = make_node(tmp_path, "light")

    for path, status, body in serve(light, page_answers):
        assert status == 404, path
        assert "a light node does not keep" in body["error"]["message"]
