"""``python -m qnet.devnet up|down --data-dir DIR``: a local network for a quick loop.

``up`` creates, on first use, N validators in DIR/v1..vN (regions taken in turn, API and
peer ports in pairs from 7370) with a funded wallet named ``faucet`` in DIR/wallets, starts
every node detached and prints their status; ``down`` stops them. Every step is the CLI's
own function, so the devnet is what a user gets from ``qnet-cli genesis testnet`` and
``qnet-cli node start``.
"""

import os
import time
from pathlib import Path

import click

from .amounts import parse_qnc
from .cli import (
    DEFAULT_CHAIN_ID,
    DEFAULT_FAUCET_QNC,
    PASSWORD_ENV,
    CliError,
    QNetGroup,
    init_local_testnet,
    running_pid,
    start_node,
    stop_node,
    table,
    venv_bin,
)
from .client import ApiError, Client
from .config import load_config
from .keystore import Keystore

FAUCET = "faucet"
DEV_PASSWORD = "devnet"  # a throwaway chain on loopback: convenience beats secrecy here
FIRST_PORT = 7370
REGIONS = ["na", "eu", "ap", "sa", "af", "me", "oc"]

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the devnet keeps its nodes and wallets.",
)


def node_dirs(data_dir: Path) -> list[Path]:
    return sorted(
        (d for d in data_dir.glob("v*") if (d / "genesis.json").exists()),
        key=lambda d: int(d.name[1:]),
    )


def status_table(dirs: list[Path]) -> str:
    rows = []
    for d in dirs:
        url = load_config(d).api_url
        try:
            s = Client(url, timeout=2.0).status()
            rows.append((d.name, s["region"], s["height"], s["peers"], s["mempool_size"], url))
        except ApiError as exc:
            rows.append((d.name, "-", "-", "-", "-", f"{url} ({exc.code})"))
    return table(rows, ("node", "region", "height", "peers", "mempool", "api"))


@click.group(cls=QNetGroup)
def devnet() -> None:
    """A local QNet network of validators with a funded faucet wallet."""


@devnet.command()
@DATA_DIR
@click.option("--validators", type=click.IntRange(1, 20), default=4, show_default=True)
def up(data_dir: Path, validators: int) -> None:
    """Create the devnet in DATA_DIR if needed, start its nodes and show their status."""
    data_dir = data_dir.resolve()
    keystore = Keystore(data_dir / "wallets")
    chosen_password = os.environ.get(PASSWORD_ENV)
    if not node_dirs(data_dir):
        init_local_testnet(
            data_dir,
            validators,
            REGIONS,
            DEFAULT_CHAIN_ID,
            "127.0.0.1",
            FIRST_PORT,
            {},
            keystore,
            FAUCET,
            parse_qnc(DEFAULT_FAUCET_QNC),
            lambda: chosen_password or DEV_PASSWORD,
        )
        click.echo(f"created chain {DEFAULT_CHAIN_ID} with {validators} validators in {data_dir}")
    dirs = node_dirs(data_dir)
    for d in dirs:
        if running_pid(d) is None:
            start_node(d)
    first_height = time.monotonic() + 15
    while time.monotonic() < first_height:  # show a network that has committed something
        if Client(load_config(dirs[0]).api_url).status()["height"] > 0:
            break
        time.sleep(0.2)
    else:
        raise CliError("the devnet committed no block within 15 s; see the nodes' node.log")
    click.echo(status_table(dirs))
    api_url = load_config(dirs[0]).api_url
    password_line = (
        f"# the faucet password is your ${PASSWORD_ENV}"
        if chosen_password
        else f"export {PASSWORD_ENV}={DEV_PASSWORD}  # dev only, never for real funds"
    )
    qnet_cli = venv_bin("qnet-cli")
    click.echo(f"""
faucet wallet: {keystore.info(FAUCET).address}
web wallet:    {api_url}/wallet  (import {keystore.path(FAUCET)} with the faucet password)
status page:   {api_url}/status

Try it:
  export QNET_NODE={api_url} QNET_KEYSTORE={keystore.directory}
  {password_line}
  {qnet_cli} wallet create alice
  {qnet_cli} wallet send --from {FAUCET} alice 100
  {qnet_cli} wallet balance alice
  {qnet_cli} node status
Stop it: make devnet-down  (python -m qnet.devnet down --data-dir {data_dir})""")


@devnet.command()
@DATA_DIR
def down(data_dir: Path) -> None:
    """Stop the devnet's nodes (the chain and wallets stay for the next ``up``)."""
    for d in node_dirs(data_dir.resolve()):
        if running_pid(d) is not None:
            click.echo(f"stopped {d.name} (pid {stop_node(d)})")


if __name__ == "__main__":
    devnet(prog_name="python -m qnet.devnet")
