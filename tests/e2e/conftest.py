import os
import sys
from pathlib import Path

import pytest

import e2e_testnet
import testbed as tb
from commands import record

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))
import testnet

HOSTS = 4
# The first test that boots hosts may install packages and build the image first (a minute
# on a quiet machine, a few on a busy one or with a slow mirror).
FIRST_BOOT_TIMEOUT = 900


@pytest.fixture(scope="session", autouse=True)
def recorded_playbooks():
    original = testnet.run_playbook

    def recording(inventory, playbook, *args, **kwargs):
        result = original(inventory, playbook, *args, **kwargs)
        record(["ansible-playbook", "-i", str(inventory), f"playbooks/{playbook}", *args],
               result.returncode)  # fmt: skip
        return result

    testnet.run_playbook = recording
    yield
    testnet.run_playbook = original


# E2e modules in this order, after the unit and integration tests: the modules of the shared
# testnet in the order they change it (test_operations leaves another release running), and
# the guide's test last, since it looks at what the others ran.
ORDER = ("test_testbed", "test_ops_static", "test_monitoring", "test_testnet", "test_loadgen",
         "test_alerting", "test_operations", "test_recovery", "test_operator_guide")  # fmt: skip


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return ORDER.index(name) + 1 if name in ORDER else 0

    items.sort(key=rank)
    first = next((item for item in items if "can_boot" in item.fixturenames), None)
    if first is not None:
        first.add_marker(pytest.mark.timeout(FIRST_BOOT_TIMEOUT))


@pytest.fixture(scope="session")
def can_boot() -> None:
    """Skips where testbed hosts cannot run (not root, not Linux), but never under CI=true:
    there a missing testbed is a failure."""
    reason = tb.can_run()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the e2e tests must run under CI, but: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def testbed(can_boot):
    """HOSTS testbed hosts, booted once for the session and removed after it."""
    with tb.Testbed(HOSTS) as bed:
        yield bed


@pytest.fixture(scope="session")
def shared_net(can_boot, tmp_path_factory):
    """The testnet of tests/e2e_testnet.py, rolled out once for the session."""
    net = e2e_testnet.deploy(tmp_path_factory.mktemp("testnet"))
    try:
        yield net
    finally:
        e2e_testnet.close(net)
