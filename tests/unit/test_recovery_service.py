"""The qnet-recovery service in process: the webhook refuses what it cannot trust and changes
nothing, dry-run and live write the same decisions (only live acts), a restarted service
resumes the verification of an interrupted action instead of repeating it, the status and
reset endpoints, and the configuration check."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from qnet_recovery import config as config_mod
from qnet_recovery import service
from qnet_recovery.store import read_audit

NODES = {
    "v1": {"address": "10.0.0.1", "validator": True, "node_type": "super", "region": "na"},
    "v2": {"address": "10.0.0.2", "validator": True, "node_type": "super", "region": "eu"},
    "v3": {"address": "10.0.0.3", "validator": True, "node_type": "super", "region": "ap"},
    "v4": {"address": "10.0.0.4", "validator": True, "node_type": "super", "region": "sa"},
    "f1": {"address": "10.0.0.5", "node_type": "full", "region": "eu"},
}


def write_config(tmp: Path, **extra) -> Path:
    data = {
        "state_file": str(tmp / "state.json"),
        "audit_log": str(tmp / "audit.jsonl"),
        "verify_deadline": "5s",
        "budget": {"backoff_initial": "1s", "backoff_max": "4s"},
        "nodes": NODES,
        **extra,
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def webhook(status: str, node: str, fingerprint: str = "a1", starts: str = "T0", **labels):
    return {
        "version": "4",
        "status": status,
        "alerts": [{
            "status": status,
            "fingerprint": fingerprint,
            "startsAt": starts,
            "labels": {"alertname": "QNetNodeDown", "node": node, "severity": "critical",
                       "action": "restart", **labels},
        }],
    }  # fmt: skip


class World:
    """The nodes as recovery sees them: every node answers at height 10 except ``down``,
    which answers at 11 once ``polls_to_recover`` status polls of it have passed."""

    def __init__(self, down: str, polls_to_recover: int = 3):
        self.down, self.left, self.acted = down, polls_to_recover, []

    async def node_status(self, node):
        if node.name != self.down:
            return {"height": 10, "sync_lag_blocks": 0}
        if self.left > 0:
            self.left -= 1
            return None
        return {"height": 11, "sync_lag_blocks": 0}

    def act(self, kind, node, others):
        self.acted.append((kind, node.name))


async def scenario(tmp: Path, dry_run: bool, monkeypatch) -> tuple[list[dict], list]:
    world = World("f1")
    monkeypatch.setattr(service, "POLL_S", 0.01)
    monkeypatch.setattr(service.Recovery, "node_status", lambda self, n: world.node_status(n))
    monkeypatch.setattr(service.Recovery, "_act", lambda self, *a: world.act(*a))
    config = config_mod.load(write_config(tmp))
    app = service.build(config, dry_run=dry_run)
    async with TestClient(TestServer(app)) as client:
        for _ in range(3):  # the same alert delivered three times: one action
            resp = await client.post("/alerts", json=webhook("firing", "f1"))
            assert resp.status == 200
        recovery = app[service.RECOVERY]
        await wait_for(
            lambda: (
                not recovery.engine.running()
                and recovery.engine.next_due() is None
                and any(r["decision"] == "finish" for r in read_audit(config.audit_log))
            )
        )
        await client.post("/alerts", json=webhook("resolved", "f1"))
        status = await (await client.get("/status")).json()
        assert status["nodes"]["f1"]["budget_left"] == 2
        metrics = await (await client.get("/metrics")).text()
    outcome = "dry_run" if dry_run else "succeeded"
    assert f'qnet_recovery_actions_total{{action="restart",outcome="{outcome}"}} 1.0' in metrics
    return read_audit(config.audit_log), world.acted


async def wait_for(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def comparable(records: list[dict]) -> list[dict]:
    drop = {"time", "dry_run", "durations"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_dry_run_and_live_write_the_same_decisions_and_only_live_acts(tmp_path, monkeypatch):
    (tmp_path / "live").mkdir()
    (tmp_path / "dry").mkdir()
    live, acted_live = asyncio.run(scenario(tmp_path / "live", False, monkeypatch))
    dry, acted_dry = asyncio.run(scenario(tmp_path / "dry", True, monkeypatch))
    assert acted_live == [("restart", "f1")] and acted_dry == []
    assert comparable(live) == comparable(dry)
    assert all(r["dry_run"] for r in dry) and not any("dry_run" in r for r in live)
    decisions = [(r["decision"], r["reason"]) for r in live]
    assert decisions.count(("skip", "duplicate")) == 2
    assert ("finish", "succeeded") in decisions


def test_bad_webhooks_are_refused_and_change_nothing(tmp_path):
    config = config_mod.load(write_config(tmp_path))

    async def go():
        app = service.build(config)
        async with TestClient(TestServer(app)) as client:
            bad = [
                b"not json",
                json.dumps({"version": "3", "alerts": []}).encode(),
                json.dumps({"version": "4", "alerts": [{"status": "firing"}]}).encode(),
                json.dumps(webhook("firing", "f1", fingerprint="../x")).encode(),
                json.dumps({"version": "4", "alerts": [1] * 1001}).encode(),
                b"[" * 100_000,
            ]
            for body in bad:
                resp = await client.post("/alerts", data=body)
                assert resp.status == 400, await resp.text()
                assert "error" in await resp.json()
            resp = await client.post("/alerts", data=b"x" * (service.MAX_BODY + 1))
            assert resp.status == 413
            resp = await client.post("/nodes/nobody/reset")
            assert resp.status == 404

    asyncio.run(go())
    assert read_audit(config.audit_log) == []
    assert not config.state_file.exists()


def test_a_restarted_service_resumes_verification_and_repeats_nothing(tmp_path, monkeypatch):
    config = config_mod.load(write_config(tmp_path))
    world = World("f1", polls_to_recover=0)
    monkeypatch.setattr(service, "POLL_S", 0.01)
    monkeypatch.setattr(service.Recovery, "node_status", lambda self, n: world.node_status(n))
    monkeypatch.setattr(service.Recovery, "_act", lambda self, *a: world.act(*a))

    async def crash_after_start():
        recovery = service.Recovery(config)
        await recovery.deliver(service.parse_webhook(webhook("firing", "f1")))
        await recovery.run_due()  # starts the action: its task is made, and never runs
        assert [a.node for a in recovery.engine.running()] == ["f1"]
        recovery.audit.close()  # the process dies here, after saving that it started

    async def restart():
        app = service.build(config)
        async with TestClient(TestServer(app)) as client:
            recovery = app[service.RECOVERY]
            await wait_for(lambda: not recovery.engine.running())
            resp = await client.post("/alerts", json=webhook("firing", "f1"))  # redelivered
            assert (await resp.json())["decisions"][0]["reason"] == "duplicate"

    asyncio.run(crash_after_start())
    asyncio.run(restart())
    assert world.acted == []  # the action was not repeated
    finish = [r for r in read_audit(config.audit_log) if r["decision"] == "finish"]
    assert len(finish) == 1 and finish[0]["resumed"] and finish[0]["outcome"] == "succeeded"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": {}}, "nodes"),
        ({"budget": {"max_actions": 0}}, "budget.max_actions"),
        ({"budget": {"window": "soon"}}, "budget.window"),
        ({"listen": "nowhere"}, "listen"),
        ({"match": {"severity": "("}}, "match.severity"),
        ({"surprise": 1}, "unknown key(s): surprise"),
        ({"nodes": {"v1": {"address": "10.0.0.1", "api_port": "abc", "validator": True}}},
         "nodes.v1.api_port"),
        ({"nodes": {"f1": {"address": "10.0.0.5"}}}, "no validator"),
    ],
)  # fmt: skip
def test_check_config_names_the_bad_key(tmp_path, change, message):
    path = write_config(tmp_path)
    data = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "qnet_recovery", "check-config", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stdout
    assert message in done.stderr and "Traceback" not in done.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    path = write_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "qnet_recovery", "check-config", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "5 nodes (4 validators), ok" in done.stdout
