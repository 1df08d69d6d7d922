"""Testbed hosts for the e2e tests: Debian containers booted by systemd-nspawn on a bridge.

Each host is a small Linux machine as Ansible expects one: systemd as PID 1, sshd, python3,
its own address on a bridge of this machine (``SUBNET.0/24``, the controller at ``.1``), its
own root filesystem as an overlay over one cached Debian image. The controller logs in as
root with a key of its own; the generated Ansible inventory says how.

    python tests/testbed.py up --hosts 5 [--name qtb]
    python tests/testbed.py status [--name qtb]
    python tests/testbed.py down [--name qtb]

``up`` writes ``state.json`` before it makes anything, so ``down``, in any process and also
after ``up`` died halfway, finds every part: the processes by PID and by cgroup, the overlay
mounts under the state directory, the namespaces, veths and bridge by name. Needs root and
Linux (``can_run`` says why not). Hosts have no default route and no package registry:
traffic stays between them and the controller.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

import netns

SUBNET = "10.77.0"  # tests/netns.py's partition tests use 10.78.0: both can run at once
SUITE = "bookworm"
IMAGE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "iproute2",
    "procps",
)
# Timers that would reach for a package mirror or the disk; the hosts have neither to spare.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer")
# The host keys each host gets: no RSA, whose key generation takes seconds on a busy machine.
HOST_KEY_TYPES = ("ed25519", "ecdsa")
IMAGE_REVISION = 4  # raise when _prepare_image changes what it writes
IMAGE_VERSION = hashlib.sha256(
    repr((SUITE, IMAGE_PACKAGES, MASKED_UNITS, HOST_KEY_TYPES, IMAGE_REVISION)).encode()
).hexdigest()[:12]
# The controller's commands, and the Debian packages that bring them.
CONTROLLER_PACKAGES = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
}
CACHE = Path(os.environ.get("QNET_TESTBED_CACHE", "/var/cache/qnet-testbed"))
STATE_ROOT = Path(os.environ.get("QNET_TESTBED_STATE", "/run/qnet-testbed"))
KEY = CACHE / "id_ed25519"  # the controller's ssh key; the hosts let it in as root
# Each host's processes go into a cgroup of its own in each of these hierarchies that exists
# here: cgroup2 alone at the top, or the hybrid layout's name=systemd and unified ones.
CGROUP_ROOTS = tuple(Path("/sys/fs/cgroup", hierarchy) for hierarchy in ("", "systemd", "unified"))
SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
)
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


class TestbedError(RuntimeError):
    pass


@dataclass
class Host:
    name: str
    address: str
    veth: str
    pid: int | None = None  # systemd-nspawn's; None while the host is not started


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        out = (result.stderr or result.stdout).strip()[-3000:]
        raise TestbedError(f"{shlex.join(cmd)} exited {result.returncode}: {out}")
    return result


def can_run() -> str | None:
    """None when testbed hosts can be booted here, else why not."""
    if sys.platform != "linux":
        return "testbed hosts need Linux (systemd-nspawn, network namespaces)"
    if os.geteuid() != 0:
        return "testbed hosts need root (mounts, network namespaces, systemd-nspawn)"
    missing = [cmd for cmd in CONTROLLER_PACKAGES if not shutil.which(cmd)]
    if missing and not shutil.which("apt-get"):
        return f"{', '.join(missing)} not installed and no apt-get to install them"
    if "\toverlay\n" not in Path("/proc/filesystems").read_text() and (
        subprocess.run(["modprobe", "overlay"], capture_output=True).returncode != 0
    ):
        return "the kernel has no overlay filesystem"
    return None


def install_packages() -> None:
    """apt-get install what the controller lacks, starting no daemon on this machine."""
    missing = sorted({pkg for cmd, pkg in CONTROLLER_PACKAGES.items() if not shutil.which(cmd)})
    if not missing:
        return
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text(
            "#!/bin/sh\n# qnet testbed: start no service while installing\nexit 101\n"
        )
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    try:
        _run([*apt, "update"], env=env)
        _run([*apt, "install", "-y", "--no-install-recommends", *missing], env=env)
    finally:
        if ours:
            policy.unlink(missing_ok=True)


def mirror() -> str:
    """The Debian mirror this machine's apt uses for SUITE."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in re.split(r"\n\s*\n", sources.read_text()):
            fields: dict[str, list[str]] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or line[:1].isspace() or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            wanted = "deb" in fields.get("types", []) and SUITE in fields.get("suites", [])
            if wanted and fields.get("uris"):
                return fields["uris"][0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise TestbedError(f"no apt source for {SUITE} in {sources} or {legacy}")


@contextlib.contextmanager
def _cache_lock():
    """One process at a time builds the image or the key; yields the lock's descriptor."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield lock.fileno()


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path)
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_under(path: Path) -> None:
    for point in _mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            _run(["umount", "--lazy", point])


def _lower_dirs() -> set[str]:
    """Lower directories of the overlays mounted now."""
    lowers = set()
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "overlay":
            options = dict(o.partition("=")[::2] for o in fields[3].split(","))
            lowers.update(options.get("lowerdir", "").split(":"))
    return lowers


def _prepare_image(root: Path) -> None:
    """Make a fresh debootstrap a base that each host completes (see Testbed._configure)."""
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("nameserver 127.0.0.1\n")
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")  # built into libc: no locales
    # Identity is per host: ssh host keys, machine id and hostname are written at boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d/qnet-testbed.conf").write_text(
        "".join(f"HostKey /etc/ssh/ssh_host_{kind}_key\n" for kind in HOST_KEY_TYPES)
    )
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"  # dbus made one of its own: the same everywhere
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (root / "etc/hostname").unlink(missing_ok=True)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    dot_ssh = root / "root/.ssh"
    dot_ssh.mkdir(exist_ok=True)
    dot_ssh.chmod(0o700)
    (root / "etc/qnet-testbed-image").write_text(f"{IMAGE_VERSION}\n")


def image() -> Path:
    """The cached base root filesystem, built once for each IMAGE_VERSION.

    The build goes to a temporary directory that is renamed when complete, so an interrupted
    build never leaves a half image; the next build removes what it left.
    """
    root = CACHE / f"image-{IMAGE_VERSION}"
    if root.is_dir():
        return root
    with _cache_lock() as lock:
        if root.is_dir():
            return root
        for stale in CACHE.glob("building-*"):
            _unmount_under(stale)  # debootstrap mounts /proc and /sys in its target
            shutil.rmtree(stale)
        building = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE))
        building.chmod(0o755)
        try:
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(IMAGE_PACKAGES)}",
                    SUITE,
                    str(building),
                    mirror(),
                ],
                pass_fds=[lock],  # an orphaned debootstrap holds the lock until it ends
            )
            _prepare_image(building)
            building.rename(root)
        finally:
            if building.exists():
                _unmount_under(building)
                shutil.rmtree(building)
        in_use = _lower_dirs()
        for old in CACHE.glob("image-*"):
            if old != root and str(old) not in in_use:
                shutil.rmtree(old)
    return root


def controller_key() -> Path:
    """The controller's ssh key (ed25519, no passphrase), made once into the cache."""
    if KEY.exists():
        return KEY
    with _cache_lock():
        if not KEY.exists():
            making = CACHE / f"making-key-{os.getpid()}"
            for part in (making, making.with_suffix(".pub")):
                part.unlink(missing_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(making)])
            making.with_suffix(".pub").rename(KEY.with_suffix(".pub"))
            making.rename(KEY)
    return KEY


def write_inventory(
    path: Path,
    groups: dict[str, list[str]],
    hostvars: dict[str, dict],
    group_vars: dict | None = None,
) -> Path:
    """An Ansible YAML inventory: every host of ``hostvars`` under ``all`` with its variables,
    ``group_vars`` for all of them, and each group of ``groups`` as a child of ``all``."""
    unknown = sorted({h for members in groups.values() for h in members} - hostvars.keys())
    if unknown:
        raise ValueError(f"groups name hosts without variables: {unknown}")
    everyone: dict = {"hosts": {name: dict(hv) for name, hv in hostvars.items()}}
    if group_vars:
        everyone["vars"] = dict(group_vars)
    if groups:
        everyone["children"] = {
            group: {"hosts": {h: {} for h in members}} for group, members in groups.items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump({"all": everyone}, sort_keys=False))
    partial.rename(path)
    return path


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks after boot) of a process, None when
    there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3, the state
    return fields[0], int(fields[1]), int(fields[19])


def _start_time(pid: int) -> int | None:
    """When ``pid`` started; with the PID, it names one process (PIDs are reused)."""
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat:
                children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _cgroup_pids(cgroup: Path) -> set[int]:
    """The processes in ``cgroup`` and below; systemd may remove cgroups while we look."""
    pids = set()
    for d, _, _ in os.walk(cgroup):  # os.walk skips what vanished under it
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
    return pids


def _pss(pid: int) -> int:
    """Proportional set size of a process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class Testbed:
    """``hosts`` containers named ``PREFIX-1``... at ``SUBNET.11``...; a context manager.

    One testbed per subnet: a second one on the same subnet is refused at ``up``."""

    def __init__(self, hosts: int = 5, prefix: str = "qtb", subnet: str = SUBNET):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError(f"prefix {prefix!r}: a lower-case letter, then up to 7 of a-z0-9")
        self.prefix = prefix
        self.subnet = subnet
        self.dir = STATE_ROOT / prefix
        self.state_path = self.dir / "state.json"
        self.inventory_path = self.dir / "inventory.yml"
        self.key = KEY
        self.bridge = netns.Bridge(hosts, subnet, prefix, build=False)
        self.hosts = [
            Host(name, address, veth)
            for name, address, veth in zip(
                self.bridge.namespaces, self.bridge.addresses, self.bridge.veths, strict=True
            )
        ]
        self._nspawn: dict[str, subprocess.Popen] = {}  # those this process started
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, prefix: str = "qtb") -> "Testbed":
        """The testbed that ``up`` made, maybe in another process, as its state file says."""
        bed = cls(0, prefix)
        state = bed._load()
        if state is None:
            raise TestbedError(f"testbed {prefix!r} is not up: no {bed.state_path}")
        bed._adopt(state)
        return bed

    def __enter__(self) -> "Testbed":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- bringing up ------------------------------------------------------------------------

    def up(self) -> "Testbed":
        """Boot every host in parallel and wait until each serves ssh with systemd up.

        On any failure, everything made so far is removed before the error propagates."""
        reason = can_run()
        if reason:
            raise TestbedError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._save(first=True)  # before anything is made, so that down finds it all
        except FileExistsError:
            if not self._abandoned():
                raise TestbedError(
                    f"testbed {self.prefix!r} is up already: run down first"
                ) from None
            # Left by a run that was killed (its process and every host are gone): what it
            # made (links, mounts, cgroups) would block this one, so remove it, then claim.
            print(f"testbed {self.prefix!r}: removing the remains of a killed run", flush=True)
            self.down()
            self.dir.mkdir(parents=True, exist_ok=True)
            self._save(first=True)
        try:
            install_packages()
            taken = self.bridge.existing()
            if taken:
                raise TestbedError(f"{', '.join(taken)} in use: another testbed? (down)")
            controller_key()
            base = image()
            self.bridge = netns.Bridge(len(self.hosts), self.subnet, self.prefix)
            with ThreadPoolExecutor(max(1, len(self.hosts))) as pool:
                for done in [pool.submit(self._boot, host, base) for host in self.hosts]:
                    done.result()
            self.write_inventory(self.inventory_path, {})
        except BaseException:
            self.down()
            raise
        return self

    def _host_dir(self, host: Host) -> Path:
        return self.dir / "hosts" / host.name

    def _boot(self, host: Host, base: Path) -> None:
        d = self._host_dir(host)
        for part in ("upper", "work", "merged"):
            (d / part).mkdir(parents=True, exist_ok=True)
        lower = f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}"
        _run(["mount", "-t", "overlay", "overlay", "-o", lower, str(d / "merged")])
        self._configure(host, d / "merged")
        self.start(host)

    def _configure(self, host: Host, root: Path) -> None:
        """What makes a copy of the image this host: name, machine id, keys."""
        (root / "etc/hostname").write_text(f"{host.name}\n")
        others = "".join(f"{h.address}\t{h.name}\n" for h in self.hosts)
        (root / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n::1\tlocalhost ip6-localhost\n{others}"
        )
        (root / "etc/machine-id").write_text(f"{uuid.uuid4().hex}\n")
        authorized = root / "root/.ssh/authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        for kind in HOST_KEY_TYPES:
            key = root / f"etc/ssh/ssh_host_{kind}_key"
            comment = f"root@{host.name}"
            _run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(key)])

    def _cgroups(self, host: Host | None = None) -> list[Path]:
        """The host's cgroups or, for no host, the testbed's, which hold those of its hosts."""
        tops = [
            base / "qnet-testbed" / self.prefix
            for base in CGROUP_ROOTS
            if (base / "cgroup.procs").exists()
        ]
        return tops if host is None else [top / host.name for top in tops]

    def start(self, host: Host | str) -> None:
        """Boot ``host`` (the first time, or again after ``kill``) and wait until it is up."""
        host = self._host(host)
        if self.alive(host):
            raise TestbedError(f"{host.name} runs already (systemd-nspawn {host.pid})")
        merged = self._host_dir(host) / "merged"
        cgroups = self._cgroups(host)
        for cgroup in cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)
        # Each host in cgroups of its own: systemd inside takes its cgroup as its root, and two
        # of them in one cgroup would manage (and stop) each other's services.
        enter = (
            'for c in "$@"; do [ "$c" = -- ] && break; '
            'echo $$ > "$c/cgroup.procs" || exit 125; done'
        )
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={merged}",
            f"--machine={host.name}",
            "--boot",
            "--register=no",  # no D-Bus on the controller to register with
            "--keep-unit",
            "--resolv-conf=off",
            "--link-journal=no",
            f"--network-namespace-path=/run/netns/{host.name}",
        ]
        script = f'{enter}; shift {len(cgroups) + 1}; exec "$@"'
        with open(self._host_dir(host) / "console.log", "ab") as console:
            proc = subprocess.Popen(
                ["sh", "-c", script, "sh", *map(str, cgroups), "--", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the caller does not reach hosts
            )
        with self._lock:
            self._nspawn[host.name] = proc
            host.pid = proc.pid
            self._save()
        self._wait_ready(host, proc)

    def _wait_ready(self, host: Host, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:  # an ssh sent before sshd listens can stall for seconds: knock first
            if proc.poll() is not None:
                raise TestbedError(
                    f"{host.name}: systemd-nspawn exited {proc.returncode}\n{self.console(host)}"
                )
            try:
                socket.create_connection((host.address, 22), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TestbedError(f"{host.name}: no sshd after {BOOT_TIMEOUT} s") from None
                time.sleep(0.05)
        state = self.ssh(host, "systemctl is-system-running --wait", deadline - time.monotonic())
        if state.stdout.strip() not in ("running", "degraded"):
            raise TestbedError(f"{host.name}: systemd is {state.stdout.strip() or state.stderr}")

    def console(self, host: Host | str, lines: int = 40) -> str:
        """The last lines the host's console printed (systemd's boot messages)."""
        path = self._host_dir(self._host(host)) / "console.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- using ------------------------------------------------------------------------------

    def _host(self, host: Host | str) -> Host:
        name = host if isinstance(host, str) else host.name
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in testbed {self.prefix!r}")

    def ssh(
        self, host: Host | str, command: str, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a shell command on ``host`` as root; never raises for its exit status."""
        target = f"root@{self._host(host).address}"
        ssh = ["ssh", "-i", str(self.key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        return subprocess.run(
            [*ssh, *SSH_OPTIONS, target, command],
            capture_output=True,
            text=True,
            timeout=max(timeout, 1),
        )

    def cut(self, host: Host | str) -> None:
        """Unplug the host's cable: its veth on the bridge goes down."""
        self.bridge.cut(self.hosts.index(self._host(host)))

    def heal(self, host: Host | str) -> None:
        self.bridge.heal(self.hosts.index(self._host(host)))

    def kill(self, host: Host | str) -> None:
        """Pull the host's power: SIGKILL to systemd-nspawn and everything in the host."""
        host = self._host(host)
        if self._stop([host], signal.SIGKILL, STOP_TIMEOUT):
            raise TestbedError(f"{host.name}: processes {self.processes(host)} outlive SIGKILL")

    def leader(self, host: Host | str) -> int | None:
        """PID (on the controller) of the host's systemd, for ``nsenter -t PID -a``."""
        host = self._host(host)
        if not self.alive(host):
            return None
        return next((p for p in _descendants(host.pid) if p != host.pid), None)

    def alive(self, host: Host | str) -> bool:
        """Whether the host's systemd-nspawn runs."""
        host = self._host(host)
        proc = self._nspawn.get(host.name)
        if proc is not None and proc.poll() is not None:
            return False
        return host.pid is not None and self._is_nspawn(host, host.pid)

    def memory(self, host: Host | str) -> int:
        """Bytes of memory the host's processes use (proportional set size, nspawn included)."""
        host = self._host(host)
        return sum(_pss(p) for p in self.processes(host)) if self.alive(host) else 0

    def hostvars(self) -> dict[str, dict]:
        return {h.name: {"ansible_host": h.address} for h in self.hosts}

    def connection_vars(self) -> dict:
        """What Ansible needs to reach any testbed host."""
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
            "ansible_ssh_pipelining": True,
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def write_inventory(self, path: Path, groups: dict[str, list[str]]) -> Path:
        """An inventory of these hosts in ``groups``, with what Ansible needs to reach them."""
        return write_inventory(path, groups, self.hostvars(), self.connection_vars())

    # -- taking down ------------------------------------------------------------------------

    def _is_nspawn(self, host: Host, pid: int) -> bool:
        """Whether ``pid`` is (still) this host's systemd-nspawn, not a reused PID."""
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return False
        merged = f"--directory={self._host_dir(host) / 'merged'}".encode()
        return merged in argv

    def processes(self, host: Host | str) -> list[int]:
        """PIDs of the host's processes: its cgroups' members and what runs below its nspawn."""
        host = self._host(host)
        pids = set().union(*(_cgroup_pids(cgroup) for cgroup in self._cgroups(host)))
        if host.pid is not None and self._is_nspawn(host, host.pid):
            pids.update(_descendants(host.pid))
        return sorted(pids)

    def _stop(self, hosts: list[Host], sig: int, timeout: float) -> list[Host]:
        """Send ``sig`` until the hosts' processes are gone; the hosts that outlast ``timeout``.

        SIGKILL goes to every process of a host. Any other signal goes to systemd in the host,
        once a second: while it boots, before it has set up its handlers, it drops them."""
        deadline = time.monotonic() + timeout
        sent = 0.0
        while True:
            for proc in self._nspawn.values():
                proc.poll()  # reap those this process started: a zombie would count as running
            hosts = [host for host in hosts if self.processes(host)]
            now = time.monotonic()
            if not hosts or now > deadline:
                return hosts
            if now - sent >= 1:
                for host in hosts:
                    pids = self.processes(host) if sig == signal.SIGKILL else [self.leader(host)]
                    for pid in filter(None, pids):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                sent = now
            time.sleep(0.05)

    def down(self) -> None:
        """Stop and remove everything ``up`` made; idempotent, also after a crash of ``up``."""
        state = self._load()
        if state is not None and not self._nspawn:  # made by another process (or object)
            self._adopt(state)
        # SIGRTMIN+3 halts systemd (nspawn passes it on for a SIGTERM); all hosts at once.
        halting = self._stop(self.hosts, signal.SIGRTMIN + 3, STOP_TIMEOUT)
        left = self._stop(halting, signal.SIGKILL, STOP_TIMEOUT)
        survivors = [pid for host in left for pid in self.processes(host)]
        _unmount_under(self.dir)
        self.bridge.close()
        for cgroup in self._cgroups():
            if not survivors:
                # Deepest first: systemd in each host left its own cgroups below the host's.
                for d, _, _ in os.walk(cgroup, topdown=False):
                    os.rmdir(d)
            with contextlib.suppress(OSError):  # shared with other testbeds, if any run
                cgroup.parent.rmdir()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        with contextlib.suppress(OSError):  # shared with other testbeds, if any run
            self.dir.parent.rmdir()
        for host in self.hosts:
            host.pid = None
        self._nspawn.clear()
        if survivors:
            raise TestbedError(f"processes {survivors} outlived SIGKILL; their cgroups stay")

    # -- state ------------------------------------------------------------------------------

    def _save(self, first: bool = False) -> None:
        """Write the state file; the ``first`` write claims the name and fails if it is taken."""
        state = {
            "prefix": self.prefix,
            "subnet": self.subnet,
            "key": str(self.key),
            "inventory": str(self.inventory_path),
            "hosts": [asdict(h) for h in self.hosts],
            # The process that claimed the name, with its start time (a PID is reused).
            "owner": [os.getpid(), _start_time(os.getpid())],
        }
        text = json.dumps(state, indent=2) + "\n"
        if first:
            with open(self.state_path, "x") as claim:
                claim.write(text)
            return
        partial = self.state_path.with_name("state.json.partial")
        partial.write_text(text)
        partial.rename(self.state_path)

    def _abandoned(self) -> bool:
        """Whether the claimed testbed's owner is gone and none of its hosts runs."""
        state = self._load()
        if state is None:
            return False
        owner = state.get("owner")
        if owner is not None and _start_time(owner[0]) == owner[1]:
            return False
        other = Testbed(0, self.prefix)
        other._adopt(state)
        return not any(other.processes(h) for h in other.hosts)

    def _adopt(self, state: dict) -> None:
        self.subnet = state["subnet"]
        self.bridge = netns.Bridge(len(state["hosts"]), self.subnet, self.prefix, build=False)
        self.hosts = [Host(**h) for h in state["hosts"]]

    def _load(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (
        ("up", "boot the hosts and write the inventory"),
        ("down", "stop the hosts and remove everything up made"),
        ("status", "show the hosts"),
    ):
        p = sub.add_parser(command, help=text)
        p.add_argument("--name", default="qtb", help="host name prefix (default qtb)")
        if command == "up":
            p.add_argument("--hosts", type=int, default=5, help="how many hosts (default 5)")
            p.add_argument("--subnet", default=SUBNET, help=f"first three octets ({SUBNET})")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.command == "down":
        Testbed(0, args.name).down()
        print(f"testbed {args.name} down in {time.monotonic() - started:.1f} s")
        return 0
    if args.command == "up":
        bed = Testbed(args.hosts, args.name, args.subnet).up()
        print(f"testbed {args.name}: {args.hosts} hosts up in {time.monotonic() - started:.1f} s")
    else:
        try:
            bed = Testbed.attach(args.name)
        except TestbedError as e:
            print(e)
            return 1
    row = "{:<12}{:<14}{:<8}{:<12}{:<13}{}"
    print(row.format("host", "address", "state", "nspawn pid", "systemd pid", "memory"))
    for h in bed.hosts:
        up = bed.alive(h)
        memory = f"{bed.memory(h) / 2**20:.1f} MiB" if up else "-"
        state = "up" if up else "down"
        print(row.format(h.name, h.address, state, h.pid or "-", bed.leader(h) or "-", memory))
    print(f"inventory: {bed.inventory_path}")
    print(f"ssh:       ssh -i {bed.key} {' '.join(SSH_OPTIONS)} root@ADDRESS")
    print("inside:    nsenter -t SYSTEMD_PID -a COMMAND")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_cli())
    except TestbedError as error:
        sys.exit(f"testbed: {error}")
