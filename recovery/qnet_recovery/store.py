"""What qnet-recovery keeps on disk: its state (replaced atomically after every event) and
its audit log (one JSON line per decision, appended and fsynced)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def save_state(path: Path, data: dict) -> None:
    """Write ``data`` so that a crash leaves either the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: Path) -> dict | None:
    """The saved state, or None when there is none yet; a damaged file is an error (the
    service refuses to start rather than forget budgets)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is damaged ({exc}); move it aside to start afresh") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged (not an object); move it aside to start afresh")
    return data


class AuditLog:
    """Append-only JSON lines; each record is written whole with one write and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        os.write(self._fd, data)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_audit(path: Path, last: int | None = None) -> list[dict]:
    """The audit log's records (the ``last`` ones); a torn final line is left out."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines[-last:] if last else lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
