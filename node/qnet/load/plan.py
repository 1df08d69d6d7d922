"""Preparation before the timed window: fund the senders, sign every transaction, write a plan.

The schedule's batches are dealt to ``users`` *lanes* (batch ``k`` to lane ``k % users``);
each lane has senders of its own and one Locust user sends its batches one after another, so
a sender's nonces reach one node in order whatever the number of generator processes, and
nothing is signed once the run has begun. A plan is a directory:

    plan.json       the campaign, chain, targets, lanes, counts, where it was made
    transfers.bin   the batches' request bodies, one after another
    batches.json    byte offset of each batch in transfers.bin (one more than batches)

Every process of a run (master, workers, the report) reads the same plan; the intended send
times are recomputed from the campaign by ``campaign.schedule``.
"""

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import crypto
from ..client import Client
from ..tx import encode_batch, frame_batch, make_transfer, split_batch
from .campaign import Campaign, Schedule, parse, schedule

AMOUNT = 1  # base units moved by each load transfer
FUNDING_CHUNK = 500  # funding transfers in flight at once (below the per-sender mempool cap)
STALL_S = 60.0  # no funding progress for this long is an error


class PlanError(RuntimeError):
    pass


Progress = Callable[[int], None]  # called with how many more units of work are done


@dataclass
class Plan:
    directory: Path
    campaign: Campaign
    chain_id: str
    urls: list[str]  # where the lanes send, lane l to urls[l % len(urls)]
    track: str  # the node whose committed blocks the run follows and reads back
    schedule: Schedule
    body_offsets: list[int]
    start_height: int

    @property
    def lanes(self) -> int:
        return self.campaign.users

    def lane_batches(self, lane: int) -> range:
        return range(lane, self.schedule.batches, self.lanes)

    def target(self, lane: int) -> str:
        return self.urls[lane % len(self.urls)]

    def body(self, k: int) -> bytes:
        with open(self.directory / "transfers.bin", "rb") as f:
            f.seek(self.body_offsets[k])
            return f.read(self.body_offsets[k + 1] - self.body_offsets[k])

    def bodies(self) -> list[bytes]:
        data = (self.directory / "transfers.bin").read_bytes()
        o = self.body_offsets
        return [data[o[k] : o[k + 1]] for k in range(len(o) - 1)]

    def tx_ids(self) -> dict[bytes, int]:
        """Transaction id -> its index in the schedule."""
        ids: dict[bytes, int] = {}
        for body in self.bodies():
            for raw in split_batch(body):
                ids[crypto.digest(raw)] = len(ids)
        return ids

    def batch_of(self) -> list[int]:
        """The batch of each transaction, by index."""
        bounds = self.schedule.bounds
        return [k for k in range(len(bounds) - 1) for _ in range(bounds[k + 1] - bounds[k])]

    @classmethod
    def load(cls, directory: Path) -> "Plan":
        directory = Path(directory)
        try:
            meta = json.loads((directory / "plan.json").read_text())
            offsets = json.loads((directory / "batches.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"{directory} is not a prepared plan: {exc}") from None
        campaign = parse(meta["campaign_file"], meta["campaign"]["name"])
        sched = schedule(campaign)
        if len(offsets) != sched.batches + 1 or sched.bounds[-1] != meta["transactions"]:
            raise PlanError(f"{directory}: the batches do not match the campaign's schedule")
        return cls(
            directory,
            campaign,
            meta["chain_id"],
            meta["urls"],
            meta["track"],
            sched,
            offsets,
            meta["start_height"],
        )


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


def _sign_chunk(args: tuple) -> list[bytes]:
    seeds, chain_id, fee, sink, work = args
    keys = {s: crypto.KeyPair(seed) for s, seed in seeds.items()}
    return [make_transfer(keys[s], chain_id, n, fee, sink, AMOUNT).raw for s, n in work]


def sign_all(
    seeds: list[bytes],
    chain_id: str,
    fee: int,
    work: list[tuple[int, int]],
    progress: Progress,
    chunk: int = 20_000,
) -> list[bytes]:
    """Every transfer signed, in ``work`` order, on every core."""
    sink = crypto.KeyPair.generate().address
    jobs = []
    for start in range(0, len(work), chunk):
        part = work[start : start + chunk]
        needed = {s for s, _ in part}
        jobs.append(({s: seeds[s] for s in needed}, chain_id, fee, sink, part))
    out: list[bytes] = []
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for raws in pool.map(_sign_chunk, jobs):
            out += raws
            progress(len(raws))
    return out


def fund(
    client: Client,
    faucet: crypto.KeyPair,
    chain_id: str,
    recipients: list[bytes],
    amount: int,
    fee: int,
    progress: Progress,
) -> None:
    """Send ``amount`` to every recipient from ``faucet`` and wait until all are committed,
    ``FUNDING_CHUNK`` at a time (a sender may have only so many pending)."""
    address = crypto.encode_address(faucet.address)
    need = len(recipients) * (amount + fee)
    account = client.account(address)
    if int(account["balance"]) < need:
        raise PlanError(
            f"the funding wallet {address} holds {int(account['balance']):,} units; "
            f"{len(recipients):,} senders need {need:,}"
        )
    nonce = account["next_nonce"]
    for start in range(0, len(recipients), FUNDING_CHUNK):
        part = recipients[start : start + FUNDING_CHUNK]
        txs = [
            make_transfer(faucet, chain_id, nonce + i, fee, to, amount) for i, to in enumerate(part)
        ]
        reply = client.submit_batch(encode_batch(txs))
        if reply["rejected"]:
            first = reply["rejected"][0]
            raise PlanError(
                f"{len(reply['rejected'])} funding transfers refused, the first: "
                f"{first['code']}: {first['message']}"
            )
        nonce += len(part)
        done = account["nonce"]
        last_change = time.monotonic()
        while done < nonce:
            time.sleep(0.2)  # polling the chain for the funding block
            now_done = client.account(address)["nonce"]
            if now_done > done:
                progress(now_done - done)
                done, last_change = now_done, time.monotonic()
            elif time.monotonic() - last_change > STALL_S:
                raise PlanError(f"funding stalled: nonce {done} of {nonce} after {STALL_S:g} s")
        account = {"nonce": done}


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
    the chain ``track`` follows, sign every transaction of its schedule and write the plan to
    ``directory``. ``progress(label, total)`` gives the function a step reports to."""
    if campaign.senders < campaign.users:
        raise PlanError(
            f"{campaign.senders} senders cannot give each of {campaign.users} users one of "
            "its own: raise senders or lower users"
        )
    client = Client(track, timeout=30)
    status = client.status()
    chain_id = status["chain_id"]
    sched = schedule(campaign)
    work = assignments(sched, campaign.senders, campaign.users)
    per_sender = [0] * campaign.senders
    for s, _ in work:
        per_sender[s] += 1
    keys = [crypto.KeyPair.generate() for _ in range(campaign.senders)]
    most = max(per_sender)
    fund(
        client,
        faucet,
        chain_id,
        [k.address for k in keys],
        most * (AMOUNT + campaign.fee),
        campaign.fee,
        progress("funding senders", campaign.senders),
    )
    raws = sign_all(
        [k.seed for k in keys],
        chain_id,
        campaign.fee,
        work,
        progress("signing transfers", len(work)),
    )
    return write(
        directory,
        campaign_data,
        campaign,
        chain_id,
        urls,
        track,
        raws,
        client.status()["height"],
        {"senders": campaign.senders, "most_per_sender": most},
    )


def write(
    directory: Path,
    campaign_data: dict,
    campaign: Campaign,
    chain_id: str,
    urls: list[str],
    track: str,
    raws: list[bytes],
    start_height: int,
    extra: dict,
) -> Plan:
    """Write a plan of the signed transactions ``raws`` (in schedule order)."""
    sched = schedule(campaign)
    if len(raws) != len(sched.offsets):
        raise PlanError(f"{len(raws)} transactions for a schedule of {len(sched.offsets)}")
    directory.mkdir(parents=True, exist_ok=True)
    offsets = [0]
    with open(directory / "transfers.bin", "wb") as f:
        for k in range(sched.batches):
            body = frame_batch(raws[sched.bounds[k] : sched.bounds[k + 1]])
            f.write(body)
            offsets.append(offsets[-1] + len(body))
    (directory / "batches.json").write_text(json.dumps(offsets))
    meta = {
        "campaign": campaign.to_json(),
        "campaign_file": campaign_data,
        "chain_id": chain_id,
        "urls": urls,
        "track": track,
        "transactions": len(raws),
        "batches": sched.batches,
        "start_height": start_height,
        "prepared_at": time.time(),
        **extra,
    }
    (directory / "plan.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Plan.load(directory)
