import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import NodeProcess
from qnet import crypto

FUNDS = 1_000_000 * 10**9  # 1M QNC per funded wallet


@pytest.fixture
def wallets() -> list[crypto.KeyPair]:
    return [crypto.KeyPair.generate() for _ in range(4)]


@pytest.fixture
def node(tmp_path, wallets):
    """A running single-validator node whose genesis funds ``wallets``."""
    proc = NodeProcess(tmp_path / "node", {w.address: FUNDS for w in wallets})
    proc.start()
    yield proc
    proc.stop()
