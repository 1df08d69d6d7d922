"""Debian packages for hosts without a package registry, fetched once on the controller.

A bundle is what one role installs: the packages it names plus every dependency a target
host lacks. What a host lacks is computed by apt's own resolver against that host's dpkg
status (``--base-status``, e.g. copied from a target host with ``cat /var/lib/dpkg/status``,
or ``--base-root`` of an image), so the bundle holds exactly the packages ``apt-get install``
would download on such a host: no fewer (the install works offline) and no more (no base
package is replaced).

    python ops/debs.py --base-root /var/cache/qnet-testbed/image-XXXX [--cache DIR]

Each bundle goes to ``CACHE/<bundle>/``: its .deb files and ``manifest.json`` (package,
version, architecture, file, size and SHA-256 of each), which the roles read and check.
Downloads are kept in ``CACHE/archives`` and reused; a rerun fetches only what changed.
Needs apt (a Debian controller of the hosts' release).
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE = Path("/var/cache/qnet-debs")  # the roles' default *_debs_dir are bundles in here
# Bundle name (the role that installs it) -> the packages it asks for.
BUNDLES = {
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager",),
    "node_exporter": ("prometheus-node-exporter",),
}
MANIFEST = "manifest.json"
# "Inst name [old version] (new version Release:label [arch])" in apt-get's simulation.
_INST = re.compile(r"^Inst (\S+) (?:\[[^]]*\] )?\((\S+) .*\[([^]]+)\]\)", re.MULTILINE)


class DebsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    architecture: str
    file: str = ""
    size: int = 0
    sha256: str = ""


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        out = (result.stderr or result.stdout).strip()[-3000:]
        raise DebsError(f"{' '.join(cmd)} exited {result.returncode}: {out}")
    return result.stdout


def _apt(admin: Path, archives: Path) -> list[str]:
    """apt-get seeing ``admin/status`` as the installed packages, downloading to ``archives``.

    apt locks the directory of the status file: a copy keeps it out of the base image."""
    return [
        "apt-get",
        "-q",
        "-y",
        "--no-install-recommends",
        "-o",
        f"Dir::State::status={admin / 'status'}",
        "-o",
        f"Dir::Cache::archives={archives}",
    ]


def resolve(packages: tuple[str, ...], admin: Path, archives: Path) -> list[Deb]:
    """What apt would install for ``packages`` on a host whose dpkg status is the base."""
    simulation = _run([*_apt(admin, archives), "install", "--simulate", *packages])
    found = [Deb(name, version, arch) for name, version, arch in _INST.findall(simulation)]
    if not found:
        raise DebsError(f"apt would install nothing for {packages}: are they installed already?")
    return found


def _fields(path: Path) -> tuple[str, str, str]:
    out = _run(["dpkg-deb", "--show", "--showformat=${Package}\t${Version}\t${Architecture}", path])
    package, version, arch = out.split("\t")
    return package, version, arch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lists_updated() -> None:
    _run(["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", "update"])


def fetch(base_status: Path, cache: Path = CACHE, bundles: dict = BUNDLES) -> dict[str, Path]:
    """Download every bundle into ``cache``; the manifest path of each, by bundle name."""
    if not base_status.is_file():
        raise DebsError(f"no dpkg status at {base_status}")
    archives = cache / "archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    architecture = _run(["dpkg", "--print-architecture"]).strip()
    suite = _os_release().get("VERSION_CODENAME", "")
    manifests = {}
    with (
        open(cache / ".lock", "w") as lock,
        tempfile.TemporaryDirectory(prefix="qnet-debs-") as tmp,
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time writes the cache
        admin = Path(tmp)
        shutil.copyfile(base_status, admin / "status")
        for bundle, packages in bundles.items():
            try:
                debs = resolve(packages, admin, archives)
                _run([*_apt(admin, archives), "install", "--download-only", *packages])
            except DebsError:
                # Stale package lists name versions the mirror no longer has: refresh, retry.
                _lists_updated()
                debs = resolve(packages, admin, archives)
                _run([*_apt(admin, archives), "install", "--download-only", *packages])
            manifests[bundle] = _publish(
                cache, bundle, packages, debs, archives, suite, architecture
            )
    return manifests


def _os_release() -> dict[str, str]:
    lines = Path("/etc/os-release").read_text().splitlines()
    return {key: value.strip('"') for key, _, value in (line.partition("=") for line in lines)}


def _publish(
    cache: Path,
    bundle: str,
    packages: tuple[str, ...],
    wanted: list[Deb],
    archives: Path,
    suite: str,
    architecture: str,
) -> Path:
    """Link the bundle's files from ``archives`` into ``cache/bundle`` beside its manifest.

    The directory is built aside and swapped in, so a reader never sees half a bundle."""
    on_disk = {_fields(p): p for p in archives.glob("*.deb")}
    debs = []
    for deb in wanted:
        path = on_disk.get((deb.package, deb.version, deb.architecture))
        if path is None:
            raise DebsError(f"apt downloaded no file for {deb.package} {deb.version}")
        size, digest = path.stat().st_size, _sha256(path)
        debs.append(Deb(deb.package, deb.version, deb.architecture, path.name, size, digest))
    building = Path(tempfile.mkdtemp(prefix=f".{bundle}-", dir=cache))
    try:
        for deb in debs:
            os.link(archives / deb.file, building / deb.file)
        manifest = {
            "bundle": bundle,
            "packages": list(packages),
            "suite": suite,
            "architecture": architecture,
            "debs": [asdict(deb) for deb in debs],
        }
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        building.chmod(0o755)
        target = cache / bundle
        old = cache / f".{bundle}-old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        building.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return cache / bundle / MANIFEST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base-status", type=Path, help="dpkg status file of a target host")
    base.add_argument("--base-root", type=Path, help="root filesystem of the hosts' image")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"default {CACHE}")
    args = parser.parse_args(argv)
    status = args.base_status or args.base_root / "var/lib/dpkg/status"
    try:
        manifests = fetch(status, args.cache)
    except DebsError as error:
        print(f"debs: {error}", file=sys.stderr)
        return 1
    for bundle, path in manifests.items():
        debs = json.loads(path.read_text())["debs"]
        size = sum(d["size"] for d in debs)
        names = " ".join(d["package"] for d in debs)
        print(f"{bundle}: {len(debs)} packages, {size / 2**20:.1f} MiB in {path.parent}: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
