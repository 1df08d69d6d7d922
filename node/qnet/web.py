"""The web pages a full or super node serves on its API port: ``/wallet``, ``/status`` and the
files they load from ``/static/``, built by ``web/build.mjs`` into ``qnet/webroot/`` (package
data: the wheel ships it; ``make web`` builds it in a checkout).

The build names every static file by its content hash and writes ``manifest.json``: the pages,
and each static file with its sha384 (the subresource-integrity hash the pages carry). All of
it is read into memory (a few hundred KB) on the first request that needs it and checked
against the manifest; after that no request touches the file system, so no path a client
sends can reach it: a name is looked up in the manifest's list, or it is 404. A rebuild is
served after a restart, and so is one that fixes a failed load (which is not tried again).

Every answer carries a strict Content-Security-Policy (no inline script or style, no eval;
the wallet alone may compile WebAssembly, for hash-wasm's argon2id), ``nosniff`` and
``no-referrer``. Pages are ``no-cache`` with an ETag (a reload costs a 304); static files,
whose names change with their content, are cached for a year as immutable. A node whose
package lacks the built pages answers 503 and says how to build them. Light nodes answer
404, as for the other routes that need ledger state (``api.LIGHT_ROUTES``).
"""

import hashlib
import json
import logging
import re
from base64 import b64encode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .httpserver import error

log = logging.getLogger("qnet.web")

WEBROOT = Path(__file__).with_name("webroot")
MANIFEST_VERSION = 1  # web/build.mjs MANIFEST_VERSION
PAGES = ("wallet", "status")  # served at /<page>; web/build.mjs PAGES
STATIC_NAME = re.compile(r"static/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
PAGE_CACHE = "no-cache"  # revalidated every time: the ETag makes that a 304
STATIC_CACHE = "public, max-age=31536000, immutable"  # a new build gives new names


def content_security_policy(wasm: bool = False) -> str:
    """The policy of every answer; ``wasm``: the page may compile WebAssembly (no eval)."""
    script = "'self' 'wasm-unsafe-eval'" if wasm else "'self'"
    return (
        f"default-src 'none'; script-src {script}; style-src 'self'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


CSP = {page: content_security_policy(wasm=page == "wallet") for page in PAGES}
STATIC_CSP = content_security_policy()


class Unavailable(Exception):
    """The built pages are missing or do not match their manifest."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    headers: dict[str, str]  # with Content-Type
    etag: str  # unquoted


def _asset(body: bytes, suffix: str, cache: str, csp: str) -> Asset:
    etag = hashlib.sha256(body).hexdigest()[:32]
    headers = {
        "Content-Type": CONTENT_TYPES[suffix],
        "Cache-Control": cache,
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "ETag": f'"{etag}"',
    }
    return Asset(body, headers, etag)


@dataclass(frozen=True, slots=True)
class Built:
    pages: dict[str, Asset]  # by page name
    static: dict[str, Asset]  # by file name under /static/


def load(root: Path) -> Built:
    """The pages and static files under ``root``, checked against its manifest. What goes
    wrong is said of ``webroot/...``: a stranger learns nothing of the node's file system."""
    try:
        manifest = json.loads((root / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise Unavailable(
            "this node's package has no built web pages (webroot/manifest.json is missing): "
            "build them with `make web` in a checkout, or install a wheel built by "
            "`make artifacts`"
        ) from None
    except OSError as exc:
        raise Unavailable(f"webroot/manifest.json cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise Unavailable(f"webroot/manifest.json does not read as JSON: {exc}") from None
    try:
        if manifest.get("version") != MANIFEST_VERSION:
            raise Unavailable(f"manifest version {manifest.get('version')!r}, not 1")
        if manifest.get("pages") != {page: f"{page}.html" for page in PAGES}:
            raise Unavailable(f"the manifest lists pages {manifest.get('pages')!r}")
        static = {}
        for name, integrity in manifest["files"].items():
            suffix = Path(name).suffix
            if not STATIC_NAME.fullmatch(name) or suffix not in CONTENT_TYPES:
                raise Unavailable(f"the manifest lists a file named {name!r}")
            body = (root / name).read_bytes()
            digest = "sha384-" + b64encode(hashlib.sha384(body).digest()).decode()
            if digest != integrity:
                raise Unavailable(f"{name} does not match its hash in the manifest")
            static[name.removeprefix("static/")] = _asset(body, suffix, STATIC_CACHE, STATIC_CSP)
        pages = {
            page: _asset((root / f"{page}.html").read_bytes(), ".html", PAGE_CACHE, CSP[page])
            for page in PAGES
        }
    except OSError as exc:
        missing = Path(exc.filename or "?").name
        raise Unavailable(
            f"webroot does not match its manifest: {missing}: {exc.strerror}"
        ) from None
    except (AttributeError, KeyError, TypeError) as exc:
        raise Unavailable(f"webroot/manifest.json is not a manifest: {exc!r}") from None
    return Built(pages, static)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebPages:
    """The handlers of the pages under ``root``, loaded on first use, once: a failure too is
    kept, so requests do not make the node read and hash the webroot again and again."""

    def __init__(self, root: Path):
        self.root = root
        self._built: Built | None = None
        self._failed: str | None = None  # why the load failed

    def built(self) -> Built:
        if self._failed is not None:
            raise Unavailable(self._failed)
        if self._built is None:
            try:
                self._built = load(self.root)
            except Unavailable as exc:
                self._failed = str(exc)
                log.warning("web pages in %s unavailable: %s", self.root, exc)
                raise
        return self._built

    def _answer(self, request: web.Request, found: Asset) -> web.Response:
        asked = request.if_none_match
        if asked and any(tag.value in (found.etag, "*") for tag in asked):
            headers = {k: v for k, v in found.headers.items() if k != "Content-Type"}
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers=found.headers)

    def page(self, name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                built = self.built()
            except Unavailable as exc:
                return error(503, "unavailable", str(exc))
            return self._answer(request, built.pages[name])

        return handler

    async def static(self, request: web.Request) -> web.StreamResponse:
        try:
            built = self.built()
        except Unavailable as exc:
            return error(503, "unavailable", str(exc))
        found = built.static.get(request.match_info["name"])
        if found is None:
            return error(
                404,
                "not_found",
                "no such file in this node's web pages (a page loads its files by content "
                "hash: reload the page to get the current names)",
            )
        return self._answer(request, found)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            *(("GET", f"/{page}", self.page(page)) for page in PAGES),
            ("GET", "/static/{name}", self.static),
        ]


def routes() -> list[tuple[str, str, Handler]]:
    """(method, path, handler) of the pages in ``WEBROOT``, for ``api.create_app``."""
    return WebPages(WEBROOT).routes()
