"""``qnet-recovery``: the service and the operator's commands around it.

    qnet-recovery serve [--config FILE] [--dry-run]
    qnet-recovery check-config FILE
    qnet-recovery status [--json]
    qnet-recovery reset NODE

Exit status: 0 done, 1 the service could not be asked or refused, 2 a usage or
configuration error.
"""

from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path

import click
from aiohttp import web

from . import config as config_mod

CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=config_mod.DEFAULT_PATH,
    show_default=True,
    envvar="QNET_RECOVERY_CONFIG",
    help="The configuration file ($QNET_RECOVERY_CONFIG).",
)


def _load(path: Path) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _ask(config: config_mod.Config, method: str, path: str) -> dict:
    request = urllib.request.Request(f"{config.url}{path}", method=method, data=b"" if
                                     method == "POST" else None)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        click.echo(f"error: {config.url}{path}: HTTP {exc.code}: {detail}", err=True)
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"error: qnet-recovery does not answer at {config.url}: {exc}", err=True)
    sys.exit(1)


@click.group()
def cli() -> None:
    """Alert-driven recovery of QNet nodes, within budgets and guards."""


@cli.command()
@CONFIG
@click.option("--dry-run", is_flag=True, help="Decide and record as live; act on nothing.")
def serve(config_path: Path, dry_run: bool) -> None:
    """Receive Alertmanager's webhook and act on the alerts that match."""
    from .service import build  # the service's imports are not needed by the other commands

    config = _load(config_path)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        app = build(config, dry_run=True if dry_run else None)
    except (ValueError, OSError) as exc:  # a damaged state file, an unwritable audit log
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    web.run_app(app, host=config.listen_host, port=config.listen_port, print=None,
                access_log=None)  # fmt: skip


@cli.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def check_config(path: Path) -> None:
    """Check a configuration file; exit 2 naming the first bad key."""
    config = _load(path)
    validators = sum(n.validator for n in config.nodes.values())
    click.echo(f"{path}: {len(config.nodes)} nodes ({validators} validators), ok")


@cli.command()
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def status(config_path: Path, as_json: bool) -> None:
    """Budgets, queued and running actions, and the recent decisions."""
    s = _ask(_load(config_path), "GET", "/status")
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    mode = "dry run" if s["dry_run"] else "live"
    click.echo(f"qnet-recovery ({mode}); chain halted: {'yes' if s['chain_halted'] else 'no'}")
    rows = [("node", "budget left", "blocked", "attempts", "queued", "running")]
    for name, n in sorted(s["nodes"].items()):

        def brief(a):
            return f"{a['action']} #{a['id']}" if a else "-"

        rows.append((name, str(n["budget_left"]), "yes" if n["blocked"] else "no",
                     str(n["attempts"]), brief(n["queued"]), brief(n["running"])))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if s["recent"]:
        click.echo("\nrecent decisions:")
    for r in s["recent"][-15:]:
        words = [r["time"], r["decision"], r["reason"], r.get("node", ""), r.get("rule", ""),
                 r.get("action", ""), r.get("outcome", "")]  # fmt: skip
        click.echo("  " + " ".join(w for w in words if w))


@cli.command()
@click.argument("node")
@CONFIG
def reset(node: str, config_path: Path) -> None:
    """Give NODE its budget back after a human has dealt with it."""
    config = _load(config_path)
    if node not in config.nodes:
        click.echo(f"error: no node {node!r} in {config_path}", err=True)
        sys.exit(2)
    record = _ask(config, "POST", f"/nodes/{node}/reset")
    click.echo(f"{node}: budget reset at {record['time']}")


def main() -> None:
    cli(prog_name="qnet-recovery")
