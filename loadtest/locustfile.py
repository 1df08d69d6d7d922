"""QNet load campaigns under Locust; run them with ``loadtest/campaign.py`` (``make loadtest``).

``--qnet-plan DIR`` is a plan that ``campaign.py prepare`` made (senders funded, every
transaction signed); ``--qnet-out DIR`` is where the master writes ``run.json`` for the
report. The processes split the work like this:

- master (or the only process): sends the start time, deals the lanes to the workers, follows
  the committed blocks (``CommitTracker``) and reports each committed transaction as a Locust
  request of type ``COMMIT`` whose time is commit time minus *intended* send time; judges
  each step of a step campaign and stops the run past the knee; drains, writes ``run.json``.
- every worker (or the only process): one ``TransferUser`` per lane sends the lane's batches,
  each at its intended time (open model: a late answer delays nothing but that lane), and
  streams what happened to each batch to the master.
- every process samples its own CPU and how late its event loop wakes up: a generator above
  its limits measures itself, and the report marks such a run invalid.
"""

import json
import time
from pathlib import Path

import gevent
import psutil
from gevent.event import Event
from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import MasterRunner, WorkerRunner

from qnet.client import Client
from qnet.load import figures
from qnet.load.plan import Plan
from qnet.load.tracker import CommitTracker

LEAD_S = 2.0  # from the start message to the first intended send
POLL_S = 0.05  # how often the tracker asks for the head: the resolution of commit times
FLUSH_S = 1.0  # how often a worker streams its batch outcomes to the master
LAG_TICK_S = 0.05  # the event-loop lag probe's sleep
LOCAL = "local"  # the node id of messages a process sends itself (Locust's LocalRunner)


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--qnet-plan", default="", help="a plan made by campaign.py prepare")
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
        self.bodies = plan.bodies()
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
        self.ids = plan.tx_ids()
        self.batch_of = plan.batch_of()
        self.offsets = plan.schedule.offsets
        self.t0 = 0.0
        self.stop_at = plan.campaign.seconds
        self.stop_reason = "the campaign ran to its end"
        self.outcomes: list[list] = []
        self.rejected: set[int] = set()
        self.workers: dict[str, dict | None] = {}  # health reported when done, by node id
        self.tracker: CommitTracker | None = None
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
        if lanes % len(ids):
            raise RuntimeError(
                f"{lanes} users (lanes) cannot be shared evenly by {len(ids)} worker processes"
            )
        client = Client(self.plan.track, timeout=10)
        start_height = client.status()["height"]
        self.t0 = time.time() + LEAD_S
        self.start_height = start_height
        self.tracker = CommitTracker(client, self.ids, self.t0, start_height)
        self.workers = dict.fromkeys(ids)
        for n, client_id in enumerate(ids):
            data = {"t0": self.t0, "lanes": list(range(n, lanes, len(ids)))}
            runner.send_message("qnet_start", data, client_id if master else None)
        gevent.spawn(self.track)
        gevent.spawn(self.health.run, self.t0, self.done)
        if self.plan.campaign.shape == "step":
            gevent.spawn(self.judge_steps)
        gevent.spawn(self.drain)

    # -- during the run ----------------------------------------------------------------------

    def track(self) -> None:
        request = self.env.events.request
        while not self.done.is_set():
            for i, seen in self.tracker.poll():
                request.fire(
                    request_type="COMMIT",
                    name="transfer",
                    response_time=(seen - self.offsets[i]) * 1000,
                    response_length=0,
                    exception=None,
                    context={},
                )
            gevent.sleep(POLL_S)

    def judge_steps(self) -> None:
        """Judge each step once the tracker has read past its evaluation time; past the knee,
        stop sending (what was offered so far is still accounted for)."""
        first_p95 = None
        for stage in self.plan.campaign.measured:
            at = figures.evaluation_time(stage)
            while self.tracker.polled < at:
                gevent.sleep(POLL_S)
            lat = figures.stage_latencies(self.offsets, self.tracker.commits, stage, at)
            verdict = figures.step_verdict(stage, lat, first_p95, self.plan.campaign.knee)
            first_p95 = verdict.p95_ms if first_p95 is None else first_p95
            if not verdict.good:
                self.stop_at = min(self.stop_at, time.time() - self.t0)
                self.stop_reason = f"past the knee at {stage.name}: {verdict.reason}"
                self.env.runner.send_message("qnet_stop", {"at": self.stop_at})
                return

    def on_sends(self, environment, msg, **kwargs) -> None:
        self.outcomes += msg.data
        bounds = self.plan.schedule.bounds
        for k, _free, _sent, status, rejected in msg.data:
            if status != 200:
                self.rejected.update(range(bounds[k], bounds[k + 1]))
            self.rejected.update(bounds[k] + index for index, _code in rejected)

    def on_done(self, environment, msg, **kwargs) -> None:
        self.workers[msg.node_id] = msg.data  # LOCAL when there is only this process

    # -- the end -----------------------------------------------------------------------------

    def drained(self) -> bool:
        """Every sent transaction that a node accepted is committed, or no target holds any
        pending transaction any more."""
        bounds = self.plan.schedule.bounds
        for k, *_ in self.outcomes:
            for i in range(bounds[k], bounds[k + 1]):
                if i not in self.rejected and i not in self.tracker.commits:
                    break
            else:
                continue
            break
        else:
            return True
        pending = 0
        for url in self.plan.urls:
            pending += Client(url, timeout=5).status()["mempool_size"]
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
        self.tracker.poll()
        self.done.set()
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
                "committed": len(self.tracker.commits),
                "errors": self.tracker.errors,
            },
            "generators": {
                "master": self.health.to_json(),
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
        raise SystemExit("locustfile: --qnet-plan DIR is required (make one with campaign.py)")
    plan = Plan.load(Path(options.qnet_plan))
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        SENDER = Sender(environment, plan)
    if not isinstance(runner, WorkerRunner):
        COORDINATOR = Coordinator(environment, plan, Path(options.qnet_out or "."))


class TransferUser(FastHttpUser):
    """One lane: its batches, each sent at its intended time, in order (the lane's senders'
    nonces arrive in order at one node)."""

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
        url = plan.target(lane) + "/api/v1/transactions/batch"
        headers = {"Content-Type": "application/octet-stream"}
        for k in plan.lane_batches(lane):
            due = plan.schedule.due(k)
            if due >= sender.stop_at:
                break
            free = time.time() - t0
            gevent.sleep(max(0.0, due - free))  # the open-loop schedule: wait for the due time
            sent = time.time() - t0
            status, rejected = 0, []
            with self.client.post(
                url, data=sender.bodies[k], headers=headers, name="batch", catch_response=True
            ) as resp:
                status = resp.status_code or 0
                if status == 200:
                    body = resp.json()
                    rejected = [[r["index"], r["code"]] for r in body["rejected"]]
                    resp.success()
                else:
                    resp.failure(f"HTTP {status}")
            sender.outcomes.append([k, free, sent, status, rejected])
        sender.lane_done()
        sender.finished.wait()


class CampaignShape(LoadTestShape):
    """All users at once for the whole campaign, until the master has drained and written
    run.json; the rate lives in the plan's schedule, not in the user count."""

    def tick(self):
        if COORDINATOR is None or COORDINATOR.finished:
            return None
        users = COORDINATOR.plan.lanes
        return users, users
