"""monitoring/alertmanager/qnet-alert-log, the default human receiver: every Alertmanager
notification becomes one JSON line; anything else is refused and writes nothing."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qnet.localnode import free_port, wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "monitoring" / "alertmanager" / "qnet-alert-log"

NOTIFICATION = {
    "version": "4",
    "groupKey": '{}/{}:{alertname="QNetNodeDown", node="v2"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "human",
    "groupLabels": {"alertname": "QNetNodeDown", "node": "v2"},
    "commonLabels": {"alertname": "QNetNodeDown", "node": "v2", "severity": "warning"},
    "commonAnnotations": {"summary": "v2 (super, eu) is down"},
    "externalURL": "http://monitor:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "QNetNodeDown", "node": "v2", "region": "eu"},
            "annotations": {"runbook_url": "monitoring/runbooks/node-down.md"},
            "startsAt": "2026-11-29T20:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://monitor:9090/graph",
            "fingerprint": "0123456789abcdef",
        }
    ],
}


@pytest.fixture
def alert_log(tmp_path):
    port = free_port()
    log = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--listen", f"127.0.0.1:{port}", "--file", str(log),
         "--max-bytes", "4000", "--backups", "1"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/-/healthy", timeout=1).status == 200,
                 10, "qnet-alert-log to answer")  # fmt: skip
        yield url, log
    finally:
        proc.terminate()
        proc.wait(10)


def post(url: str, body: bytes, path: str = "/alerts") -> int:
    request = urllib.request.Request(
        url + path, body, {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_notification_is_one_json_line_with_the_time_it_came(alert_log):
    url, log = alert_log
    assert post(url, json.dumps(NOTIFICATION).encode()) == 200
    resolved = {**NOTIFICATION, "status": "resolved"}
    assert post(url, json.dumps(resolved).encode()) == 200
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["firing", "resolved"]
    first = lines[0]
    assert first["received"].endswith("+00:00")
    assert {k: v for k, v in first.items() if k != "received"} == NOTIFICATION


@pytest.mark.parametrize(
    ("body", "path", "status"),
    [
        (b"not json", "/alerts", 400),
        (b"[]", "/alerts", 400),
        (json.dumps({**NOTIFICATION, "version": "3"}).encode(), "/alerts", 400),
        (json.dumps({**NOTIFICATION, "status": "open"}).encode(), "/alerts", 400),
        (json.dumps({**NOTIFICATION, "alerts": []}).encode(), "/alerts", 400),
        (json.dumps({**NOTIFICATION, "alerts": [{"status": "firing"}]}).encode(), "/alerts", 400),
        (b"x" * ((1 << 20) + 1), "/alerts", 413),
        (json.dumps(NOTIFICATION).encode(), "/other", 404),
    ],
    ids=[
        "not-json",
        "not-object",
        "version",
        "status",
        "no-alerts",
        "no-labels",
        "too-big",
        "path",
    ],
)
def test_anything_else_is_refused_and_writes_nothing(alert_log, body, path, status):
    url, log = alert_log
    assert post(url, body, path) == status
    assert not log.exists() or log.read_text() == ""


def test_the_file_is_rotated_past_its_size(alert_log):
    url, log = alert_log
    for _ in range(6):  # about 1 KB each, 4000 bytes per file
        assert post(url, json.dumps(NOTIFICATION).encode()) == 200
    rotated = log.with_name(log.name + ".1")
    assert rotated.exists() and log.stat().st_size < 4000
    lines = rotated.read_text().splitlines() + log.read_text().splitlines()
    assert len(lines) <= 6 and all(json.loads(line)["version"] == "4" for line in lines)
