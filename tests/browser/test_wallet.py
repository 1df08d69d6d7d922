"""The web wallet (/wallet) in Chromium against the session devnet, over the node's
non-loopback address (so the page is not a secure context and has no crypto.subtle).

Two browser contexts hold two wallets side by side, each with its own localStorage: "alice",
created in the page (phrase shown once, confirmed by chosen words), and "operator", made with
qnet-cli, funded by the faucet, owner of a light node it activated with qnet-cli, exported with
``qnet-cli wallet export --file`` and imported into the page. The tests share them (module
scope) and run in file order. Each argon2id key derivation in the page costs 0.2-0.5 s, so
the page derives as few keys as the flows need, six at the interactive limits in all (counted
in ``window.qnet.keystore.kdfCalls``)."""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import bech32
import pytest
from playwright.sync_api import Page, expect

from qnet import crypto, tx
from qnet.client import ApiError, Client
from qnet.genesis import Params
from qnet.localnode import wait_for

CLI = str(Path(sys.executable).parent / "qnet-cli")
QNC = 10**9
FEE = Params().min_fee  # the wallet's default fee: the min_fee of the node's status
ALICE_PASSWORD = "alice's long passphrase"
OPERATOR_PASSWORD = "operator passphrase"
KEYSTORE_FIELDS = ("version", "name", "address", "kdf", "opslimit", "memlimit", "salt", "nonce",
                   "ciphertext")  # fmt: skip
VECTORS = Path(__file__).parents[1] / "vectors" / "recovery_phrase.json"
WALLET_FILES = Path(__file__).parents[1] / "vectors" / "bad_wallet_files.json"
PHRASE_INPUTS = Path(__file__).parents[1] / "vectors" / "phrase_inputs.json"
UI_TIMEOUT_MS = 30_000  # a transaction's way to a block, seen through the page's 2 s refresh
# What follows an argon2id key derivation in the page (0.2-0.5 s alone; more on a loaded
# 2-core machine than Playwright's 5 s default allows for).
ARGON2_TIMEOUT_MS = 20_000
MINUS = "\N{MINUS SIGN}"  # how the page signs what left the wallet
HISTORY_PAGE = 20  # transactions per history request (web/src/wallet/node.js)

# RFC 8032 section 7.1, tests 1, 2, 3 and 1024: secret key, public key, message, signature.
RFC8032_MESSAGE_1024 = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
    "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b2032"
    "9d658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177"
    "e93a7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a"
    "36553e06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b92"
    "8a8bbc103b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac"
    "70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a"
    "2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67"
    "bf2b13fd65f27088d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c9"
    "0bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a"
    "8d0859dc65a46128bab27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1a"
    "e0784504df543af8969be3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f"
    "3c7ca495e056a9b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30"
    "c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724"
    "517b65e614ad6808d6f6ee34dff7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78f"
    "f4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7"
    "f7276cd419c17a3ca8e1b939ae49e488acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
    "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0"
    "e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e5"
    "06b50d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40f"
    "d9d03412c091c6315cf4fde7cb68606937380db2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac"
    "86aba41c0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0"
)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        RFC8032_MESSAGE_1024,
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
]


# ---- the chain, through qnet-cli and the API -----------------------------------------------


class Chain:
    """The session devnet as a user's terminal sees it: qnet-cli with the devnet keystore
    (its funded faucet wallet) and the API."""

    def __init__(self, devnet):
        self.url = devnet.url
        self.api = Client(devnet.url)
        self.keystore = Path(devnet.keystore)
        self.faucet = devnet.faucet_name
        self.faucet_key = devnet.faucet
        self.faucet_address = crypto.encode_address(devnet.faucet.address)
        self.env = devnet.env  # QNET_NODE, QNET_KEYSTORE and the faucet's password
        self.network = devnet.network

    def cli(self, *args: str, password: str | None = None, stdin: str = "") -> dict:
        """``qnet-cli --json ARGS``, with ``password`` for the wallets it opens or writes."""
        env = {**self.env, **({"QNET_WALLET_PASSWORD": password} if password else {})}
        done = subprocess.run(
            [CLI, "--json", *args], env=env, input=stdin, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"qnet-cli {' '.join(args)}:\n{done.stderr}"
        return json.loads(done.stdout)

    def fund(self, address: str, qnc: str) -> None:
        """The faucet sends ``qnc`` to ``address``, committed."""
        sent = self.cli("wallet", "send", "--from", self.faucet, address, qnc)
        assert sent["status"] == "committed", sent

    def committed(self, tx_id: str) -> bool:
        try:
            return self.api.tx_status(tx_id)["status"] == "committed"
        except ApiError as exc:
            if exc.code == "not_found":  # not sent yet
                return False
            raise

    def account(self, address: str) -> tuple[int, int]:
        """Balance (units) and nonce, as committed."""
        found = self.api.account(address)
        return int(found["balance"]), found["nonce"]


@dataclass
class Wallet:
    """A wallet open in its own browser context."""

    name: str
    address: str
    page: Page
    password: str
    words: list[str] = field(default_factory=list)


@dataclass
class Operator:
    wallet: Wallet | None
    node_key: crypto.KeyPair
    keystore_file: Path


@pytest.fixture(scope="module")
def chain(devnet) -> Chain:
    return Chain(devnet)


def open_wallet_page(pages, chain: Chain) -> Page:
    page = pages.open(accept_downloads=True).page
    page.goto(f"{chain.url}/wallet")
    expect(page.locator("#view-locked")).to_be_visible()
    expect(page.locator("#network")).to_contain_text(chain.network.chain_id)
    return page


def view(page: Page, name: str, arrived: bool = True, timeout: float | None = None):
    """The view now shown, after checking it is the one expected and, when the page has
    just ``arrived`` there, that its heading has the focus (for keyboard and screen reader
    users, who start reading there). ``timeout`` (ms) after a key derivation."""
    section = page.locator(f"#view-{name}")
    expect(section).to_be_visible(timeout=timeout)
    if arrived:
        expect(section.locator("h1")).to_be_focused(timeout=timeout)
    return section


def kdf_calls(page: Page) -> int:
    return page.evaluate("window.qnet.keystore.kdfCalls.count")


def balance_shown(page: Page, units: int) -> None:
    """The main view shows ``units`` as its balance (refreshed by the page itself)."""
    expect(page.locator("#main-balance")).to_have_text(
        page.evaluate("u => window.qnet.amounts.formatQnc(BigInt(u))", str(units)),
        timeout=UI_TIMEOUT_MS,
    )


def send_in_page(page: Page, to: str, amount: str, fee: str | None = None):
    """Fill and submit the send form (the send view must be open)."""
    form = page.locator("#view-send")
    form.get_by_label("Recipient address").fill(to)
    form.get_by_label("Amount (QNC)").fill(amount)
    if fee is not None:
        form.get_by_label("Fee (QNC)").fill(fee)
    form.get_by_role("button", name="Sign and send").click()


def heartbeat(chain: Chain, node_key: crypto.KeyPair) -> None:
    """The node's heartbeat for the current epoch, committed (what a running node sends by
    itself; here the test plays the node, so no second node process is needed)."""
    address = crypto.encode_address(node_key.address)

    def committed() -> bool:
        epoch = chain.api.epoch()["epoch"]
        nonce = chain.api.account(address)["next_nonce"]
        beat = tx.make_heartbeat(node_key, chain.network, nonce, epoch)
        chain.api.submit(beat)
        # an epoch that ends before the block refuses it (wrong_epoch): send the next one
        return chain.api.wait_committed(beat.id.hex(), 20)["status"] == "committed"

    wait_for(committed, 30, "a committed heartbeat")


# ---- the two wallets --------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(chain, tmp_path_factory) -> Operator:
    """A qnet-cli wallet, funded, owner of a light node it activated with qnet-cli, exported
    to a file with ``qnet-cli wallet export --file``; the node has a heartbeat in the current
    epoch, so once that epoch closes it has a reward."""
    name = f"w-operator-{os.getpid()}"
    created = chain.cli("wallet", "create", name, password=OPERATOR_PASSWORD)
    chain.fund(created["address"], "500")
    node_dir = tmp_path_factory.mktemp("operator-node")
    key_file = node_dir / "node_key"
    chain.cli("node", "keygen", "--out", str(key_file))
    node_key = crypto.KeyPair(bytes.fromhex(key_file.read_text().strip()))
    activated = chain.cli(
        "node", "activate", "--data-dir", str(node_dir), "--owner", name, "--type", "light",
        "--region", "eu", password=OPERATOR_PASSWORD,
    )  # fmt: skip
    assert activated["status"] == "committed", activated
    heartbeat(chain, node_key)
    exported = node_dir / f"{name}.json"
    chain.cli("wallet", "export", name, "--file", str(exported), password=OPERATOR_PASSWORD)
    return Operator(None, node_key, exported)


@pytest.fixture(scope="module")
def shared() -> dict:
    """What the tests of this module hand on to the next (they run in file order)."""
    return {}


def alice_of(shared: dict) -> Wallet:
    assert "alice" in shared, "test_create_... makes alice: run the module from its start"
    return shared["alice"]


# ---- the tests ----------------------------------------------------------------------------


def test_create_with_phrase_confirmation_fund_send_and_both_balances_update(
    pages, chain, operator, shared, assert_accessible
):
    page = open_wallet_page(pages, chain)
    locked = view(page, "locked")
    expect(locked.get_by_text("No wallet is kept in this browser yet")).to_be_visible()
    assert_accessible(page, "wallet: locked, no wallet")

    # Create: the key is made in the page; the phrase is shown once, then words are asked.
    locked.get_by_role("button", name="Create a new wallet").click()
    create = view(page, "create")
    assert_accessible(page, "wallet: create")
    create.get_by_label("Wallet name").fill("alice")
    create.get_by_label("Password", exact=True).fill(ALICE_PASSWORD)
    create.get_by_label("Password again").fill(ALICE_PASSWORD + " typo")
    create.get_by_role("button", name="Make the key").click()
    expect(create.get_by_role("alert")).to_have_text("The two passwords differ.")
    create.get_by_label("Password again").fill(ALICE_PASSWORD)
    create.get_by_role("button", name="Make the key").click()

    shown = view(page, "phrase")
    words = shown.locator("#phrase-words li").all_inner_texts()
    assert len(words) == 24
    assert_accessible(page, "wallet: recovery phrase")
    shown.get_by_role("button", name="Continue").click()
    expect(shown.get_by_role("alert")).to_contain_text("Tick the box")
    shown.get_by_label("I have written down the 24 words in order").check()
    shown.get_by_role("button", name="Continue").click()

    confirm = view(page, "confirm")
    labels = confirm.locator("#confirm-fields label").all_inner_texts()
    positions = [int(label.removeprefix("Word ")) for label in labels]
    assert len(positions) == 3 and sorted(set(positions)) == positions
    assert_accessible(page, "wallet: confirm the phrase")
    # A wrong word is refused and nothing is created.
    for i, position in enumerate(positions):
        right = words[position - 1]
        wrong = "zoo" if right != "zoo" else "abandon"
        confirm.get_by_label(f"Word {position}", exact=True).fill(wrong if i == 0 else right)
    confirm.get_by_role("button", name="Create the wallet").click()
    expect(confirm.get_by_role("alert")).to_contain_text(
        f"Word {positions[0]} does not match your phrase"
    )
    expect(confirm.get_by_label(f"Word {positions[0]}", exact=True)).to_be_focused()
    assert kdf_calls(page) == 0 and page.evaluate("localStorage.length") == 0
    confirm.get_by_label(f"Word {positions[0]}", exact=True).fill(words[positions[0] - 1])
    confirm.get_by_role("button", name="Create the wallet").click()

    main = view(page, "main", timeout=ARGON2_TIMEOUT_MS)
    assert kdf_calls(page) == 1  # one key derivation: sealing the new wallet
    address = main.get_by_label("Address").input_value()
    crypto.decode_address(address)
    # What the browser keeps is the keystore document (the seed sealed), nothing else.
    assert page.evaluate("Object.keys(localStorage)") == ["qnet.wallets.v1"]
    stored = page.evaluate("JSON.parse(localStorage.getItem('qnet.wallets.v1'))")
    assert list(stored) == ["alice"] and stored["alice"]["address"] == address
    assert set(stored["alice"]) == set(KEYSTORE_FIELDS)
    shared["alice"] = Wallet("alice", address, page, ALICE_PASSWORD, words)
    balance_shown(page, 0)

    # Fund from the faucet (qnet-cli): the page shows it without a reload.
    chain.fund(address, "100")
    balance_shown(page, 100 * QNC)

    # The second wallet: the CLI's operator, imported in another context from its file.
    operator.wallet = import_operator(pages, chain, operator, assert_accessible)
    before = chain.account(operator.wallet.address)[0]
    balance_shown(operator.wallet.page, before)

    # Alice sends 2.5 QNC to it; both pages show the new balances.
    main.get_by_role("button", name="Send").click()
    send = view(page, "send")
    assert_accessible(page, "wallet: send")
    send_in_page(page, operator.wallet.address, "2.5")
    expect(send.get_by_role("status")).to_contain_text("committed in block", timeout=UI_TIMEOUT_MS)
    assert chain.account(address) == (100 * QNC - 25 * QNC // 10 - FEE, 1)
    send.get_by_role("button", name="Back to the wallet").click()
    view(page, "main")
    balance_shown(page, 100 * QNC - 25 * QNC // 10 - FEE)
    balance_shown(operator.wallet.page, before + 25 * QNC // 10)
    assert_accessible(page, "wallet: main")


def import_operator(pages, chain: Chain, operator: Operator, assert_accessible) -> Wallet:
    """The operator's CLI keystore file, imported in a new context with its password."""
    page = open_wallet_page(pages, chain)
    view(page, "locked").get_by_role("button", name="Import a wallet").click()
    imported = view(page, "import")
    assert_accessible(page, "wallet: import")
    by_file = imported.locator("#import-file-form")
    by_file.get_by_label("Wallet file").set_input_files(operator.keystore_file)
    by_file.get_by_label("The file's password").fill(OPERATOR_PASSWORD)
    by_file.get_by_role("button", name="Import the file").click()
    main = view(page, "main", timeout=ARGON2_TIMEOUT_MS)
    doc = json.loads(operator.keystore_file.read_text())
    address = main.get_by_label("Address").input_value()
    assert address == doc["address"]
    assert kdf_calls(page) == 1  # the file's key, derived once
    return Wallet(doc["name"], address, page, OPERATOR_PASSWORD)


def test_rfc8032_vectors_signed_in_the_page_verify_in_python(shared):
    page = alice_of(shared).page
    for secret, public, message, signature in RFC8032:
        made = page.evaluate(
            """([secret, message]) => {
                const { codec } = window.qnet;
                const key = codec.keyPair(codec.fromHex(secret));
                return [codec.toHex(key.publicKey), key.address,
                        codec.toHex(codec.sign(codec.fromHex(message), key.seed))];
            }""",
            [secret, message],
        )
        assert made[0] == public
        assert made[1] == crypto.encode_address(crypto.address_bytes(bytes.fromhex(public)))
        assert made[2] == signature
        assert crypto.verify(bytes.fromhex(public), bytes.fromhex(made[2]), bytes.fromhex(message))


def test_recovery_phrase_vectors_in_the_page(shared):
    """BIP-39's 256-bit vectors (tests/vectors, shared with qnet.phrase): seed to words, words
    to seed, and the qnc address of the seed."""
    page = alice_of(shared).page
    vectors = json.loads(VECTORS.read_text())["vectors"]
    made = page.evaluate(
        """vectors => vectors.map(({ seed, phrase }) => {
            const { codec, phrase: words } = window.qnet;
            return [words.seedToWords(codec.fromHex(seed)).join(" "),
                    codec.toHex(words.phraseToSeed(phrase)),
                    codec.keyPair(codec.fromHex(seed)).address];
        })""",
        vectors,
    )
    assert made == [[v["phrase"], v["seed"], v["address"]] for v in vectors]


def test_the_page_reads_wallet_files_as_the_cli_does(pages, chain):
    """tests/vectors/bad_wallet_files.json (shared with tests/unit/test_keystore.py): the page
    refuses each bad file before deriving a key, and opens each good one."""
    vectors = json.loads(WALLET_FILES.read_text())
    page = open_wallet_page(pages, chain)
    read = page.evaluate(
        """async ({ accepted, bad, password }) => {
            const { keystore } = window.qnet;
            const file = (c) => c.text + " ".repeat(c.pad ?? 0);
            const refusals = bad.map((c) => {
                try { keystore.parseFile(file(c)); return `${c.why}: accepted`; }
                catch (e) { return e.name; }
            });
            const opened = [];
            for (const c of accepted) {
                const seed = await keystore.unseal(keystore.parseFile(file(c)), password);
                opened.push(window.qnet.codec.keyPair(seed).address);
            }
            return { refusals, opened, kdf: keystore.kdfCalls.count };
        }""",
        vectors,
    )
    assert read["refusals"] == ["KeystoreError"] * len(vectors["bad"])
    assert read["opened"] == [vectors["address"]] * len(vectors["accepted"])
    assert read["kdf"] == len(vectors["accepted"])  # none for the bad files
    pages.close(page)


def test_the_page_reads_recovery_phrases_as_the_cli_does(pages, chain):
    """tests/vectors/phrase_inputs.json (shared with tests/unit/test_phrase.py)."""
    inputs = json.loads(PHRASE_INPUTS.read_text())
    page = open_wallet_page(pages, chain)
    read = page.evaluate(
        """({ accepted, refused }) => {
            const { codec, phrase } = window.qnet;
            const seed = (c) => {
                try { return codec.toHex(phrase.phraseToSeed(c.text)); }
                catch (e) { return e.name; }
            };
            return { accepted: accepted.map(seed), refused: refused.map(seed) };
        }""",
        inputs,
    )
    assert read["accepted"] == [inputs["seed"]] * len(inputs["accepted"])
    assert read["refused"] == ["PhraseError"] * len(inputs["refused"])
    pages.close(page)


def test_a_cli_wallet_signs_a_transfer_the_node_accepts_and_claims_its_node_reward(
    chain, operator, shared, assert_accessible
):
    alice = alice_of(shared)
    wallet = operator.wallet
    assert wallet, "the first test imports the operator's wallet in the page"
    page = wallet.page
    alice_before = chain.account(alice.address)[0]
    balance, nonce = chain.account(wallet.address)
    view(page, "main").get_by_role("button", name="Send").click()
    send = view(page, "send")
    send_in_page(page, alice.address, "1.000000001")
    expect(send.get_by_role("status")).to_contain_text("committed in block", timeout=UI_TIMEOUT_MS)
    assert chain.account(wallet.address) == (balance - QNC - 1 - FEE, nonce + 1)
    assert chain.account(alice.address)[0] == alice_before + QNC + 1

    # Rewards: the light node it owns, with its heartbeat epoch; claimable once it closed.
    send.get_by_role("button", name="Back to the wallet").click()
    view(page, "main").get_by_role("button", name="Node rewards").click()
    rewards = view(page, "rewards")
    node_id = operator.node_key.node_id
    card = rewards.get_by_role("article", name=f"Node {node_id}")
    expect(card).to_be_visible(timeout=UI_TIMEOUT_MS)
    unclaimed = wait_for(
        lambda: int(chain.api.node(node_id)["unclaimed"]), 30, "the node's epoch to close"
    )
    claim = card.get_by_role("button", name="Claim")
    expect(claim).to_be_enabled(timeout=UI_TIMEOUT_MS)
    expect(card.get_by_role("table")).to_contain_text("closed")
    assert_accessible(page, "wallet: rewards")
    balance, nonce = chain.account(wallet.address)
    claim.click()
    status = rewards.get_by_role("status")
    expect(status).to_contain_text("credited", timeout=UI_TIMEOUT_MS)
    record = chain.api.node(node_id)
    credited = int(record["last_claim"]["amount"])
    assert credited >= unclaimed  # epochs that closed meanwhile are paid too
    assert chain.account(wallet.address) == (balance + credited - FEE, nonce + 1)
    expect(status).to_contain_text(
        page.evaluate("u => window.qnet.amounts.formatQnc(BigInt(u))", str(credited))
    )


def test_recent_transactions_newest_first_in_both_wallets(
    operator, shared, chain, assert_accessible, screenshots
):
    alice = alice_of(shared)
    wallet = operator.wallet
    node_id = operator.node_key.node_id
    view(wallet.page, "rewards", arrived=False).get_by_role(
        "button", name="Back to the wallet"
    ).click()
    expected = [
        (alice, [
            (f"Received from {wallet.address}", "+1.000000001"),
            (f"Sent to {wallet.address}", f"{MINUS}2.5"),
            (f"Received from {chain.faucet_address}", "+100"),
        ]),
        (wallet, [
            (f"Claimed the rewards of node {node_id}", "—"),
            (f"Sent to {alice.address}", f"{MINUS}1.000000001"),
            (f"Received from {alice.address}", "+2.5"),
            (f"Activated light node {node_id} (burned)", MINUS),
            (f"Received from {chain.faucet_address}", "+500"),
        ]),
    ]  # fmt: skip
    for who, rows in expected:
        table = view(who.page, "main", arrived=False).get_by_role("table")
        # one row per transaction, newest first (the page refreshes them by itself)
        expect(table.locator("tbody tr")).to_have_count(len(rows), timeout=UI_TIMEOUT_MS)
        for row, (what, amount) in zip(table.locator("tbody tr").all(), rows, strict=True):
            expect(row.locator("td.what")).to_have_text(what)
            expect(row.locator("td").nth(2)).to_contain_text(amount)
    assert_accessible(alice.page, "wallet: main, with its history")
    screenshots(alice.page, "wallet")


def test_a_wallet_made_in_the_page_imports_in_the_cli_by_file_and_by_phrase(
    chain, shared, tmp_path
):
    alice = alice_of(shared)
    page = alice.page
    with page.expect_download() as download:
        view(page, "main", arrived=False).get_by_role("button", name="Export wallet file").click()
    exported = tmp_path / "alice.json"
    download.value.save_as(exported)
    assert json.loads(exported.read_text())["address"] == alice.address

    by_file = chain.cli(
        "wallet", "import", f"w-alice-file-{os.getpid()}", "--file", str(exported),
        password=ALICE_PASSWORD,
    )  # fmt: skip
    assert by_file["address"] == alice.address
    by_phrase = chain.cli(
        "wallet", "import", f"w-alice-phrase-{os.getpid()}", "--phrase",
        password=ALICE_PASSWORD, stdin=" ".join(alice.words) + "\n",
    )  # fmt: skip
    assert by_phrase["address"] == alice.address


def test_a_phrase_imports_in_another_browser_to_the_same_address(
    pages, chain, shared, assert_accessible
):
    alice = alice_of(shared)
    page = open_wallet_page(pages, chain)
    view(page, "locked").get_by_role("button", name="Import a wallet").click()
    form = view(page, "import").locator("#import-phrase-form")
    form.get_by_label("Wallet name").fill("alice-again")
    form.get_by_label("New password", exact=True).fill(ALICE_PASSWORD)
    form.get_by_label("New password again").fill(ALICE_PASSWORD)
    swapped = [alice.words[1], alice.words[0], *alice.words[2:]]
    if swapped != alice.words:  # two equal first words would swap into the same phrase
        form.get_by_label("Recovery phrase (24 words)").fill(" ".join(swapped))
        form.get_by_role("button", name="Import the phrase").click()
        expect(form.get_by_role("alert")).to_contain_text("do not fit together (checksum)")
    for words, message in (
        (alice.words[:23], "a recovery phrase is 24 words; this has 23"),
        ([*alice.words[:4], "qnetcoin", *alice.words[5:]], 'word 5 ("qnetcoin") is not in'),
    ):
        form.get_by_label("Recovery phrase (24 words)").fill(" ".join(words))
        form.get_by_role("button", name="Import the phrase").click()
        expect(form.get_by_role("alert")).to_contain_text(message)
    assert kdf_calls(page) == 0 and page.evaluate("localStorage.length") == 0
    # Pasted from a numbered list, in capitals: the same words.
    form.get_by_label("Recovery phrase (24 words)").fill(
        "\n".join(f"{i}. {w.upper()}" for i, w in enumerate(alice.words, 1))
    )
    form.get_by_role("button", name="Import the phrase").click()
    main = view(page, "main", timeout=ARGON2_TIMEOUT_MS)
    assert main.get_by_label("Address").input_value() == alice.address
    assert kdf_calls(page) == 1

    # Forgetting it here asks first, then keeps nothing of it in this browser.
    main.get_by_role("button", name="Forget").click()
    forget = view(page, "forget")
    assert_accessible(page, "wallet: forget")
    forget.get_by_role("button", name="Forget the wallet").click()
    expect(forget.get_by_role("alert")).to_contain_text("Tick the box")
    forget.get_by_label("I have its recovery phrase or an exported wallet file").check()
    forget.get_by_role("button", name="Forget the wallet").click()
    locked = view(page, "locked")
    expect(locked.get_by_role("status")).to_have_text(
        'Wallet "alice-again" is no longer kept in this browser.'
    )
    expect(locked.get_by_text("No wallet is kept in this browser yet")).to_be_visible()
    assert page.evaluate("localStorage.getItem('qnet.wallets.v1')") == "{}"
    pages.close(page)


def test_the_served_policy_blocks_inline_script_and_eval_but_lets_argon2_compile(
    pages, chain, inline_script, eval_and_wasm
):
    """The wallet's own HTML with an inline script added, served with the node's headers: the
    header refuses the script and eval; WebAssembly compiles ('wasm-unsafe-eval', for
    hash-wasm's argon2id)."""
    page = pages.open().page
    seen = inline_script(page, chain.url, "/wallet")
    page.goto(f"{chain.url}/wallet")
    view(page, "locked")  # the page's own module ran
    assert "script-src 'self' 'wasm-unsafe-eval';" in seen["csp"]
    assert "style-src 'self';" in seen["csp"] and "unsafe-inline" not in seen["csp"]
    assert page.title() == "QNet wallet"
    assert page.evaluate("window.violations") == ["script-src-elem"]
    assert eval_and_wasm(page) == {"eval": "EvalError", "wasm": "ran"}
    pages.close(page)  # with its route, which its refreshes would keep using


def test_the_status_page_is_one_link_away(pages, chain):
    page = open_wallet_page(pages, chain)
    height = chain.api.status()["height"]  # before the page reads it: it shows as much or more
    page.get_by_role("link", name="Network status").click()
    page.wait_for_url(f"{chain.url}/status")
    expect(page.locator("#chain")).to_contain_text(chain.network.chain_id)
    expect(page.locator("#height")).to_have_text(re.compile(r"^\d[\d,]*$"))
    assert int(page.locator("#height").inner_text().replace(",", "")) >= height
    pages.close(page)


def other_network_address(address: str) -> str:
    """The same 20 bytes under another network's prefix (a valid bech32 string)."""
    return bech32.bech32_encode("tqnc", bech32.convertbits(crypto.decode_address(address), 8, 5))


def test_bad_input_shows_a_clear_message_and_changes_nothing_on_chain(
    chain, operator, shared, assert_accessible
):
    alice = alice_of(shared)
    page = alice.page
    before = chain.account(alice.address)

    # A wrong password leaves the wallet locked; the right one opens it.
    main = view(page, "main", arrived=False)
    main.get_by_role("button", name="Lock").click()
    locked = view(page, "locked")
    assert_accessible(page, "wallet: locked")
    calls = kdf_calls(page)
    locked.get_by_label("Password").fill("not " + ALICE_PASSWORD)
    locked.get_by_role("button", name="Unlock").click()
    expect(locked.get_by_role("alert")).to_have_text(
        'Wrong password for wallet "alice": it stays locked. Check the password and try again.',
        timeout=ARGON2_TIMEOUT_MS,
    )
    expect(page.locator("#view-main")).to_be_hidden()
    locked.get_by_label("Password").fill(ALICE_PASSWORD)
    locked.get_by_role("button", name="Unlock").click()
    view(page, "main", timeout=ARGON2_TIMEOUT_MS).get_by_role("button", name="Send").click()
    assert kdf_calls(page) == calls + 2

    send = view(page, "send")
    alert = send.get_by_role("alert")
    recipient = operator.wallet.address
    refusals = [
        ("qnc1notanaddress", "1", "is not a valid address"),
        (recipient[:-1] + ("q" if recipient[-1] != "q" else "p"), "1", "checksum does not match"),
        (operator.node_key.node_id, "1", "is a node id, not a wallet address"),
        (other_network_address(recipient), "1", "belongs to another network"),
        (recipient, "0.0000000001", "has more than 9 decimals"),
        (recipient, "1.5.", "is not a number"),
        (recipient, "-3", "must not be negative"),
        (recipient, "18446744074", "too large"),
    ]
    for to, amount, message in refusals:
        send_in_page(page, to, amount)
        expect(alert).to_contain_text(message)
        expect(alert).to_contain_text("Nothing was signed.")

    # Overdraft, the fee included: the whole balance plus the fee does not fit.
    whole = page.evaluate("u => window.qnet.amounts.formatQnc(BigInt(u))", str(before[0]))
    send_in_page(page, recipient, whole)
    expect(alert).to_contain_text("Insufficient funds: this needs")
    expect(alert).to_contain_text("Nothing was signed.")

    # Node unreachable while reading the balance: nothing is signed.
    page.route("**/api/v1/**", lambda route: route.abort("connectionrefused"))
    expect(page.locator("#connection")).to_contain_text("cannot be reached", timeout=UI_TIMEOUT_MS)
    send_in_page(page, recipient, "1")
    expect(alert).to_contain_text("cannot be reached")
    expect(alert).to_contain_text("Nothing was signed or sent")
    page.unroute("**/api/v1/**")
    assert page.evaluate("localStorage.getItem('qnet.outbox.v1')") in (None, "[]")
    assert chain.account(alice.address) == before  # nothing of the above reached the chain

    # Unreachable when sending: the signed transaction is kept, then sent once the node is back.
    def refuse_submissions(route):
        if route.request.method == "POST":
            route.abort("connectionrefused")
        else:
            route.continue_()

    expect(page.locator("#connection")).to_be_empty(timeout=UI_TIMEOUT_MS)
    page.route("**/api/v1/transactions", refuse_submissions)
    send_in_page(page, recipient, "0.25")
    expect(alert).to_contain_text("Signed but not sent")
    kept = json.loads(page.evaluate("localStorage.getItem('qnet.outbox.v1')"))
    assert [(e["state"], e["json"]["amount"]) for e in kept] == [("unsent", str(QNC // 4))]
    assert chain.account(alice.address) == before
    # a reload does not lose it (the outbox is in localStorage, and resending needs no key)
    page.reload()
    locked = view(page, "locked")
    expect(locked.locator("#outbox-locked-list")).to_contain_text("Send 0.25 QNC")
    page.unroute("**/api/v1/transactions")
    wait_for(lambda: chain.committed(kept[0]["id"]), 30, "the kept transfer on chain")
    expect(locked.locator("#outbox-locked")).to_be_hidden(timeout=UI_TIMEOUT_MS)
    assert chain.account(alice.address) == (before[0] - QNC // 4 - FEE, before[1] + 1)


def outbox_of(page: Page) -> list[dict]:
    return json.loads(page.evaluate("localStorage.getItem('qnet.outbox.v1') ?? '[]'"))


def test_a_transfer_whose_answer_was_lost_and_that_committed_is_reported_committed(chain, operator):
    """The node admits the transfer but its answer never reaches the page (a timeout, a
    reload); the page sends it again only once it is committed, when the node answers
    stale_nonce: the page asks about the id and reports the commit, never a refusal."""
    page = operator.wallet.page
    view(page, "main", arrived=False).get_by_role("button", name="Send").click()
    send = view(page, "send")
    page.evaluate(
        """() => { window.errorsShown = [];
        new MutationObserver(() => window.errorsShown.push(
            document.getElementById("send-error").textContent))
            .observe(document.getElementById("send-error"), {childList: true, subtree: true,
                                                            characterData: true}); }"""
    )
    admitted = {}

    def lose_answers(route):
        if route.request.method != "POST":
            route.continue_()
        elif not admitted:
            admitted["id"] = route.fetch().json()["id"]  # the node has it ...
            route.abort("connectionreset")  # ... the page never hears so
        elif chain.committed(admitted["id"]):
            route.continue_()  # the node answers stale_nonce
        else:
            route.abort("connectionreset")

    page.route("**/api/v1/transactions", lose_answers)
    try:
        send_in_page(page, chain.faucet_address, "0.5")
        expect(send.get_by_role("status")).to_contain_text(
            "committed in block", timeout=UI_TIMEOUT_MS
        )
    finally:
        page.unroute("**/api/v1/transactions")
    height = chain.api.tx_status(admitted["id"])["height"]
    expect(send.get_by_role("status")).to_contain_text(f"committed in block {height}.")
    expect(page.locator("#send-error")).to_be_empty()
    assert not [t for t in page.evaluate("window.errorsShown") if "refused" in t]
    assert any(t.startswith("Signed but not sent") for t in page.evaluate("window.errorsShown"))
    assert outbox_of(page) == []
    send.get_by_role("button", name="Back to the wallet").click()


def test_kept_transactions_go_in_nonce_order_and_a_refusal_stays_until_dismissed(chain, operator):
    """Two transfers signed while the node is out of reach, stored out of nonce order: both
    commit (nonce n first). A refused one (fee 0: fee_too_low) is kept, shown after a reload
    and an unlock, until dismissed."""
    wallet = operator.wallet
    page = wallet.page
    main = view(page, "main", arrived=False)
    main.get_by_role("button", name="Send").click()
    send = view(page, "send")
    page.route(
        "**/api/v1/transactions",
        lambda route: (
            route.abort("connectionrefused")
            if route.request.method == "POST"
            else route.continue_()
        ),
    )
    for count, amount in enumerate(("0.125", "0.25"), 1):
        send_in_page(page, chain.faucet_address, amount)
        expect(page.locator("#outbox-list li")).to_have_count(count)
        expect(send.get_by_role("alert")).to_contain_text("Signed but not sent")
    kept = sorted(outbox_of(page), key=lambda e: e["nonce"])
    assert [e["nonce"] - kept[0]["nonce"] for e in kept] == [0, 1]
    # the higher nonce first in storage, as a resend of the lower one leaves it
    page.evaluate("es => localStorage.setItem('qnet.outbox.v1', JSON.stringify(es))", kept[::-1])
    page.unroute("**/api/v1/transactions")
    for entry in kept:
        wait_for(lambda e=entry: chain.committed(e["id"]), 30, "the kept transfers on chain")
    expect(page.locator("#outbox-list li")).to_have_count(0, timeout=UI_TIMEOUT_MS)
    assert outbox_of(page) == []  # both committed, none refused

    send_in_page(page, chain.faucet_address, "0.5", fee="0")
    expect(send.get_by_role("alert")).to_contain_text("the node refused it: fee_too_low")
    (refused,) = outbox_of(page)
    assert (refused["state"], refused["code"]) == ("refused", "fee_too_low")
    page.reload()
    locked = view(page, "locked")
    locked.get_by_label("Password").fill(wallet.password)
    locked.get_by_role("button", name="Unlock").click()
    outbox = view(page, "main", arrived=False, timeout=ARGON2_TIMEOUT_MS).locator("#outbox")
    entry = outbox.get_by_role("listitem").filter(has_text="Send 0.5 QNC")
    expect(entry).to_contain_text("refused by the node: fee_too_low", timeout=ARGON2_TIMEOUT_MS)
    entry.get_by_role("button", name="Dismiss").click()
    expect(outbox).to_be_hidden()
    assert outbox_of(page) == []


def test_without_the_networks_minimum_fee_the_page_signs_nothing_by_default(chain, operator):
    """A node that does not say min_fee in its status (an older version): the fee field is
    left empty, and the page refuses to guess a fee."""
    page = operator.wallet.page
    main = view(page, "main", arrived=False)
    assert chain.api.status()["min_fee"] == str(FEE)

    def without_min_fee(route):
        served = route.fetch()
        body = {k: v for k, v in served.json().items() if k != "min_fee"}
        route.fulfill(response=served, json=body)

    page.route("**/api/v1/status", without_min_fee)
    try:
        with page.expect_response("**/api/v1/status"):
            pass

        def fee_left_empty() -> bool:
            view(page, "main", arrived=False).get_by_role("button", name="Send").click()
            send = view(page, "send", arrived=False)
            empty = send.get_by_label("Fee (QNC)").input_value() == ""
            send.get_by_role("button", name="Back to the wallet").click()
            return empty

        wait_for(fee_left_empty, 10, "the send form without a default fee")
        main.get_by_role("button", name="Send").click()
        send = view(page, "send")
        send_in_page(page, chain.faucet_address, "1")
        expect(send.get_by_role("alert")).to_contain_text("does not say the network's minimum fee")
        expect(send.get_by_role("alert")).to_contain_text("Nothing was signed.")
        assert outbox_of(page) == []
    finally:
        page.unroute("**/api/v1/status")
    send.get_by_role("button", name="Back to the wallet").click()


def test_older_transactions_are_listed_on_request_once_each(chain, operator):
    """More transactions than a history page holds (20): the newest page first, the rest
    behind "Show older transactions", down to the wallet's first, none twice."""
    page = operator.wallet.page
    to = crypto.decode_address(operator.wallet.address)
    nonce = chain.account(chain.faucet_address)[1]
    batch = [
        tx.make_transfer(chain.faucet_key, chain.network, nonce + i, FEE, to, i + 1)
        for i in range(HISTORY_PAGE + 1)  # distinct amounts: no two rows alike
    ]
    assert chain.api.submit_batch(tx.encode_batch(batch))["accepted"] == len(batch)
    assert chain.api.wait_committed(batch[-1].id.hex(), 30)["status"] == "committed"
    main = view(page, "main", arrived=False)
    rows = main.get_by_role("table").locator("tbody tr")
    expect(main.locator("td.what").first).to_have_text(
        f"Received from {chain.faucet_address}", timeout=UI_TIMEOUT_MS
    )
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("+0.000000021", timeout=UI_TIMEOUT_MS)
    expect(rows).to_have_count(HISTORY_PAGE)
    older = main.get_by_role("button", name="Show older transactions")
    older.click()
    expect(rows.last.locator("td.what")).to_have_text(f"Received from {chain.faucet_address}")
    expect(rows.last.locator("td").nth(2)).to_contain_text("+500")
    shown = rows.all_inner_texts()
    assert len(shown) > HISTORY_PAGE and len(set(shown)) == len(shown)
    expect(older).to_be_hidden()  # all of them fit in two pages
