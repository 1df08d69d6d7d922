"""Test-side names for the local node harness (the same code the benchmarks use)."""

from qnet.localnode import CHAIN_ID, LocalNode, free_port, http

NodeProcess = LocalNode

__all__ = ["CHAIN_ID", "LocalNode", "NodeProcess", "free_port", "http"]
