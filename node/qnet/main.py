"""``qnet-node``: run one node in the foreground until SIGTERM or SIGINT.

Exit status: 0 after a graceful stop; 2 for a configuration or genesis error (one line on
stderr; restarting cannot help); 3 when the node's data cannot be trusted: a damaged chain
database or a state that does not match the stored chain, at start or while running
(restarting cannot help either: resync the node). systemd's ``RestartPreventExitStatus=2 3``
relies on these.
"""

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
from pathlib import Path

import click
from aiohttp import web

from . import region as region_mod
from .api import create_app, serve
from .bft import BftConsensus
from .config import NODE_TYPES, ConfigError, NodeConfig, load_config
from .discovery import ScrapeTargets
from .genesis import REGIONS, Genesis, GenesisError
from .light import LightNode
from .node import Node, StateDivergence, load_node_key
from .storage import DamagedStorage, StorageError

log = logging.getLogger("qnet.main")

EXIT_CONFIG = 2
EXIT_DAMAGED = 3
DAMAGED = "the node's data is damaged and cannot be trusted: resync the node (qnet-ops resync HOST)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def claim_pidfile(path: Path) -> None:
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and pid_alive(pid):
        raise ConfigError(f"a node is already running from this data dir (pid {pid})")
    path.write_text(f"{os.getpid()}\n")


def settle_identity(genesis: Genesis, config: NodeConfig) -> None:
    """A genesis validator is a super node in its genesis region; any other node names its
    region (or ``auto``)."""
    node_id = load_node_key(config.key_path).node_id
    validator = next((v for v in genesis.validators if v.node_id == node_id), None)
    if validator is None:
        if config.region is None:
            raise ConfigError("this node is not a genesis validator; give --region")
        return
    if config.node_type != "super":
        raise ConfigError(
            f"this node is a genesis validator: it runs as super, not {config.node_type}"
        )
    if config.region not in (None, validator.region):
        raise ConfigError(
            f"this node is a genesis validator of region {validator.region}, not {config.region}"
        )
    config.region = validator.region


def build(config: NodeConfig, region_rtt_ms: dict[str, float] | None = None) -> web.Application:
    genesis = Genesis.load(config.genesis_path)
    key = load_node_key(config.key_path)
    if config.node_type == "light":
        node = LightNode(config, genesis, key)
        driver, targets = node.run(), None
    else:
        node = Node(config, genesis, key)
        consensus = BftConsensus(node, config)
        driver = consensus.run()
        targets = ScrapeTargets(consensus.net.peers, lambda public_key: node.state.node(public_key))
    node.region_rtt_ms = region_rtt_ms
    app = create_app(node, targets)

    async def lifecycle(app: web.Application):
        if isinstance(node, Node):
            await node.restore_journal()  # before the API serves and the network runs
        task = asyncio.create_task(driver, name="network")
        task.add_done_callback(_stop_on_failure)
        log.info(
            "node %s (%s, %s) serving %s, chain %s at height %d",
            node.key.node_id,
            config.node_type,
            node.region,
            config.api_url,
            node.chain_id,
            node.height,
        )
        yield
        task.cancel()  # the driver hands pending transactions on as it stops
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if isinstance(node, Node):
            await node.aclose()
        else:
            node.close()
        log.info("stopped cleanly at height %d", node.height)

    async def stop_admitting(app: web.Application) -> None:
        """A graceful stop refuses new transactions first (the API answers 503 stopping),
        then hands on the pending ones (``lifecycle``)."""
        node.stopping = True

    app.on_shutdown.append(stop_admitting)
    app.cleanup_ctx.append(lifecycle)
    return app


def _stop_on_failure(task: asyncio.Task) -> None:
    """Consensus stopped: stop loudly, lose nothing committed. Exit 3 (not restarted; resync)
    only when the data cannot be trusted; any other failure exits 1, and systemd restarts
    the node (QNetRestartLoop tells when that repeats)."""
    if task.cancelled() or task.exception() is None:
        return
    exc = task.exception()
    if isinstance(exc, StorageError | StateDivergence | sqlite3.DatabaseError):
        log.critical("consensus stopped: %s; %s", exc, DAMAGED, exc_info=exc)
        os._exit(EXIT_DAMAGED)
    log.critical("consensus stopped: %s", exc, exc_info=exc)
    os._exit(1)


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--type", "node_type", type=click.Choice(NODE_TYPES))
@click.option("--region", type=click.Choice([*REGIONS, "auto"]))
@click.option("--api-host")
@click.option("--api-port", type=int)
@click.option("--peer", "peers", multiple=True, help="host:port of a peer (repeatable).")
def main(data_dir: Path, node_type, region, api_host, api_port, peers) -> None:
    """Run a QNet node from DATA_DIR (genesis.json, node_key, optional config.toml)."""
    try:
        config = load_config(
            data_dir,
            node_type=node_type,
            region=region,
            api_host=api_host,
            api_port=api_port,
            peers=list(peers) or None,
        )
    except ConfigError as exc:
        click.echo(f"qnet-node: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        genesis = Genesis.load(config.genesis_path)
        rtts = None
        if config.region == "auto":
            config.region, rtts = asyncio.run(region_mod.choose(genesis.seeds))
        settle_identity(genesis, config)
        claim_pidfile(config.pid_path)
        app = build(config, rtts)
    except (DamagedStorage, StateDivergence) as exc:
        log.critical("%s; %s", exc, DAMAGED)
        raise SystemExit(EXIT_DAMAGED) from None
    except (
        ConfigError,
        GenesisError,
        StorageError,
        LookupError,
        ValueError,
        OSError,
        sqlite3.Error,
    ) as exc:
        log.error("%s", exc)
        raise SystemExit(EXIT_CONFIG) from None
    try:
        asyncio.run(serve(app, config.api_host, config.api_port, shutdown_timeout=10))
    finally:
        if read_pid(config.pid_path) == os.getpid():
            config.pid_path.unlink(missing_ok=True)
