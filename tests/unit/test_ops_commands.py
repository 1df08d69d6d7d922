"""What the recovery functions of ``qnet.ops`` send to a host, against a simulated host that
lets through only what ``qnet.gate`` lets through (as the recovery key's forced command does)
and answers like a node host would; and ``newest_backup`` on backup.yml's file names."""

import calendar
import io
import json
import os
import shlex
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import paramiko
import pytest

from qnet import gate, ops

LAYOUT = ops.NodeLayout("/opt/qnet", "/var/lib/qnet", 7370, "qnet")
GENESIS_HASH = "9e" * 32  # of the chain the simulated host runs
HOST = ops.Host(
    name="qt-1",
    address="10.0.0.1",
    port=22,
    user="root",
    key_file=None,
    check_host_key=False,
    region="eu",
    node_type="super",
    api_port=7370,
    home="/opt/qnet",
    data_dir="/var/lib/qnet",
)


class NodeHost:
    """A node host behind qnet.gate: refuses (126) what the gate refuses, keeps the files of
    the snapshot directory in memory, and plays the unit and the node's CLI."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.refused: list[str] = []
        self.service = "active"
        self.height = 40
        self.files: dict[str, bytes] = {}
        self.taken: list[bytes] = []  # the snapshots written
        self.restored: list[bytes] = []  # the archives restored
        self.fail_restore = False

    def execute(self, command: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        self.sent.append(command)
        argv = shlex.split(command)
        if not gate.allowed(LAYOUT, argv):
            self.refused.append(command)
            return 126, b"", f"qnet.gate: refused: {command}".encode()
        if argv[0] == "systemctl":
            action = argv[1]
            if action == "is-active":
                return (0 if self.service == "active" else 3), f"{self.service}\n".encode(), b""
            if action != "reset-failed":
                self.service = "inactive" if action == "stop" else "active"
            return 0, b"", b""
        if argv[0] == "journalctl":
            return 0, "".join(f"line {i}\n" for i in range(int(argv[4]))).encode(), b""
        if argv[0] == "runuser" and argv[4] == "cat":  # runuser -u qnet -- cat FILE
            if argv[5] not in self.files:
                return 1, b"", b"cat: No such file or directory"
            return 0, self.files[argv[5]], b""
        if argv[0] == "runuser" and argv[4] == "rm":  # runuser -u qnet -- rm -f FILE
            self.files.pop(argv[6], None)
            return 0, b"", b""
        if argv[0] == "/opt/qnet/current/bin/qnet-cli":  # the node status call, as root
            if self.service != "active":
                return 1, b"", b"cannot reach the node: connection refused"
            answer = {"height": self.height, "sync_lag_blocks": 0, "peers": 3, "version": "0.1.0",
                      "node_id": "ab" * 16, "block_hash": "cd" * 32,
                      "genesis_hash": GENESIS_HASH}  # fmt: skip
            return 0, json.dumps(answer).encode(), b""
        inner = argv[4:]  # runuser -u qnet -- ...
        if inner[0] == "mkdir":
            return 0, b"", b""
        if inner[0] == "dd":
            self.files[inner[1].removeprefix("of=")] = stdin
            return 0, b"", b""
        if inner[3] == "snapshot":
            self.files[inner[-1]] = os.urandom(3 * ops.CHUNK + 123)  # more than one chunk
            self.taken.append(self.files[inner[-1]])
            return 0, json.dumps({"height": self.height}).encode(), b""
        if inner[3] == "restore":
            assert self.service == "inactive", "restore while the node runs"
            if self.fail_restore:
                return 1, b"", b"not restored, /var/lib/qnet is unchanged: it does not replay"
            data = self.files[inner[7]]
            self.restored.append(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                self.height = json.load(tar.extractfile("MANIFEST.json"))["height"]
            aside = "/var/lib/qnet/aside/20250101T000000Z"
            return 0, json.dumps({"height": self.height, "aside": aside}).encode(), b""
        raise AssertionError(f"the simulated host does not know {argv}")


class Result:
    def __init__(self, exited: int, stdout: bytes, stderr: bytes) -> None:
        self.exited, self.stdout, self.stderr = exited, stdout.decode(), stderr.decode()


class Channel:
    """The part of paramiko's Channel that ops uses: the command runs once its input is in."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self.command = ""
        self.stdin = b""
        self.status_event = threading.Event()
        self.out = io.BytesIO()
        self.err = io.BytesIO()
        self.exited: int | None = None

    def settimeout(self, seconds: float) -> None:
        assert seconds > 0

    def exec_command(self, command: str) -> None:
        self.command = command

    def _run(self) -> None:
        if self.exited is None:
            self.exited, out, err = self.host.execute(self.command, self.stdin)
            self.out, self.err = io.BytesIO(out), io.BytesIO(err)
            self.status_event.set()

    def sendall(self, data: bytes) -> None:
        if self.exited is not None:
            raise OSError("Socket is closed")
        self.stdin += data

    def shutdown_write(self) -> None:
        self._run()

    def recv(self, size: int) -> bytes:
        self._run()
        return self.out.read(size)

    def recv_stderr_ready(self) -> bool:
        return self.err.tell() < len(self.err.getvalue())

    def recv_stderr(self, size: int) -> bytes:
        return self.err.read(size)

    def exit_status_ready(self) -> bool:
        return self.exited is not None

    def recv_exit_status(self) -> int:
        assert self.exited is not None
        return self.exited

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class Connection:
    """A fabric Connection to ``host``: run() and exec channels."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        transport = type("Transport", (), {"open_session": lambda _, timeout: Channel(host)})()
        self.client = type("Client", (), {"get_transport": lambda _: transport})()

    def open(self) -> None:
        pass

    def run(self, command: str, **kwargs) -> Result:
        assert kwargs["in_stream"] is False and kwargs["warn"] is True
        return Result(*self.host.execute(command))


def snapshot_file(path: Path, height: int, genesis_hash: str = GENESIS_HASH) -> Path:
    manifest = {"chain_id": "qnet-test", "genesis_hash": genesis_hash, "height": height,
                "block_hash": "cd" * 32, "state_digest": "ef" * 32}  # fmt: skip
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("MANIFEST.json", json.dumps(manifest).encode()),
                           ("chain.db", os.urandom(2 * ops.CHUNK))):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def host() -> NodeHost:
    return NodeHost()


def test_every_command_of_the_recovery_functions_passes_the_gate(host, tmp_path):
    conn = Connection(host)
    assert ops.status(conn, HOST)["height"] == 40
    assert ops.logs(conn, HOST, 7).count("\n") == 7
    assert ops.restart(conn, HOST, timeout=5)["height"] == 40
    assert ops.stop(conn, HOST) == {"host": "qt-1", "service": "inactive"}
    assert ops.status(conn, HOST)["service"] == "inactive"
    assert ops.start(conn, HOST, timeout=5)["service"] == "active"
    assert ops.wait_caught_up(conn, HOST, 40, timeout=5)["height"] == 40
    taken = ops.snapshot(conn, HOST, tmp_path / "fetched")
    assert Path(taken["file"]).stat().st_size == 3 * ops.CHUNK + 123
    result = ops.resync(conn, HOST, snapshot_file(tmp_path / "snap.tar.gz", 55), timeout=5)
    assert result["aside"] == "/var/lib/qnet/aside/20250101T000000Z" and result["height"] == 55
    assert host.refused == []
    kinds = {shlex.split(c)[0] for c in host.sent}
    assert kinds == {"systemctl", "journalctl", "runuser", LAYOUT.cli}
    assert host.files == {}  # nothing left in the snapshot directory


def test_a_snapshot_is_fetched_over_an_exec_channel_byte_for_byte(host, tmp_path):
    taken = ops.snapshot(Connection(host), HOST, tmp_path)
    name = Path(taken["file"]).name
    assert Path(taken["file"]).read_bytes() == host.taken[0]
    assert f"runuser -u qnet -- cat /var/lib/qnet/snapshots/{name}" in host.sent
    assert f"runuser -u qnet -- rm -f /var/lib/qnet/snapshots/{name}" in host.sent
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no partial file left beside it


def test_a_failed_fetch_leaves_no_file_and_removes_the_hosts_copy(host, tmp_path, monkeypatch):
    gone = lambda node, name: ops._as_node_user(node, ["cat", node.scratch_file("gone.tar.gz")])  # noqa: E731
    monkeypatch.setattr(ops, "read_file_argv", gone)
    with pytest.raises(ops.OpsError, match="exited 1: cat: No such file"):
        ops.snapshot(Connection(host), HOST, tmp_path)
    assert list(tmp_path.iterdir()) == [] and host.files == {}


def test_resync_sends_the_archive_restores_it_aside_and_waits_for_the_node(host, tmp_path):
    archive = snapshot_file(tmp_path / "snap.tar.gz", 77)
    steps: list[str] = []
    result = ops.resync(Connection(host), HOST, archive, timeout=5, progress=steps.append)
    assert host.restored == [archive.read_bytes()]  # what arrived is what was sent
    assert (result["snapshot_height"], result["height"], host.service) == (77, 77, "active")
    order = [shlex.split(c)[1] for c in host.sent if c.startswith("systemctl ")]
    assert order[-2:] == ["reset-failed", "start"] and "stop" in order
    assert any("--aside" in c for c in host.sent) and host.files == {}
    assert len(steps) >= 4


def test_a_failed_restore_leaves_the_node_stopped_and_says_so(host, tmp_path):
    host.fail_restore = True
    archive = snapshot_file(tmp_path / "snap.tar.gz", 77)
    with pytest.raises(ops.OpsError, match=r"unchanged.*left stopped"):
        ops.resync(Connection(host), HOST, archive, timeout=5)
    assert host.service == "inactive" and host.files == {}


def test_resync_leaves_a_running_node_of_another_chain_alone(host, tmp_path):
    archive = snapshot_file(tmp_path / "snap.tar.gz", 77, genesis_hash="01" * 32)
    with pytest.raises(ops.OpsError, match=f"nothing changed.*{'01' * 32}.*{GENESIS_HASH}"):
        ops.resync(Connection(host), HOST, archive, timeout=5)
    assert host.service == "active" and host.files == {} and host.restored == []
    assert not any(c.startswith("systemctl stop") for c in host.sent)
    host.service = "failed"  # not running: nothing to ask; the restore on the host decides
    ops.resync(Connection(host), HOST, archive, timeout=5)
    assert host.restored == [archive.read_bytes()]


def test_resync_refuses_what_is_no_snapshot_before_touching_the_host(host, tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"no archive")
    with pytest.raises(ops.OpsError, match="not a QNet snapshot"):
        ops.resync(Connection(host), HOST, tmp_path / "junk.tar.gz", timeout=5)
    assert host.sent == []


def test_commands_for_a_non_root_user_go_through_sudo_and_not_through_the_gate():
    other = ops.Host(**{**HOST.__dict__, "user": "admin"})
    line = ops._command_line(other, ops.service_argv("restart"))
    assert line == "sudo -n systemctl restart qnet-node"
    assert not gate.allowed(LAYOUT, shlex.split(line))


def utc(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


def test_newest_backup_is_the_newest_young_enough_of_backup_yml(tmp_path):
    now = utc("20250601T120000Z")
    for name in (
        "qt-1-20250601T080000Z-h900.tar.gz",
        "qt-2.eu-20250601T110000Z-h1000.tar.gz",  # the newest
        "qt-3-20250601T110000Z-h990.tar.gz",
        "qt-1-20250531T110000Z-h500.tar.gz",  # too old
        "qt-1-20250601T130000Z-h999.tar.gz",  # from the future: a wrong clock, not a backup
        "qt-1-20250601T115900Z.tar.gz",  # not backup.yml's name
        ".qt-1-20250601T115959Z-h1.tar.gz.partial",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "qt-9-20250601T115959Z-h5.tar.gz").mkdir()  # a directory is no backup
    newest = ops.newest_backup(tmp_path, 6 * 3600, now)
    assert newest == tmp_path / "qt-2.eu-20250601T110000Z-h1000.tar.gz"
    assert ops.newest_backup(tmp_path, 3600, now) == newest  # exactly an hour old
    assert ops.newest_backup(tmp_path, 3599, now) is None
    assert ops.newest_backup(tmp_path / "missing", 6 * 3600, now) is None


class ExecServer(paramiko.ServerInterface):
    """An SSH server for one test: any key gets in, exec only (no SFTP), and every command
    goes through qnet.gate for ``layout``; ``runuser -u USER --`` is dropped (no such user
    here), the rest runs as it is."""

    def __init__(self, layout: ops.NodeLayout) -> None:
        self.layout = layout

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )

    def check_channel_subsystem_request(self, channel, name) -> bool:
        return False  # no sftp

    def check_channel_exec_request(self, channel, command: bytes) -> bool:
        argv = gate.admit(self.layout, command.decode())
        # As sshd does, answer the exec request before the command can exit and close the
        # channel: paramiko sends the answer after this returns, in the transport's thread,
        # as the next message (one channel at a time here); the command runs once it left.
        answered = threading.Event()
        transport = channel.transport
        send = transport._send_user_message

        def send_and_mark(message) -> None:
            transport._send_user_message = send
            send(message)
            answered.set()

        transport._send_user_message = send_and_mark

        def run() -> None:
            answered.wait()
            self._run(channel, argv)

        threading.Thread(target=run, daemon=True).start()
        return True

    @staticmethod
    def _run(channel, argv: list[str] | None) -> None:
        if argv is None:
            channel.sendall_stderr(b"qnet.gate: refused\n")
            channel.send_exit_status(126)
        else:
            if argv[0] == "runuser":
                argv = argv[4:]
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            threading.Thread(target=ExecServer._feed, args=(channel, proc), daemon=True).start()
            while chunk := proc.stdout.read(65536):
                channel.sendall(chunk)
            channel.sendall_stderr(proc.stderr.read())
            channel.send_exit_status(proc.wait())
        channel.shutdown_write()
        channel.close()

    @staticmethod
    def _feed(channel, proc) -> None:
        try:
            while data := channel.recv(65536):
                proc.stdin.write(data)
            proc.stdin.close()
        except OSError:  # the command exited without reading it all
            pass


@pytest.fixture
def ssh_host(tmp_path):
    """A host whose ssh server is in this process; its data dir is tmp_path/data."""
    listener = socket.create_server(("127.0.0.1", 0))
    key = paramiko.RSAKey.generate(1024)
    client_key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(client_key))
    layout = ops.NodeLayout("/opt/qnet", str(tmp_path / "data"), 7370, "qnet")
    (tmp_path / "data" / "snapshots").mkdir(parents=True)
    transports = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(key)
            transport.start_server(server=ExecServer(layout))
            transports.append(transport)

    threading.Thread(target=serve, daemon=True).start()
    host = ops.Host(**{**HOST.__dict__, "address": "127.0.0.1", "port": listener.getsockname()[1],
                       "key_file": str(client_key), "data_dir": layout.data_dir})  # fmt: skip
    yield host
    listener.close()
    for transport in transports:
        transport.close()


def test_files_travel_both_ways_over_real_exec_channels_without_sftp(ssh_host, tmp_path):
    payload = os.urandom(5 * ops.CHUNK + 7)
    (tmp_path / "out.bin").write_bytes(payload)
    with ops.connect(ssh_host) as conn:
        assert ops.send_file(conn, ssh_host, tmp_path / "out.bin", "a.tar.gz") == len(payload)
        stored = Path(ssh_host.data_dir) / "snapshots" / "a.tar.gz"
        assert stored.read_bytes() == payload
        fetched = tmp_path / "back.tar.gz"
        assert ops.fetch_file(conn, ssh_host, "a.tar.gz", fetched) == len(payload)
        assert fetched.read_bytes() == payload
        with pytest.raises(ops.OpsError, match=r"exited 1: cat: .*No such file"):
            ops.fetch_file(conn, ssh_host, "missing.tar.gz", tmp_path / "missing.tar.gz")
        assert not (tmp_path / "missing.tar.gz").exists()
        with pytest.raises(paramiko.SSHException):  # the key gets no SFTP
            conn.sftp()
    other = ops.Host(**{**ssh_host.__dict__, "data_dir": str(tmp_path / "elsewhere")})
    with ops.connect(other) as conn, pytest.raises(ops.OpsError, match="exited 126"):
        ops.send_file(conn, other, tmp_path / "out.bin", "a.tar.gz")  # not the gate's data dir
