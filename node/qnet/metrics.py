"""Prometheus metrics of one node, in a registry of its own (several nodes can share a process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .errors import Rejected

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.build_info = Info("qnet_build", "Version and identity of this node", registry=r)
        self.height = Gauge("qnet_block_height", "Height of the last committed block", registry=r)
        self.mempool_size = Gauge(
            "qnet_mempool_size", "Transactions waiting in the mempool", registry=r
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
        self.committed = Counter(
            "qnet_tx_committed", "Transactions in committed blocks", registry=r
        )
        self.blocks = Counter("qnet_blocks_committed", "Blocks committed", registry=r)
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
        self.votes_missed = Counter(
            "qnet_consensus_votes_missed",
            "Committed blocks whose certificate lacks this validator's precommit",
            ["validator"],
            registry=r,
        )
        self.equivocations = Counter(
            "qnet_consensus_equivocations",
            "Conflicting signed messages seen, by validator",
            ["validator"],
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
            "Connected peers by node type and region",
            ["type", "region"],
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
