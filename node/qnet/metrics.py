"""Prometheus metrics of one node, in a registry of its own (several nodes can share a process).

Besides the node's own counters: the process (start time, resident memory, open files: what
the restart-loop and memory alerts of monitoring/rules read), the memory the node may use
(its cgroup's limit, else the machine's memory), the bytes its data directory holds on disk,
and its wall clock at the moment of the scrape (Prometheus compares it with its own).
"""

import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from .errors import Rejected

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def disk_bytes(directory: Path) -> int:
    """Bytes the files under ``directory`` occupy on disk (allocated blocks, as ``du``)."""
    total = 0
    pending = [directory]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:  # gone or unreadable meanwhile
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def memory_limit_bytes(proc: Path = Path("/proc/self/cgroup"), fs: Path = Path("/sys/fs/cgroup")):
    """What this process may use: its cgroup v2 ``memory.max`` (systemd's MemoryMax=), or
    the machine's physical memory where no limit is set or none can be read."""
    try:
        for line in proc.read_text().splitlines():
            hierarchy, _, path = line.partition("::")
            if hierarchy == "0":
                limit = (fs / path.lstrip("/") / "memory.max").read_text().strip()
                if limit.isdigit():
                    return int(limit)
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _ProcessCollector(ProcessCollector):
    """prometheus_client's process metrics, with the boot time taken from CLOCK_BOOTTIME:
    the node's unit (ProcSubset=pid) hides /proc/stat, where the library reads it, and the
    library then exports nothing at all."""

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Metrics:
    def __init__(self, data_dir: Path) -> None:
        r = self.registry = CollectorRegistry()
        _ProcessCollector(registry=r)  # process_start_time_seconds, _resident_memory_bytes, ...
        Gauge(
            "qnet_memory_limit_bytes",
            "Memory this node may use: its cgroup's memory.max, else the machine's memory",
            registry=r,
        ).set_function(memory_limit_bytes)
        Gauge(
            "qnet_data_dir_bytes", "Bytes the node's data directory holds on disk", registry=r
        ).set_function(lambda: disk_bytes(data_dir))
        Gauge(
            "qnet_node_time_seconds",
            "The node's wall clock when it was scraped (Prometheus compares it with its own)",
            registry=r,
        ).set_function(time.time)
        self.build_info = Info("qnet_build", "Version and identity of this node", registry=r)
        self.height = Gauge("qnet_block_height", "Height of the last committed block", registry=r)
        self.head_time = Gauge(
            "qnet_head_block_time_seconds",
            "Time in the header of the last committed block (its proposer's clock)",
            registry=r,
        )
        self.mempool_size = Gauge(
            "qnet_mempool_size", "Transactions waiting in the mempool", registry=r
        )
        self.mempool_capacity = Gauge(
            "qnet_mempool_capacity", "Transactions the mempool holds at most", registry=r
        )
        self.mempool_senders = Gauge(
            "qnet_mempool_senders", "Senders with pending transactions", registry=r
        )
        self.admitted = Counter(
            "qnet_tx_admitted", "Transactions admitted to the mempool", registry=r
        )
        self.rejected = Counter(
            "qnet_tx_rejected", "Transactions refused, by reason", ["reason"], registry=r
        )
        self.peer_txs_dropped = Counter(
            "qnet_peer_txs_dropped",
            "Transactions from peers dropped unread: the peer's budget of refusals was spent",
            registry=r,
        )
        self.committed = Counter(
            "qnet_tx_committed", "Transactions in committed blocks", registry=r
        )
        self.blocks = Counter("qnet_blocks_committed", "Blocks committed", registry=r)
        self.journal_fsyncs = Counter(
            "qnet_journal_fsyncs",
            "Writes of accepted transactions to the mempool journal, each ending in an fsync "
            "(concurrent submissions share one)",
            registry=r,
        )
        self.journal_records = Counter(
            "qnet_journal_records",
            "Transactions written to the mempool journal (compactions included)",
            registry=r,
        )
        self.journal_fsync_seconds = Histogram(
            "qnet_journal_fsync_seconds",
            "Time to write and fsync one batch of journal records",
            buckets=_FAST,
            registry=r,
        )
        self.verify_seconds = Histogram(
            "qnet_tx_verify_seconds",
            "Signature verification time per submitted batch",
            buckets=_FAST,
            registry=r,
        )
        self.build_seconds = Histogram(
            "qnet_block_build_seconds",
            "Time to select, apply and sign a block",
            buckets=_FAST,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "qnet_block_commit_seconds",
            "Time to write a block durably and merge its state",
            buckets=_FAST,
            registry=r,
        )
        self.block_txs = Histogram(
            "qnet_block_transactions",
            "Transactions per block",
            buckets=(0, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
            registry=r,
        )
        self.consensus_height = Gauge(
            "qnet_consensus_height", "Height the consensus core is deciding", registry=r
        )
        self.consensus_round = Gauge(
            "qnet_consensus_round", "Round of the height being decided", registry=r
        )
        self.rounds_per_height = Histogram(
            "qnet_consensus_rounds_per_height",
            "Rounds it took to decide a height",
            buckets=(1, 2, 3, 5, 10),
            registry=r,
        )
        self.proposals = Counter(
            "qnet_consensus_proposals",
            "Block proposals sent, received and found invalid",
            ["outcome"],
            registry=r,
        )
        self.votes_received = Counter(
            "qnet_consensus_votes_received",
            "Prevotes and precommits received, by validator",
            ["validator", "kind"],
            registry=r,
        )
        self.missed_precommits = Counter(
            "qnet_validator_missed_precommits",
            "Blocks this node committed whose commit certificate lacks this validator's precommit",
            ["validator"],
            registry=r,
        )
        self.equivocations = Counter(
            "qnet_consensus_equivocations",
            "Conflicting signed messages seen, by validator",
            ["validator"],
            registry=r,
        )
        self.consensus_dropped = Counter(
            "qnet_consensus_messages_dropped",
            "Consensus messages from peers not kept (a check failed, or the input queue was "
            "full), by reason",
            ["reason"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "qnet_commit_latency_seconds",
            "From a block's proposal time to its commit on this node",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.peers = Gauge(
            "qnet_peers",
            "Connected peers by their node type and region",
            ["peer_type", "peer_region"],
            registry=r,
        )
        self.sync_lag = Gauge(
            "qnet_sync_lag_blocks", "Blocks the best known peer is ahead of this node", registry=r
        )
        self.epoch = Gauge("qnet_epoch", "Epoch of the last committed block", registry=r)
        self.eligible_nodes = Gauge(
            "qnet_epoch_eligible_nodes",
            "Nodes whose heartbeat for the current epoch is on chain, by type",
            ["type"],
            registry=r,
        )
        self.nodes_activated = Gauge(
            "qnet_nodes_activated",
            "Activated nodes, by type and region",
            ["type", "region"],
            registry=r,
        )
        self.supply = Gauge(
            "qnet_supply_units",
            "Supply counters in base units (emitted: rewards minted; unclaimed: recorded, "
            "not yet claimed)",
            ["counter"],
            registry=r,
        )
        self.heartbeats = Counter(
            "qnet_heartbeats_committed", "Heartbeats in committed blocks", registry=r
        )
        self.rewards_claimed = Counter(
            "qnet_rewards_claimed_units", "Rewards paid to owners by claims", registry=r
        )
        for outcome in ("sent", "received", "invalid"):
            self.proposals.labels(outcome)
        for reason in Rejected.CODES:  # export zeroes so alerts see every reason from start
            self.rejected.labels(reason)
