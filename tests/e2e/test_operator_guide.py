"""Every command of docs/operator-guide.md is run by the e2e tests: each ``$ `` line of its
``console`` blocks must match a command that ran, and succeeded, in this session (placeholders
``$INV``, ``<host>``, ``<file>``, ``<dir>``, ``<wallet>`` match any one word; a test may add
words, such as shorter timeouts). ``make`` lines are run here."""

import re
import shlex
from pathlib import Path

import pytest

from commands import RAN, run

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
PLACEHOLDER = re.compile(r"\$INV|<[a-z]+>")


def guide_commands() -> list[str]:
    commands, inside = [], False
    for line in GUIDE.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console"
            continue
        if inside and line.startswith("$ "):
            commands.append(line[2:].strip())
    return commands


def pattern(word: str) -> re.Pattern:
    parts = PLACEHOLDER.split(word)
    return re.compile(r"\S+".join(re.escape(p) for p in parts) + r"\Z")


def matches(command: str, ran: list[str]) -> bool:
    """The command's words appear in ``ran`` in order (a test may add its own)."""
    words = iter(ran)
    return all(any(pattern(w).match(r) for r in words) for w in shlex.split(command))


def test_the_guide_has_commands_for_every_part():
    commands = guide_commands()
    for needed in ("testnet.yml", "join.yml", "upgrade.yml", "backup.yml", "restore.yml",
                   "restart.yml", "qnet-ops"):  # fmt: skip
        assert any(needed in c for c in commands), needed


@pytest.mark.parametrize("command", guide_commands())
def test_every_command_of_the_guide_ran_and_succeeded(command, request):
    if command.startswith("make "):
        done = run(shlex.split(command), cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    modules = {item.module.__name__ for item in request.session.items}
    if not {"test_testnet", "test_operations"} <= {m.rsplit(".", 1)[-1] for m in modules}:
        pytest.skip("needs tests/e2e/test_testnet.py and test_operations.py in the session")
    succeeded = [words for words, code in RAN if code == 0]
    assert any(matches(command, words) for words in succeeded), (
        f"no e2e test ran `{command}` successfully; ran: "
        + "; ".join(" ".join(w) for w in succeeded)[-3000:]
    )
