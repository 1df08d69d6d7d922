"""``python -m qnet.devnet up|down --data-dir DIR``: a local chain for a quick loop.

``up`` creates a single-validator chain in DIR on first use, with a funded wallet named
``faucet`` in DIR/wallets, starts the node detached and prints how to use it; ``down``
stops it. Every step is the CLI's own function, so the devnet is exactly what a user gets
from ``qnet-cli genesis init`` and ``qnet-cli node start``.
"""

import os
from pathlib import Path

import click

from .amounts import parse_qnc
from .cli import (
    DEFAULT_CHAIN_ID,
    DEFAULT_FAUCET_QNC,
    PASSWORD_ENV,
    QNetGroup,
    init_genesis,
    running_pid,
    start_node,
    status_rows,
    stop_node,
    table,
    venv_bin,
)
from .client import Client
from .config import load_config
from .keystore import Keystore

FAUCET = "faucet"
DEV_PASSWORD = "devnet"  # a throwaway chain on loopback: convenience beats secrecy here

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the devnet keeps its chain and wallets.",
)


@click.group(cls=QNetGroup)
def devnet() -> None:
    """A local single-validator QNet chain with a funded faucet wallet."""


@devnet.command()
@DATA_DIR
def up(data_dir: Path) -> None:
    """Create the devnet in DATA_DIR if needed, start its node and show how to use it."""
    data_dir = data_dir.resolve()
    keystore = Keystore(data_dir / "wallets")
    chosen_password = os.environ.get(PASSWORD_ENV)
    if not (data_dir / "genesis.json").exists():
        init_genesis(
            data_dir,
            DEFAULT_CHAIN_ID,
            "eu",
            {},
            keystore,
            FAUCET,
            parse_qnc(DEFAULT_FAUCET_QNC),
            lambda: chosen_password or DEV_PASSWORD,
        )
        click.echo(f"created chain {DEFAULT_CHAIN_ID} in {data_dir}")
    config = load_config(data_dir)
    pid = running_pid(data_dir)
    if pid is None:
        pid = start_node(data_dir).pid
    else:
        click.echo(f"already running (pid {pid})")
    status = Client(config.api_url).status()
    click.echo(table([*status_rows(status), ("pid", pid), ("api", config.api_url)]))
    if not keystore.exists(FAUCET):
        return
    password_line = (
        f"# the faucet password is your ${PASSWORD_ENV}"
        if chosen_password
        else f"export {PASSWORD_ENV}={DEV_PASSWORD}  # dev only, never for real funds"
    )
    qnet_cli = venv_bin("qnet-cli")
    click.echo(f"""
faucet wallet: {keystore.info(FAUCET).address}

Try it:
  export QNET_NODE={config.api_url} QNET_KEYSTORE={keystore.directory}
  {password_line}
  {qnet_cli} wallet create alice
  {qnet_cli} wallet send --from {FAUCET} alice 100
  {qnet_cli} wallet balance alice
  {qnet_cli} node status
Stop it: make devnet-down  (python -m qnet.devnet down --data-dir {data_dir})""")


@devnet.command()
@DATA_DIR
def down(data_dir: Path) -> None:
    """Stop the devnet node of DATA_DIR (the chain and wallets stay for the next ``up``)."""
    click.echo(f"stopped node (pid {stop_node(data_dir)})")


if __name__ == "__main__":
    devnet(prog_name="python -m qnet.devnet")
