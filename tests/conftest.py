import sys
from pathlib import Path

import pytest

from qnet import crypto
from qnet.localnode import NO_EMPTY_BLOCKS, LocalNode

# Test modules import shared harness modules (netns.py, consensus_sim.py) by name, and
# monitoring/dashboards.py as ``dashboards``.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "monitoring"))

FUNDS = 1_000_000 * 10**9  # 1M QNC per funded wallet


@pytest.fixture
def wallets() -> list[crypto.KeyPair]:
    return [crypto.KeyPair.generate() for _ in range(4)]


@pytest.fixture
def node(tmp_path, wallets):
    """A running single-validator node whose genesis funds ``wallets``; no idle blocks."""
    proc = LocalNode.single(
        tmp_path / "node", {w.address: FUNDS for w in wallets}, config=NO_EMPTY_BLOCKS
    )
    proc.start()
    yield proc
    proc.stop()
