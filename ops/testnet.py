"""The local testnet: testbed hosts, the artifacts Ansible ships, an inventory, the rollout.

    python ops/testnet.py artifacts [--out build/artifacts] [--source .]
    python ops/testnet.py up [--name qnet] [--subnet 10.77.0]     # make testnet
    python ops/testnet.py status [--name qnet]
    python ops/testnet.py down [--name qnet]                      # make testnet-down

``up`` boots the testbed hosts (tests/testbed.py), builds the artifacts (the qnet wheel, with
qnet-recovery, and a wheelhouse of its dependencies, plus the Debian packages of the
monitoring roles), writes an inventory of 4 genesis validators in the regions na, eu, ap and
sa and one monitoring host (which runs qnet-recovery too), runs ``ops/playbooks/testnet.yml``
against it and prints a status table with each node's URLs (its API and, on full and super
nodes, the web wallet and the network status page). Run again, it keeps the hosts and the
network and runs the playbook again (which then changes nothing). The
network's keys and genesis live with the testbed's state and go with ``down``.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPS = REPO / "ops"
ARTIFACTS = REPO / "build" / "artifacts"
sys.path.insert(0, str(REPO / "tests"))  # the testbed harness lives with the tests

import testbed as tb  # noqa: E402

NAME = "qnet"
REGIONS = ("na", "eu", "ap", "sa")  # one genesis validator in each, in this order
CHAIN_ID = "qnet-testnet"
API_PORT = 7370  # the qnet_node role's default qnet_api_port
PAGE_NODE_TYPES = ("super", "full")  # the node types that serve /wallet and /status
FAUCET = "faucet"  # the controller's funded wallet, for load campaigns and first steps
FAUCET_QNC = "100000000"  # enough to activate a population of 10,000 light nodes many times
FAUCET_PASSWORD = "testnet"  # a throwaway network on one machine, like the devnet's
# What the wheel is built from: a copy of these, so stale files of an earlier build
# (setuptools' build/ directory) never end up in it.
SOURCES = ("pyproject.toml", "README.md", "node", "recovery")
# The web pages' sources: built into the copy's qnet/webroot/, which the wheel ships.
WEB_SOURCES = "web"
WEBROOT = Path("node", "qnet", "webroot")
# Wheels record their files' times; a fixed one makes a rebuild of the same source
# byte-identical, so Ansible ships nothing when nothing changed.
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold
WHEELHOUSE_TAR = "wheelhouse.tar"
# A testbed host's root filesystem is an overlay, which the node exporter leaves out by
# default: its default list of excluded types, without overlay.
TESTBED_FILESYSTEMS = (
    "--collector.filesystem.fs-types-exclude=^(autofs|binfmt_misc|bpf|cgroup2?|configfs|"
    "debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|proc|procfs|pstore|"
    "rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$"
)


class TestnetError(RuntimeError):
    pass


def project_version(source: Path = REPO) -> str:
    return tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"]


def build_artifacts(out: Path = ARTIFACTS, source: Path = REPO, extra: str = "") -> Path:
    """``out/<version>/``: the qnet wheel of ``source`` and the wheels of everything it needs
    at run time, for hosts with the controller's Python (Debian bookworm's 3.11), and the
    same wheels packed in ``wheelhouse.tar``, which the qnet_node role ships. With an
    ``extra`` (pyproject's optional dependencies, e.g. ``load``), ``out/<extra>/<version>/``
    with the wheels of ``qnet[extra]`` (the locust role ships ``load``).

    The web pages are built from ``source``'s web/ (``web/build.mjs``) into the copy, never
    taken from an earlier build. The wheelhouse is built aside and then put in place whole, so
    a failed build leaves the previous one as it was."""
    version = project_version(source)
    if extra:
        out = out / extra
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".build-{version}-", dir=out) as scratch:
        tree = Path(scratch) / "source"
        tree.mkdir()
        for name in SOURCES:
            path = source / name
            if path.is_dir():
                ignore = shutil.ignore_patterns(
                    "__pycache__", "*.egg-info", "*.pyc", f"{WEBROOT.name}*"
                )
                shutil.copytree(path, tree / name, ignore=ignore)
            else:
                shutil.copy2(path, tree / name)
        build_web(source, tree / WEBROOT)
        wheels = Path(scratch) / "wheels"
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run(
            [*pip, "--wheel-dir", str(wheels), f"{tree}[{extra}]" if extra else str(tree)],
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise TestnetError(f"pip wheel failed:\n{(done.stderr or done.stdout)[-3000:]}")
        wheel = wheels / f"qnet-{version}-py3-none-any.whl"
        if not wheel.exists():
            raise TestnetError(f"pip wheel made no {wheel.name}: {sorted(os.listdir(wheels))}")
        pack_wheelhouse(wheels)
        final = out / version
        if final.exists():
            shutil.rmtree(final)
        wheels.rename(final)
    return final


def build_web(source: Path, out: Path) -> None:
    """The wallet and status pages of ``source`` into ``out`` (web/build.mjs: npm ci when the
    lockfile changed, then esbuild)."""
    build = source / WEB_SOURCES / "build.mjs"
    try:
        done = subprocess.run(
            ["node", str(build), "--out", str(out)], capture_output=True, text=True, cwd=source
        )
    except FileNotFoundError:
        raise TestnetError("Node.js (node) is not installed: make system-deps") from None
    if done.returncode != 0:
        raise TestnetError(f"the web build failed:\n{(done.stderr or done.stdout)[-3000:]}")


def pack_wheelhouse(wheels: Path) -> Path:
    """``wheels/wheelhouse.tar``: the wheels in one file, which Ansible ships in one transfer
    instead of one per wheel. Same wheels, same bytes: names sorted, times and owners fixed."""
    packed = wheels / WHEELHOUSE_TAR
    with tarfile.open(packed, "w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in sorted(wheels.glob("*.whl")):
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.mtime = int(SOURCE_DATE_EPOCH)
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(wheel, "rb") as f:
                tar.addfile(info, f)
    return packed


def build_debs(image: Path) -> None:
    """The Debian packages the monitoring roles ship (ops/debs.py), for hosts of ``image``."""
    debs = OPS / "debs.py"
    if not debs.exists():
        return
    done = subprocess.run(
        [sys.executable, str(debs), "--base-root", str(image)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise TestnetError(f"{debs.name} failed:\n{(done.stderr or done.stdout)[-3000:]}")


def write_inventory(
    bed: "tb.Testbed",
    path: Path,
    network_dir: Path,
    artifacts: Path = ARTIFACTS,
    version: str | None = None,
    regions: tuple[str, ...] = REGIONS,
    monitoring: int = 1,
    chain_id: str = CHAIN_ID,
    funds: dict[str, str] | None = None,
) -> Path:
    """An inventory of the testbed's hosts as a QNet testnet: the first ones genesis
    validators, one per region of ``regions``, then ``monitoring`` monitoring hosts;
    ``funds`` (address -> QNC) are the genesis balances."""
    needed = len(regions) + monitoring
    if len(bed.hosts) < needed:
        raise TestnetError(f"{needed} hosts needed, the testbed has {len(bed.hosts)}")
    validators = [h.name for h in bed.hosts[: len(regions)]]
    groups: dict[str, list[str]] = {
        "genesis": validators,
        "full": [],
        "light": [],
        "monitoring": [h.name for h in bed.hosts[len(regions) : needed]],
        "loadgen": [],
    }
    for region in sorted(set(regions)):
        groups[f"region_{region}"] = [
            name for name, r in zip(validators, regions, strict=True) if r == region
        ]
    hostvars = {name: dict(v) for name, v in bed.hostvars().items()}
    # The controller, for the genesis play: in the inventory, so that -l can name it.
    hostvars["localhost"] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    }
    for name, region in zip(validators, regions, strict=True):
        hostvars[name]["qnet_region"] = region
    network = {
        "qnet_chain_id": chain_id,
        "qnet_version": version or project_version(),
        "qnet_artifacts_dir": str(artifacts),
        "qnet_network_dir": str(network_dir),
        "node_exporter_extra_args": [TESTBED_FILESYSTEMS],
        **({"qnet_genesis_funds": funds} if funds else {}),
    }
    return tb.write_inventory(path, groups, hostvars, {**bed.connection_vars(), **network})


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]]  # host -> {"ok": 3, "changed": 0, ...}

    @property
    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}

    @property
    def failed(self) -> dict[str, int]:
        return {
            host: counts["failed"] + counts["unreachable"]
            for host, counts in self.recap.items()
            if counts["failed"] + counts["unreachable"]
        }


RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of ansible-playbook's output: counts by host."""
    _, _, recap = output.rpartition("PLAY RECAP")
    return {
        host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in RECAP_LINE.findall(recap)
    }


def ansible_env(state: Path) -> dict[str, str]:
    """ops/ansible.cfg, with the fact cache, the SSH control sockets and Ansible's own files
    under ``state``."""
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(OPS / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts"),
        "ANSIBLE_HOME": str(state / "ansible"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(state / "cp"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "LC_ALL": "C.UTF-8",
    }


def close_connections(state: Path) -> None:
    """End the SSH master connections that Ansible runs with ``state`` left open (they would
    linger for ControlPersist after their hosts are gone)."""
    for socket in (state / "cp").glob("*"):
        subprocess.run(
            ["ssh", "-O", "exit", "-o", f"ControlPath={socket}", "controlled-host"],
            capture_output=True,
            timeout=30,
        )


def run_playbook(
    inventory: Path,
    playbook: str,
    *args: str,
    state: Path,
    echo: bool = False,
    timeout: float = 1800,
) -> Run:
    """``ansible-playbook -i inventory ops/playbooks/<playbook> args``; ``echo`` prints the
    output as it comes."""
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inventory),
        str(OPS / "playbooks" / playbook),
        *args,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ansible_env(state),
        cwd=OPS,
        stdin=subprocess.DEVNULL,
    )
    lines = []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
        proc.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    return Run(proc.returncode, output, time.monotonic() - started, parse_recap(output))


def node_status(address: str, port: int = API_PORT, timeout: float = 3) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/api/v1/status", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def answers(url: str, timeout: float = 3) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def api_port(host_vars: dict, all_vars: dict) -> int:
    """A node's API port as the qnet_node role picks it: the host's ``qnet_api_port``, else
    the one set for all hosts, else 7370."""
    port = host_vars.get("qnet_api_port", all_vars.get("qnet_api_port", API_PORT))
    if type(port) is not int:
        raise TestnetError(f"qnet_api_port {port!r} in the inventory is not a port number")
    return port


def status_report(inventory: Path) -> str:
    """A table of the nodes (host, region, height, peers, version) and the URLs to use: each
    node's API and, on full and super nodes (light nodes serve no pages), its web wallet and
    network status page."""
    import yaml

    everyone = yaml.safe_load(inventory.read_text())["all"]
    hosts, groups = everyone["hosts"], everyone.get("children", {})
    rows = [("host", "address", "region", "type", "height", "peers", "version")]
    urls = []
    for group in ("genesis", "full", "light"):
        for name in groups.get(group, {}).get("hosts", {}):
            address = hosts[name]["ansible_host"]
            port = api_port(hosts[name], everyone.get("vars", {}))
            api = f"http://{address}:{port}"
            status = node_status(address, port)
            if status is None:
                rows.append((name, address, hosts[name].get("qnet_region", "-"), "-", "down"))
                continue
            rows.append(
                (
                    name,
                    address,
                    status["region"],
                    status["node_type"],
                    str(status["height"]),
                    str(status["peers"]),
                    status["version"],
                )
            )
            urls.append(f"node API     {name}: {api}/api/v1/status")
            if status["node_type"] in PAGE_NODE_TYPES:
                urls.append(f"wallet       {name}: {api}/wallet")
                urls.append(f"status page  {name}: {api}/status")
    for name in groups.get("monitoring", {}).get("hosts", {}):
        address = hosts[name]["ansible_host"]
        for service, port in (("Prometheus", 9090), ("Alertmanager", 9093)):
            url = f"http://{address}:{port}"
            state = "" if answers(f"{url}/-/ready") else "  (not answering)"
            urls.append(f"{service:<12} {name}: {url}{state}")
        urls.append(f"alert log    {name}: /var/log/qnet-alerts/alerts.jsonl (ssh root@{address})")
        urls.append(
            f"recovery     {name}: /opt/qnet-recovery/current/bin/qnet-recovery status, "
            f"/var/log/qnet-recovery/audit.jsonl (ssh root@{address})"
        )
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    )
    return f"{table}\n\n" + "\n".join(urls) + f"\n\ninventory: {inventory}"


def paths(bed: "tb.Testbed") -> tuple[Path, Path]:
    """The testbed's QNet inventory and network directory (keys, genesis)."""
    return bed.dir / "testnet-inventory.yml", bed.dir / "network"


def faucet(bed: "tb.Testbed", network: Path) -> tuple[Path, str] | None:
    """The keystore and address of the testnet's funded wallet ``faucet``: made with a new
    network (its genesis funds it), kept with the testbed's state; None for a network made
    without one."""
    from qnet.keystore import Keystore

    keystore = Keystore(bed.dir / "wallets")
    if not keystore.exists(FAUCET):
        if (network / "genesis.json").exists():
            return None
        keystore.add(FAUCET, os.environ.get("QNET_WALLET_PASSWORD") or FAUCET_PASSWORD)
    return keystore.directory, keystore.info(FAUCET).address


def up(name: str, subnet: str) -> int:
    started = time.monotonic()
    try:
        bed = tb.Testbed.attach(name)
        print(f"testbed {name} is up already: {len(bed.hosts)} hosts")
    except tb.TestbedError:
        bed = tb.Testbed(len(REGIONS) + 1, name, subnet).up()
        print(f"testbed {name}: {len(bed.hosts)} hosts up in {time.monotonic() - started:.1f} s")
    mark = time.monotonic()
    wheelhouse = build_artifacts()
    build_debs(tb.image())
    print(f"artifacts in {wheelhouse}, monitoring packages: {time.monotonic() - mark:.1f} s")
    inventory, network = paths(bed)
    wallet = faucet(bed, network)
    write_inventory(bed, inventory, network, funds={wallet[1]: FAUCET_QNC} if wallet else None)
    run = run_playbook(inventory, "testnet.yml", state=bed.dir, echo=True)
    if run.returncode != 0:
        print(f"testnet.yml failed (exit {run.returncode}); the hosts stay up: make testnet-down")
        return 1
    print(status_report(inventory))
    if wallet:
        print(
            f"faucet:      {wallet[1]} ({FAUCET_QNC} QNC at genesis) in {wallet[0]}, password "
            f"$QNET_WALLET_PASSWORD or {FAUCET_PASSWORD!r}\n"
            f"load:        QNET_WALLET_PASSWORD={FAUCET_PASSWORD} make loadtest "
            f"LOADTEST_ARGS='--inventory {inventory} --keystore {wallet[0]}'"
        )
    print(f"\nmake testnet took {time.monotonic() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("artifacts", help="build the wheelhouse Ansible ships")
    build.add_argument("--out", type=Path, default=ARTIFACTS, help=f"default {ARTIFACTS}")
    build.add_argument("--source", type=Path, default=REPO, help="the tree to build from")
    build.add_argument("--extra", default="", help="with these optional dependencies (load)")
    for command, text in (
        ("up", "boot the testbed and roll out the testnet (again)"),
        ("status", "show the nodes"),
        ("down", "stop and remove the testbed and the network"),
    ):
        p = sub.add_parser(command, help=text)
        p.add_argument("--name", default=NAME, help=f"testbed name (default {NAME})")
        if command == "up":
            p.add_argument("--subnet", default=tb.SUBNET, help=f"default {tb.SUBNET}")
    args = parser.parse_args(argv)
    if args.command == "artifacts":
        print(build_artifacts(args.out.resolve(), args.source.resolve(), args.extra))
        return 0
    if args.command == "up":
        return up(args.name, args.subnet)
    if args.command == "down":
        started = time.monotonic()
        bed = tb.Testbed(0, args.name)
        close_connections(bed.dir)
        bed.down()
        print(f"testnet {args.name} down in {time.monotonic() - started:.1f} s")
        return 0
    bed = tb.Testbed.attach(args.name)
    print(status_report(paths(bed)[0]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TestnetError, tb.TestbedError) as error:
        sys.exit(f"testnet: {error}")
