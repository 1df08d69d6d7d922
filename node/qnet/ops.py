"""``qnet-ops``: node commands over SSH (Fabric) on the hosts of an Ansible inventory.

    qnet-ops -i ops/inventory/testnet status          # a table across the fleet
    qnet-ops -i INV --limit region_eu logs -n 50
    qnet-ops -i INV restart qnet-2                    # waits until it has caught up
    qnet-ops -i INV snapshot --dest backups/

Hosts are the inventory's node hosts (groups ``genesis``, ``full``, ``light``), read with
``ansible-inventory`` so that everything Ansible understands (YAML or INI, group_vars,
host_vars, vault with ``ANSIBLE_VAULT_PASSWORD_FILE``) works; ``--limit`` takes Ansible's
patterns. Commands run on all selected hosts in parallel; a host that cannot be reached or
whose command fails gets one line saying why, the others their answer, and the exit status
is 1 if any failed. The functions here (``load_hosts``, ``status``, ``restart``, ...) are
what the recovery service calls too.

On the hosts (role ``qnet_node``): the unit ``qnet-node``, the release in
``/opt/qnet/current``, data in ``/var/lib/qnet``, the API on ``qnet_api_port`` (7370).
"""

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import paramiko
from fabric import Connection
from invoke.exceptions import UnexpectedExit

NODE_GROUPS = ("genesis", "full", "light")
SERVICE = "qnet-node"
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0


class OpsError(RuntimeError):
    """A host could not do what was asked; the message says which and why."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    key_file: str | None
    check_host_key: bool
    region: str
    node_type: str
    api_port: int
    home: str
    data_dir: str

    @property
    def cli(self) -> str:
        return f"{self.home}/current/bin/qnet-cli"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def _ansible_inventory() -> str:
    beside = Path(sys.executable).parent / "ansible-inventory"
    found = str(beside) if beside.exists() else shutil.which("ansible-inventory")
    if found is None:
        raise OpsError("ansible-inventory is not installed (pip install ansible-core)")
    return found


def load_hosts(inventory: str, limit: str | None = None) -> list[Host]:
    """The node hosts of ``inventory`` (those ``limit`` selects), as Ansible sees them."""
    argv = [_ansible_inventory(), "-i", inventory, "--list"]
    if limit:
        argv += ["--limit", limit]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise OpsError(f"cannot read inventory {inventory}: {done.stderr.strip()}")
    data = json.loads(done.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})

    def members(group: str) -> list[str]:
        entry = data.get(group, {})
        names = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            names += members(child)
        return names

    picked: dict[str, str] = {}
    for group in NODE_GROUPS:
        for name in members(group):
            picked.setdefault(name, "super" if group == "genesis" else group)
    if not picked:
        raise OpsError(f"no node hosts (groups {', '.join(NODE_GROUPS)}) in {inventory}")
    regions = {
        name: group.removeprefix("region_")
        for group in data
        if group.startswith("region_")
        for name in members(group)
    }
    return [_host(name, picked[name], hostvars.get(name, {}), regions) for name in picked]


def _host(name: str, node_type: str, v: dict, regions: dict[str, str]) -> Host:
    common = str(v.get("ansible_ssh_common_args", "")) + " " + str(v.get("ansible_ssh_args", ""))
    no_check = "StrictHostKeyChecking=no" in common.replace(" ", "") or str(
        v.get("ansible_host_key_checking", True)
    ).lower() in ("false", "no", "0")
    return Host(
        name=name,
        address=str(v.get("ansible_host", name)),
        port=int(v.get("ansible_port", 22)),
        user=str(v.get("ansible_user", "root")),
        key_file=v.get("ansible_ssh_private_key_file"),
        check_host_key=not no_check,
        region=str(v.get("qnet_region", regions.get(name, "?"))),
        node_type=str(v.get("qnet_node_type", node_type)),
        api_port=int(v.get("qnet_api_port", 7370)),
        home=str(v.get("qnet_node_home", "/opt/qnet")),
        data_dir=str(v.get("qnet_node_data_dir", "/var/lib/qnet")),
    )


def connect(host: Host) -> Connection:
    kwargs: dict = {"timeout": CONNECT_TIMEOUT_S, "banner_timeout": CONNECT_TIMEOUT_S}
    if host.key_file:
        kwargs["key_filename"] = [host.key_file]
    conn = Connection(host.address, user=host.user, port=host.port, connect_kwargs=kwargs)
    if host.check_host_key:  # as ssh would: known hosts only
        conn.client.load_system_host_keys()
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def _run(conn: Connection, host: Host, command: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``command`` as root (through sudo for another user); its stdout, or OpsError."""
    if host.user != "root":
        command = f"sudo -n {command}"
    try:
        result = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    except UnexpectedExit as exc:  # not raised with warn=True, kept for clarity
        result = exc.result
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise OpsError(f"{host.name} ({host.address}) is unreachable: {exc}") from None
    except Exception as exc:  # invoke's CommandTimedOut and the like
        raise OpsError(f"{host.name}: {command!r} failed: {exc}") from None
    if result.exited != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise OpsError(f"{host.name}: {command!r} exited {result.exited}: {' | '.join(detail)}")
    return result.stdout


def _node_json(conn: Connection, host: Host, *args: str) -> dict:
    out = _run(conn, host, shlex.join([host.cli, "--json", "--node", host.api_url, *args]))
    return json.loads(out)


# ---- what the commands do on one host --------------------------------------------------------


def status(conn: Connection, host: Host) -> dict:
    active = _run_status(conn, host)
    row = {"host": host.name, "region": host.region, "type": host.node_type, "service": active}
    if active != "active":
        return row
    s = _node_json(conn, host, "node", "status")
    row.update(
        height=s["height"],
        peers=s["peers"],
        lag=s["sync_lag_blocks"],
        version=s["version"],
        node_id=s["node_id"],
        block_hash=s["block_hash"],
    )
    return row


def _run_status(conn: Connection, host: Host) -> str:
    command = f"systemctl is-active {SERVICE}"
    if host.user != "root":
        command = f"sudo -n {command}"
    try:
        result = conn.run(command, hide=True, warn=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise OpsError(f"{host.name} ({host.address}) is unreachable: {exc}") from None
    return result.stdout.strip() or "unknown"


def logs(conn: Connection, host: Host, lines: int = 50) -> str:
    return _run(conn, host, f"journalctl -u {SERVICE} -n {int(lines)} --no-pager -o short-iso")


def stop(conn: Connection, host: Host) -> dict:
    _run(conn, host, f"systemctl stop {SERVICE}")
    return {"host": host.name, "service": _run_status(conn, host)}


def start(conn: Connection, host: Host, timeout: float = 120.0) -> dict:
    _run(conn, host, f"systemctl start {SERVICE}")
    return wait_caught_up(conn, host, 0, timeout)


def restart(conn: Connection, host: Host, timeout: float = 120.0) -> dict:
    """Restart the node and wait until it answers again, is back at least where it was and
    lags its peers by no block."""
    try:
        before = _node_json(conn, host, "node", "status")["height"]
    except OpsError:
        before = 0  # not answering now: any height will do
    started = time.monotonic()
    _run(conn, host, f"systemctl restart {SERVICE}")
    return wait_caught_up(conn, host, before, timeout, started)


def wait_caught_up(
    conn: Connection, host: Host, height: int, timeout: float, since: float | None = None
) -> dict:
    since = time.monotonic() if since is None else since
    deadline = since + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            s = _node_json(conn, host, "node", "status")
        except OpsError as exc:
            last = str(exc)
        else:
            if s["height"] >= max(height, 1) and s["sync_lag_blocks"] == 0 and s["peers"] > 0:
                return {
                    "host": host.name,
                    "service": "active",
                    "height": s["height"],
                    "peers": s["peers"],
                    "caught_up_s": round(time.monotonic() - since, 1),
                }
            last = f"height {s['height']}, {s['sync_lag_blocks']} behind, {s['peers']} peers"
        time.sleep(0.5)
    raise OpsError(f"{host.name} did not catch up within {timeout:g} s ({last})")


def snapshot(conn: Connection, host: Host, dest: Path) -> dict:
    """Take a consistent snapshot on the host (``qnet-cli node snapshot``, as the node's user,
    while it runs), fetch it into ``dest`` and remove the host's copy."""
    name = f"{host.name}-{time.strftime('%Y%m%dT%H%M%S')}.tar.gz"
    remote_dir = f"{host.data_dir}/snapshots"
    remote = f"{remote_dir}/{name}"
    user = "qnet"
    _run(conn, host, f"runuser -u {user} -- mkdir -p {shlex.quote(remote_dir)}")
    args = [host.cli, "--json", "node", "snapshot", "--data-dir", host.data_dir, "--out", remote]
    manifest = json.loads(_run(conn, host, f"runuser -u {user} -- {shlex.join(args)}", 600))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        conn.get(remote, str(dest / name))
    except (OSError, paramiko.SSHException) as exc:
        raise OpsError(f"{host.name}: cannot fetch {remote}: {exc}") from None
    finally:
        _run(conn, host, f"rm -f {shlex.quote(remote)}")
    return {"host": host.name, "file": str(dest / name), "height": manifest["height"]}


# ---- across the fleet ----------------------------------------------------------------------


def on_hosts(hosts: list[Host], action: Callable[[Connection, Host], object]) -> dict:
    """Run ``action`` on every host in parallel; host name -> result or OpsError."""

    def one(host: Host):
        try:
            with connect(host) as conn:
                return action(conn, host)
        except OpsError as exc:
            return exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            return OpsError(f"{host.name} ({host.address}) is unreachable: {exc}")

    with ThreadPoolExecutor(max(1, min(32, len(hosts)))) as pool:
        return dict(zip((h.name for h in hosts), pool.map(one, hosts), strict=True))


# ---- the command line ----------------------------------------------------------------------

STATUS_COLUMNS = ("host", "region", "type", "service", "height", "peers", "lag", "version")


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    cells = [[str(r.get(c, "-")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


@click.group()
@click.option(
    "-i",
    "--inventory",
    envvar="QNET_INVENTORY",
    required=True,
    help="Ansible inventory (file or directory); $QNET_INVENTORY.",
)
@click.option("-l", "--limit", help="Ansible host pattern: hosts, groups, region_<code>, ...")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def cli(ctx: click.Context, inventory: str, limit: str | None, as_json: bool) -> None:
    """Node commands over SSH on the hosts of an Ansible inventory."""
    ctx.obj = {"inventory": inventory, "limit": limit, "json": as_json}


def _fleet(ctx: click.Context, hosts: tuple[str, ...] = ()) -> list[Host]:
    limit = ",".join(hosts) or ctx.obj["limit"]
    try:
        return load_hosts(ctx.obj["inventory"], limit)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from None


def _report(ctx: click.Context, results: dict, render: Callable[[list[dict]], str]) -> None:
    ok = [r for r in results.values() if not isinstance(r, OpsError)]
    failed = {name: str(r) for name, r in results.items() if isinstance(r, OpsError)}
    if ctx.obj["json"]:
        click.echo(json.dumps({"hosts": ok, "errors": failed}, indent=2))
    else:
        if ok:
            click.echo(render(ok))
        for message in failed.values():
            click.echo(f"error: {message}", err=True)
    if failed:
        ctx.exit(1)


@cli.command("status")
@click.pass_context
def status_command(ctx: click.Context) -> None:
    """A table across the fleet: service, height, peers, lag, version."""
    hosts = _fleet(ctx)
    results = on_hosts(hosts, status)
    _report(ctx, results, lambda rows: _table(rows, STATUS_COLUMNS))


@cli.command("logs")
@click.argument("hosts", nargs=-1)
@click.option("-n", "--lines", default=50, show_default=True)
@click.pass_context
def logs_command(ctx: click.Context, hosts: tuple[str, ...], lines: int) -> None:
    """The node's last log lines (journald) on HOSTS (default: all selected)."""
    results = on_hosts(_fleet(ctx, hosts), lambda c, h: {"host": h.name, "log": logs(c, h, lines)})
    _report(ctx, results, lambda rows: "\n".join(f"== {r['host']}\n{r['log']}" for r in rows))


def _service_command(name: str, action, doc: str):
    @cli.command(name, help=doc)
    @click.argument("hosts", nargs=-1)
    @click.pass_context
    def command(ctx: click.Context, hosts: tuple[str, ...]) -> None:
        results = on_hosts(_fleet(ctx, hosts), action)
        _report(ctx, results, lambda rows: _table(rows, tuple(rows[0])))

    return command


_service_command("start", start, "Start the node on HOSTS and wait until it has caught up.")
_service_command("stop", stop, "Stop the node on HOSTS.")
_service_command("restart", restart, "Restart the node on HOSTS and wait until it has caught up.")


@cli.command("snapshot")
@click.argument("hosts", nargs=-1)
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("snapshots"),
    show_default=True,
)
@click.pass_context
def snapshot_command(ctx: click.Context, hosts: tuple[str, ...], dest: Path) -> None:
    """Take a consistent snapshot of each node's chain while it runs and fetch it to DEST."""
    results = on_hosts(_fleet(ctx, hosts), lambda c, h: snapshot(c, h, dest))
    _report(ctx, results, lambda rows: _table(rows, ("host", "height", "file")))


def main() -> None:
    cli(prog_name="qnet-ops")
