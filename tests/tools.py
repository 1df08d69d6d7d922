"""promtool and amtool, unpacked from Debian's packages by `make tools` (make test and make
lint depend on it). Tests that need them skip where they are missing, but never under CI."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "build" / "tools" / "usr" / "bin"


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        reason = f"{path} is missing: run make tools"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
