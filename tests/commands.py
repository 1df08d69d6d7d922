"""Commands the e2e tests ran, as an operator would type them, and whether they succeeded:
tests/e2e/test_operator_guide.py checks that each command of the operator guide is among
them. Playbook runs are recorded by tests/e2e/conftest.py; other commands go through
``run``."""

import json
import subprocess
from pathlib import Path

RAN: list[tuple[list[str], int]] = []


def record(argv: list[str], returncode: int) -> None:
    """Remember a command line; an extra-vars JSON argument counts as its -e key=value."""
    words = [Path(argv[0]).name]
    args = iter(argv[1:])
    for arg in args:
        if arg == "-e":
            value = next(args, "")
            try:
                extra = json.loads(value)
            except ValueError:
                extra = None
            if isinstance(extra, dict):
                for key, v in extra.items():
                    words += ["-e", f"{key}={v}"]
                continue
            words += ["-e", value]
        else:
            words.append(arg)
    RAN.append((words, returncode))


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for the commands of the operator guide (qnet-ops, qnet-cli, make)."""
    done = subprocess.run(argv, **kwargs)
    record(argv, done.returncode)
    return done
