"""The forced command of the recovery service's SSH key on node hosts: it runs the command
the key's user asked for only if it is one that ``qnet.ops`` sends for the recovery functions
(status, stop, start, restart, wait_caught_up, snapshot, resync, logs).

In root's ``authorized_keys`` (role ``qnet_recovery``)::

    restrict,command="/opt/qnet/current/bin/python -m qnet.gate --home /opt/qnet
    --data-dir /var/lib/qnet --api-port 7370 --user qnet" ssh-ed25519 AAAA... qnet-recovery@...

sshd puts the asked-for command in ``SSH_ORIGINAL_COMMAND``. The gate splits it as a POSIX
shell would split words (``shlex``, so no shell ever sees it: ``;``, ``|``, ``$(...)`` are
plain characters of an argument), compares the words with ``ops.recovery_commands`` built
for this host's layout, and execs them (no shell) if they are exactly one of those; else it
exits 126 with one line on stderr. The commands come from the functions ``qnet.ops`` builds
them with, so the gate and ``qnet-ops`` cannot disagree. Runs as root: no sudo.
"""

import argparse
import os
import re
import shlex
import sys

from .ops import NodeLayout, recovery_commands

REFUSED = 126  # what a shell answers for a command it cannot run


def allowed(node: NodeLayout, argv: list[str]) -> bool:
    """Whether ``argv`` is exactly a command the recovery functions of ``qnet.ops`` send."""
    if not argv:
        return False
    # The variable parts: a file name in the snapshot directory and a log line count. They
    # only pick which commands to build; the command must equal one built with them.
    in_scratch = re.compile(rf"(?:of=)?{re.escape(node.scratch_dir)}/(.*)", re.DOTALL)
    names = {m[1] for word in argv if (m := in_scratch.fullmatch(word))}
    if len(names) > 1:
        return False
    lines = None
    if "-n" in argv[:-1]:
        count = argv[argv.index("-n") + 1]
        if not re.fullmatch(r"[1-9][0-9]{0,8}", count):
            return False
        lines = int(count)
    try:
        commands = recovery_commands(node, names.pop() if names else None, lines)
    except ValueError:  # not a snapshot file name, or a line count out of range
        return False
    return argv in commands


def admit(node: NodeLayout, command: str) -> list[str] | None:
    """The words of ``command`` (SSH_ORIGINAL_COMMAND) if the gate runs it, else None."""
    try:
        argv = shlex.split(command)
    except ValueError:  # unbalanced quotes
        return None
    return argv if allowed(node, argv) else None


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qnet.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="qnet_node_home, e.g. /opt/qnet")
    parser.add_argument("--data-dir", required=True, help="qnet_node_data_dir")
    parser.add_argument("--api-port", type=int, required=True, help="qnet_api_port")
    parser.add_argument("--user", required=True, help="the node's user (qnet_node_user)")
    options = parser.parse_args(args)
    node = NodeLayout(options.home, options.data_dir, options.api_port, options.user)
    asked = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    argv = admit(node, asked)
    if argv is None:
        shown = asked.replace("\n", "\\n") if asked.strip() else "(no command)"
        print(f"qnet.gate: refused: {shown}", file=sys.stderr)
        sys.exit(REFUSED)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"qnet.gate: cannot run {argv[0]}: {exc}", file=sys.stderr)
        sys.exit(REFUSED + 1)  # 127: as a shell says "command not found"


if __name__ == "__main__":
    main()
