"""QNet load campaigns under Locust; run them with ``loadtest/campaign.py`` (``make loadtest``).

``--qnet-plan DIR`` is a plan that ``campaign.py run`` prepared (senders funded, nodes
activated, every transaction signed); ``--qnet-out DIR`` is where the master writes
``run.json`` for the report. The processes split the work like this:

- master (or the only process): sends the start time, deals the lanes to the workers, follows
  the committed blocks (``CommitTracker``) and reports each committed transaction as a Locust
  request of type ``COMMIT`` whose time is commit time minus *intended* send time; judges
  each step of a step campaign and stops the run past the knee; drains, writes ``run.json``.
- every worker (or the only process): one ``LaneUser`` per lane sends the lane's batches
  (transfers or heartbeats) or, on a wallet lane, acts like a person at the wallet; each
  send at its intended time (open model: a late answer delays nothing but its own lane);
  what happened to each batch streams to the master.
- every process samples its own CPU and how late its event loop wakes up: a generator above
  its limits measures itself, and the report marks such a run invalid.
"""

import json
import logging
import time
from pathlib import Path

import gevent
import psutil
from gevent.event import Event
from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import MasterRunner, WorkerRunner

from qnet.client import ApiError, Client
from qnet.load import figures
from qnet.load.plan import Plan
from qnet.load.tracker import CommitTracker

LEAD_S = 2.0  # from the start message to the first intended send
STOP_LEAD_S = 1.0  # from the stop message to the time after which nothing is sent
POLL_S = 0.05  # how often the tracker asks for the head: the resolution of commit times
FLUSH_S = 1.0  # how often a worker streams its batch outcomes to the master
LAG_TICK_S = 0.05  # the event-loop lag probe's sleep
WALLET_POLL_S = 0.5  # how often a wallet asks whether its transaction committed
LOCAL = "local"  # the node id of messages a process sends itself (Locust's LocalRunner)


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--qnet-plan", default="", help="a plan that campaign.py prepared")
    parser.add_argument("--qnet-out", default="", help="where the master writes run.json")


class Health:
    """This process's CPU (share of one core over the measured window) and the lateness of
    its event loop's wake-ups, the signs of a generator that measures itself."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.lags_ms: list[float] = []
        self.cpu_samples: list[float] = []
        self.cpu_start = self.wall_start = 0.0
        self.cpu_mean = 0.0

    def run(self, t0: float, until: Event) -> None:
        gevent.sleep(max(0.0, t0 - time.time()))  # the window starts at t0
        times = self.proc.cpu_times()
        self.cpu_start, self.wall_start = times.user + times.system, time.monotonic()
        last_cpu, last_wall = self.cpu_start, self.wall_start
        while not until.is_set():
            before = time.monotonic()
            gevent.sleep(LAG_TICK_S)
            now = time.monotonic()
            self.lags_ms.append(max(0.0, (now - before - LAG_TICK_S) * 1000))
            if now - last_wall >= 1.0:
                times = self.proc.cpu_times()
                cpu = times.user + times.system
                self.cpu_samples.append((cpu - last_cpu) / (now - last_wall))
                last_cpu, last_wall = cpu, now
                wall = now - self.wall_start
                self.cpu_mean = (cpu - self.cpu_start) / wall if wall else 0.0

    def to_json(self) -> dict:
        lags = sorted(self.lags_ms)
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0
        return {
            "pid": self.proc.pid,
            "cpu_mean": round(self.cpu_mean, 3),
            "cpu_max_1s": round(max(self.cpu_samples, default=0.0), 3),
            "loop_lag_p99_ms": round(p99, 1),
            "loop_lag_max_ms": round(max(lags, default=0.0), 1),
        }


class Sender:
    """A worker's part: its lanes, their bodies, and the outcome of every batch it sent."""

    def __init__(self, environment, plan: Plan):
        self.env = environment
        self.plan = plan
        # Each stream's bodies, per variant (heartbeats: this epoch's and the next's).
        self.bodies = {
            name: [sp.bodies(v) for v in range(len(sp.files))] for name, sp in plan.streams.items()
        }
        self.started = Event()
        self.finished = Event()
        self.t0 = 0.0
        self.stop_at = float("inf")
        self.free_lanes: list[int] = []
        self.lanes_left = 0
        self.outcomes: list[list] = []
        self.health = Health()
        runner = environment.runner
        runner.register_message("qnet_start", self.on_start)
        runner.register_message("qnet_stop", self.on_stop)

    def on_start(self, environment, msg, **kwargs) -> None:
        self.t0 = msg.data["t0"]
        self.free_lanes = list(msg.data["lanes"])
        self.lanes_left = len(self.free_lanes)
        if not self.free_lanes:  # more worker processes than lanes: nothing to send here
            self.finished.set()
        gevent.spawn(self.health.run, self.t0, self.finished)
        gevent.spawn(self.flush)
        self.started.set()

    def on_stop(self, environment, msg, **kwargs) -> None:
        self.stop_at = min(self.stop_at, msg.data["at"])

    def lane_done(self) -> None:
        self.lanes_left -= 1
        if self.lanes_left == 0:
            self.finished.set()

    def flush(self) -> None:
        while True:
            done = self.finished.wait(FLUSH_S)
            if self.outcomes:
                batch, self.outcomes = self.outcomes, []
                self.env.runner.send_message("qnet_sends", batch)
            if done:
                self.env.runner.send_message("qnet_done", self.health.to_json())
                return


class Coordinator:
    """The master's part (or the only process's): start, tracking, knee, drain, run.json."""

    def __init__(self, environment, plan: Plan, out: Path):
        self.env = environment
        self.plan = plan
        self.out = out
        self.ids = plan.ids
        self.t0 = 0.0
        self.stop_at = plan.campaign.seconds
        self.stop_reason = "the campaign ran to its end"
        self.outcomes: list[list] = []
        self.awaiting: set[tuple[str, int]] = set()  # accepted by a node, not seen committed
        self.commits: dict[str, dict[int, float]] = {name: {} for name in plan.streams}
        self.workers: dict[str, dict | None] = {}  # health reported when done, by node id
        self.tracker: CommitTracker | None = None
        self.distributed = False
        self.tracking: gevent.Greenlet | None = None
        self.users = 0
        self.start_height = 0
        self.health = Health()
        self.done = Event()
        self.finished = False
        runner = environment.runner
        runner.register_message("qnet_sends", self.on_sends)
        runner.register_message("qnet_done", self.on_done)
        environment.events.test_start.add_listener(self.on_test_start)

    # -- start ------------------------------------------------------------------------------

    def on_test_start(self, environment, **kwargs) -> None:
        runner = environment.runner
        master = isinstance(runner, MasterRunner)
        ids = [c.id for c in runner.clients.all] if master else [LOCAL]
        lanes = self.plan.lanes
        # Locust shares the users out as evenly as it can; enough for every worker's lanes.
        self.users = len(ids) * -(-lanes // len(ids))
        client = Client(self.plan.track, timeout=10)
        try:
            start_height = client.status()["height"]
        except ApiError as exc:  # no run without the chain to follow: no run.json either
            logging.error("the tracked node %s: %s", self.plan.track, exc.message)
            self.finished = True
            return
        self.t0 = time.time() + LEAD_S
        self.start_height = start_height
        self.tracker = CommitTracker(client, self.ids, self.t0, start_height)
        self.workers = dict.fromkeys(ids)
        for n, client_id in enumerate(ids):
            data = {"t0": self.t0, "lanes": list(range(n, lanes, len(ids)))}
            runner.send_message("qnet_start", data, client_id if master else None)
        self.tracking = gevent.spawn(self.track)
        self.distributed = master
        if master:  # the only process's health is the sender's, measured while it sends
            gevent.spawn(self.health.run, self.t0, self.done)
        if self.plan.campaign.shape == "step":
            gevent.spawn(self.judge_steps)
        gevent.spawn(self.drain)

    # -- during the run ----------------------------------------------------------------------

    def track(self) -> None:
        while not self.done.is_set():
            self.poll()
            gevent.sleep(POLL_S)

    def poll(self) -> None:
        """One step of the tracker; each new commit becomes a COMMIT request in Locust's
        statistics, timed from the transaction's intended send time."""
        for (name, i), seen in self.tracker.poll():
            self.commits[name][i] = seen
            self.awaiting.discard((name, i))
            intended = self.plan.streams[name].schedule.offsets[i]
            self.env.events.request.fire(
                request_type="COMMIT",
                name=name,
                response_time=(seen - intended) * 1000,
                response_length=0,
                exception=None,
                context={},
            )

    def judge_steps(self) -> None:
        """Judge each step once the tracker has read past its evaluation time; past the knee,
        stop sending (what was offered so far is still accounted for)."""
        first_p95 = None
        for stage in self.plan.campaign.measured:
            at = figures.evaluation_time(stage)
            while self.tracker.polled < at:
                gevent.sleep(POLL_S)
            offsets = self.plan.transfers.schedule.offsets
            lat = figures.stage_latencies(offsets, self.commits["transfer"], stage, at)
            verdict = figures.step_verdict(stage, lat, first_p95, self.plan.campaign.knee)
            first_p95 = verdict.p95_ms if first_p95 is None else first_p95
            if not verdict.good:
                # A moment ahead, so that the lanes hear of it before anything due after it.
                self.stop_at = min(self.stop_at, time.time() - self.t0 + STOP_LEAD_S)
                self.stop_reason = f"past the knee at {stage.name}: {verdict.reason}"
                self.env.runner.send_message("qnet_stop", {"at": self.stop_at})
                return

    def on_sends(self, environment, msg, **kwargs) -> None:
        self.outcomes += msg.data
        for name, k, _free, _sent, status, rejected in msg.data:
            if status != 200:
                continue  # the request failed: the node may know nothing of them
            bounds = self.plan.streams[name].schedule.bounds
            refused = {bounds[k] + index for index, _code in rejected}
            committed = self.commits[name]
            self.awaiting.update(
                (name, i)
                for i in range(bounds[k], bounds[k + 1])
                if i not in refused and i not in committed
            )

    def on_done(self, environment, msg, **kwargs) -> None:
        self.workers[msg.node_id] = msg.data  # LOCAL when there is only this process

    # -- the end -----------------------------------------------------------------------------

    def drained(self) -> bool:
        """Every sent transaction that a node accepted is committed, or no target holds any
        pending transaction any more."""
        if not self.awaiting:
            return True
        try:
            pending = sum(Client(u, timeout=5).status()["mempool_size"] for u in self.plan.urls)
        except ApiError:
            return False  # a target that does not answer may still hold some
        return pending == 0

    def drain(self) -> None:
        """After the last send (a worker that never says so is given up on at the end of the
        campaign plus the drain time), until the last commits, or the drain time is up."""
        given_up = self.t0 + self.plan.campaign.seconds + self.plan.campaign.drain_seconds
        while None in self.workers.values() and time.time() < given_up:
            gevent.sleep(POLL_S)  # waiting for every worker's last outcomes
        deadline = time.time() + self.plan.campaign.drain_seconds
        while time.time() < deadline and not self.drained():
            gevent.sleep(0.2)  # waiting for the last commits
        self.done.set()
        self.tracking.join()  # one poll at a time: the tracker reads blocks in order
        self.poll()  # the blocks since the loop's last poll
        self.write()
        self.finished = True

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        run = {
            "t0": self.t0,
            "stop_at": self.stop_at,
            "stop_reason": self.stop_reason,
            "tracker": {
                "url": self.plan.track,
                "start_height": self.start_height,
                "last_height": self.tracker.height,
                "seen": {str(h): t for h, t in self.tracker.seen.items()},
                "committed": {name: len(c) for name, c in self.commits.items()},
                "errors": self.tracker.errors,
            },
            "generators": {
                "master": self.health.to_json() if self.distributed else None,
                "workers": self.workers,
            },
            "outcomes": self.outcomes,
        }
        (self.out / "run.json").write_text(json.dumps(run) + "\n")


SENDER: Sender | None = None
COORDINATOR: Coordinator | None = None


@events.init.add_listener
def _init(environment, **kwargs) -> None:
    global SENDER, COORDINATOR
    options = environment.parsed_options
    if options is None or not options.qnet_plan:
        raise SystemExit("locustfile: --qnet-plan DIR is required (campaign.py run makes one)")
    plan = Plan.load(Path(options.qnet_plan))
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        SENDER = Sender(environment, plan)
    if not isinstance(runner, WorkerRunner):
        COORDINATOR = Coordinator(environment, plan, Path(options.qnet_out or "."))


class LaneUser(FastHttpUser):
    """One lane: its stream's batches, each sent at its intended time, in order (a transfer
    lane's senders' nonces arrive in order at one node)."""

    host = "http://unused"  # every request names its target node in full

    @task
    def lane(self) -> None:
        sender = SENDER
        sender.started.wait()
        if not sender.free_lanes:
            sender.finished.wait()  # more users than lanes: this one has nothing to send
            return
        lane = sender.free_lanes.pop(0)
        plan, t0 = sender.plan, sender.t0
        sp, local = plan.lane(lane)
        name = sp.stream.name
        variants = sender.bodies[name]
        switch = plan.epoch_switch
        node = plan.target(lane)
        wallet = plan.meta["wallets"][local] if sp.stream.endpoint == "json" else None
        batches = sp.lane_batches(local)
        for n, k in enumerate(batches):
            due = sp.schedule.due(k)
            if due >= sender.stop_at:
                break
            free = time.time() - t0
            if wallet is not None:
                self.client.get(f"{node}/api/v1/accounts/{wallet}", name="wallet balance")
            # The open-loop schedule: wait for the transaction's due time.
            gevent.sleep(max(0.0, due - (time.time() - t0)))
            now = time.time()
            next_epoch = len(variants) > 1 and switch is not None and now >= switch
            body = variants[1 if next_epoch else 0][k]
            if wallet is None:
                status, rejected = self.send_batch(node, name, body)
            else:
                status, rejected = self.send_json(node, body)
            sender.outcomes.append([name, k, free, now - t0, status, rejected])
            if wallet is not None and not rejected and status == 200:
                following = batches[n + 1] if n + 1 < len(batches) else None
                until = t0 + (sp.schedule.due(following) if following is not None else due + 5)
                self.follow(node, json.loads(body)["id"], until)
        sender.lane_done()
        sender.finished.wait()

    def send_batch(self, node: str, name: str, body: bytes) -> tuple[int, list]:
        """POST a binary batch: (HTTP status, [[index, code] of each refused transaction])."""
        headers = {"Content-Type": "application/octet-stream"}
        url = f"{node}/api/v1/transactions/batch"
        with self.client.post(url, data=body, headers=headers, name=name, catch_response=True) as r:
            if r.status_code == 200:
                r.success()
                return 200, [[x["index"], x["code"]] for x in r.json()["rejected"]]
            r.failure(f"HTTP {r.status_code}")
            return r.status_code or 0, []

    def send_json(self, node: str, body: bytes) -> tuple[int, list]:
        """POST one JSON transaction as a wallet does; a refusal the node explains counts as
        answered (200 here) with its code, like a refusal inside a batch."""
        headers = {"Content-Type": "application/json"}
        url = f"{node}/api/v1/transactions"
        with self.client.post(
            url, data=body, headers=headers, name="wallet send", catch_response=True
        ) as r:
            if r.status_code == 202:
                r.success()
                return 200, []
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            if code is not None and 400 <= r.status_code < 500:
                r.success()  # the node answered: the refusal goes in the accounting
                return 200, [[0, code]]
            r.failure(f"HTTP {r.status_code}")
            return r.status_code or 0, []

    def follow(self, node: str, tx_id: str, until: float) -> None:
        """Poll a sent transaction's status as a wallet page does, until it leaves the
        mempool or the wallet's next send is due; then the node's status."""
        while time.time() + WALLET_POLL_S < until:
            gevent.sleep(WALLET_POLL_S)  # a wallet page's refresh interval
            with self.client.get(
                f"{node}/api/v1/transactions/{tx_id}", name="wallet status", catch_response=True
            ) as r:
                r.success()  # a 404 right after the send is a normal answer too
                if r.status_code == 200 and r.json().get("status") != "pending":
                    break
        self.client.get(f"{node}/api/v1/status", name="wallet node status")


class CampaignShape(LoadTestShape):
    """All users at once for the whole campaign, until the master has drained and written
    run.json; the rate lives in the plan's schedule, not in the user count."""

    def tick(self):
        if COORDINATOR is None or COORDINATOR.finished:
            return None
        users = COORDINATOR.users or COORDINATOR.plan.lanes  # known once the test starts
        return users, users
