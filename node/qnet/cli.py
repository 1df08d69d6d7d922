"""``qnet-cli``: create a chain, run and activate a node, manage wallets, send QNC and claim
node rewards.

Commands are thin click wrappers over plain functions (``init_genesis``, ``start_node``,
``stop_node``, ``verify_chain``) so ``qnet.devnet`` reuses exactly the same steps. Every
expected failure ends as one ``Error: ...`` line on stderr and exit status 1; amounts are
shown in exact QNC decimals, and ``--json`` prints machine-readable output instead.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import click

from . import crypto, snapshot
from .amounts import AmountError, format_qnc, parse_qnc
from .client import DEFAULT_URL, ApiError, Client
from .config import NODE_TYPES, ConfigError, NodeConfig, load_config, write_config
from .genesis import REGIONS, Genesis, GenesisError, Params, Seed, make_genesis
from .keystore import (
    NAME_RE,
    Keystore,
    KeystoreError,
    WalletInfo,
    check_password,
    read_document,
    unseal,
)
from .main import pid_alive, read_pid
from .node import StateDivergence, load_node_key, replay, write_secret
from .phrase import PhraseError, phrase_of, seed_of, words_of
from .storage import Storage, StorageError
from .tx import DecodeError, Transaction, make_activate, make_claim, make_transfer, prove_node

PASSWORD_ENV = "QNET_WALLET_PASSWORD"
DEFAULT_CHAIN_ID = "qnet-dev"
DEFAULT_FAUCET_QNC = "1000000"
DEFAULT_FEE_QNC = format_qnc(Params().min_fee)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 20
CONFIRM_WORDS = 2  # words of a new recovery phrase asked back at a terminal
MAX_SECRET_LINE = 4096  # a seed or phrase read from stdin: far more than either needs


class CliError(Exception):
    """A failure the user can act on; its message is the whole explanation."""


FAILURES = (
    CliError,
    ApiError,
    KeystoreError,
    PhraseError,
    AmountError,
    GenesisError,
    ConfigError,
    StorageError,
    StateDivergence,
    crypto.EncodingError,
    DecodeError,
    OSError,
)


class QNetGroup(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FAILURES as exc:
            raise click.ClickException(str(exc)) from None


def venv_bin(name: str) -> str:
    """A console script installed next to this interpreter (the same venv)."""
    return str(Path(sys.executable).parent / name)


# ---- output ----------------------------------------------------------------------------


def table(rows: list[tuple], header: tuple | None = None) -> str:
    """Plain aligned columns; good enough for a terminal, trivial to grep."""
    lines = [header, *rows] if header else list(rows)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


@dataclass
class Settings:
    node_url: str
    keystore: Keystore
    as_json: bool

    def client(self) -> Client:
        return Client(self.node_url)

    def emit(self, data: object, rows: list[tuple], header: tuple | None = None) -> None:
        """``--json`` prints ``data``; otherwise the human-readable ``rows``."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2))
        elif rows:
            click.echo(table(rows, header))


def format_uptime(seconds: float) -> str:
    """3725.4 -> '1h 2m 5s'."""
    rest, parts = int(seconds), []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        count, rest = divmod(rest, size)
        if count or parts:
            parts.append(f"{count}{unit}")
    return " ".join([*parts, f"{rest}s"])


def status_rows(status: dict) -> list[tuple]:
    rtts = status.get("region_rtt_ms")
    region = status["region"]
    if rtts:  # chosen by --region=auto: show what it measured
        shown = ", ".join(f"{r} {'-' if ms is None else f'{ms:g} ms'}" for r, ms in rtts.items())
        region = f"{region} (auto; round trips {shown})"
    return [
        ("node id", status["node_id"]),
        ("type", status["node_type"]),
        ("region", region),
        ("chain", status["chain_id"]),
        ("height", status["height"]),
        ("block hash", status["block_hash"]),
        ("peers", status["peers"]),
        ("sync lag", f"{status['sync_lag_blocks']} blocks"),
        ("round", status["consensus_round"]),
        ("mempool", status["mempool_size"]),
        ("version", status["version"]),
        ("uptime", format_uptime(status["uptime_s"])),
    ]


def wallet_password(confirm: bool = False) -> str:
    """$QNET_WALLET_PASSWORD for scripts, else a hidden prompt (on stderr, so --json stays
    clean on stdout)."""
    password = os.environ.get(PASSWORD_ENV)
    if password is not None:
        return password
    return click.prompt("Wallet password", hide_input=True, confirmation_prompt=confirm, err=True)


# ---- genesis ---------------------------------------------------------------------------


def parse_funds(entries: tuple[str, ...]) -> dict[str, int]:
    """``ADDRESS=QNC`` pairs -> {address: units}."""
    funds: dict[str, int] = {}
    for entry in entries:
        address, sep, amount = entry.partition("=")
        if not sep:
            raise CliError(f"--fund {entry!r} must be ADDRESS=QNC")
        crypto.decode_address(address)
        if address in funds:
            raise CliError(f"{address} is funded twice")
        funds[address] = parse_qnc(amount)
    return funds


def init_genesis(
    validators: list[tuple[Path, str]],
    chain_id: str,
    funds: dict[str, int],
    keystore: Keystore,
    faucet: str | None = None,
    faucet_units: int = 0,
    password: Callable[[], str] = wallet_password,
) -> Genesis:
    """Create a chain whose validators are the nodes of the given (data dir, region) pairs.

    Each data dir gets a node key (kept if it exists) and the same genesis.json. With
    ``faucet``, that wallet (created unless the keystore has it) is funded too; the password
    is asked for only if the wallet is created. Everything is validated before anything is
    written.
    """
    for data_dir, _ in validators:
        genesis_path = NodeConfig(data_dir=data_dir).genesis_path
        if genesis_path.exists():
            raise CliError(f"{genesis_path} already exists; refusing to replace a chain's genesis")
    balances = dict(funds)
    faucet_key = None
    if faucet:
        if keystore.exists(faucet):
            faucet_address = keystore.info(faucet).address
        else:
            faucet_key = crypto.KeyPair.generate()
            faucet_address = crypto.encode_address(faucet_key.address)
        if faucet_address in balances:
            raise CliError(f"the faucet {faucet_address} is also given with --fund")
        balances[faucet_address] = faucet_units
    keys = []
    for data_dir, _ in validators:
        key_path = NodeConfig(data_dir=data_dir).key_path
        keys.append(load_node_key(key_path) if key_path.exists() else None)
    node_keys = [k or crypto.KeyPair.generate() for k in keys]
    genesis = make_genesis(
        chain_id,
        [(k.node_id, region) for k, (_, region) in zip(node_keys, validators, strict=True)],
        balances,
        genesis_time_ms=int(time.time() * 1000),
    )
    if faucet and faucet_key is not None:
        keystore.add(faucet, password(), faucet_key)
    for (data_dir, _), existing, key in zip(validators, keys, node_keys, strict=True):
        data_dir.mkdir(parents=True, exist_ok=True)
        if existing is None:
            write_secret(NodeConfig(data_dir=data_dir).key_path, key.seed.hex() + "\n")
        genesis.save(NodeConfig(data_dir=data_dir).genesis_path)
    return genesis


def keygen(path: Path) -> tuple[crypto.KeyPair, bool]:
    """The node key in ``path`` and whether it was made now: a new one is written (mode 0600)
    only where there is no file; an existing key is read, never replaced."""
    if not (path.exists() or path.is_symlink()):
        key = crypto.KeyPair.generate()
        try:
            write_secret(path, key.seed.hex() + "\n")
            return key, True
        except FileExistsError:  # another keygen won the race: its key stands
            pass
    try:
        return load_node_key(path), False
    except (StorageError, ValueError) as exc:
        raise CliError(f"{path} exists and is not a node key ({exc}); left as it is") from None


def parse_validator(entry: str) -> tuple[str, str, str | None]:
    """``NODE_ID:REGION[:API_URL]`` -> (node id, region, API URL or None)."""
    node_id, _, rest = entry.partition(":")
    region, _, api_url = rest.partition(":")
    try:
        node_id = crypto.encode_node_id(crypto.decode_node_id(node_id))
    except crypto.EncodingError as exc:
        raise CliError(f"--validator {entry!r}: {exc}") from None
    if region not in REGIONS:
        raise CliError(f"--validator {entry!r}: region must be one of {', '.join(REGIONS)}")
    if api_url and not api_url.startswith(("http://", "https://")):
        raise CliError(f"--validator {entry!r}: the API URL must start with http:// or https://")
    return node_id, region, api_url or None


def parse_params(entries: tuple[str, ...]) -> Params:
    """``NAME=INTEGER`` pairs over the default chain parameters."""
    known = {f.name for f in fields(Params)}
    values: dict[str, int] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or name not in known:
            raise CliError(f"--param {entry!r} must be NAME=INTEGER, NAME one of {sorted(known)}")
        try:
            values[name] = int(value)
        except ValueError:
            raise CliError(f"--param {entry!r}: {value!r} is not an integer") from None
    return Params(**values)


def create_genesis(
    out: Path,
    chain_id: str,
    validators: list[tuple[str, str, str | None]],
    funds: dict[str, int],
    params: Params,
) -> Genesis:
    """Write ``out``, a genesis for validators given by (node id, region, API URL or None),
    whose API URLs become the seeds that ``--region auto`` measures. An existing file is
    never replaced, and ``out`` appears whole or not at all."""
    if out.exists():
        raise CliError(f"{out} already exists; refusing to replace a chain's genesis")
    created = make_genesis(
        chain_id,
        [(node_id, region) for node_id, region, _ in validators],
        funds,
        params,
        genesis_time_ms=int(time.time() * 1000),
        seeds=tuple(Seed(n, r, url) for n, r, url in validators if url),
    )
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    created.save(partial)
    try:
        os.link(partial, out)  # fails if the file appeared meanwhile: nothing is replaced
    except FileExistsError:
        raise CliError(f"{out} already exists; refusing to replace a chain's genesis") from None
    finally:
        partial.unlink()
    return created


def init_local_testnet(
    out: Path,
    validators: int,
    regions: list[str],
    chain_id: str,
    host: str,
    first_port: int,
    funds: dict[str, int],
    keystore: Keystore,
    faucet: str | None,
    faucet_units: int,
    password: Callable[[], str],
) -> tuple[Genesis, list[dict]]:
    """N validators on this machine in OUT/v1..vN, regions taken in turn, fully meshed."""
    unknown = sorted(set(regions) - set(REGIONS))
    if not regions or unknown:
        raise CliError(f"unknown region(s) {', '.join(unknown) or '(none given)'}")
    dirs = [(out / f"v{i + 1}").resolve() for i in range(validators)]
    created = init_genesis(
        [(d, regions[i % len(regions)]) for i, d in enumerate(dirs)],
        chain_id,
        funds,
        keystore,
        faucet,
        faucet_units,
        password,
    )
    configs = write_local_configs(dirs, host, first_port)
    nodes = [
        {
            "data_dir": str(d),
            "node_id": v.node_id,
            "region": v.region,
            "api": f"http://{c['api_host']}:{c['api_port']}",
            "p2p": f"{c['p2p_host']}:{c['p2p_port']}",
        }
        for d, v, c in zip(dirs, created.validators, configs, strict=True)
    ]
    return created, nodes


def write_local_configs(dirs: list[Path], host: str, first_port: int) -> list[dict]:
    """config.toml for validators on one machine: API and peer ports in pairs, full mesh."""
    ports = [(first_port + 2 * i, first_port + 2 * i + 1) for i in range(len(dirs))]
    configs = []
    for i, data_dir in enumerate(dirs):
        api_port, p2p_port = ports[i]
        peers = [f"{host}:{p2p}" for j, (_, p2p) in enumerate(ports) if j != i]
        values = {
            "api_host": host,
            "api_port": api_port,
            "p2p_host": host,
            "p2p_port": p2p_port,
            "peers": peers,
        }
        write_config(data_dir / "config.toml", values)
        configs.append(values)
    return configs


# ---- node processes --------------------------------------------------------------------


@dataclass(frozen=True)
class RunningNode:
    node_id: str
    pid: int
    api_url: str


def node_running(pid: int) -> bool:
    """Alive and not a zombie: a node that exited but is not yet reaped is gone."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal check is all we have
    return stat.rpartition(")")[2].split()[0] != "Z"


def running_pid(data_dir: Path) -> int | None:
    """The pid of the node serving ``data_dir``, from the pidfile the node writes."""
    pid = read_pid(NodeConfig(data_dir=data_dir).pid_path)
    return pid if pid is not None and node_running(pid) else None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _node_argv(
    data_dir: Path,
    node_type: str | None,
    region: str | None,
    api_port: int | None,
    peers: tuple[str, ...],
) -> list[str]:
    """Only the flags the user gave, so config.toml keeps the rest."""
    argv = [venv_bin("qnet-node"), "--data-dir", str(data_dir)]
    for flag, value in (("--type", node_type), ("--region", region), ("--api-port", api_port)):
        if value is not None:
            argv += [flag, str(value)]
    for peer in peers:
        argv += ["--peer", peer]
    return argv


def _prepare_start(
    data_dir: Path,
    node_type: str | None,
    region: str | None,
    api_port: int | None,
    peers: tuple[str, ...] = (),
) -> tuple[NodeConfig, list[str]]:
    config = load_config(
        data_dir, node_type=node_type, region=region, api_port=api_port, peers=list(peers) or None
    )
    if not config.genesis_path.exists():
        raise CliError(
            f"no genesis.json in {config.data_dir}: run "
            f"`qnet-cli genesis init --data-dir {data_dir}` first"
        )
    pid = running_pid(config.data_dir)
    if pid is not None:
        raise CliError(f"a node is already running from {config.data_dir} (pid {pid})")
    return config, _node_argv(config.data_dir, node_type, region, api_port, peers)


def start_node(
    data_dir: Path,
    node_type: str | None = None,
    region: str | None = None,
    api_port: int | None = None,
    peers: tuple[str, ...] = (),
    timeout: float = START_TIMEOUT_S,
) -> RunningNode:
    """Start ``qnet-node`` detached (own session, output appended to node.log) and return
    once it answers /health as this data dir's node."""
    config, argv = _prepare_start(data_dir, node_type, region, api_port, peers)
    node_id = load_node_key(config.key_path).node_id
    with open(config.log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = Client(config.api_url, timeout=1.0)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            client.health()
        except ApiError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise CliError(
                    f"the node did not answer {config.api_url}/health within "
                    f"{timeout:g} s and was stopped; last lines of "
                    f"{config.log_path}:\n{log_tail(config.log_path)}"
                ) from None
            time.sleep(0.1)
            continue
        answering = client.status()["node_id"]
        if answering != node_id:  # someone else holds the port; our node will fail to bind
            proc.terminate()
            raise CliError(f"another node ({answering}) already answers at {config.api_url}")
        return RunningNode(node_id, proc.pid, config.api_url)
    raise CliError(
        f"the node exited with status {proc.returncode} before answering; last "
        f"lines of {config.log_path}:\n{log_tail(config.log_path)}"
    )


def stop_node(data_dir: Path, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM the node serving ``data_dir`` and wait for it to exit; returns its pid."""
    data_dir = Path(data_dir).resolve()
    pid = running_pid(data_dir)
    if pid is None:
        raise CliError(f"no node is running from {data_dir}")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b"qnet"  # no /proc (not Linux): trust the pidfile
    if b"qnet" not in cmdline:  # a pidfile left by kill -9 may name a reused pid
        raise CliError(f"pid {pid} in {data_dir}/node.pid is not a qnet node (stale file)")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while node_running(pid):
        if time.monotonic() > deadline:
            raise CliError(f"the node (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.1)
    return pid


def verify_chain(data_dir: Path) -> tuple[int, bytes]:
    """Replay the stored chain from genesis; returns (height, state digest) if the replayed
    state matches the stored one. Safe while the node runs: SQLite readers see whole
    blocks, and a replay that raced a commit is repeated."""
    config = NodeConfig(data_dir=Path(data_dir).resolve())
    genesis = Genesis.load(config.genesis_path)
    if not config.db_path.exists():
        raise CliError(f"no chain database at {config.db_path}")
    storage = Storage(config.db_path, index=False)  # beside a running node: no writes
    try:
        if storage.get_meta("genesis_hash") != genesis.hash.hex():
            raise CliError(f"{config.db_path} belongs to another genesis")
        for _ in range(3):
            replayed = replay(storage, genesis)
            stored = storage.load_state()
            if stored.height == replayed.height:
                break
        else:
            raise CliError("the node kept committing during the replay; stop it and retry")
    finally:
        storage.close()
    if replayed.digest != stored.digest:
        raise CliError(
            f"state mismatch at height {stored.height}: replayed "
            f"{replayed.digest.hex()}, stored {stored.digest.hex()}"
        )
    return stored.height, stored.digest


# ---- transactions ------------------------------------------------------------------


def submit_and_wait(client: Client, tx: Transaction, wait: bool, timeout: float) -> dict:
    """Submit ``tx`` and, with ``wait``, poll until it is committed; a rejection is an error."""
    result = {"id": tx.id.hex(), **client.submit(tx)}
    if wait:
        result.update(client.wait_committed(tx.id.hex(), timeout))
    if result["status"] == "rejected":
        raise CliError(
            f"transaction {tx.id.hex()} was rejected: {result['reason']}: {result['message']}"
        )
    return result


def tx_rows(result: dict) -> list[tuple]:
    height = [("height", result["height"])] if "height" in result else []
    return [("tx id", result["id"]), ("status", result["status"]), *height]


def spendable(client: Client, wallet: str, address: str, needed: int, what: str) -> dict:
    """The wallet's account, if its balance covers ``needed`` units."""
    account = client.account(address)
    balance = int(account["balance"])
    if needed > balance:
        raise CliError(
            f"insufficient funds: {wallet} has {format_qnc(balance)} QNC, the "
            f"{what} needs {format_qnc(needed)} QNC"
        )
    return account


def wait_options(command):
    """``--no-wait`` and ``--timeout`` of the commands that submit a transaction."""
    command = click.option(
        "--timeout", default=30.0, show_default=True, help="Seconds to wait for commit."
    )(command)
    return click.option("--no-wait", is_flag=True, help="Return once the node accepted it.")(
        command
    )


# ---- commands --------------------------------------------------------------------------

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The node's data directory.",
)


@click.group(cls=QNetGroup)
@click.option(
    "--node",
    "node_url",
    envvar="QNET_NODE",
    default=DEFAULT_URL,
    show_default=True,
    help="Node API URL (env QNET_NODE).",
)
@click.option(
    "--keystore",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="QNET_KEYSTORE",
    help="Wallet directory (env QNET_KEYSTORE, default ~/.qnet/wallets).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def cli(ctx: click.Context, node_url: str, keystore: Path | None, as_json: bool) -> None:
    """QNet command line: chains, nodes, wallets and rewards."""
    ctx.obj = Settings(node_url, Keystore.locate(keystore), as_json)


pass_settings = click.make_pass_decorator(Settings)


def funding_options(command):
    """--fund, --faucet and --faucet-amount, shared by the commands that create a chain."""
    command = click.option(
        "--faucet-amount", default=DEFAULT_FAUCET_QNC, show_default=True, metavar="QNC"
    )(command)
    command = click.option(
        "--faucet", metavar="NAME", help="Create (or reuse) wallet NAME and fund it."
    )(command)
    return click.option(
        "--fund", multiple=True, metavar="ADDRESS=QNC", help="Fund an address; repeatable."
    )(command)


@cli.group()
def genesis() -> None:
    """Create a chain."""


@genesis.command("init")
@DATA_DIR
@click.option("--chain-id", default=DEFAULT_CHAIN_ID, show_default=True)
@click.option(
    "--region",
    type=click.Choice(REGIONS),
    default="eu",
    show_default=True,
    help="Region of this (the only) validator.",
)
@funding_options
@pass_settings
def genesis_init(
    settings: Settings,
    data_dir: Path,
    chain_id: str,
    region: str,
    fund: tuple[str, ...],
    faucet: str | None,
    faucet_amount: str,
) -> None:
    """Create DATA_DIR with a node key and a genesis where this node is the only validator."""
    funds = parse_funds(fund)
    faucet_units = parse_qnc(faucet_amount) if faucet else 0
    created = init_genesis(
        [(data_dir, region)],
        chain_id,
        funds,
        settings.keystore,
        faucet,
        faucet_units,
        lambda: wallet_password(confirm=True),
    )
    node_id = created.validators[0].node_id
    faucet_address = settings.keystore.info(faucet).address if faucet else None
    funded = [
        {
            "address": a,
            "amount": str(u),
            "amount_qnc": format_qnc(u),
            "wallet": faucet if a == faucet_address else None,
        }
        for a, u in sorted(created.balances.items())
    ]
    rows: list[tuple] = [("node id", node_id), ("chain id", created.chain_id)]
    for f in funded:
        owner = f"  (wallet {f['wallet']})" if f["wallet"] else ""
        rows.append(("funded", f"{f['address']}  {f['amount_qnc']} QNC{owner}"))
    genesis_path = NodeConfig(data_dir=data_dir.resolve()).genesis_path
    settings.emit(
        {
            "node_id": node_id,
            "chain_id": created.chain_id,
            "genesis": str(genesis_path),
            "funded": funded,
        },
        rows,
    )


@genesis.command("testnet")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory that receives one data dir per validator (v1, v2, ...).",
)
@click.option("--validators", type=click.IntRange(1, 100), default=4, show_default=True)
@click.option(
    "--regions",
    default="na,eu,ap,sa",
    show_default=True,
    help="Comma-separated region codes, assigned to the validators in turn.",
)
@click.option("--chain-id", default=DEFAULT_CHAIN_ID, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address they listen on.")
@click.option(
    "--first-port",
    type=click.IntRange(1, 65000),
    default=7370,
    show_default=True,
    help="Validator i gets API port first+2i and peer port first+2i+1.",
)
@funding_options
@pass_settings
def genesis_testnet(
    settings: Settings,
    out: Path,
    validators: int,
    regions: str,
    chain_id: str,
    host: str,
    first_port: int,
    fund: tuple[str, ...],
    faucet: str | None,
    faucet_amount: str,
) -> None:
    """Create a chain of N validators on this machine, each in OUT/vI with its node key,
    the shared genesis.json and a config.toml that peers it with all the others."""
    created, nodes = init_local_testnet(
        out,
        validators,
        [c.strip() for c in regions.split(",") if c.strip()],
        chain_id,
        host,
        first_port,
        parse_funds(fund),
        settings.keystore,
        faucet,
        parse_qnc(faucet_amount) if faucet else 0,
        lambda: wallet_password(confirm=True),
    )
    settings.emit(
        {"chain_id": created.chain_id, "validators": nodes},
        [(n["data_dir"], n["region"], n["api"], n["p2p"], n["node_id"]) for n in nodes],
        ("data dir", "region", "api", "p2p", "node id"),
    )


@genesis.command("create")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The genesis file to write; an existing one is never replaced.",
)
@click.option("--chain-id", required=True)
@click.option(
    "--validator",
    "validators",
    multiple=True,
    required=True,
    metavar="NODE_ID:REGION[:API_URL]",
    help="A validator (repeatable); its API URL, if given, becomes a seed for --region auto.",
)
@click.option("--fund", multiple=True, metavar="ADDRESS=QNC", help="Fund an address; repeatable.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=INTEGER",
    help="A chain parameter other than its default (amounts in base units); repeatable.",
)
@pass_settings
def genesis_create(
    settings: Settings,
    out: Path,
    chain_id: str,
    validators: tuple[str, ...],
    fund: tuple[str, ...],
    params: tuple[str, ...],
) -> None:
    """Write the genesis of a chain whose validators' node keys live elsewhere (made with
    `qnet-cli node keygen` on the machine that keeps them)."""
    parsed = [parse_validator(v) for v in validators]
    created = create_genesis(out, chain_id, parsed, parse_funds(fund), parse_params(params))
    settings.emit(
        {
            "genesis": str(out),
            "chain_id": created.chain_id,
            "genesis_hash": created.hash.hex(),
            "validators": [{"node_id": v.node_id, "region": v.region} for v in created.validators],
            "seeds": [{"node_id": s.node_id, "api_url": s.api_url} for s in created.seeds],
        },
        [("genesis", str(out)), ("chain id", created.chain_id), ("hash", created.hash.hex())]
        + [("validator", f"{v.node_id}  {v.region}") for v in created.validators],
    )


@cli.group()
def node() -> None:
    """Run and inspect a node."""


@node.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The key file (hex seed, mode 0600); an existing one is kept and read.",
)
@pass_settings
def node_keygen(settings: Settings, out: Path) -> None:
    """Make a node key in OUT unless there is one; print its node id."""
    key, created = keygen(out)
    settings.emit(
        {"node_id": key.node_id, "key_file": str(out), "created": created},
        [("node id", key.node_id), ("key file", f"{out} ({'new' if created else 'existing'})")],
    )


@node.command("id")
@click.argument("key_file", type=click.File("r"), metavar="KEY_FILE")
@pass_settings
def node_identity(settings: Settings, key_file) -> None:
    """Print the node id of the node key in KEY_FILE (- reads the hex seed from stdin)."""
    try:
        key = crypto.KeyPair(bytes.fromhex(key_file.read().strip()))
    except ValueError:
        raise CliError(f"{key_file.name}: a node key is 32 bytes as 64 hex characters") from None
    settings.emit({"node_id": key.node_id}, [(key.node_id,)])


@node.command("start")
@DATA_DIR
@click.option("--type", "node_type", type=click.Choice(NODE_TYPES))
@click.option("--region", type=click.Choice([*REGIONS, "auto"]))
@click.option("--api-port", type=click.IntRange(1, 65535))
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="A peer to start from (repeatable; default: config.toml's peers).",
)
@click.option("--foreground", is_flag=True, help="Run in this terminal instead of detached.")
@click.option(
    "--activate",
    "owner",
    metavar="WALLET",
    help="Once it runs, activate the node (through --node) from this wallet, which pays the "
    "burn and fee and owns its rewards, unless it is active already.",
)
@click.option("--fee", default=DEFAULT_FEE_QNC, show_default=True, metavar="QNC")
@pass_settings
def node_start(
    settings: Settings,
    data_dir: Path,
    node_type: str | None,
    region: str | None,
    api_port: int | None,
    peers: tuple[str, ...],
    foreground: bool,
    owner: str | None,
    fee: str,
) -> None:
    """Start the node of DATA_DIR (detached; output goes to DATA_DIR/node.log)."""
    if foreground:
        if owner:
            raise CliError("--activate needs the node detached; activate it with `node activate`")
        _, argv = _prepare_start(data_dir, node_type, region, api_port, peers)
        os.execv(argv[0], argv)
    started = start_node(data_dir, node_type, region, api_port, peers)
    result = {"node_id": started.node_id, "pid": started.pid, "api_url": started.api_url}
    rows = [("node id", started.node_id), ("pid", started.pid), ("api", started.api_url)]
    if owner:
        running = Client(started.api_url).status()
        try:
            settings.client().node(started.node_id)
        except ApiError as exc:
            if exc.code != "not_found":
                raise
            activation, more = activate_node(
                settings, data_dir, owner, running["node_type"], running["region"], fee, True, 60
            )
            result["activation"] = activation
            rows += more
        else:
            result["activation"] = {"status": "already active"}
            rows.append(("activation", "already active"))
    settings.emit(result, rows)


@node.command("status")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Ask the node of this data dir (its configured port) instead of --node.",
)
@pass_settings
def node_status(settings: Settings, data_dir: Path | None) -> None:
    """Show the node's identity, chain head and mempool."""
    url = load_config(data_dir).api_url if data_dir else settings.node_url
    status = Client(url).status()
    settings.emit(status, status_rows(status))


@node.command("stop")
@DATA_DIR
@pass_settings
def node_stop(settings: Settings, data_dir: Path) -> None:
    """Stop the node of DATA_DIR and wait until it has exited."""
    pid = stop_node(data_dir)
    settings.emit({"stopped": pid}, [("stopped", f"pid {pid}")])


@node.command("verify")
@DATA_DIR
@pass_settings
def node_verify(settings: Settings, data_dir: Path) -> None:
    """Replay the stored chain from genesis and check it reaches the stored state."""
    height, digest = verify_chain(data_dir)
    settings.emit(
        {"height": height, "state_digest": digest.hex(), "ok": True},
        [("height", height), ("state digest", digest.hex()), ("replay", "ok")],
    )


@node.command("snapshot")
@DATA_DIR
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The snapshot file to write (tar.gz); never overwritten.",
)
@pass_settings
def node_snapshot(settings: Settings, data_dir: Path, out: Path) -> None:
    """Write a consistent snapshot of DATA_DIR's chain, also while the node runs (no keys,
    no signing state)."""
    try:
        manifest = snapshot.create(data_dir, out)
    except (snapshot.SnapshotError, GenesisError, StorageError) as exc:
        raise CliError(str(exc)) from None
    settings.emit(
        {**manifest, "file": str(out)},
        [("file", out), ("height", manifest["height"]), ("block hash", manifest["block_hash"])],
    )


@node.command("restore")
@DATA_DIR
@click.option(
    "--from",
    "archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A snapshot written by `node snapshot`.",
)
@click.option(
    "--genesis",
    "genesis_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The chain's genesis.json, for a DATA_DIR without one (it is copied there).",
)
@click.option(
    "--genesis-hash",
    metavar="HEX",
    help="The chain's genesis hash, for a DATA_DIR without genesis.json (the snapshot's "
    "genesis.json is installed if it has this hash).",
)
@click.option(
    "--aside",
    is_flag=True,
    help="Move the old chain (chain.db, its WAL files, consensus.wal) into "
    "DATA_DIR/aside/<UTC time>/ instead of deleting it.",
)
@pass_settings
def node_restore(
    settings: Settings,
    data_dir: Path,
    archive: Path,
    genesis_file: Path | None,
    genesis_hash: str | None,
    aside: bool,
) -> None:
    """Replace DATA_DIR's chain with a snapshot of the expected chain, after replaying it
    from that chain's genesis; the node must be stopped. The expected genesis is DATA_DIR's
    own genesis.json, else the one given with --genesis or --genesis-hash: a snapshot's own
    is never trusted. A config.toml in the snapshot is ignored. Its key and signing state
    stay. The old chain is never opened, so a damaged one is replaced too."""
    pid = running_pid(Path(data_dir).resolve())
    if pid is not None:
        raise CliError(f"the node of {data_dir} is running (pid {pid}); stop it first")
    try:
        genesis = Genesis.load(genesis_file) if genesis_file else None
        manifest = snapshot.restore(
            archive, data_dir, aside=aside, genesis=genesis, genesis_hash=genesis_hash
        )
    except (snapshot.SnapshotError, GenesisError, StorageError) as exc:
        raise CliError(f"not restored, {data_dir} is unchanged: {exc}") from None
    rows = [("restored", data_dir), ("height", manifest["height"]),
            ("block hash", manifest["block_hash"])]  # fmt: skip
    if aside:
        rows.append(("old chain moved to", manifest["aside"] or "(there was none)"))
    settings.emit({**manifest, "restored": str(data_dir)}, rows)


@node.command("activate")
@DATA_DIR
@click.option(
    "--owner",
    required=True,
    metavar="WALLET",
    help="Wallet that pays (the activation fee is burned) and owns the node's rewards.",
)
@click.option(
    "--type", "node_type", type=click.Choice(NODE_TYPES), default="full", show_default=True
)
@click.option("--region", type=click.Choice(REGIONS), help="Default: DATA_DIR's configured one.")
@click.option("--fee", default=DEFAULT_FEE_QNC, show_default=True, metavar="QNC")
@wait_options
@pass_settings
def node_activate(
    settings: Settings,
    data_dir: Path,
    owner: str,
    node_type: str,
    region: str | None,
    fee: str,
    no_wait: bool,
    timeout: float,
) -> None:
    """Register the node of DATA_DIR on chain (through --node): signed by wallet --owner,
    proven by the node key in DATA_DIR; burns the activation fee of its type."""
    result, rows = activate_node(
        settings, data_dir, owner, node_type, region, fee, not no_wait, timeout
    )
    settings.emit(result, rows)


def activate_node(
    settings: Settings,
    data_dir: Path,
    owner: str,
    node_type: str,
    region: str | None,
    fee: str,
    wait: bool,
    timeout: float,
) -> tuple[dict, list[tuple[str, object]]]:
    """Submit (through --node) the activation of DATA_DIR's node; returns what to show."""
    config = load_config(data_dir)
    node_key = load_node_key(config.key_path)
    region = region or config.region
    if region not in REGIONS:
        raise CliError(f"give --region: {config.data_dir}/config.toml names no region code")
    client = settings.client()
    network = client.network()
    known = config.genesis_path.exists() and Genesis.load(config.genesis_path)
    if known and known.network != network:
        raise CliError(f"{settings.node_url} serves another chain than {config.genesis_path}")
    burn = int(client.epoch()["activation_fees"][node_type])
    fee_units = parse_qnc(fee)
    key = settings.keystore.load(owner, wallet_password())
    owner_address = crypto.encode_address(key.address)
    account = spendable(client, owner, owner_address, burn + fee_units, "activation (fee + burn)")
    proof = prove_node(node_key, network, key.address)
    tx = make_activate(
        key,
        network,
        account["next_nonce"],
        fee_units,
        node_key.public_key,
        node_type,
        region,
        burn,
        proof,
    )
    result = submit_and_wait(client, tx, wait, timeout)
    result.update(
        {
            "node_id": node_key.node_id,
            "node_type": node_type,
            "region": region,
            "owner": owner_address,
            "burned": str(burn),
            "fee": str(fee_units),
        }
    )
    rows = [
        *tx_rows(result),
        ("node id", node_key.node_id),
        ("type", node_type),
        ("region", region),
        ("owner", owner_address),
        ("burned", f"{format_qnc(burn)} QNC"),
        ("fee", f"{format_qnc(fee_units)} QNC"),
    ]
    return result, rows


@cli.group()
def wallet() -> None:
    """Create wallets, check balances, send QNC."""


def resolve_address(keystore: Keystore, text: str) -> tuple[str, str | None]:
    """An address as given, or the address of the wallet of that name."""
    try:
        crypto.decode_address(text)
        return text, None
    except crypto.EncodingError as exc:
        if NAME_RE.fullmatch(text) and keystore.exists(text):
            return keystore.info(text).address, text
        if text.startswith(crypto.ADDRESS_HRP + "1"):
            raise CliError(str(exc)) from None
        raise CliError(
            f"{text!r} is neither an address nor a wallet in {keystore.directory}"
        ) from None


def _wallet_rows(name: str, address: str, path: Path) -> list[tuple]:
    return [("wallet", name), ("address", address), ("file", str(path))]


def show_wallet_file(settings: Settings, info: WalletInfo) -> None:
    settings.emit(
        {"name": info.name, "address": info.address, "path": str(info.path)},
        _wallet_rows(info.name, info.address, info.path),
    )


def warn_secret(what: str, more: str = "") -> None:
    click.echo(
        f"warning: {what} controls the wallet's funds; anyone who sees it can spend them{more}",
        err=True,
    )


def stdin_is_terminal() -> bool:
    return click.get_text_stream("stdin").isatty()


def read_secret(prompt: str) -> str:
    """A hidden prompt at a terminal, else one line of stdin."""
    if stdin_is_terminal():
        return click.prompt(prompt, hide_input=True, err=True)
    return click.get_text_stream("stdin").readline(MAX_SECRET_LINE)


def phrase_grid(phrase: str) -> str:
    """The words numbered in four columns, down then across, for writing down."""
    cells = [f"{i:>2} {word}" for i, word in enumerate(phrase.split(), 1)]
    rows = len(cells) // 4
    return table([tuple(cells[r::rows]) for r in range(rows)])


def confirm_phrase(phrase: str) -> None:
    """Ask for CONFIRM_WORDS words of the phrase, at random positions, on a cleared screen,
    until both are right; a wrong answer shows the phrase again. Ctrl-C or Ctrl-D abort."""
    words = phrase.split()
    while True:
        click.prompt(
            "Press Enter once you have written the words down",
            default="",
            show_default=False,
            err=True,
        )
        click.clear()  # only at a terminal: the words should come from the paper
        positions = sorted(secrets.SystemRandom().sample(range(len(words)), CONFIRM_WORDS))
        wrong = [
            p for p in positions if words_of(click.prompt(f"Word #{p + 1}", err=True)) != [words[p]]
        ]
        if not wrong:
            return
        numbers = " and ".join(f"#{p + 1}" for p in wrong)
        wrong_words = f"Words {numbers} are" if len(wrong) > 1 else f"Word {numbers} is"
        click.echo(f"{wrong_words} not right. The recovery phrase again:", err=True)
        click.echo(phrase_grid(phrase))


@wallet.command("create")
@click.argument("name")
@pass_settings
def wallet_create(settings: Settings, name: str) -> None:
    """Create wallet NAME with a new key, encrypted under a password, and show its recovery
    phrase once. At a terminal, two of its words are asked back before the wallet is saved;
    until then nothing is written, so an abort leaves no wallet behind."""
    if settings.keystore.exists(name):  # before asking for a password twice
        raise CliError(f"wallet {name!r} already exists in {settings.keystore.directory}")
    password = check_password(wallet_password(confirm=True))
    key = crypto.KeyPair.generate()
    phrase = phrase_of(key.seed)
    # --json output is for a program, which keeps the phrase from it: no one to ask
    interactive = stdin_is_terminal() and not settings.as_json
    warn_secret(
        "this recovery phrase",
        ".\nIt is shown only this once: write it down and keep it offline.",
    )
    if interactive:
        click.echo(phrase_grid(phrase))
        confirm_phrase(phrase)
    info = settings.keystore.add(name, password, key)
    rows = _wallet_rows(info.name, info.address, info.path)
    if not interactive:  # at a terminal it was shown above, once
        rows.append(("phrase", phrase))
    settings.emit(
        {"name": info.name, "address": info.address, "path": str(info.path), "phrase": phrase},
        rows,
    )


@wallet.command("import")
@click.argument("name")
@click.option(
    "--phrase",
    "from_phrase",
    is_flag=True,
    help="From its 24-word recovery phrase (at the prompt, or one line of stdin).",
)
@click.option(
    "--file",
    "from_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="From a wallet file (wallet export --file, or the web wallet's); asks for its password.",
)
@pass_settings
def wallet_import(settings: Settings, name: str, from_phrase: bool, from_file: Path | None) -> None:
    """Import wallet NAME from its seed (64 hex characters, at the prompt or one line of
    stdin), its recovery phrase (--phrase) or a wallet file (--file).

    A wallet file keeps its password: it is opened with it and sealed again under it, with a
    fresh salt and this keystore's limits, so the stored file is one this program wrote."""
    if from_phrase and from_file:
        raise CliError("give --phrase or --file, not both")
    if settings.keystore.exists(name):  # before asking for anything
        raise CliError(f"wallet {name!r} already exists in {settings.keystore.directory}")
    if from_file:
        doc = read_document(from_file)
        password = wallet_password()
        key = unseal(doc, password, f"wallet file {from_file}")
    else:
        if from_phrase:
            key = crypto.KeyPair(seed_of(read_secret("Recovery phrase")))
        else:
            try:
                key = crypto.KeyPair(bytes.fromhex(read_secret("Seed (hex)").strip()))
            except ValueError:  # not hex, or not 32 bytes (crypto.EncodingError)
                raise CliError("the seed must be 32 bytes as 64 hex characters") from None
        password = wallet_password(confirm=True)
    show_wallet_file(settings, settings.keystore.add(name, password, key))


@wallet.command("export")
@click.argument("name")
@click.option(
    "--file",
    "to_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the wallet's encrypted file to this path instead (0600; never overwrites).",
)
@click.option("--phrase", "as_phrase", is_flag=True, help="Print its recovery phrase instead.")
@pass_settings
def wallet_export(settings: Settings, name: str, to_file: Path | None, as_phrase: bool) -> None:
    """Print the seed of wallet NAME (it controls the funds: keep it secret), or its recovery
    phrase (--phrase), or write its wallet file, encrypted as stored, for `wallet import
    --file` or the web wallet (--file). Each asks for the wallet's password."""
    if as_phrase and to_file:
        raise CliError("give --phrase or --file, not both")
    password = wallet_password()
    if to_file:
        show_wallet_file(settings, settings.keystore.export(name, password, to_file))
        return
    key = settings.keystore.load(name, password)
    what, secret = ("phrase", phrase_of(key.seed)) if as_phrase else ("seed", key.seed.hex())
    warn_secret(f"this {'recovery phrase' if as_phrase else 'seed'}")
    address = crypto.encode_address(key.address)
    settings.emit({"name": name, "address": address, what: secret}, [(secret,)])


@wallet.command("list")
@pass_settings
def wallet_list(settings: Settings) -> None:
    """List the wallets in the keystore."""
    wallets = settings.keystore.wallets()
    if not wallets and not settings.as_json:
        click.echo(f"no wallets in {settings.keystore.directory}", err=True)
    settings.emit(
        [{"name": w.name, "address": w.address, "path": str(w.path)} for w in wallets],
        [(w.name, w.address) for w in wallets],
        ("NAME", "ADDRESS"),
    )


@wallet.command("balance")
@click.argument("wallet_or_address")
@pass_settings
def wallet_balance(settings: Settings, wallet_or_address: str) -> None:
    """Show the balance of a wallet (by name) or of any address."""
    address, name = resolve_address(settings.keystore, wallet_or_address)
    account = settings.client().account(address)
    rows = [("wallet", name)] if name else []
    rows += [
        ("address", address),
        ("balance", f"{format_qnc(int(account['balance']))} QNC"),
        ("nonce", account["nonce"]),
        ("pending", account["pending"]),
    ]
    settings.emit({**account, "name": name}, rows)


@wallet.command("send")
@click.option("--from", "sender", required=True, metavar="NAME", help="Paying wallet.")
@click.argument("to")
@click.argument("amount", metavar="AMOUNT_QNC")
@click.option("--fee", default=DEFAULT_FEE_QNC, show_default=True, metavar="QNC")
@wait_options
@pass_settings
def wallet_send(
    settings: Settings, sender: str, to: str, amount: str, fee: str, no_wait: bool, timeout: float
) -> None:
    """Send AMOUNT_QNC from wallet --from to TO (an address or a wallet name)."""
    units, fee_units = parse_qnc(amount), parse_qnc(fee)
    to_address, _ = resolve_address(settings.keystore, to)
    key = settings.keystore.load(sender, wallet_password())
    client = settings.client()
    network = client.network()
    from_address = crypto.encode_address(key.address)
    account = spendable(client, sender, from_address, units + fee_units, "transfer (amount + fee)")
    tx = make_transfer(
        key, network, account["next_nonce"], fee_units, crypto.decode_address(to_address), units
    )
    result = submit_and_wait(client, tx, not no_wait, timeout)
    result.update(
        {"from": from_address, "to": to_address, "amount": str(units), "fee": str(fee_units)}
    )
    settings.emit(
        result,
        [
            *tx_rows(result),
            ("from", from_address),
            ("to", to_address),
            ("amount", f"{format_qnc(units)} QNC"),
            ("fee", f"{format_qnc(fee_units)} QNC"),
        ],
    )


@cli.group()
def network() -> None:
    """Inspect the network as one node sees it."""


@network.command("peers")
@pass_settings
def network_peers(settings: Settings) -> None:
    """The node's connected peers: id, type, region, address, latency, direction."""
    peers = settings.client().peers()
    rows = [
        (
            p["node_id"],
            p["node_type"] + (" (validator)" if p["validator"] else ""),
            p["region"],
            p["address"] or "-",
            "-" if p["latency_ms"] is None else f"{p['latency_ms']:.1f} ms",
            p["direction"],
            "-" if p["height"] is None else p["height"],
        )
        for p in peers
    ]
    settings.emit(
        {"peers": peers},
        rows or [("no peers connected",)],
        ("node id", "type", "region", "address", "latency", "direction", "height")
        if rows
        else None,
    )


TPS_WINDOW_S = 60


def recent_tps(client: Client, head: int) -> float:
    """Committed transactions per second over the last minute (block times against this
    machine's clock, so a stalled chain shows 0)."""
    since = time.time() * 1000 - TPS_WINDOW_S * 1000
    committed, first = 0, head
    while first >= 1:  # walk back a page of headers at a time until a minute is covered
        page = client.headers(max(1, first - 999), first)
        recent = [h for h in page if h["time_ms"] > since]
        committed += sum(h["tx_count"] for h in recent)
        if len(recent) < len(page) or page[0]["height"] == 1:
            break
        first = page[0]["height"] - 1
    return committed / TPS_WINDOW_S


@network.command("stats")
@pass_settings
def network_stats(settings: Settings) -> None:
    """Activated nodes by type and region, height, TPS over the last minute, epoch."""
    client = settings.client()
    status = client.status()
    nodes = client.node_stats()
    epoch = client.epoch()
    tps = recent_tps(client, status["height"])
    data = {
        "height": status["height"],
        "tps_last_minute": round(tps, 1),
        "epoch": epoch["epoch"],
        "epoch_time_left_ms": epoch["time_left_ms"],
        "peers": status["peers"],
        "nodes": nodes,
    }
    rows = [
        ("height", status["height"]),
        ("tps (last minute)", f"{tps:.1f}"),
        ("epoch", f"{epoch['epoch']} ({format_uptime(epoch['time_left_ms'] / 1000)} left)"),
        ("peers of this node", status["peers"]),
        ("active nodes", nodes["total"]),
        *((f"  {t}", n) for t, n in nodes["by_type"].items()),
        *((f"  in {r}", n) for r, n in nodes["by_region"].items() if n),
    ]
    settings.emit(data, rows)


@cli.group()
def rewards() -> None:
    """Check and claim the rewards of activated nodes."""


def _node_id(text: str) -> str:
    return crypto.encode_node_id(crypto.decode_node_id(text))


def reward_rows(info: dict) -> list[tuple]:
    """One row per unclaimed eligible epoch of a node."""
    return [
        (
            info["node_id"],
            e["epoch"],
            "closed" if e["closed"] else "open",
            format_qnc(int(e["reward"])) if e["closed"] else "(after it closes)",
        )
        for e in info["epochs"]
    ]


@rewards.command("check")
@click.option("--node", "node_id", metavar="ID", help="A node id.")
@click.option("--owner", metavar="WALLET", help="A wallet name or address: all nodes it owns.")
@pass_settings
def rewards_check(settings: Settings, node_id: str | None, owner: str | None) -> None:
    """Per-epoch breakdown of unclaimed rewards and the total claimable now."""
    if node_id is None and owner is None:
        raise CliError("give --node ID, --owner WALLET or both")
    client = settings.client()
    owner_address = resolve_address(settings.keystore, owner)[0] if owner else None
    if node_id is not None:
        ids = [_node_id(node_id)]
    else:
        ids = client.node_stats(owner=owner_address)["node_ids"]
    infos = [client.node(i) for i in ids]
    for info in infos:
        if owner_address is not None and info["owner"] != owner_address:
            raise CliError(f"node {info['node_id']} is owned by {info['owner']}, not {owner}")
    total = sum(int(info["unclaimed"]) for info in infos)
    if not infos and not settings.as_json:
        click.echo(f"{owner} owns no activated node", err=True)
    rows = [row for info in infos for row in reward_rows(info)]
    rows.append(("total claimable", "", "", f"{format_qnc(total)} QNC"))
    settings.emit(
        {"nodes": infos, "claimable": str(total)},
        rows,
        ("NODE", "EPOCH", "STATUS", "REWARD (QNC)"),
    )


def credited_by(client: Client, node_id: str, height: int, timeout: float) -> int:
    """The amount the claim committed at ``height`` paid: the node's last claim, once the
    node's state shows that block (its transaction index may be a moment ahead)."""
    deadline = time.monotonic() + timeout
    while True:
        claim = client.node(node_id)["last_claim"]
        if claim is not None and claim["height"] == height:
            return int(claim["amount"])
        if time.monotonic() > deadline:
            raise CliError(f"node {node_id} shows no claim at height {height}")
        time.sleep(0.05)


@rewards.command("claim")
@click.option("--node", "node_id", required=True, metavar="ID", help="The node's id.")
@click.option("--owner", required=True, metavar="WALLET", help="The wallet that owns it.")
@click.option("--fee", default=DEFAULT_FEE_QNC, show_default=True, metavar="QNC")
@wait_options
@pass_settings
def rewards_claim(
    settings: Settings, node_id: str, owner: str, fee: str, no_wait: bool, timeout: float
) -> None:
    """Credit wallet --owner with the node's unclaimed rewards of closed epochs."""
    node_id = _node_id(node_id)
    fee_units = parse_qnc(fee)
    key = settings.keystore.load(owner, wallet_password())
    owner_address = crypto.encode_address(key.address)
    client = settings.client()
    info = client.node(node_id)
    if info["owner"] != owner_address:
        raise CliError(f"node {node_id} is owned by {info['owner']}, not {owner}")
    account = spendable(client, owner, owner_address, fee_units, "claim's fee")
    network = client.network()
    node_key = crypto.decode_node_id(node_id)
    tx = make_claim(key, network, account["next_nonce"], fee_units, node_key)
    result = submit_and_wait(client, tx, not no_wait, timeout)
    result.update({"node_id": node_id, "owner": owner_address, "fee": str(fee_units)})
    rows = [*tx_rows(result), ("node id", node_id), ("owner", owner_address)]
    if result["status"] == "committed":
        credited = credited_by(client, node_id, result["height"], timeout)
        result["credited"] = str(credited)
        rows.append(("credited", f"{format_qnc(credited)} QNC"))
    rows.append(("fee", f"{format_qnc(fee_units)} QNC"))
    settings.emit(result, rows)
