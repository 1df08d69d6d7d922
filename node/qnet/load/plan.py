"""Preparation before the timed window: fund the senders, activate the simulated nodes, sign
every transaction, write a plan.

Each stream's batches are dealt to its lanes (batch ``k`` to lane ``k % lanes``); a transfer
lane has senders of its own and one Locust user sends a lane's batches one after another, so
a sender's nonces reach one node in order whatever the number of generator processes, and
nothing is signed once the run has begun. Lanes are numbered over all streams (transfers
first). A plan is a directory:

    plan.json            the campaign, chain, targets, streams, counts, where it was made
    <stream>.bin         a stream's request bodies, one batch after another
    <stream>.next.bin    heartbeats only: the same batches signed for the next epoch, sent
                         instead once the run has crossed into it
    batches.json         per stream, the byte offset of each batch (one more than batches)

Every process of a run (master, workers, the report) reads the same plan; the intended send
times are recomputed from the campaign by ``campaign.schedule``.
"""

import functools
import json
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import crypto
from ..client import Client
from ..genesis import REGIONS
from ..tx import (
    decode,
    encode_batch,
    frame_batch,
    make_activate,
    make_heartbeat,
    make_transfer,
    prove_node,
    split_batch,
)
from .campaign import Campaign, Schedule, Stream, parse, schedule

AMOUNT = 1  # base units moved by each load transfer
FUNDING_CHUNK = 500  # transactions of one sender in flight at once (below the mempool's cap)
STALL_S = 60.0  # no progress for this long while funding or activating is an error
EPOCH_MARGIN_S = 30.0  # a run must end this long before the epoch after next begins


class PlanError(RuntimeError):
    pass


Progress = Callable[[int], None]  # called with how many more units of work are done
Key = tuple[str, int]  # (stream name, index of the transaction in the stream's schedule)


@dataclass
class StreamPlan:
    stream: Stream
    schedule: Schedule
    body_offsets: list[int]
    first_lane: int  # the plan-wide number of the stream's lane 0
    files: tuple[Path, ...]  # its bodies: this epoch's, and for heartbeats the next epoch's

    def lane_batches(self, lane: int) -> range:
        """The batches of the stream's lane ``lane`` (numbered within the stream)."""
        return range(lane, self.schedule.batches, self.stream.lanes)

    def lane_of(self, k: int) -> int:
        return k % self.stream.lanes

    def bodies(self, variant: int = 0) -> list[bytes]:
        data = self.files[variant].read_bytes()
        o = self.body_offsets
        return [data[o[k] : o[k + 1]] for k in range(len(o) - 1)]

    def batch_of(self) -> list[int]:
        """The batch of each transaction, by index."""
        b = self.schedule.bounds
        return [k for k in range(len(b) - 1) for _ in range(b[k + 1] - b[k])]


@dataclass
class Plan:
    directory: Path
    campaign: Campaign
    chain_id: str
    urls: list[str]  # where the lanes send, plan-wide lane l to urls[l % len(urls)]
    track: str  # the node whose committed blocks the run follows and reads back
    streams: dict[str, StreamPlan]
    start_height: int
    meta: dict

    @property
    def lanes(self) -> int:
        return sum(s.stream.lanes for s in self.streams.values())

    @property
    def transfers(self) -> StreamPlan:
        return self.streams["transfer"]

    def lane(self, lane: int) -> tuple[StreamPlan, int]:
        """The stream of a plan-wide lane and the lane's number within it."""
        for plan in self.streams.values():
            if plan.first_lane <= lane < plan.first_lane + plan.stream.lanes:
                return plan, lane - plan.first_lane
        raise IndexError(f"lane {lane} of {self.lanes}")

    def target(self, lane: int) -> str:
        """The node a plan-wide lane sends to."""
        return self.urls[lane % len(self.urls)]

    @property
    def epoch_switch(self) -> float | None:
        """Unix time from which heartbeats go in their next-epoch variant (None: none)."""
        beats = self.meta.get("heartbeat")
        return beats["next_epoch_ms"] / 1000 if beats else None

    @functools.cached_property
    def ids(self) -> dict[bytes, Key]:
        """Transaction id -> (stream, index in its schedule); both variants of a heartbeat.
        Computed once per process: the report reads it more than once."""
        ids: dict[bytes, Key] = {}
        for name, plan in self.streams.items():
            for variant in range(len(plan.files)):
                index = 0
                for body in plan.bodies(variant):
                    for tx_id in body_ids(plan.stream, body):
                        ids[tx_id] = (name, index)
                        index += 1
        return ids

    @classmethod
    def load(cls, directory: Path) -> "Plan":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "plan.json").read_text())
            offsets = json.loads((directory / "batches.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"{directory} is not a prepared plan: {exc}") from None
        campaign = parse(meta["campaign_file"], meta["campaign"]["name"])
        streams, lane = {}, 0
        for stream in campaign.streams:
            sched = schedule(stream)
            mine = offsets.get(stream.name, [])
            if len(mine) != sched.batches + 1 or sched.bounds[-1] != meta["transactions"].get(
                stream.name
            ):
                raise PlanError(f"{directory}: {stream.name} batches do not match the campaign")
            files = [directory / f"{stream.name}.bin"]
            if stream.name == "heartbeat":
                files.append(directory / "heartbeat.next.bin")
            streams[stream.name] = StreamPlan(stream, sched, mine, lane, tuple(files))
            lane += stream.lanes
        return cls(
            directory,
            campaign,
            meta["chain_id"],
            meta["urls"],
            meta["track"],
            streams,
            meta["start_height"],
            meta,
        )


def body_ids(stream: Stream, body: bytes) -> list[bytes]:
    """The ids of the transactions in one request body of ``stream``."""
    if stream.endpoint == "json":
        return [bytes.fromhex(json.loads(body)["id"])]
    return [crypto.digest(raw) for raw in split_batch(body)]


def request_bodies(stream: Stream, sched: Schedule, raws: list[bytes]) -> list[bytes]:
    """The request bodies of a stream's batches: binary batches, or one JSON transaction."""
    if stream.endpoint == "json":
        return [json.dumps(decode(raw).to_json()).encode() for raw in raws]
    return [frame_batch(raws[sched.bounds[k] : sched.bounds[k + 1]]) for k in range(sched.batches)]


# ---- senders and lanes ----------------------------------------------------------------------


def lane_senders(senders: int, lanes: int) -> list[list[int]]:
    """Sender indexes of each lane: sender ``s`` belongs to lane ``s % lanes``."""
    return [list(range(lane, senders, lanes)) for lane in range(lanes)]


def assignments(sched: Schedule, senders: int, lanes: int) -> list[tuple[int, int]]:
    """(sender, nonce) of every transaction, in schedule order: batch ``k`` is lane
    ``k % lanes``'s, and a lane deals its transactions round-robin over its own senders."""
    own = lane_senders(senders, lanes)
    sent = [0] * lanes
    out = []
    for k in range(sched.batches):
        lane = k % lanes
        for _ in range(sched.bounds[k + 1] - sched.bounds[k]):
            j = sent[lane]
            out.append((own[lane][j % len(own[lane])], j // len(own[lane])))
            sent[lane] += 1
    return out


# ---- signing on every core ------------------------------------------------------------------


def _sign_transfers(args: tuple) -> list[bytes]:
    seeds, network, fee, sink, work = args
    keys = {s: crypto.KeyPair(seed) for s, seed in seeds.items()}
    return [make_transfer(keys[s], network, n, fee, sink, AMOUNT).raw for s, n in work]


def _sign_heartbeats(args: tuple) -> list[bytes]:
    seeds, network, epoch = args
    return [make_heartbeat(crypto.KeyPair(seed), network, 0, epoch).raw for seed in seeds]


def _parallel(function, jobs: list[tuple], progress: Progress, size) -> list[bytes]:
    out: list[bytes] = []
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for job, raws in zip(jobs, pool.map(function, jobs), strict=True):
            out += raws
            progress(size(job))
    return out


def sign_all(
    seeds: list[bytes],
    network: crypto.Network,
    fee: int,
    work: list[tuple[int, int]],
    progress: Progress,
    chunk: int = 20_000,
) -> list[bytes]:
    """Every transfer signed for ``network``, in ``work`` order, on every core."""
    sink = crypto.KeyPair.generate().address
    jobs = []
    for start in range(0, len(work), chunk):
        part = work[start : start + chunk]
        jobs.append(({s: seeds[s] for s, _ in part}, network, fee, sink, part))
    return _parallel(_sign_transfers, jobs, progress, lambda job: len(job[4]))


def sign_heartbeats(
    seeds: list[bytes],
    network: crypto.Network,
    epoch: int,
    progress: Progress,
    chunk: int = 20_000,
) -> list[bytes]:
    """Each node's heartbeat for ``epoch`` on ``network`` (its first transaction: nonce 0),
    in order."""
    jobs = [(seeds[i : i + chunk], network, epoch) for i in range(0, len(seeds), chunk)]
    return _parallel(_sign_heartbeats, jobs, progress, lambda job: len(job[0]))


# ---- on the chain before the window ---------------------------------------------------------


# What one sender must get committed: (sender, how many, build(index, nonce, count)), where
# build makes the transactions ``index``.. of its list, the first with ``nonce``.
Job = tuple[crypto.KeyPair, int, Callable[[int, int, int], list]]


def settle(client: Client, jobs: list[Job], progress: Progress) -> None:
    """Get every job's transactions committed, ``FUNDING_CHUNK`` per sender at a time (a
    sender may have only so many pending): each round submits the next chunk of every sender
    with work left, then waits until the chain has them all."""
    rows = []  # [sender, address, build, first nonce, next to submit, end, committed]
    for sender, count, build in jobs:
        address = crypto.encode_address(sender.address)
        start = client.account(address)["next_nonce"]
        rows.append([sender, address, build, start, start, start + count, start])
    while any(r[4] < r[5] for r in rows):
        for r in rows:
            sender, address, build, start, nonce, end, _ = r
            if nonce >= end:
                continue
            txs = build(nonce - start, nonce, min(FUNDING_CHUNK, end - nonce))
            reply = client.submit_batch(encode_batch(txs))
            if reply["rejected"]:
                first = reply["rejected"][0]
                raise PlanError(
                    f"{len(reply['rejected'])} of {len(txs)} transactions from {address} "
                    f"refused, the first: {first['code']}: {first['message']}"
                )
            r[4] = nonce + len(txs)
        last_change = time.monotonic()
        while any(r[6] < r[4] for r in rows):
            time.sleep(0.2)  # polling the chain for the blocks that commit them
            for r in rows:
                if r[6] < r[4]:
                    done = client.account(r[1])["nonce"]
                    if done > r[6]:
                        progress(done - r[6])
                        r[6], last_change = done, time.monotonic()
            if time.monotonic() - last_change > STALL_S:
                raise PlanError(f"no transaction committed for {STALL_S:g} s while preparing")


def activate(
    client: Client,
    owners: list[crypto.KeyPair],
    nodes: list[crypto.KeyPair],
    network: crypto.Network,
    node_type: str,
    burn: int,
    fee: int,
    progress: Progress,
) -> None:
    """Activate ``nodes``, node ``j`` by owner ``j % len(owners)``, in regions taken in turn."""
    jobs = []
    for o, owner in enumerate(owners):
        mine = nodes[o :: len(owners)]

        def build(index: int, nonce: int, count: int, owner=owner, mine=mine) -> list:
            return [
                make_activate(
                    owner,
                    network,
                    nonce + i,
                    fee,
                    node.public_key,
                    node_type,
                    REGIONS[(index + i) % len(REGIONS)],
                    burn,
                    prove_node(node, network, owner.address),
                )
                for i, node in enumerate(mine[index : index + count])
            ]

        jobs.append((owner, len(mine), build))
    settle(client, jobs, progress)


# ---- the plan -------------------------------------------------------------------------------


def prepare(
    campaign_data: dict,
    campaign: Campaign,
    urls: list[str],
    track: str,
    faucet: crypto.KeyPair,
    directory: Path,
    progress: Callable[[str, int], Progress],
) -> Plan:
    """Fund the senders of ``campaign`` (parsed from ``campaign_data``) from ``faucet`` on
    the chain ``track`` follows, activate its population, sign every transaction of its
    streams and write the plan to ``directory``. ``progress(label, total)`` gives the
    function a step reports to."""
    if campaign.senders < campaign.users:
        raise PlanError(
            f"{campaign.senders} senders cannot give each of {campaign.users} users one of "
            "its own: raise senders or lower users"
        )
    client = Client(track, timeout=30)
    network = client.network()  # every transaction is signed for the network ``track`` is on
    transfers = campaign.streams[0]
    sched = schedule(transfers)
    work = assignments(sched, campaign.senders, transfers.lanes)
    per_sender = [0] * campaign.senders
    for s, _ in work:
        per_sender[s] += 1
    keys = [crypto.KeyPair.generate() for _ in range(campaign.senders)]
    most = max(per_sender)
    meta: dict = {"senders": campaign.senders, "most_per_sender": most}
    population = campaign.population
    owners: list[crypto.KeyPair] = []
    burn = 0
    if population is not None:
        epoch = client.epoch()
        burn = int(epoch["activation_fees"][population.node_type])
        owners = [crypto.KeyPair.generate() for _ in range(population.owners)]
    per_owner = -(-population.nodes // population.owners) if population else 0
    recipients = [(k.address, most * (AMOUNT + campaign.fee)) for k in keys]
    recipients += [(o.address, per_owner * (burn + campaign.fee)) for o in owners]
    wallet_stream = next((s for s in campaign.streams if s.name == "wallet"), None)
    wallets: list[crypto.KeyPair] = []
    if wallet_stream is not None:  # one wallet per lane: its sends are its nonces in order
        wallet_sched = schedule(wallet_stream)
        wallet_work = assignments(wallet_sched, wallet_stream.lanes, wallet_stream.lanes)
        wallets = [crypto.KeyPair.generate() for _ in range(wallet_stream.lanes)]
        sends = -(-len(wallet_work) // wallet_stream.lanes) + 1
        recipients += [(w.address, sends * (AMOUNT + campaign.fee)) for w in wallets]
    funding = progress("funding senders and owners", len(recipients))
    fund(client, faucet, network, recipients, campaign.fee, funding)
    bodies: dict[str, list[list[bytes]]] = {
        "transfer": [
            sign_all(
                [k.seed for k in keys],
                network,
                campaign.fee,
                work,
                progress("signing transfers", len(work)),
            )
        ]
    }
    if wallet_stream is not None:
        signing = progress("signing wallet sends", len(wallet_work))
        seeds = [w.seed for w in wallets]
        bodies["wallet"] = [sign_all(seeds, network, campaign.fee, wallet_work, signing)]
        meta["wallets"] = [crypto.encode_address(w.address) for w in wallets]
    if population is not None:
        nodes = [crypto.KeyPair.generate() for _ in range(population.nodes)]
        activating = progress(f"activating {population.nodes:,} nodes", population.nodes)
        activate(
            client, owners, nodes, network, population.node_type, burn, campaign.fee, activating
        )
        epoch = client.epoch()
        now = time.time()
        if (
            now + campaign.seconds + EPOCH_MARGIN_S
            > (epoch["end_ms"] / 1000) + (epoch["end_ms"] - epoch["start_ms"]) / 1000
        ):
            raise PlanError("the run would outlast the next epoch: shorten the campaign")
        seeds = [n.seed for n in nodes]
        label = f"signing {population.nodes:,} heartbeats for 2 epochs"
        step = progress(label, 2 * population.nodes)
        beats = [sign_heartbeats(seeds, network, epoch["epoch"] + e, step) for e in (0, 1)]
        order = list(range(population.nodes))
        random.shuffle(order)  # nodes heartbeat in no particular order, whoever owns them
        bodies["heartbeat"] = [[variant[j] for j in order] for variant in beats]
        meta["heartbeat"] = {
            "epoch": epoch["epoch"],
            "next_epoch_ms": epoch["end_ms"],
            "node_type": population.node_type,
            "nodes": [nodes[j].node_id for j in order],
            "owners": [crypto.encode_address(o.address) for o in owners],
        }
    height = client.status()["height"]
    meta["genesis_hash"] = network.genesis_hash.hex()
    return write(
        directory, campaign_data, campaign, network.chain_id, urls, track, bodies, height, meta
    )


def fund(
    client: Client,
    faucet: crypto.KeyPair,
    network: crypto.Network,
    recipients: list[tuple[bytes, int]],
    fee: int,
    progress: Progress,
) -> None:
    """Send each (address, amount) from ``faucet`` and wait until all are committed."""
    address = crypto.encode_address(faucet.address)
    need = sum(amount + fee for _, amount in recipients)
    balance = int(client.account(address)["balance"])
    if balance < need:
        raise PlanError(
            f"the funding wallet {address} holds {balance:,} units; the campaign needs {need:,}"
        )

    def build(index: int, nonce: int, count: int) -> list:
        return [
            make_transfer(faucet, network, nonce + i, fee, to, amount)
            for i, (to, amount) in enumerate(recipients[index : index + count])
        ]

    settle(client, [(faucet, len(recipients), build)], progress)


def write(
    directory: Path,
    campaign_data: dict,
    campaign: Campaign,
    chain_id: str,
    urls: list[str],
    track: str,
    bodies: dict[str, list[list[bytes]]],
    start_height: int,
    meta: dict,
) -> Plan:
    """Write a plan of signed transactions: per stream, one list per variant, each in
    schedule order."""
    directory.mkdir(parents=True, exist_ok=True)
    offsets_of: dict[str, list[int]] = {}
    counts = {}
    for stream in campaign.streams:
        sched = schedule(stream)
        variants = bodies[stream.name]
        for variant, raws in enumerate(variants):
            if len(raws) != len(sched.offsets):
                raise PlanError(
                    f"{len(raws)} {stream.name} transactions for a schedule of {len(sched.offsets)}"
                )
            name = f"{stream.name}.bin" if variant == 0 else f"{stream.name}.next.bin"
            offsets = [0]
            with open(directory / name, "wb") as f:
                for body in request_bodies(stream, sched, raws):
                    f.write(body)
                    offsets.append(offsets[-1] + len(body))
            offsets_of[stream.name] = offsets  # the same for every variant: same sizes
        counts[stream.name] = len(sched.offsets)
    (directory / "batches.json").write_text(json.dumps(offsets_of))
    document = {
        **meta,
        "campaign": campaign.to_json(),
        "campaign_file": campaign_data,
        "chain_id": chain_id,
        "urls": urls,
        "track": track,
        "transactions": counts,
        "start_height": start_height,
        "prepared_at": time.time(),
    }
    (directory / "plan.json").write_text(json.dumps(document, indent=2) + "\n")
    return Plan.load(directory)
