"""Campaign files, the open-loop schedule, lanes, latency percentiles, the knee and the
accounting of a load run."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet import crypto
from qnet.load import campaign as c
from qnet.load import figures, plan, report
from qnet.load.tracker import CommitTracker

CAMPAIGNS = Path(__file__).resolve().parents[2] / "loadtest" / "campaigns"


def step(**extra) -> dict:
    return {"shape": "step", "rate": 100, "step_rate": 100, "steps": 3, "step_seconds": 10, **extra}


# ---- campaign files ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CAMPAIGNS.glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_campaign_parses(path):
    campaign = c.load(path)
    assert campaign.stages and campaign.seconds > 0
    assert c.schedule(campaign.streams[0]).batches > 0


@pytest.mark.parametrize(
    "data, message",
    [
        ([1, 2], "a mapping"),
        ({**step(), "rats": 1}, "unknown field.*rats"),
        (step(shape="zigzag"), "shape must be one of"),
        ({**step(), "to_rate": 5}, "to_rate do.*not apply to a step"),
        (step(rate="fast"), "rate must be a number"),
        (step(rate=0), "rate must be from"),
        (step(steps=2.5), "steps must be a whole number"),
        ({"shape": "constant", "rate": 5}, "duration_seconds is required"),
        (step(knee={"min_committed_ratio": 2}), "knee.min_committed_ratio must be from"),
        (step(knee={"slope": 1}), "knee has unknown field"),
        (step(targets={"urls": ["ftp://x"]}), "targets.urls must be a list of http"),
        (step(step_rate=400_000, steps=5), "take the rate above"),
    ],
)
def test_a_bad_campaign_is_refused_naming_the_field(data, message):
    with pytest.raises(c.CampaignError, match=message):
        c.parse(data, "bad.yml")


def test_the_defaults_and_stages_of_a_step_campaign():
    campaign = c.parse(step(), "loadtest/campaigns/mine.yml")
    assert campaign.name == "mine"
    assert [(s.name, s.start_s, s.rate, s.measured) for s in campaign.stages] == [
        ("warm-up", 0.0, 100, False),
        ("step 1 (100/s)", 5.0, 100, True),
        ("step 2 (200/s)", 15.0, 200, True),
        ("step 3 (300/s)", 25.0, 300, True),
    ]
    assert campaign.seconds == 35.0 and campaign.knee == c.Knee(0.95, 2.0)


# ---- the schedule --------------------------------------------------------------------------


shapes = st.one_of(
    st.builds(
        lambda r, d, w: {"shape": "constant", "rate": r, "duration_seconds": d,
                         "warmup_seconds": w},
        st.floats(0.5, 3000), st.integers(1, 20), st.integers(0, 3),
    ),
    st.builds(
        lambda r, s, n, d: step(rate=r, step_rate=s, steps=n, step_seconds=d),
        st.floats(0.5, 2000), st.floats(0.5, 1000), st.integers(1, 4), st.integers(1, 10),
    ),
    st.builds(
        lambda r, t, d: {"shape": "ramp", "rate": r, "to_rate": t, "duration_seconds": d},
        st.floats(0.5, 3000), st.floats(0.5, 3000), st.integers(1, 20),
    ),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(1, 200), st.floats(1, 500))
def test_the_schedule_offers_each_stage_its_integral_in_batches_that_leave_when_full_or_due(
    data, batch, window_ms
):
    campaign = c.parse({**data, "batch": batch, "batch_window_ms": window_ms}, "x.yml")
    sched = c.schedule(campaign.streams[0])
    assert len(sched.offsets) == sum(s.count for s in campaign.stages)
    for stage in campaign.stages:
        assert abs(stage.count - (stage.rate + stage.to_rate) / 2 * stage.seconds) < 1 + 1e-6
        inside = [t for t in sched.offsets if stage.start_s <= t < stage.end_s]
        assert len(inside) == stage.count  # every transaction is due within its stage
    assert list(sched.offsets) == sorted(sched.offsets)
    assert sched.bounds[0] == 0 and sched.bounds[-1] == len(sched.offsets)
    for k in range(sched.batches):
        first, last = sched.bounds[k], sched.bounds[k + 1] - 1
        assert 1 <= last - first + 1 <= batch
        assert sched.offsets[last] - sched.offsets[first] < window_ms / 1000 + 1e-9
        assert sched.due(k) == sched.offsets[last]
    assert sched.offered_before(campaign.seconds) == len(sched.offsets)


def test_a_ramp_is_due_at_the_integral_of_its_rate():
    stage = c.Stage("ramp", 0.0, 10.0, 100.0, 300.0)
    assert stage.count == 2000
    for j in (0, 1, 500, 1999):
        t = stage.offset(j)
        assert math.isclose(100 * t + 10 * t * t, j, abs_tol=1e-6)  # rate 100 + 20 t


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(1, 50), st.integers(1, 8))
def test_each_lane_has_its_own_senders_whose_nonces_come_in_order(data, senders, lanes):
    senders = max(senders, lanes)
    campaign = c.parse({**data, "batch": 7}, "x.yml")
    sched = c.schedule(campaign.streams[0])
    work = plan.assignments(sched, senders, lanes)
    assert len(work) == len(sched.offsets)
    lane_of_sender: dict[int, int] = {}
    next_nonce: dict[int, int] = {}
    for k in range(sched.batches):
        for i in range(sched.bounds[k], sched.bounds[k + 1]):
            sender, nonce = work[i]
            assert lane_of_sender.setdefault(sender, k % lanes) == k % lanes
            assert nonce == next_nonce.get(sender, 0)  # in schedule order, without gaps
            next_nonce[sender] = nonce + 1


# ---- latency, knee, accounting -------------------------------------------------------------


def test_a_percentile_among_the_uncommitted_is_not_reported_as_a_latency():
    lat = figures.Latencies()
    for ms in range(1, 98):
        lat.add(ms / 1000)
    lat.offered = 100  # three never committed
    assert lat.percentile_ms(50) == pytest.approx(50, abs=0.1)
    assert lat.percentile_ms(95) == pytest.approx(95, abs=0.1)
    assert lat.percentile_ms(99) is None
    assert lat.to_json()["committed"] == 97


def commits_for(campaign, offsets, latency_of_stage):
    """Commit offsets giving each stage's transactions a latency (None: never committed)."""
    out = {}
    for i, t in enumerate(offsets):
        lat = latency_of_stage[c.stage_of(campaign, t)]
        if lat is not None:
            out[i] = t + lat
    return out


def test_the_knee_is_the_last_step_before_latency_doubles():
    campaign = c.parse(step(steps=4), "x.yml")
    offsets = c.schedule(campaign.streams[0]).offsets
    commits = commits_for(campaign, offsets, [0.1, 0.1, 0.15, 0.25, 0.3])
    verdicts, knee = figures.knee_verdicts(campaign, offsets, commits, campaign.seconds)
    assert [v.good for v in verdicts] == [True, True, False]
    assert knee.stage == "step 2 (200/s)"
    assert "p95" in verdicts[-1].reason


def test_the_knee_is_the_last_step_before_commits_fall_behind_what_is_offered():
    campaign = c.parse(step(), "x.yml")
    sched = c.schedule(campaign.streams[0])
    commits = commits_for(campaign, sched.offsets, [0.1, 0.1, 0.1, 0.1])
    third = campaign.stages[3]
    dropped = [i for i, t in enumerate(sched.offsets) if third.start_s <= t < third.end_s][::10]
    for i in dropped:  # a tenth of step 3 never commits
        del commits[i]
    verdicts, knee = figures.knee_verdicts(campaign, sched.offsets, commits, campaign.seconds)
    assert knee.stage == "step 2 (200/s)"
    assert "committed 90.0% of offered" in verdicts[-1].reason
    # A run stopped before step 3 was judged has no verdict on it.
    verdicts, knee = figures.knee_verdicts(campaign, sched.offsets, commits, 30.0)
    assert len(verdicts) == 2 and knee.stage == "step 2 (200/s)"


def test_the_accounting_closes_only_when_every_transaction_has_a_place():
    acc = figures.Accounting(offered=100, sent=90, backlog=10, committed=80, pending=3)
    acc.reject("fee_too_low", 5)
    acc.never_arrived = 2
    acc.committed_readback = 80
    assert acc.unaccounted == 0 and acc.closes
    acc.committed_readback = 79
    assert not acc.closes
    acc.committed_readback, acc.pending = 80, 2
    assert acc.unaccounted == 1 and not acc.closes


# ---- the tracker and the report, on a plan written without a network ------------------------


class FakeChain:
    """Blocks the way the node's API gives them, growing when ``commit`` is called."""

    def __init__(self):
        self.blocks: list[dict] = []
        self.fail_next = False

    def commit(self, tx_ids: list[bytes], time_ms: int) -> None:
        height = len(self.blocks) + 1
        header = {"height": height, "time_ms": time_ms, "tx_count": len(tx_ids)}
        self.blocks.append({"header": header, "transactions": [t.hex() for t in tx_ids]})

    def status(self) -> dict:
        return {"height": len(self.blocks), "mempool_size": 0}

    def block(self, height: int) -> dict:
        if self.fail_next:
            self.fail_next = False
            from qnet.client import ApiError

            raise ApiError("unreachable", "down")
        return self.blocks[height - 1]


NETWORK = crypto.Network("qnet-test", crypto.digest(b"qnet-test genesis"))


def make_plan(tmp_path, data) -> plan.Plan:
    campaign = c.parse(data, "x.yml")
    sched = c.schedule(campaign.streams[0])
    keys = [crypto.KeyPair.generate() for _ in range(campaign.senders)]
    work = plan.assignments(sched, campaign.senders, campaign.users)
    raws = plan.sign_all([k.seed for k in keys], NETWORK, campaign.fee, work, lambda n: None)
    return plan.write(tmp_path / "plan", data, campaign, "qnet-test", ["http://a", "http://b"],
                      "http://a", {"transfer": [raws]}, 0, {})  # fmt: skip


def test_the_tracker_dates_each_commit_by_the_first_sighting_of_its_height(tmp_path):
    p = make_plan(tmp_path, {"shape": "constant", "rate": 20, "duration_seconds": 2,
                             "warmup_seconds": 0, "senders": 4, "users": 2})  # fmt: skip
    ids = p.ids
    by_index = {i: tx_id for tx_id, (_stream, i) in ids.items()}
    chain, clock = FakeChain(), [100.0]
    tracker = CommitTracker(chain, ids, 100.0, 0, clock=lambda: clock[0])
    chain.commit([by_index[0], by_index[1], b"\x00" * 32], 100_500)
    clock[0] = 100.7
    assert tracker.poll() == [
        (("transfer", 0), pytest.approx(0.7)),
        (("transfer", 1), pytest.approx(0.7)),
    ]
    chain.commit([by_index[2]], 101_000)
    chain.fail_next = True
    clock[0] = 101.2
    assert tracker.poll() == [] and tracker.errors == 1
    clock[0] = 101.5
    # Seen at the first poll that saw its height.
    assert tracker.poll() == [(("transfer", 2), pytest.approx(1.2))]
    assert tracker.seen == {1: pytest.approx(0.7), 2: pytest.approx(1.2)}


def test_the_report_places_every_transaction_and_checks_the_tracker_against_the_chain(tmp_path):
    data = step(rate=40, step_rate=40, steps=2, step_seconds=2, warmup_seconds=1,
                senders=8, users=2, batch=10)  # fmt: skip
    p = make_plan(tmp_path, data)
    sched = p.transfers.schedule
    ids = {i: tx_id for tx_id, (_stream, i) in p.ids.items()}
    t0 = 1000.0
    outcomes, chain, seen = [], FakeChain(), {}
    refused_batch = 3  # the node answered 503 to this one: its transactions never arrived
    for k in range(sched.batches):
        due = sched.due(k)
        status = 503 if k == refused_batch else 200
        rejected = [[0, "fee_too_low"]] if k == 5 else []
        outcomes.append(["transfer", k, due, due, status, rejected])
    for k in range(sched.batches):
        if k == refused_batch:
            continue
        skip = {sched.bounds[k]} if k in (5, 7) else set()  # 5: refused; 7: still pending
        txs = [ids[i] for i in range(sched.bounds[k], sched.bounds[k + 1]) if i not in skip]
        chain.commit(txs, int((t0 + sched.due(k) + 0.3) * 1000))
        seen[str(len(chain.blocks))] = sched.due(k) + 0.4
    committed_count = sum(len(b["transactions"]) for b in chain.blocks)
    run = {
        "t0": t0,
        "stop_at": c.parse(data, "x.yml").seconds,
        "stop_reason": "the campaign ran to its end",
        "tracker": {
            "start_height": 0,
            "last_height": len(chain.blocks),
            "seen": seen,
            "committed": {"transfer": committed_count},
            "errors": 0,
        },
        "generators": {"master": health(0.1), "workers": {"local": health(0.3)}},
        "outcomes": outcomes,
    }
    committed = report.readback(p, chain.blocks)
    asked = report.unsettled(p, run, set(committed))
    unsettled = [*range(sched.bounds[3], sched.bounds[4]), sched.bounds[7]]
    # Batches 3 and 7 went on lane 1 (of 2): the lane's node is the one to ask.
    assert asked == dict.fromkeys((("transfer", i) for i in unsettled), 1)
    statuses = dict.fromkeys(asked)
    statuses["transfer", sched.bounds[7]] = {"status": "pending"}
    summary = report.summarise(p, run, chain.blocks, statuses, {"node_count": 2})
    acc = summary["accounting"]
    assert acc == {
        "offered": len(sched.offsets),
        "sent": len(sched.offsets),
        "generator_backlog": 0,
        "accepted": len(sched.offsets) - (sched.bounds[4] - sched.bounds[3]) - 1,
        "committed": committed_count,
        "committed_readback": committed_count,
        "rejected": {"fee_too_low": 1},
        "pending_at_end": 1,
        "never_arrived": sched.bounds[4] - sched.bounds[3],
        "lost": 0,
        "unaccounted": 0,
        "closes": True,
    }
    assert summary["valid"] and summary["knee"]["stage"] == "step 2 (80/s)"
    # Seen 0.4 s after the batch was due, which is when its last transaction was due: the
    # others waited for it, and that batching delay is part of their latency.
    assert 400 <= summary["latency"]["p50_ms"] <= 450 <= summary["latency"]["max_ms"] + 1
    # A stop the lanes heard of late: what they sent though it was due after it was offered.
    early = report.summarise(p, {**run, "stop_at": sched.due(10)}, chain.blocks, statuses, {})
    assert early["accounting"]["offered"] == early["accounting"]["sent"] == len(sched.offsets)
    # A tracker that missed a block is caught by the read-back.
    run["tracker"]["committed"]["transfer"] -= 1
    missed = report.summarise(p, run, chain.blocks, statuses, {})
    assert not missed["accounting"]["closes"] and not missed["closes"]
    # A generator over its CPU limit makes the run invalid.
    run["generators"]["workers"]["local"] = health(0.93)
    summary = report.summarise(p, run, chain.blocks, statuses, {})
    assert not summary["valid"] and "93% of a core" in summary["invalid_because"][0]


def health(cpu: float) -> dict:
    return {"pid": 1, "cpu_mean": cpu, "cpu_max_1s": cpu, "loop_lag_p99_ms": 1.0,
            "loop_lag_max_ms": 2.0}  # fmt: skip


def test_a_population_adds_a_heartbeat_stream_over_the_measured_window_on_lanes_of_its_own():
    campaign = c.parse(
        {"shape": "constant", "rate": 50, "duration_seconds": 20, "warmup_seconds": 5,
         "users": 3, "population": {"nodes": 1000, "lanes": 2}},
        "x.yml",
    )  # fmt: skip
    transfer, beats = campaign.streams
    assert (transfer.name, transfer.lanes, beats.name, beats.lanes) == (
        "transfer",
        3,
        "heartbeat",
        2,
    )
    sched = c.schedule(beats)
    assert len(sched.offsets) == 1000  # one heartbeat per node
    assert sched.offsets[0] >= 5.0 and sched.offsets[-1] < 25.0  # in the measured window
    assert campaign.lanes == 5
    with pytest.raises(c.CampaignError, match=r"population\.node_type must be light or full"):
        c.parse({**step(), "population": {"nodes": 5, "node_type": "super"}}, "x.yml")
    with pytest.raises(c.CampaignError, match=r"population\.nodes is required"):
        c.parse({**step(), "population": {"lanes": 5}}, "x.yml")


def test_every_node_that_heartbeated_must_be_eligible_in_the_epoch_of_its_heartbeat(tmp_path):
    p = make_plan(tmp_path, step())
    p.meta["heartbeat"] = {"epoch": 7, "node_type": "light", "nodes": ["n0", "n1", "n2", "n3"]}
    committed = {("heartbeat", 0): {}, ("heartbeat", 1): {}, ("heartbeat", 3): {}}
    records = {
        "n0": {"epochs": [{"epoch": 7}]},
        "n1": {"epochs": [{"epoch": 8}]},  # the run crossed into epoch 8 before it was sent
        "n2": {"epochs": []},  # never heartbeated: not counted either way
        "n3": {"epochs": [{"epoch": 6}]},  # on chain, yet not eligible in 7 or 8
    }
    result = report.population(p, committed, records)
    assert (result["heartbeated"], result["eligible"], result["not_eligible"]) == (3, 2, ["n3"])


def test_wallet_sends_are_json_one_at_a_time_on_lanes_of_their_own(tmp_path):
    data = step(wallets={"users": 2, "rate": 3}, users=2, senders=4)
    campaign = c.parse(data, "x.yml")
    wallet = campaign.streams[-1]
    assert (wallet.name, wallet.endpoint, wallet.batch, wallet.lanes) == ("wallet", "json", 1, 2)
    sched = c.schedule(wallet)
    assert len(sched.offsets) == sched.batches == int(3 * campaign.seconds)  # warm-up too
    keys = [crypto.KeyPair.generate() for _ in range(2)]
    work = plan.assignments(sched, 2, 2)
    raws = plan.sign_all([k.seed for k in keys], NETWORK, 1000, work, lambda n: None)
    bodies = plan.request_bodies(wallet, sched, raws)
    first = json.loads(bodies[0])
    assert first["kind"] == "transfer" and first["nonce"] == 0
    assert plan.body_ids(wallet, bodies[0]) == [crypto.digest(raws[0])]
    # Written with the transfers, read back by id like theirs.
    transfer = c.schedule(campaign.streams[0])
    tkeys = [crypto.KeyPair.generate() for _ in range(4)]
    twork = plan.assignments(transfer, 4, 2)
    traws = plan.sign_all([k.seed for k in tkeys], NETWORK, 1000, twork, lambda n: None)
    p = plan.write(tmp_path / "plan", data, campaign, "qnet-test", ["http://a"], "http://a",
                   {"transfer": [traws], "wallet": [raws]}, 0, {})  # fmt: skip
    ids = p.ids
    assert ids[crypto.digest(raws[5])] == ("wallet", 5)
    assert ids[crypto.digest(traws[7])] == ("transfer", 7)
    assert p.lane(3) == (p.streams["wallet"], 1) and p.lanes == 4
