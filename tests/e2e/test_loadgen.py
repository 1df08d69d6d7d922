"""A load campaign whose Locust workers run on a loadgen host of the shared testnet
(tests/e2e_testnet.py): ``loadtest/campaign.py run --loadgen`` prepares the plan here, starts
its master here and two workers on the host through ops/playbooks/loadgen.yml (the locust
role, installed from the load wheelhouse), and fetches their logs back. The run's accounting
closes against the chain, both workers report their health, and the host is left with no
run and no worker running.

Run alone (as root):

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/e2e/test_loadgen.py
"""

import json
import os
import sys
from pathlib import Path

import pytest

from commands import run
from e2e_testnet import OWNER, PASSWORD, Testnet

pytestmark = pytest.mark.timeout(900)  # the load wheelhouse, the install on the host, the run

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2


@pytest.fixture
def loadgen(shared_net: Testnet):
    """The spare host in the inventory's loadgen group, for this test only."""
    net = shared_net
    built = run(
        [sys.executable, "ops/testnet.py", "artifacts", "--extra", "load", "--out",
         str(net.artifacts)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    net.edit_inventory(lambda everyone: everyone["children"]["loadgen"].update(
        hosts={net.spare.name: None}))  # fmt: skip
    yield net.spare
    net.edit_inventory(lambda everyone: everyone["children"]["loadgen"].update(hosts={}))


def test_a_campaign_with_workers_on_a_loadgen_host_closes_and_clears_the_host(
    shared_net, loadgen, tmp_path
):
    net = shared_net
    done = run(
        [sys.executable, "loadtest/campaign.py", "run", "loadtest/campaigns/smoke.yml",
         "--inventory", str(net.inventory), "--loadgen", "--processes", str(WORKERS),
         "--keystore", str(net.keystore), "--from", OWNER, "--out", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=800,
        env={**os.environ, "QNET_WALLET_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    summary = json.loads(done.stdout)
    acc = summary["accounting"]
    assert acc["closes"] and acc["unaccounted"] == 0 and acc["lost"] == 0
    assert acc["committed"] == acc["committed_readback"] == acc["sent"] == acc["offered"] > 0
    assert summary["valid"], summary["invalid_because"]
    assert summary["settings"]["loadgen_hosts"] == [loadgen.name]
    workers = summary["generators"]["workers"]
    assert len(workers) == WORKERS and all(w is not None for w in workers.values()), workers
    # The workers' logs and exits, fetched back; each ended when the master quit.
    (report,) = tmp_path.iterdir()
    fetched = report / "workers" / loadgen.name
    ended = (fetched / "workers.txt").read_text().split("\n")
    assert sorted(line for line in ended if line) == [
        f"qnet-locust-worker@{i} success 0" for i in range(WORKERS)
    ]
    assert sorted(p.name for p in fetched.glob("*.log")) == [
        f"worker-{i}.log" for i in range(WORKERS)
    ]
    # Nothing of the run is left on the host.
    left = net.ssh(loadgen, "ls -A /var/lib/qnet-load")
    assert left.split() == [], left
    running = net.ssh(loadgen, "systemctl list-units --plain --no-legend 'qnet-locust-worker@*'")
    assert running.strip() == "", running
