"""Fixtures of the browser tests: a devnet node that serves the pages on a NON-loopback
address (so a page is not a secure context, as on a real network: no ``crypto.subtle``),
Debian's Chromium driven by Playwright, an axe-core check and a screenshot helper.

The node and the browser are package-scoped (this directory is a package for that): both
test files share one of each, and both are gone before the rest of the suite runs.

The address is the bridge end of ``tests/netns.py``'s Bridge, with no host on it (the node
and the browser both run in the root namespace), in the first free /24 of ``SUBNETS``; it
needs root, so these tests skip without it, except under CI=true where they fail.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, sync_playwright

from netns import Bridge, can_run  # tests/ is on sys.path (tests/conftest.py)
from qnet import crypto
from qnet.client import Client
from qnet.genesis import Params
from qnet.keystore import Keystore
from qnet.localnode import LocalNode, local_net

CHROMIUM = "/usr/bin/chromium"
# The machine has no internet: without these Chromium keeps trying Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
]
# The first of these /24s that is free (another run of these tests may hold one): netns tests
# use 10.78.0, testbeds 10.77.x, testnets 10.79.1-2.
SUBNETS = [f"10.79.{i}" for i in range(3, 10)]
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FAUCET = "faucet"
PASSWORD = "devnet"  # a throwaway chain on a private bridge, as make devnet's
FAUCET_UNITS = 1_000_000 * 10**9
# Epochs of a few seconds: a node's reward becomes claimable within a test.
PARAMS = Params(epoch_ms=3_000)
SERIOUS = ("serious", "critical")


def _needs_root() -> None:
    reason = can_run() or (None if Path(CHROMIUM).exists() else f"no {CHROMIUM}")
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run: {reason} (make system-deps installs chromium)")
    pytest.skip(reason)


@dataclass
class Devnet:
    """One validator (a super node, so it serves the pages) at ``url`` on the bridge, whose
    genesis funds the wallet ``FAUCET`` kept in ``keystore`` under ``PASSWORD``."""

    node: LocalNode
    keystore: Path
    faucet: crypto.KeyPair
    faucet_name: str = FAUCET
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def network(self) -> crypto.Network:
        return self.node.genesis.network

    @property
    def client(self) -> Client:
        return Client(self.url)


def _free_bridge() -> Bridge:
    prefix = f"qw{os.getpid() % 100000:05d}"
    taken = []
    for subnet in SUBNETS:
        try:
            return Bridge(0, subnet, prefix)
        except RuntimeError as exc:  # taken: by name or by subnet
            taken.append(str(exc))
    raise RuntimeError("no free subnet for the browser tests' bridge:\n" + "\n".join(taken))


@pytest.fixture(scope="package")
def bridge_address():
    _needs_root()
    bridge = _free_bridge()
    try:
        yield bridge.gateway
    finally:
        bridge.close()


@pytest.fixture(scope="package")
def devnet(tmp_path_factory, bridge_address) -> Devnet:
    home = tmp_path_factory.mktemp("browser-devnet")
    faucet = crypto.KeyPair.generate()
    keystore = home / "wallets"
    Keystore(keystore).add(FAUCET, PASSWORD, faucet)
    (node,) = local_net(home, 1, {faucet.address: FAUCET_UNITS}, PARAMS, hosts=[bridge_address])
    env = {
        **os.environ,
        "QNET_NODE": node.url,
        "QNET_KEYSTORE": str(keystore),
        "QNET_WALLET_PASSWORD": PASSWORD,
    }
    node.start()
    try:
        yield Devnet(node, keystore, faucet, env=env)
    finally:
        node.stop()


@pytest.fixture(scope="package")
def browser() -> Browser:
    _needs_root()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Opened:
    """A page with what it reported: console messages and uncaught errors."""

    page: Page
    console: list = field(default_factory=list)  # (type, text)
    errors: list = field(default_factory=list)  # uncaught exceptions


class Pages:
    """Pages, each in a browser context of its own (its own storage), at desktop size unless
    a viewport is given; ``close_all`` fails on any uncaught exception one of them threw."""

    def __init__(self, browser: Browser):
        self.browser = browser
        self.opened: dict[Page, Opened] = {}

    def open(self, url: str | None = None, **options) -> Opened:
        options.setdefault("viewport", DESKTOP)
        page = self.browser.new_context(**options).new_page()
        record = Opened(page)
        page.on("console", lambda m: record.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: record.errors.append(str(e)))
        self.opened[page] = record
        if url is not None:
            page.goto(url)
        return record

    def close(self, page: Page) -> None:
        """Close ``page``'s context now (its errors still count at ``close_all``)."""
        page.context.close()

    def close_all(self) -> None:
        for page in self.opened:
            page.context.close()
        thrown = [e for record in self.opened.values() for e in record.errors]
        assert thrown == [], f"uncaught errors in the page: {thrown}"


@pytest.fixture
def open_page(browser):
    """``open_page(url, **context_options) -> Opened``: a page in a context of its own, for
    this test (see Pages)."""
    pages = Pages(browser)
    yield pages.open
    pages.close_all()


@pytest.fixture(scope="module")
def pages(browser) -> Pages:
    """Pages (``pages.open(...)``) that live for the whole test module, so that its tests
    can share what a page holds (an unlocked wallet)."""
    made = Pages(browser)
    yield made
    made.close_all()


def axe_report(violations: list[dict]) -> str:
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"]:
            lines.append(f"    at {', '.join(map(str, node['target']))}: {node['html'][:200]}")
            summary = node.get("failureSummary", "").replace("\n", "\n      ")
            lines.append(f"      {summary}")
    return "\n".join(lines)


def check_accessible(page: Page, what: str) -> list[dict]:
    """Runs axe-core on the page as it is; fails on any serious or critical violation, and
    prints the lesser ones. Returns every violation."""
    violations = Axe().run(page).response["violations"]
    serious = [v for v in violations if v["impact"] in SERIOUS]
    lesser = [v for v in violations if v["impact"] not in SERIOUS]
    if lesser:
        print(f"\naxe on {what}: {len(lesser)} minor or moderate violation(s):\n"
              f"{axe_report(lesser)}")  # fmt: skip
    assert not serious, f"axe on {what}: serious or critical violations:\n{axe_report(serious)}"
    return violations


def settle(page: Page) -> None:
    """Until the page has laid out and painted what the last change caused."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def take_screenshots(page: Page, name: str, full_page: bool = True) -> list[Path]:
    """``docs/screenshots/<name>-desktop.png`` (1280x800) and ``<name>-phone.png`` (390 px
    wide) of the page as it is; the page is left at desktop size."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        settle(page)
        path = SCREENSHOTS / f"{name}-{label}.png"
        page.screenshot(path=str(path), full_page=full_page)
        paths.append(path)
    page.set_viewport_size(DESKTOP)
    settle(page)
    return paths


@pytest.fixture
def assert_accessible():
    """``assert_accessible(page, what)``: axe-core on the page as it is now; fails on a
    serious or critical violation (listed with where and why), prints the lesser ones."""
    return check_accessible


@pytest.fixture
def screenshots():
    """``screenshots(page, name, full_page=True)``: docs/screenshots/<name>-desktop.png and
    <name>-phone.png of the page as it is now."""
    return take_screenshots


# ---- the Content-Security-Policy, seen from the page -----------------------------------------


def serve_with_inline_script(page: Page, base_url: str, path: str) -> dict:
    """Route everything ``page`` loads from ``base_url`` through the test, the page ``path``
    with an inline script added to its head (``document.title = 'inline script ran'``) and
    served with the node's own headers; returns ``{"csp": ...}``, the policy it was served
    with, once the page is loaded. Everything goes through the route: a page fulfilled by the
    test counts as a public address, which Chromium does not let load from the bridge's
    private one. The page collects CSP violations in ``window.violations``."""
    seen = {}

    def with_inline_script(route):
        served = route.fetch()
        if route.request.url != f"{base_url}{path}":
            route.fulfill(response=served)
            return
        seen["csp"] = served.headers["content-security-policy"]
        body = served.text().replace(
            "<head>", "<head><script>document.title = 'inline script ran';</script>", 1
        )
        route.fulfill(response=served, body=body)

    page.route(f"{base_url}/**", with_inline_script)
    page.add_init_script(
        """window.violations = [];
        document.addEventListener("securitypolicyviolation",
            (e) => window.violations.push(e.violatedDirective));"""
    )
    return seen


def try_eval_and_wasm(page: Page) -> dict:
    """Whether ``eval`` and compiling WebAssembly work in a task of the page's own (what the
    test's evaluate call runs itself is exempt from the CSP): ``{"eval": ..., "wasm": ...}``,
    each "ran" or the error's name."""
    return page.evaluate(
        """() => new Promise((resolve) => setTimeout(async () => {
            const out = {};
            try { eval("1"); out.eval = "ran"; } catch (e) { out.eval = e.name; }
            const empty = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]);
            try { await WebAssembly.compile(empty); out.wasm = "ran"; }
            catch (e) { out.wasm = e.name; }
            resolve(out);
        }, 0))"""
    )


@pytest.fixture
def inline_script():
    """``inline_script(page, base_url, path)``: ``serve_with_inline_script``."""
    return serve_with_inline_script


@pytest.fixture
def eval_and_wasm():
    """``eval_and_wasm(page)``: ``try_eval_and_wasm``."""
    return try_eval_and_wasm
