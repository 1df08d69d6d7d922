"""``qnet-ops``: node commands over SSH (Fabric) on the hosts of an Ansible inventory.

    qnet-ops -i ops/inventory/testnet status          # a table across the fleet
    qnet-ops -i INV --limit region_eu logs -n 50
    qnet-ops -i INV restart qnet-2                    # waits until it has caught up
    qnet-ops -i INV -l genesis restart --all          # one at a time, each caught up
    qnet-ops -i INV snapshot --dest backups/
    qnet-ops -i INV resync qnet-3 --source qnet-2     # qnet-3's chain from qnet-2's

Hosts are the inventory's node hosts (groups ``genesis``, ``full``, ``light``), read with
``ansible-inventory`` so that everything Ansible understands (YAML or INI, group_vars,
host_vars, vault with ``ANSIBLE_VAULT_PASSWORD_FILE``) works; ``--limit`` takes Ansible's
patterns. Read-only commands (status, logs, snapshot) run on all selected hosts in parallel;
a host that cannot be reached or whose command fails gets one line saying why, the others
their answer, and the exit status is 1 if any failed. ``stop`` and ``restart`` change one
node at a time, as ``restart.yml`` does (``serial: 1``), and stop at the first failure
without touching the rest; ``start``, ``stop`` and ``restart`` act on the selected fleet only
with ``--all``, otherwise on the hosts named. The functions here (``load_hosts``,
``status``, ``restart``, ``resync``, ...) are what the recovery service calls too.

Every command sent to a host is built by one ``*_argv`` function below, and
``recovery_commands`` lists them: ``qnet.gate``, the forced command of the recovery
service's SSH key on the hosts, runs exactly those and nothing else. That key allows no
SFTP, so files travel over exec channels (``cat`` out, ``dd`` in).

On the hosts (role ``qnet_node``): the unit ``qnet-node``, the release in
``/opt/qnet/current``, data in ``/var/lib/qnet``, the API on ``qnet_api_port`` (7370).
"""

import calendar
import json
import os
import posixpath
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
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
SERVICE_ACTIONS = ("is-active", "start", "stop", "restart", "reset-failed")
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
SNAPSHOT_TIMEOUT_S = 600.0
RESTORE_TIMEOUT_S = 1800.0  # the restore replays the whole chain from genesis
TRANSFER_IDLE_S = 60.0  # a file transfer that moves no byte for this long has failed
RESYNC_CATCH_UP_S = 600.0
CHUNK = 1 << 20
MAX_LOG_LINES = 100_000
# A file in <data_dir>/snapshots, as qnet.gate lets it through: one plain name, no "..".
SCRATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,150}\.tar\.gz")
# A backup written by playbooks/backup.yml: <host>-<UTC time>-h<height>.tar.gz
BACKUP_NAME = re.compile(r"(?P<host>.+)-(?P<time>\d{8}T\d{6}Z)-h(?P<height>\d+)\.tar\.gz")
BACKUP_CLOCK_SKEW_S = 300.0


class OpsError(RuntimeError):
    """A host could not do what was asked; the message says which and why."""


@dataclass(frozen=True)
class NodeLayout:
    """Where the node lives on its host (role ``qnet_node``); every command sent to the host
    is built from it, by ``qnet-ops`` from the inventory and by ``qnet.gate`` from its flags."""

    home: str
    data_dir: str
    api_port: int
    user: str = "qnet"

    def __post_init__(self) -> None:  # "/var/lib/qnet/" and "/var/lib/qnet" build one command
        object.__setattr__(self, "home", posixpath.normpath(self.home))
        object.__setattr__(self, "data_dir", posixpath.normpath(self.data_dir))

    @property
    def cli(self) -> str:
        return f"{self.home}/current/bin/qnet-cli"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def scratch_dir(self) -> str:
        """Where snapshots pass through on the host (backup.yml uses it too)."""
        return f"{self.data_dir}/snapshots"

    def scratch_file(self, name: str) -> str:
        if not SCRATCH_NAME.fullmatch(name) or ".." in name:
            raise ValueError(f"{name!r} is not a snapshot file name")
        return f"{self.scratch_dir}/{name}"


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
    node_user: str = "qnet"

    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(self.home, self.data_dir, self.api_port, self.node_user)

    @property
    def cli(self) -> str:
        return self.layout.cli

    @property
    def api_url(self) -> str:
        return self.layout.api_url


# ---- the commands sent to a host: one function each, shared with qnet.gate -----------------


def service_argv(action: str) -> list[str]:
    if action not in SERVICE_ACTIONS:
        raise ValueError(f"systemctl {action!r} is not one of {', '.join(SERVICE_ACTIONS)}")
    return ["systemctl", action, SERVICE]


def node_status_argv(node: NodeLayout) -> list[str]:
    return [node.cli, "--json", "--node", node.api_url, "node", "status"]


def journal_argv(lines: int) -> list[str]:
    if not 1 <= lines <= MAX_LOG_LINES:
        raise ValueError(f"{lines} log lines: between 1 and {MAX_LOG_LINES}")
    return ["journalctl", "-u", SERVICE, "-n", str(lines), "--no-pager", "-o", "short-iso"]


def _as_node_user(node: NodeLayout, argv: list[str]) -> list[str]:
    return ["runuser", "-u", node.user, "--", *argv]


def scratch_dir_argv(node: NodeLayout) -> list[str]:
    return _as_node_user(node, ["mkdir", "-p", "-m", "0700", node.scratch_dir])


def snapshot_argv(node: NodeLayout, name: str) -> list[str]:
    out = node.scratch_file(name)
    return _as_node_user(
        node, [node.cli, "--json", "node", "snapshot", "--data-dir", node.data_dir, "--out", out]
    )


def restore_argv(node: NodeLayout, name: str) -> list[str]:
    archive = node.scratch_file(name)
    return _as_node_user(
        node,
        [node.cli, "--json", "node", "restore", "--data-dir", node.data_dir, "--from", archive,
         "--aside"],
    )  # fmt: skip


# Files of the snapshot directory are read and removed as the node's user, never as root:
# that user owns the directory, and could put a link there to a file only root may read.
def read_file_argv(node: NodeLayout, name: str) -> list[str]:
    return _as_node_user(node, ["cat", node.scratch_file(name)])


def write_file_argv(node: NodeLayout, name: str) -> list[str]:
    return _as_node_user(node, ["dd", f"of={node.scratch_file(name)}", "status=none"])


def remove_file_argv(node: NodeLayout, name: str) -> list[str]:
    return _as_node_user(node, ["rm", "-f", node.scratch_file(name)])


def recovery_commands(
    node: NodeLayout, name: str | None = None, lines: int | None = None
) -> list[list[str]]:
    """Every command that status, stop, start, restart, wait_caught_up, snapshot, resync and
    logs send to a host (as root), for the snapshot file ``name`` and ``lines`` log lines.
    ``qnet.gate`` runs these and nothing else; ValueError for a bad name or line count."""
    commands = [service_argv(action) for action in SERVICE_ACTIONS]
    commands += [node_status_argv(node), scratch_dir_argv(node)]
    if name is not None:
        builders = (snapshot_argv, restore_argv, read_file_argv, write_file_argv, remove_file_argv)
        commands += [build(node, name) for build in builders]
    if lines is not None:
        commands.append(journal_argv(lines))
    return commands


def scratch_name(prefix: str) -> str:
    """A fresh file name in the snapshot directory: ``<prefix>-<UTC time>-<random>.tar.gz``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", prefix).replace("..", "_").lstrip("._-") or "qnet"
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stem[:100]}-{when}-{secrets.token_hex(3)}.tar.gz"


# ---- hosts -----------------------------------------------------------------------------------


def ansible_program(name: str) -> str:
    """An Ansible program (ansible-inventory, ansible-playbook): the one installed beside this
    Python, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise OpsError(f"{name} is not installed (pip install ansible-core)")
    return found


def _inventory(inventory: str, limit: str | None = None) -> tuple[dict, Callable[[str], list]]:
    """``ansible-inventory --list`` of ``inventory`` and the names in a group (with its
    children's)."""
    argv = [ansible_program("ansible-inventory"), "-i", inventory, "--list"]
    if limit:
        argv += ["--limit", limit]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise OpsError(f"cannot read inventory {inventory}: {done.stderr.strip()}")
    data = json.loads(done.stdout)

    def members(group: str) -> list[str]:
        entry = data.get(group, {})
        names = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            names += members(child)
        return names

    return data, members


def group_addresses(inventory: str, group: str) -> dict[str, str]:
    """The hosts of ``group`` in ``inventory`` and the address Ansible reaches each at."""
    data, members = _inventory(inventory)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    return {name: str(hostvars.get(name, {}).get("ansible_host", name)) for name in members(group)}


def load_hosts(inventory: str, limit: str | None = None) -> list[Host]:
    """The node hosts of ``inventory`` (those ``limit`` selects), as Ansible sees them."""
    data, members = _inventory(inventory, limit)
    hostvars = data.get("_meta", {}).get("hostvars", {})

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
        node_user=str(v.get("qnet_node_user", "qnet")),
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


# ---- running commands ------------------------------------------------------------------------


def _command_line(host: Host, argv: list[str]) -> str:
    """``argv`` as the remote shell (or qnet.gate) reads it; through sudo for another user."""
    command = shlex.join(argv)
    return command if host.user == "root" else f"sudo -n {command}"


def _unreachable(host: Host, exc: BaseException) -> OpsError:
    return OpsError(f"{host.name} ({host.address}) is unreachable: {exc}")


def _failed(host: Host, command: str, exited: int, stderr: str, stdout: str = "") -> OpsError:
    detail = (stderr or stdout).strip().splitlines()[-3:]
    return OpsError(f"{host.name}: {command!r} exited {exited}: {' | '.join(detail)}")


def _run(conn: Connection, host: Host, argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``argv`` as root; its stdout, or OpsError."""
    command = _command_line(host, argv)
    try:
        result = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    except UnexpectedExit as exc:  # not raised with warn=True, kept for clarity
        result = exc.result
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _unreachable(host, exc) from None
    except Exception as exc:  # invoke's CommandTimedOut and the like
        raise OpsError(f"{host.name}: {command!r} failed: {exc}") from None
    if result.exited != 0:
        raise _failed(host, command, result.exited, result.stderr, result.stdout)
    return result.stdout


def _node_json(conn: Connection, host: Host) -> dict:
    return json.loads(_run(conn, host, node_status_argv(host.layout)))


def _open_channel(conn: Connection, host: Host, argv: list[str]) -> paramiko.Channel:
    """An exec channel running ``argv`` (no SFTP: the recovery key allows exec only)."""
    try:
        conn.open()
        channel = conn.client.get_transport().open_session(timeout=CONNECT_TIMEOUT_S)
        channel.settimeout(TRANSFER_IDLE_S)
        channel.exec_command(_command_line(host, argv))
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _unreachable(host, exc) from None
    return channel


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"nothing moved for {TRANSFER_IDLE_S:g} s"
    return str(exc) or type(exc).__name__


def _exit_status(channel: paramiko.Channel, host: Host, argv: list[str]) -> None:
    """Wait (at most COMMAND_TIMEOUT_S) for the command of ``channel`` to exit; OpsError
    unless it exited 0."""
    command = _command_line(host, argv)
    if not channel.status_event.wait(COMMAND_TIMEOUT_S):
        raise OpsError(f"{host.name}: {command!r} did not exit within {COMMAND_TIMEOUT_S:g} s")
    exited = channel.recv_exit_status()
    if exited != 0:
        stderr = b""
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        raise _failed(host, command, exited, stderr.decode(errors="replace"))


def fetch_file(conn: Connection, host: Host, name: str, dest: Path) -> int:
    """Copy the host's ``<data_dir>/snapshots/<name>`` to ``dest`` by streaming ``cat`` over
    an exec channel; the bytes copied. ``dest`` appears only once the whole file is there."""
    argv = read_file_argv(host.layout, name)
    partial = dest.with_name(f".{dest.name}.partial")
    copied = 0
    try:
        with _open_channel(conn, host, argv) as channel, open(partial, "wb") as out:
            channel.shutdown_write()  # nothing to read for it
            while chunk := channel.recv(CHUNK):
                out.write(chunk)
                copied += len(chunk)
            _exit_status(channel, host, argv)
        os.replace(partial, dest)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise OpsError(f"{host.name}: cannot fetch {argv[-1]}: {_why(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)
    return copied


def send_file(conn: Connection, host: Host, source: Path, name: str) -> int:
    """Copy ``source`` to the host's ``<data_dir>/snapshots/<name>`` (owned by the node's
    user) by streaming it into ``dd`` over an exec channel; the bytes sent."""
    argv = write_file_argv(host.layout, name)
    sent = 0
    with _open_channel(conn, host, argv) as channel:
        try:
            with open(source, "rb") as data:
                while chunk := data.read(CHUNK):
                    channel.sendall(chunk)
                    sent += len(chunk)
            channel.shutdown_write()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            if channel.exit_status_ready():  # the far end gave up first: say why
                _exit_status(channel, host, argv)
            raise OpsError(f"{host.name}: cannot send {source}: {_why(exc)}") from None
        _exit_status(channel, host, argv)
    return sent


def _remove_scratch(conn: Connection, host: Host, name: str, failing: bool) -> None:
    """Remove a file from the host's snapshot directory; while another error is on its way,
    a failure here does not hide it."""
    try:
        _run(conn, host, remove_file_argv(host.layout, name))
    except OpsError:
        if not failing:
            raise


# ---- what the commands do on one host --------------------------------------------------------


def status(conn: Connection, host: Host) -> dict:
    active = service_state(conn, host)
    row = {"host": host.name, "region": host.region, "type": host.node_type, "service": active}
    if active != "active":
        return row
    s = _node_json(conn, host)
    row.update(
        height=s["height"],
        peers=s["peers"],
        lag=s["sync_lag_blocks"],
        version=s["version"],
        node_id=s["node_id"],
        block_hash=s["block_hash"],
    )
    return row


def service_state(conn: Connection, host: Host) -> str:
    """``systemctl is-active``'s answer (it exits non-zero for anything but active)."""
    command = _command_line(host, service_argv("is-active"))
    try:
        result = conn.run(command, hide=True, warn=True, timeout=COMMAND_TIMEOUT_S, in_stream=False)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise _unreachable(host, exc) from None
    return result.stdout.strip() or "unknown"


def logs(conn: Connection, host: Host, lines: int = 50) -> str:
    try:
        argv = journal_argv(int(lines))
    except ValueError as exc:
        raise OpsError(f"{host.name}: {exc}") from None
    return _run(conn, host, argv)


def stop(conn: Connection, host: Host) -> dict:
    """Stop the node; returns once systemd says it is no longer running."""
    _run(conn, host, service_argv("stop"))
    state = service_state(conn, host)
    if state not in ("inactive", "failed"):
        raise OpsError(f"{host.name}: {SERVICE} is {state} after systemctl stop")
    return {"host": host.name, "service": state}


def _clear_start_limit(conn: Connection, host: Host) -> None:
    """A deliberate start is not a crash loop: clear systemd's start limit (5 starts in
    5 minutes), which would refuse it. Crash loops are QNetRestartLoop's to report, and
    recovery keeps its own budget."""
    _run(conn, host, service_argv("reset-failed"))


def start(conn: Connection, host: Host, timeout: float = 120.0) -> dict:
    _clear_start_limit(conn, host)
    _run(conn, host, service_argv("start"))
    return wait_caught_up(conn, host, 0, timeout)


def restart(conn: Connection, host: Host, timeout: float = 120.0) -> dict:
    """Restart the node and wait until it answers again, is back at least where it was and
    lags its peers by no block."""
    try:
        before = _node_json(conn, host)["height"]
    except OpsError:
        before = 0  # not answering now: any height will do
    started = time.monotonic()
    _clear_start_limit(conn, host)
    _run(conn, host, service_argv("restart"))
    return wait_caught_up(conn, host, before, timeout, started)


def wait_caught_up(
    conn: Connection, host: Host, height: int, timeout: float, since: float | None = None
) -> dict:
    since = time.monotonic() if since is None else since
    deadline = since + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            s = _node_json(conn, host)
        except OpsError as exc:
            last = str(exc)
            if service_state(conn, host) == "failed":  # it exited and will not be restarted
                raise OpsError(
                    f"{host.name}: {SERVICE} failed to start ({last}); see `qnet-ops logs "
                    f"{host.name}`"
                ) from None
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
    node = host.layout
    name = scratch_name(host.name)
    _run(conn, host, scratch_dir_argv(node))
    manifest = json.loads(_run(conn, host, snapshot_argv(node, name), SNAPSHOT_TIMEOUT_S))
    dest.mkdir(parents=True, exist_ok=True)
    failing = True
    try:
        fetch_file(conn, host, name, dest / name)
        failing = False
    finally:
        _remove_scratch(conn, host, name, failing)
    return {"host": host.name, "file": str(dest / name), "height": manifest["height"]}


def resync(
    conn: Connection,
    host: Host,
    archive: Path,
    timeout: float = RESYNC_CATCH_UP_S,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Give the host's node the chain of the snapshot ``archive`` and bring it back: send the
    archive, stop the node, ``node restore --aside`` (refuses a snapshot of another genesis
    than the host's own genesis.json, replays it from that genesis, takes no config from it,
    moves the old chain into ``<data_dir>/aside/<time>/``, never deletes it), remove the sent
    file, start the node and wait until it has caught up. A node that runs and serves
    another genesis than the snapshot's is not touched. If the restore fails the node is
    left stopped with its old chain in place (the message says so). ``progress`` hears each
    step."""
    from .snapshot import SnapshotError, read_manifest  # the gate imports ops: keep it light

    say = progress or (lambda _message: None)
    try:
        manifest = read_manifest(archive)  # no host is touched for what is no snapshot
    except SnapshotError as exc:
        raise OpsError(f"{host.name}: not resynced: {exc}") from None
    served = _served_genesis(conn, host)
    if served not in (None, manifest["genesis_hash"]):
        raise OpsError(
            f"{host.name}: not resynced, nothing changed: the snapshot is of genesis "
            f"{manifest['genesis_hash']}, the node runs genesis {served}"
        )
    node = host.layout
    name = scratch_name("resync")
    started = time.monotonic()
    say(f"sending {archive.name} ({archive.stat().st_size} bytes, height {manifest['height']})")
    _run(conn, host, scratch_dir_argv(node))
    stopped = False
    failing = True
    try:
        send_file(conn, host, archive, name)
        say("stopping the node")
        stop(conn, host)
        stopped = True
        say("restoring the snapshot (replays it from genesis)")
        restored = json.loads(_run(conn, host, restore_argv(node, name), RESTORE_TIMEOUT_S))
        failing = False
    except OpsError as exc:
        if stopped:
            raise OpsError(f"{exc} (the node of {host.name} is left stopped)") from None
        raise
    finally:
        _remove_scratch(conn, host, name, failing)
    say(f"old chain moved to {restored.get('aside')}; starting the node")
    _clear_start_limit(conn, host)
    _run(conn, host, service_argv("start"))
    caught_up = wait_caught_up(conn, host, manifest["height"], timeout)
    return {
        "host": host.name,
        "service": "active",
        "snapshot_height": manifest["height"],
        "height": caught_up["height"],
        "peers": caught_up["peers"],
        "aside": restored.get("aside"),
        "resync_s": round(time.monotonic() - started, 1),
    }


def _served_genesis(conn: Connection, host: Host) -> str | None:
    """The genesis hash the host's node serves, or None if it does not run or answer (a
    resync's restore checks the snapshot against the host's genesis.json all the same)."""
    if service_state(conn, host) != "active":
        return None
    try:
        return _node_json(conn, host).get("genesis_hash")
    except (OpsError, ValueError):
        return None


def newest_backup(backup_dir: Path, max_age_s: float, now: float) -> Path | None:
    """The newest backup in ``backup_dir`` written by playbooks/backup.yml
    (``<host>-<UTC time>-h<height>.tar.gz``, dated by the time in its name) that is at most
    ``max_age_s`` old at ``now`` (epoch seconds); None if there is none."""
    best: tuple[tuple[int, int], Path] | None = None
    for path in backup_dir.glob("*.tar.gz"):
        match = BACKUP_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        taken = calendar.timegm(time.strptime(match["time"], "%Y%m%dT%H%M%SZ"))
        if not -BACKUP_CLOCK_SKEW_S <= now - taken <= max_age_s:
            continue
        key = (taken, int(match["height"]))
        if best is None or key > best[0]:
            best = (key, path)
    return best[1] if best else None


def snapshot_of_healthy(conn: Connection, host: Host, dest: Path) -> Path:
    """A snapshot of ``host``'s chain in ``dest``, to resync another node from: only while
    the node runs and lags its peers by no block."""
    health = status(conn, host)
    if health["service"] != "active" or health["lag"] != 0:
        raise OpsError(f"{host.name} is not a healthy source: {health}")
    return Path(snapshot(conn, host, dest)["file"])


# ---- across the fleet ----------------------------------------------------------------------


def _on_host(host: Host, action: Callable[[Connection, Host], object]) -> object:
    """``action`` on ``host`` over a connection of its own; its result or OpsError."""
    try:
        with connect(host) as conn:
            return action(conn, host)
    except OpsError as exc:
        return exc
    except (OSError, paramiko.SSHException, EOFError) as exc:
        return _unreachable(host, exc)


def on_hosts(hosts: list[Host], action: Callable[[Connection, Host], object]) -> dict:
    """Run ``action`` on every host in parallel; host name -> result or OpsError."""
    with ThreadPoolExecutor(max(1, min(32, len(hosts)))) as pool:
        results = pool.map(lambda host: _on_host(host, action), hosts)
        return dict(zip((h.name for h in hosts), results, strict=True))


def one_at_a_time(
    hosts: list[Host],
    action: Callable[[Connection, Host], object],
    progress: Callable[[int, Host, object, float], None] | None = None,
) -> dict:
    """Run ``action`` on one host after the other and stop at the first failure; host name ->
    result or OpsError, for the hosts tried only. ``progress`` hears of each host when done
    (its index from 1, the host, the result, the seconds it took)."""
    results: dict[str, object] = {}
    for index, host in enumerate(hosts, 1):
        started = time.monotonic()
        results[host.name] = result = _on_host(host, action)
        if progress is not None:
            progress(index, host, result, time.monotonic() - started)
        if isinstance(result, OpsError):
            break
    return results


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
    """Node commands over SSH on the hosts of an Ansible inventory.

    Exit status: 0 done, 1 a host failed (or could not be reached), 2 usage error."""
    ctx.obj = {"inventory": inventory, "limit": limit, "json": as_json}


def _fleet(ctx: click.Context, hosts: tuple[str, ...] = ()) -> list[Host]:
    limit = ",".join(hosts) or ctx.obj["limit"]
    try:
        return load_hosts(ctx.obj["inventory"], limit)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from None


def _report(
    ctx: click.Context,
    results: dict,
    render: Callable[[list[dict]], str],
    not_done: list[str] | None = None,
) -> None:
    ok = [r for r in results.values() if not isinstance(r, OpsError)]
    failed = {name: str(r) for name, r in results.items() if isinstance(r, OpsError)}
    if ctx.obj["json"]:
        report: dict = {"hosts": ok, "errors": failed}
        if not_done is not None:
            report["not_done"] = not_done
        click.echo(json.dumps(report, indent=2))
    else:
        if ok:
            click.echo(render(ok))
        for message in failed.values():
            click.echo(f"error: {message}", err=True)
        if not_done:
            click.echo(f"not done (stopped at the first failure): {', '.join(not_done)}", err=True)
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
@click.option("-n", "--lines", type=click.IntRange(1, MAX_LOG_LINES), default=50, show_default=True)
@click.pass_context
def logs_command(ctx: click.Context, hosts: tuple[str, ...], lines: int) -> None:
    """The node's last log lines (journald) on HOSTS (default: all selected)."""
    results = on_hosts(_fleet(ctx, hosts), lambda c, h: {"host": h.name, "log": logs(c, h, lines)})
    _report(ctx, results, lambda rows: "\n".join(f"== {r['host']}\n{r['log']}" for r in rows))


def _changing_fleet(name: str, action, serial: bool, doc: str):
    """A command that changes nodes: on the HOSTS named, or with --all on every selected one;
    ``serial``: one host after the other, stopping at the first failure."""

    @cli.command(name, help=doc)
    @click.argument("hosts", nargs=-1)
    @click.option(
        "--all",
        "all_hosts",
        is_flag=True,
        help="Every selected host: the inventory's node hosts, or those of --limit.",
    )
    @click.pass_context
    def command(ctx: click.Context, hosts: tuple[str, ...], all_hosts: bool) -> None:
        if not hosts and not all_hosts:
            raise click.UsageError(
                f"{name} changes nodes: name the hosts (qnet-ops {name} HOST...) or pass --all "
                "for every selected host (all node hosts, or those of --limit)",
                ctx,
            )
        if hosts and all_hosts:
            raise click.UsageError("name hosts or pass --all, not both", ctx)
        selected = _fleet(ctx, hosts)
        render = lambda rows: _table(rows, tuple(rows[0]))  # noqa: E731
        if not serial:
            _report(ctx, on_hosts(selected, action), render)
            return

        def progress(index: int, host: Host, result: object, seconds: float) -> None:
            if not ctx.obj["json"]:
                outcome = "failed" if isinstance(result, OpsError) else "done"
                click.echo(
                    f"[{index}/{len(selected)}] {name} {host.name}: {outcome} ({seconds:.1f} s)",
                    err=True,
                )

        results = one_at_a_time(selected, action, progress)
        _report(ctx, results, render, [h.name for h in selected if h.name not in results])

    return command


_changing_fleet(
    "start",
    start,
    False,
    "Start the node on HOSTS (or --all), all at once: a stopped chain needs its validators up "
    "together to commit; waits until each has caught up.",
)
_changing_fleet(
    "stop",
    stop,
    True,
    "Stop the node on HOSTS (or --all), one after the other; stops at the first failure.",
)
_changing_fleet(
    "restart",
    restart,
    True,
    "Restart the node on HOSTS (or --all) one at a time, each caught up before the next; "
    "stops at the first failure.",
)


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


@cli.command("resync")
@click.argument("host")
@click.option(
    "--from",
    "archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A snapshot file (qnet-ops snapshot, backup.yml).",
)
@click.option("--source", metavar="HOST2", help="A healthy node host to take a fresh snapshot of.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=RESYNC_CATCH_UP_S,
    show_default=True,
    help="Seconds the restored node has to catch up.",
)
@click.pass_context
def resync_command(
    ctx: click.Context, host: str, archive: Path | None, source: str | None, timeout: float
) -> None:
    """Replace HOST's chain with a snapshot (--from FILE, or a fresh one of --source HOST2),
    replayed from genesis before it is used; the old chain is moved aside on the host
    (<data_dir>/aside/<time>/), never deleted. HOST's node is down meanwhile."""
    if (archive is None) == (source is None):
        raise click.UsageError("give the snapshot: --from FILE or --source HOST2 (one)", ctx)
    if source == host:
        raise click.UsageError(f"--source must be another host than {host}", ctx)
    names = [host] if source is None else [host, source]
    found = {h.name: h for h in _fleet(ctx, tuple(names))}
    for wanted in names:
        if wanted not in found:
            raise click.UsageError(f"{wanted} is not a node host of the inventory", ctx)
    started = time.monotonic()

    def say(message: str) -> None:
        if not ctx.obj["json"]:
            click.echo(f"[{time.monotonic() - started:6.1f} s] {host}: {message}", err=True)

    def from_source(work: Path) -> Path:
        assert source is not None
        origin = found[source]
        say(f"taking a snapshot of {source}")
        with connect(origin) as conn:
            return snapshot_of_healthy(conn, origin, work)

    with tempfile.TemporaryDirectory(prefix="qnet-resync-") as work:
        try:
            chosen = archive if archive is not None else from_source(Path(work))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            result: object = _unreachable(found[source or host], exc)
        except OpsError as exc:
            result = exc
        else:
            result = _on_host(found[host], lambda c, h: resync(c, h, chosen, timeout, say))
    results = {host: result}
    columns = ("host", "snapshot_height", "height", "peers", "resync_s", "aside")
    _report(ctx, results, lambda rows: _table(rows, columns))


def main() -> None:
    cli(prog_name="qnet-ops")
