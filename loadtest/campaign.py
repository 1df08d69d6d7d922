"""Run a load campaign against a running QNet network and report what it committed.

    loadtest/campaign.py run loadtest/campaigns/step.yml --url http://127.0.0.1:7370 \\
        --keystore .devnet/wallets --from faucet        # $QNET_WALLET_PASSWORD unlocks it
    loadtest/campaign.py run loadtest/campaigns/knee.yml --inventory INVENTORY --loadgen \\
        --processes 2 --keystore ... --from faucet     # workers on the loadgen hosts
    loadtest/campaign.py report reports/<time>-<name>   # the report again, from run.json

``run`` funds the campaign's senders from the wallet and signs every transaction (progress
bars), runs Locust headless on ``loadtest/locustfile.py`` (``--processes N`` for N worker
processes; with ``--loadgen``, N on each host of the inventory's ``loadgen`` group, started
by ``ops/playbooks/loadgen.yml``, their logs fetched to ``workers/``), reads the blocks of
the run back and asks the nodes about every transaction that neither committed nor was
refused at once, then writes ``reports/<time>-<name>/``: Locust's CSV and HTML,
``summary.json`` and the plots. Exit codes: 0 a valid run whose
accounting closes; 1 an error; 2 the generator measured itself (over its CPU or wake-up
limits: the figures are not the network's); 3 transactions the accounting cannot place.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from qnet import ops
from qnet.cli import wallet_password
from qnet.client import ApiError, Client
from qnet.keystore import Keystore, KeystoreError
from qnet.load import campaign as campaigns
from qnet.load import plots
from qnet.load.plan import Key, Plan, PlanError, prepare
from qnet.load.report import INVALID_EXIT, UNCLOSED_EXIT, readback, summarise, unsettled

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
OPS = HERE.parent / "ops"
READ_THREADS = 16
MASTER_PORT = 5557  # Locust's own default, which the locust role's workers dial
CONNECT_WAIT_S = 300  # for every worker to connect: the playbook installs and starts them


class Failure(click.ClickException):
    exit_code = 1


def target_urls(campaign: campaigns.Campaign, urls: tuple[str, ...], inventory: str | None):
    """--url, else the campaign's urls, else its inventory group's nodes."""
    if urls:
        return list(urls)
    if campaign.targets.urls:
        return list(campaign.targets.urls)
    if campaign.targets.group and inventory:
        hosts = ops.load_hosts(inventory, campaign.targets.group)
        return [f"http://{h.address}:{h.api_port}" for h in hosts]
    raise Failure(
        "no target nodes: give --url, urls in the campaign, or its targets.group and --inventory"
    )


def bar(label: str, total: int):
    """A progress bar on stderr (stdout stays clean for --json); returns its update."""
    progress = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
    progress.__enter__()
    done = [0]

    def update(n: int) -> None:
        done[0] += n
        progress.update(n)
        if done[0] >= total:
            progress.__exit__(None, None, None)

    return update


def locust_argv(plan_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--qnet-plan", str(plan_dir), "--qnet-out", str(out),
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--loglevel", "WARNING", "--only-summary", "--exit-code-on-error", "0",
    ]  # fmt: skip


def time_limit(campaign: campaigns.Campaign) -> float:
    """The load, the wait for a silent worker and the drain, and room to start and stop."""
    return campaign.seconds + 2 * campaign.drain_seconds + 120


def finished(done: int, out: Path) -> None:
    if done != 0 or not (out / "run.json").exists():
        raise Failure(f"Locust failed (exit {done}); see its output above")


def run_locust(plan_dir: Path, out: Path, processes: int, campaign: campaigns.Campaign) -> None:
    argv = locust_argv(plan_dir, out)
    if processes > 1:
        argv += ["--processes", str(processes)]
    click.echo(
        f"running {campaign.seconds:.0f} s of load (Locust, {processes} process(es))", err=True
    )
    limit = time_limit(campaign)
    try:
        done = subprocess.run(argv, timeout=limit, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Failure(f"Locust did not finish within {limit:.0f} s") from None
    finished(done.returncode, out)


@dataclass
class Loadgen:
    """Locust workers on the inventory's loadgen hosts (ops/playbooks/loadgen.yml), ``per_host``
    on each, and the master here, at ``master``, the address the hosts reach this machine at."""

    inventory: str
    hosts: dict[str, str]
    per_host: int
    master: str
    port: int = MASTER_PORT

    @classmethod
    def of(cls, inventory: str | None, per_host: int, master: str | None) -> "Loadgen":
        if not inventory:
            raise Failure("--loadgen needs --inventory, whose loadgen group has the hosts")
        hosts = ops.group_addresses(inventory, "loadgen")
        if not hosts:
            raise Failure(f"no hosts in the loadgen group of {inventory}")
        return cls(inventory, hosts, per_host, master or route_source(next(iter(hosts.values()))))

    def playbook(self, **settings) -> None:
        argv = [ops.ansible_program("ansible-playbook"), "-i", self.inventory,
                str(OPS / "playbooks" / "loadgen.yml"), "-e", json.dumps(settings)]  # fmt: skip
        env = {**os.environ, "ANSIBLE_CONFIG": str(OPS / "ansible.cfg")}
        # Ansible's output goes to stderr: stdout stays clean for --json.
        done = subprocess.run(argv, env=env, cwd=OPS, stdout=sys.stderr, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise Failure(f"loadgen.yml failed (exit {done.returncode}); see its output above")

    def run(self, plan_dir: Path, out: Path, campaign: campaigns.Campaign) -> None:
        workers = self.per_host * len(self.hosts)
        argv = [
            *locust_argv(plan_dir, out),
            "--master", "--master-bind-host", self.master, "--master-bind-port", str(self.port),
            "--expect-workers", str(workers), "--expect-workers-max-wait", str(CONNECT_WAIT_S),
        ]  # fmt: skip
        click.echo(
            f"running {campaign.seconds:.0f} s of load (Locust master on {self.master}:"
            f"{self.port}, {workers} worker(s) on {', '.join(self.hosts)})",
            err=True,
        )
        master = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            self.playbook(
                locust_state="started",
                locust_plan_dir=str(plan_dir.resolve()),
                locust_master_host=self.master,
                locust_master_port=self.port,
                locust_workers=self.per_host,
            )
            limit = CONNECT_WAIT_S + time_limit(campaign)
            try:
                done = master.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                raise Failure(f"Locust did not finish within {limit:.0f} s") from None
        except BaseException:
            master.kill()
            master.wait()
            # Clear the hosts; the error above is the one to report.
            with contextlib.suppress(Failure):
                self.collect(out)
            raise
        self.collect(out)
        finished(done, out)

    def collect(self, out: Path) -> None:
        """Wait for the workers to end, fetch their logs and exits to ``out/workers/``."""
        self.playbook(
            locust_state="collected",
            locust_results_dir=str((out / "workers").resolve()),
            locust_workers=self.per_host,
        )


def route_source(address: str) -> str:
    """This machine's address on its route to ``address``: where a host there reaches it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))  # a datagram socket sends nothing to connect
        return probe.getsockname()[0]


def read_chain(plan: Plan, run: dict) -> tuple[list[dict], dict, dict | None]:
    """The blocks of the run (up to the tracker's last height, the end of the run), the
    nodes' answers about the transactions that neither committed nor were refused at once,
    and with a population every simulated node's record."""
    client = Client(plan.track, timeout=30)
    first, last = run["tracker"]["start_height"] + 1, run["tracker"]["last_height"]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        blocks = list(pool.map(client.block, range(first, last + 1)))
    committed = readback(plan, blocks)
    asked = unsettled(plan, run, set(committed))
    ids = {key: tx_id for tx_id, key in plan.ids.items() if key in asked}

    def status(key: Key) -> tuple[Key, dict | None]:
        node = Client(plan.target(asked[key]), timeout=30)
        try:
            return key, node.tx_status(ids[key].hex())
        except ApiError as exc:
            if exc.code == "not_found":
                return key, None
            raise

    def record(node_id: str) -> tuple[str, dict | None]:
        try:
            return node_id, client.node(node_id)
        except ApiError as exc:
            if exc.code == "not_found":
                return node_id, None
            raise

    with ThreadPoolExecutor(READ_THREADS) as pool:
        statuses = dict(pool.map(status, asked))
        beats = plan.meta.get("heartbeat")
        nodes = dict(pool.map(record, beats["nodes"])) if beats else None
    return blocks, statuses, nodes


def print_summary(summary: dict, out: Path) -> None:
    acc, lat = summary["accounting"], summary["latency"]
    rejected = ", ".join(f"{k} {v:,}" for k, v in acc["rejected"].items()) or "0"
    click.echo(f"campaign {summary['campaign']['name']}: {summary['stop_reason']}")
    click.echo(
        f"committed {summary['committed_tps']:,.1f} tx/s over "
        f"{summary['window_s'][1] - summary['window_s'][0]:.0f} s; commit latency from the "
        f"intended send time p50/p95/p99/max {lat['p50_ms']}/{lat['p95_ms']}/{lat['p99_ms']}/"
        f"{lat['max_ms']} ms"
    )
    closed, delay = summary["latency_from_actual_send"], summary["send_delay"]
    click.echo(
        f"  (from the actual send, as a closed-loop tool would report it: p99 "
        f"{closed['p99_ms']} ms, max {closed['max_ms']} ms; transfers left p99 "
        f"{delay['p99_ms']} ms late, {delay['sent_a_second_late_or_more']:,} of them a second "
        "or more)"
    )
    click.echo(
        f"offered {acc['offered']:,} = sent {acc['sent']:,} + generator backlog "
        f"{acc['generator_backlog']:,}; sent = committed {acc['committed']:,} + rejected "
        f"{rejected} + pending {acc['pending_at_end']:,} + never arrived "
        f"{acc['never_arrived']:,} + lost {acc['lost']:,}; unaccounted {acc['unaccounted']:,}; "
        f"read back {acc['committed_readback']:,} committed"
    )
    for stage in summary["stages"]:
        s = stage["latency"]
        click.echo(
            f"  {stage['name']:<22} offered {stage['offered_tps']:>9,.1f}/s committed "
            f"{stage['committed_tps']:>9,.1f}/s p95 {s['p95_ms']} ms p99 {s['p99_ms']} ms"
        )
    if summary["campaign"]["shape"] == "step":
        knee, bad = summary["knee"], summary["verdicts"][-1] if summary["verdicts"] else None
        if not summary["knee_found"]:
            click.echo("knee: not reached, every step kept up; raise the steps to find it")
        elif knee is None:
            click.echo(f"knee: below the first step ({bad['reason']})")
        else:
            click.echo(
                f"knee: {knee['stage']} (p95 {knee['p95_ms']} ms); next, {bad['stage']}: "
                f"{bad['reason']}"
            )
    for name, stream in summary["streams"].items():
        if name == "transfer":
            continue
        acc = stream["accounting"]
        click.echo(
            f"{name}s: committed {stream['committed_per_second']:,.1f}/s; offered "
            f"{acc['offered']:,}, committed {acc['committed']:,}, rejected "
            f"{sum(acc['rejected'].values()):,}, pending {acc['pending_at_end']:,}, lost "
            f"{acc['lost']:,}, unaccounted {acc['unaccounted']:,}"
        )
    if summary["population"]:
        pop = summary["population"]
        click.echo(
            f"population: {pop['nodes']:,} {pop['node_type']} nodes, {pop['heartbeated']:,} "
            f"heartbeated in epoch {pop['epoch']}, {pop['eligible']:,} of them eligible"
        )
    if not summary["valid"]:
        click.echo("INVALID run: " + "; ".join(summary["invalid_because"]))
    click.echo(f"report: {out}")


def report(out: Path, settings: dict, as_json: bool) -> int:
    plan = Plan.load(out / "plan")
    run = json.loads((out / "run.json").read_text())
    blocks, statuses, nodes = read_chain(plan, run)
    summary = summarise(plan, run, blocks, statuses, settings, nodes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots.draw(summary, out)
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "per_second"}, indent=2))
    else:
        print_summary(summary, out)
    if not summary["valid"]:
        return INVALID_EXIT
    return 0 if summary["closes"] else UNCLOSED_EXIT


@click.group()
def cli() -> None:
    """QNet load campaigns: committed throughput, honest latency, the knee."""


@cli.command()
@click.argument("campaign_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", "urls", multiple=True, help="A target node's API URL (repeat).")
@click.option("--inventory", envvar="QNET_INVENTORY", help="Ansible inventory for targets.group.")
@click.option("--keystore", type=click.Path(file_okay=False, path_type=Path), help="Wallets.")
@click.option("--from", "wallet", default="faucet", show_default=True, help="Funding wallet.")
@click.option("--track", help="The node whose blocks the run follows (default: the first).")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Locust worker processes: here, or on each loadgen host with --loadgen.",
)
@click.option(
    "--loadgen",
    is_flag=True,
    help="Run the workers on the inventory's loadgen hosts (ops/playbooks/loadgen.yml).",
)
@click.option("--master-host", help="With --loadgen: the address the hosts reach this one at.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run(
    campaign_file, urls, inventory, keystore, wallet, track, processes, loadgen, master_host,
    out, as_json,
) -> None:  # fmt: skip
    """Prepare, run and report CAMPAIGN_FILE against a running network."""
    try:
        data = campaigns.read(campaign_file)
        campaign = campaigns.parse(data, str(campaign_file))
        targets = target_urls(campaign, urls, inventory)
        hosts = Loadgen.of(inventory, processes, master_host) if loadgen else None
        faucet = Keystore.locate(keystore).load(wallet, wallet_password())
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        directory = out / f"{when}-{campaign.name}"
        prepare(data, campaign, targets, track or targets[0], faucet, directory / "plan", bar)
        if hosts:
            hosts.run(directory / "plan", directory, campaign)
        else:
            run_locust(directory / "plan", directory, processes, campaign)
        settings = {
            "processes": processes * (len(hosts.hosts) if hosts else 1),
            "loadgen_hosts": sorted(hosts.hosts) if hosts else [],
            "node_count": len(targets),
            "targets": targets,
        }
        (directory / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        code = report(directory, settings, as_json)
    except (campaigns.CampaignError, PlanError, KeystoreError, ApiError, ops.OpsError) as exc:
        raise Failure(str(exc)) from None
    sys.exit(code)


@cli.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report_command(directory: Path, as_json: bool) -> None:
    """The report of a finished run again (the chain must still hold its blocks)."""
    try:
        settings = json.loads((directory / "settings.json").read_text())
        code = report(directory, settings, as_json)
    except (OSError, json.JSONDecodeError, PlanError, ApiError) as exc:
        raise Failure(str(exc)) from None
    sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
