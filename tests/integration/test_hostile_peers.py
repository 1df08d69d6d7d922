"""The hostile-peer harness (issue 12): every attack of ``tests/hostile.py``, each run by an
attacker process of its own with its own key, against one 4-validator network under a steady
load of signed transfers. A window without attack comes first (the baseline), then one
window per attack, all of the same length, all on the same network and the same target
(the first validator, whose status the commit times are read from).

Per window it measures committed tx/s (block contents over block times) and the p99 commit
latency (send to the commit first seen by polling the target's status), the links among
the validators, the RSS of each validator, the series of each validator's /metrics, the
target's consensus.wal, and whether the attacker ended banned. It asserts, once all windows
ran (so the table is whole):

- every transfer sent in the window is committed, with a p99 latency of at most twice the
  baseline's p99 floored at 1 s. The floor absorbs the noise of this 2-core machine shared
  with other test runs: a baseline p99 of a few hundred milliseconds (100 ms blocks) would
  make one scheduling stall of another process a failure, while 2 s still catches an
  attack that costs the chain rounds;
- no link between validators drops: no "peer ... disconnected" for a validator in any
  validator's log, and each still has the other three as peers;
- no validator's RSS grows by 50 MiB or more within the window;
- each validator's /metrics has the same series after the window as before it: no label
  takes a value from the attacker;
- the target's consensus.wal never holds the attacker's forged bytes (sampled every 0.1 s;
  it is rewritten each height), and stays within twice the baseline's largest, plus 64 KiB;
- the attacker is banned, and its redial refused, where the protocol bans for the attack,
  and not where it does not; a handshake flood meets the cap on pending handshakes, and a
  heartbeat flood the link's budget of refused transactions.

The attack -> outcome table goes to ``hostile-peers.md`` and ``hostile-peers.json`` in the
test's tmp dir, and to stdout (``pytest -s``).
"""

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hostile import ATTACKS, FAST
from qnet import crypto
from qnet.client import Client
from qnet.genesis import Params
from qnet.loadgen import CommitWatcher, chain_figures, fetch_blocks, presign, send_at_rate
from qnet.localnode import LocalNode, local_net, rss_mib, start_all, wait_for
from qnet.tx import make_activate, prove_node

HOSTILE = Path(__file__).parents[1] / "hostile.py"
WINDOW_S = 8.0
RATE = 300  # transfers per second, spread over the validators' APIs
BATCH = 30  # transfers per request
SENDERS = 200
P99_FLOOR_MS = 1_000.0
RSS_LIMIT_MIB = 50.0
WAL_SLACK = 64 * 1024
SAMPLE_S = 0.1
SETTLE_S = 30.0  # for the window's transfers to be committed after the last is sent
PARAMS = Params(block_interval_ms=100, max_block_bytes=2**20)
FUNDS = 10**6 * 10**9
WINDOWS = ["baseline", *ATTACKS]


# Counters of the target shown in the outcome: peers dropped, transactions refused, and
# transactions dropped unread, by reason.
OUTCOME_COUNTERS = {
    "qnet_p2p_dropped_peers_total": "dropped",
    "qnet_tx_rejected_total": "refused",
    "qnet_peer_txs_dropped_total": "unread",
}


def scrape(node: LocalNode) -> tuple[set[tuple], dict[str, float]]:
    """The node's /metrics series, and its ``OUTCOME_COUNTERS`` ("dropped banned": 3.0)."""
    _, text = node.get("/metrics")
    series, counters = set(), {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            series.add((s.name, tuple(sorted(s.labels.items()))))
            if s.name in OUTCOME_COUNTERS:
                what = " ".join((OUTCOME_COUNTERS[s.name], *s.labels.values()))
                counters[what] = s.value
    return series, counters


def validator_links(node: LocalNode) -> set[str]:
    return {p["node_id"] for p in node.get("/api/v1/network/peers")[1]["peers"] if p["validator"]}


def log_size(node: LocalNode) -> int:
    return (node.data_dir / "node.log").stat().st_size


def log_since(node: LocalNode, offset: int) -> str:
    with (node.data_dir / "node.log").open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


class Sampler:
    """Peak RSS of each validator, and the target's consensus.wal: its largest size and
    which of the attacker's fingerprints it ever held."""

    def __init__(self, nodes: list[LocalNode], fingerprints: list[bytes]):
        self.nodes = nodes
        self.wal = nodes[0].data_dir / "consensus.wal"
        self.fingerprints = fingerprints
        self.start_rss = [rss_mib(n.proc.pid) for n in nodes]
        self.peak_rss = list(self.start_rss)
        self.wal_max = 0
        self.found: set[bytes] = set()

    def sample(self) -> None:
        for i, n in enumerate(self.nodes):
            self.peak_rss[i] = max(self.peak_rss[i], rss_mib(n.proc.pid))
        data = self.wal.read_bytes()
        self.wal_max = max(self.wal_max, len(data))
        self.found |= {f for f in self.fingerprints if f in data}

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)  # the sampling period

    def rss_growth(self) -> float:
        return max(p - s for p, s in zip(self.peak_rss, self.start_rss, strict=True))


@dataclass
class Harness:
    nodes: list[LocalNode]
    txs: list  # pre-signed transfers, one slice per window
    owner: crypto.KeyPair  # funded; activated ``activated``
    activated: crypto.KeyPair
    tmp: Path
    watcher: CommitWatcher | None = None
    rows: list[dict] = field(default_factory=list)

    @property
    def target(self) -> LocalNode:
        return self.nodes[0]

    async def attacker(self, name: str) -> asyncio.subprocess.Process:
        args = [
            sys.executable,
            str(HOSTILE),
            name,
            "--target",
            self.target.p2p_address,
            "--genesis",
            str(self.target.data_dir / "genesis.json"),
            "--seconds",
            str(WINDOW_S),
        ]
        if name == "heartbeats":
            epoch = (await asyncio.to_thread(Client(self.target.url).epoch))["epoch"]
            args += ["--key", self.activated.seed.hex(), "--epoch", str(epoch)]
        if name == "txs":
            args += ["--wallet", self.owner.seed.hex()]
        if name == "handshakes":
            args += ["--from-host", "127.0.0.2"]
        with (self.tmp / f"attacker-{name}.log").open("wb") as stderr:
            return await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )

    async def line(self, proc: asyncio.subprocess.Process, name: str, timeout: float) -> dict:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not raw:
            log = (self.tmp / f"attacker-{name}.log").read_text(errors="replace")
            raise AssertionError(f"attacker {name} exited with {await proc.wait()}:\n{log}")
        return json.loads(raw)

    async def settle(self, from_height: int, ids: set[bytes]) -> tuple[list[dict], int]:
        """The blocks after ``from_height`` up to the one that commits the last of ``ids``
        (or what there is after SETTLE_S), and how many of ``ids`` are not committed."""
        blocks: list[dict] = []
        committed: set[bytes] = set()
        height = from_height
        deadline = time.monotonic() + SETTLE_S
        while True:
            head = (await asyncio.to_thread(self.target.status))["height"]
            if head > height:
                new = await fetch_blocks(self.target.url, height + 1, head)
                blocks += new
                committed |= {bytes.fromhex(t) for b in new for t in b["transactions"]}
                height = head
            missing = len(ids - committed)
            if not missing or time.monotonic() > deadline:
                return blocks, missing
            await asyncio.sleep(0.2)  # polling the chain for the commits

    async def gone(self, node_id: str) -> None:
        """Until the target no longer lists ``node_id`` among its peers."""
        deadline = time.monotonic() + 10
        while any(p["node_id"] == node_id for p in await asyncio.to_thread(self.peers)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the target still lists {node_id} as a peer")
            await asyncio.sleep(0.1)  # polling the target's peers

    def peers(self) -> list[dict]:
        return self.target.get("/api/v1/network/peers")[1]["peers"]

    async def window(self, index: int, name: str, baseline: dict | None) -> dict:
        nodes, target = self.nodes, self.target
        per_window = len(self.txs) // len(WINDOWS)
        txs = self.txs[index * per_window : (index + 1) * per_window]
        before = await asyncio.gather(*(asyncio.to_thread(scrape, n) for n in nodes))
        offsets = [log_size(n) for n in nodes]
        proc, ready, report = None, {"fingerprints": []}, {}
        try:
            if name != "baseline":
                proc = await self.attacker(name)
                ready = await self.line(proc, name, 60)
            sampler = Sampler(nodes, [bytes.fromhex(f) for f in ready["fingerprints"]])
            sampling = asyncio.create_task(sampler.run())
            height0 = (await asyncio.to_thread(target.status))["height"]
            t0 = time.time()
            sent = await send_at_rate([n.url for n in nodes], txs, RATE, BATCH)
            t1 = time.time()
            if proc is not None:
                report = await self.line(proc, name, 60)
                await proc.wait()
            blocks, uncommitted = await self.settle(height0, set(sent.send_times))
            sampling.cancel()
            sampler.sample()
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        if report.get("node_id"):  # its peer gauge series goes with its last connection
            await self.gone(report["node_id"])
        after = await asyncio.gather(*(asyncio.to_thread(scrape, n) for n in nodes))
        links = await asyncio.gather(*(asyncio.to_thread(validator_links, n) for n in nodes))
        logs = [log_since(n, o) for n, o in zip(nodes, offsets, strict=True)]
        figures = chain_figures(blocks, t0, t1, sent.send_times, self.watcher.seen)
        validators = {n.key.node_id for n in nodes}
        drops = [
            line
            for log in logs
            for line in log.splitlines()
            if (m := re.search(r"peer (\S+) disconnected", line)) and m.group(1) in validators
        ]
        intact = drops == [] and all(
            links[i] == validators - {n.key.node_id} for i, n in enumerate(nodes)
        )
        added = sorted(str(s) for b, a in zip(before, after, strict=True) for s in a[0] - b[0])
        removed = sorted(str(s) for b, a in zip(before, after, strict=True) for s in b[0] - a[0])
        target_counts = {
            what: int(value - before[0][1].get(what, 0))
            for what, value in after[0][1].items()
            if value > before[0][1].get(what, 0)
        }
        row = {
            "window": name,
            "attack": ATTACKS[name].title if name in ATTACKS else "none (baseline)",
            "what": ATTACKS[name].what if name in ATTACKS else "",
            "sent": sent.sent,
            "accepted": sent.accepted,
            "rejected": sent.rejected,
            "http_errors": sent.http_errors,
            "uncommitted": uncommitted,
            "committed_tps": figures.committed_tps,
            "p99_ms": figures.latency_p99_ms,
            "links_intact": intact,
            "link_drops": drops,
            "rss_growth_mib": round(sampler.rss_growth(), 1),
            "series_added": added,
            "series_removed": removed,
            "wal_max_bytes": sampler.wal_max,
            "wal_fingerprints_found": len(sampler.found),
            "target_counts": target_counts,
            "attacker": report,
        }
        row.update(self.ban_outcome(name, report, logs[0]))
        row["failures"] = self.failures(row, baseline)
        return row

    @staticmethod
    def ban_outcome(name: str, report: dict, log: str) -> dict:
        """Whether the target banned the attacker's key and refused its redial, and why."""
        if name == "baseline":
            return {"ban_expected": None, "banned": None, "redial_refused": None}
        node_id = report["node_id"]
        reason = ""
        for line in log.splitlines():
            m = re.search(
                rf"(?:banning peer {node_id} for|dropping peer {node_id} at \S+ and banning "
                rf"it for) [\d.]+ s: (.*)",
                line,
            )
            if m:
                reason = m.group(1)
                break
        refused = any(
            f"refusing peer {node_id} at " in line and line.endswith(": it is banned")
            for line in log.splitlines()
        )
        return {
            "ban_expected": ATTACKS[name].banned,
            "banned": bool(reason),
            "ban_reason": reason,
            "redial_refused": refused,
        }

    @staticmethod
    def failures(row: dict, baseline: dict | None) -> list[str]:
        out = []
        if row["rejected"] or row["http_errors"] or row["accepted"] != row["sent"]:
            out.append(f"load refused: {row['rejected']}, {row['http_errors']} HTTP errors")
        if row["uncommitted"]:
            out.append(f"{row['uncommitted']} transfers not committed within {SETTLE_S:g} s")
        if not row["links_intact"]:
            out.append(f"validator links dropped: {row['link_drops'][:3]}")
        if row["rss_growth_mib"] >= RSS_LIMIT_MIB:
            out.append(f"RSS grew {row['rss_growth_mib']} MiB")
        if row["series_added"] or row["series_removed"]:
            out.append(f"series added {row['series_added']}, removed {row['series_removed']}")
        if row["wal_fingerprints_found"]:
            out.append(f"{row['wal_fingerprints_found']} forged items in consensus.wal")
        if baseline is not None:
            limit = 2 * max(baseline["p99_ms"] or 0.0, P99_FLOOR_MS)
            row["p99_limit_ms"] = limit
            if row["p99_ms"] is None or row["p99_ms"] > limit:
                out.append(f"p99 {row['p99_ms']} ms over {limit:g} ms")
            wal_limit = 2 * baseline["wal_max_bytes"] + WAL_SLACK
            row["wal_limit_bytes"] = wal_limit
            if row["wal_max_bytes"] > wal_limit:
                out.append(f"consensus.wal reached {row['wal_max_bytes']} bytes, over {wal_limit}")
            if row["banned"] != row["ban_expected"]:
                out.append(f"banned: {row['banned']}, the protocol says {row['ban_expected']}")
            if row["ban_expected"] and not row["redial_refused"]:
                out.append("the banned attacker's redial was not refused")
            if row["window"] == "handshakes" and not row["attacker"]["sent"].get("refused_503"):
                out.append("the cap on pending handshakes never refused the flood")
            if row["window"] == "heartbeats" and not row["target_counts"].get("unread"):
                out.append("the refusal budget never dropped the flood")
        return out

    async def run(self) -> None:
        self.watcher = CommitWatcher(self.target.url)
        self.watcher.start()
        try:
            baseline = None
            for index, name in enumerate(WINDOWS):
                row = await self.window(index, name, baseline)
                baseline = baseline or row
                self.rows.append(row)
        finally:
            await self.watcher.stop()


def table(rows: list[dict]) -> str:
    head = (
        "| attack | committed tx/s | p99 ms (limit) | validator links | RSS growth MiB "
        "| series added/removed | wal max KiB (limit) | banned (protocol) | attacker did "
        "| outcome at the target | verdict |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        limit = f" ({r['p99_limit_ms']:g})" if "p99_limit_ms" in r else ""
        wal_limit = f" ({r['wal_limit_bytes'] / 1024:.0f})" if "wal_limit_bytes" in r else ""
        did = ", ".join(f"{k} {v}" for k, v in sorted(r["attacker"].get("sent", {}).items()))
        if r["banned"] is None:
            banned, outcome = "-", "-"
        else:
            banned = f"{'yes' if r['banned'] else 'no'} ({'yes' if r['ban_expected'] else 'no'})"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(r["target_counts"].items()))
            outcome = (r["ban_reason"] or "not banned") + (f"; {counts}" if counts else "")
            if r["redial_refused"]:
                outcome += "; redial refused"
        lines.append(
            f"| {r['attack']} | {r['committed_tps']:g} | {r['p99_ms']}{limit} "
            f"| {'kept' if r['links_intact'] else 'DROPPED'} | {r['rss_growth_mib']:g} "
            f"| {len(r['series_added'])}/{len(r['series_removed'])} "
            f"| {r['wal_max_bytes'] / 1024:.0f}{wal_limit} | {banned} | {did or '-'} | {outcome} "
            f"| {'FAIL: ' + '; '.join(r['failures']) if r['failures'] else 'pass'} |"
        )
    return "\n".join(lines)


def test_each_attack_leaves_the_chain_committing_and_bans_where_the_protocol_says(tmp_path):
    senders = [crypto.KeyPair.generate() for _ in range(SENDERS)]
    owner, activated = crypto.KeyPair.generate(), crypto.KeyPair.generate()
    funded = {s.address: FUNDS for s in senders} | {owner.address: FUNDS}
    nodes = local_net(tmp_path, 4, funded, PARAMS, FAST)
    per_window = int(RATE * WINDOW_S)
    recipient = crypto.KeyPair.generate().address
    network = nodes[0].genesis.network
    txs = presign(senders, network, per_window * len(WINDOWS), PARAMS.min_fee, recipient)
    started = time.monotonic()
    harness = Harness(nodes, txs, owner, activated, tmp_path)
    try:
        start_all(nodes)
        validators = {n.key.node_id for n in nodes}
        wait_for(
            lambda: all(validator_links(n) == validators - {n.key.node_id} for n in nodes),
            30,
            "the validator mesh",
        )
        proof = prove_node(activated, network, owner.address)
        fee = PARAMS.activation_fee("full")
        activation = make_activate(
            owner, network, 0, PARAMS.min_fee, activated.public_key, "full", "eu", fee, proof
        )
        Client(nodes[1].url).submit(activation)
        nodes[1].wait_committed(activation.id)
        asyncio.run(harness.run())
    finally:
        for n in nodes:
            n.stop()
    report = table(harness.rows)
    (tmp_path / "hostile-peers.md").write_text(report + "\n")
    (tmp_path / "hostile-peers.json").write_text(json.dumps(harness.rows, indent=2) + "\n")
    print(f"\n{report}\n({time.monotonic() - started:.0f} s; {tmp_path / 'hostile-peers.json'})")
    failed = {r["window"]: r["failures"] for r in harness.rows if r["failures"]}
    assert not failed, f"{failed}\n{report}"
