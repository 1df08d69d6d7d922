"""The status page in Chromium, served by the devnet's validator and by a full node that
follows it, over their non-loopback address: live height, plots drawn from the chain, peers
by region and type, axe-core, the CSP enforced, the unreachable-node alert, screenshots."""

import re

import pytest
from playwright.sync_api import Page, expect

from qnet import crypto, tx
from qnet.genesis import Params
from qnet.localnode import LocalNode, wait_for

TRANSFERS = 40
TPS_RGB = (11, 92, 173)  # main.js COLORS.tps
LATENCY_RGB = [(29, 107, 53), (164, 22, 26)]  # main.js COLORS.median, COLORS.max
PHONE = {"width": 390, "height": 844}
# The smallest valid WebAssembly module: the magic number and version 1.


@pytest.fixture(scope="module")
def follower(devnet, tmp_path_factory):
    """A full node in region eu that follows the validator (and serves the pages too)."""
    validator = devnet.node
    node = LocalNode(
        tmp_path_factory.mktemp("browser-full"),
        validator.genesis,
        crypto.KeyPair.generate(),
        {"node_type": "full", "region": "eu", "peers": [validator.p2p_address]},
        host=validator.url.split("//")[1].split(":")[0],
    )
    node.start()
    try:
        wait_for(lambda: node.status()["peers"] >= 1, 20, "the full node to connect")
        yield node
    finally:
        node.stop()


def number(page: Page, selector: str) -> int:
    return int(page.inner_text(selector).replace(",", ""))


def loaded(page: Page) -> int:
    """Waits until the page shows a height; returns it."""
    expect(page.locator("#height")).to_have_text(re.compile(r"^\d[\d,]*$"), timeout=10_000)
    return number(page, "#height")


def drawn_pixels(page: Page, plot: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of the plot's canvas within a few levels of ``rgb``: its series is drawn."""
    return page.evaluate(
        """([plot, rgb]) => {
            const canvas = document.querySelector(`#${plot} canvas`);
            const { width, height } = canvas;
            const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
            let count = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - rgb[0]) < 8 && Math.abs(data[i + 1] - rgb[1]) < 8 &&
                    Math.abs(data[i + 2] - rgb[2]) < 8 && data[i + 3] > 200) count++;
            }
            return count;
        }""",
        [plot, list(rgb)],
    )


def shown_tps(page: Page) -> float:
    """The throughput over the last 30 s that the summary states (0 while it states none)."""
    found = re.match(r"([\d.]+) tx/s over the last 30 s", page.inner_text("#tps-summary"))
    return float(found[1]) if found else 0.0


def send_transfers(devnet) -> None:
    """TRANSFERS transfers from the faucet in one batch, committed before this returns."""
    client = devnet.client
    nonce = client.account(crypto.encode_address(devnet.faucet.address))["next_nonce"]
    sink = crypto.KeyPair.generate().address
    fee = Params().min_fee
    batch = [
        tx.make_transfer(devnet.faucet, devnet.network, nonce + i, fee, sink, 1)
        for i in range(TRANSFERS)
    ]
    assert client.submit_batch(tx.encode_batch(batch))["accepted"] == TRANSFERS
    client.wait_committed(batch[-1].id.hex())


def test_the_page_shows_the_live_chain_its_plots_and_peers(
    devnet, follower, open_page, assert_accessible, screenshots
):
    page = open_page(f"{devnet.url}/status").page
    assert page.evaluate("window.isSecureContext") is False  # a real node's plain http
    first = loaded(page)
    wait_for(lambda: number(page, "#height") > first, 10, "the shown height to advance")
    status = devnet.client.status()
    expect(page.locator("#node-type")).to_have_text("super")
    expect(page.locator("#region")).to_have_text(status["region"])
    expect(page.locator("#version")).to_have_text(status["version"])
    expect(page.locator("#chain")).to_have_text(status["chain_id"])
    expect(page.locator("#sync-lag")).to_have_text("in sync")
    expect(page.locator("#last-block")).to_have_text(re.compile(r"^\d+ s ago \("))

    send_transfers(devnet)
    # The batch's block is in the plots once the page has fetched its header and arrival.
    wait_for(
        lambda: shown_tps(page) >= TRANSFERS / 30, 10, "the throughput of the batch in the summary"
    )
    for plot in ("tps-plot", "latency-plot"):
        assert int(page.get_attribute(f"#{plot}", "data-points")) > 0, plot
    assert drawn_pixels(page, "tps-plot", TPS_RGB) > 10
    assert sum(drawn_pixels(page, "latency-plot", rgb) for rgb in LATENCY_RGB) > 10
    expect(page.locator("#latency-summary")).to_have_text(re.compile(r"median \d+ ms"))
    for plot in ("tps", "latency"):  # each axis says what it counts
        legend = page.locator(f"#{plot}-plot .u-legend").inner_text()
        assert legend.strip(), plot
    expect(page.locator("#tps-plot [role=img]")).to_have_attribute(
        "aria-labelledby", "tps-title tps-summary"
    )

    # The full node, as a peer of the validator: type full, region eu.
    eu = page.locator("#peer-tally tbody tr", has=page.locator("th", has_text="eu"))
    expect(eu.locator("td")).to_have_text(["0", "1", "0", "1"])
    peer_row = page.locator("#peer-list tbody tr")
    expect(peer_row).to_have_count(1)
    expect(peer_row.locator("td").nth(1)).to_have_text("full")
    assert_accessible(page, "the status page")
    page.set_viewport_size(PHONE)
    assert_accessible(page, "the status page at phone width")
    screenshots(page, "status")

    # The full node serves the page too, and says it is a full node in sync.
    on_full = open_page(f"{follower.url}/status").page
    loaded(on_full)
    expect(on_full.locator("#node-type")).to_have_text("full")
    expect(on_full.locator("#region")).to_have_text("eu")
    expect(on_full.locator("#peer-list tbody tr td").nth(1)).to_have_text("super (validator)")
    wait_for(lambda: on_full.inner_text("#sync-lag") == "in sync", 10, "the full node in sync")


def test_the_csp_blocks_inline_script_eval_and_wasm_on_the_status_page(
    devnet, open_page, eval_and_wasm
):
    opened = open_page(f"{devnet.url}/status")
    page = opened.page
    loaded(page)
    page.evaluate(
        """() => {
            window.violations = [];
            document.addEventListener("securitypolicyviolation",
                (e) => window.violations.push(e.violatedDirective));
        }"""
    )
    page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.inlineRan = true;";
            document.head.append(script);
            const button = document.createElement("button");
            button.setAttribute("onclick", "window.handlerRan = true");
            document.body.append(button);
            button.click();
        }"""
    )
    wait_for(lambda: len(page.evaluate("window.violations")) >= 2, 5, "two CSP violations")
    assert page.evaluate("[window.inlineRan, window.handlerRan]") == [None, None]
    assert set(page.evaluate("window.violations")) == {"script-src-elem", "script-src-attr"}
    errors = [text for kind, text in opened.console if kind == "error"]
    assert any("Content Security Policy" in text for text in errors)
    assert eval_and_wasm(page) == {"eval": "EvalError", "wasm": "CompileError"}


def test_the_served_header_blocks_an_inline_script_in_the_page(devnet, open_page, inline_script):
    """The page's own HTML with an inline script added, served with the node's headers: the
    browser refuses the script because of the header, not because the build left it out."""
    opened = open_page()
    page = opened.page
    seen = inline_script(page, devnet.url, "/status")
    page.goto(f"{devnet.url}/status")
    loaded(page)  # the page's own module runs
    assert "script-src 'self';" in seen["csp"]
    assert page.evaluate("document.head.innerHTML").count("inline script ran") == 1
    assert page.title() == "QNet node status"
    assert page.evaluate("window.violations") == ["script-src-elem"]
    assert any(
        kind == "error" and "inline script" in text and "Content Security Policy" in text
        for kind, text in opened.console
    )


def test_an_unreachable_node_is_announced_until_it_is_back(devnet, open_page, assert_accessible):
    page = open_page(f"{devnet.url}/status").page
    loaded(page)
    alert = page.get_by_role("alert")
    expect(alert).to_be_hidden()
    devnet.node.stop()
    try:
        expect(alert).to_be_visible(timeout=10_000)
        expect(alert).to_contain_text("This node cannot be reached since")
        expect(alert).to_contain_text("The figures below are from")
        assert_accessible(page, "the status page with the node unreachable")
    finally:
        devnet.node.start()
    expect(alert).to_be_hidden(timeout=10_000)  # a refresh got through again
    expect(page.locator("body")).not_to_have_class("stale")
