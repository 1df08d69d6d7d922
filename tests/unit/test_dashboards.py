"""The Grafana dashboards of monitoring/dashboards: importable as they are, on the
DS_PROMETHEUS input, and every query on a metric the node exports or a recording rule of
monitoring/rules, runnable once Grafana's variables are substituted. No Prometheus needed
(the live check runs every query against one while a devnet commits)."""

import json
import re
from pathlib import Path

import dashboards as dash
import pytest
import yaml

from qnet import crypto
from qnet.metrics import Metrics
from qnet.p2p import PeerNetwork

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules"

EXPECTED_UIDS = {
    "network-overview.json": "qnet-network-overview",
    "validator-health.json": "qnet-validator-health",
    "node-detail.json": "qnet-node-detail",
    "load-test.json": "qnet-load-test",
}
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# Families of prometheus_client's types, by the sample names Prometheus stores.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
# node_*: prometheus-node-exporter (job node) on the node's host.
ALLOWED_PREFIXES = ("node_",)


@pytest.fixture(scope="module")
def node_metrics(tmp_path_factory) -> set[str]:
    """What a node's /metrics exports: its Metrics registry with the p2p layer's metrics,
    as Prometheus stores the samples; ``up`` is Prometheus' own, per target."""
    metrics = Metrics(tmp_path_factory.mktemp("node"))
    key = crypto.KeyPair.generate()
    PeerNetwork(key=key, chain_id="c", genesis_hash=bytes(32), node_type="full", region="eu",
                listen_host=None, listen_port=0, seeds=[], on_message=None,
                registry=metrics.registry)  # fmt: skip
    return {"up"} | {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def recording_rules() -> set[str]:
    names = set()
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def _sample_variables(dashboard: dict) -> dict:
    """All for a variable that has it, else a plausible value."""
    values = {}
    for v in dashboard.get("templating", {}).get("list", []):
        values[v["name"]] = "All" if v.get("includeAll") else "v1"
    return values


def _load_all() -> dict[str, dict]:
    return {p.name: dash.load(p) for p in dash.dashboards()}


DASHBOARDS = _load_all()


def test_the_four_dashboards_exist_with_their_stable_uids():
    assert set(DASHBOARDS) == set(EXPECTED_UIDS)
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids))
    for name, d in DASHBOARDS.items():
        assert d["uid"] == EXPECTED_UIDS[name]


@pytest.mark.parametrize("path", dash.dashboards(), ids=lambda p: p.name)
def test_valid_json_and_importable(path):
    d = json.loads(path.read_text())  # raises on invalid JSON
    assert d["id"] is None
    assert d["title"].startswith("QNet / ")
    assert d["tags"] == ["qnet"]
    assert d["refresh"] == "30s"
    assert d["time"]["from"].startswith("now-")
    assert 36 <= d["schemaVersion"] <= 41
    assert d["description"]
    (ds_input,) = [i for i in d["__inputs"] if i["type"] == "datasource"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert ds_input["pluginId"] == "prometheus"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_and_target_on_the_prometheus_input(name):
    d = DASHBOARDS[name]
    for panel in dash.panels(d):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in d["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_a_title_a_description_and_a_query(name):
    d = DASHBOARDS[name]
    assert dash.panels(d)
    titles = []
    for panel in dash.panels(d):
        assert panel.get("title"), panel
        assert panel.get("description", "").strip(), panel["title"]
        assert any(t.get("expr", "").strip() for t in panel.get("targets", [])), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        titles.append(panel["title"])
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_unique_and_grid_in_bounds_without_overlap(name):
    every = dash.panels(DASHBOARDS[name], rows=True)
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    for p in every:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    cells = {}
    for p in every:
        g = p["gridPos"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, (p["title"], "overlaps", cells[(x, y)])
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_metric_is_exported_by_the_node_or_recorded(name, node_metrics):
    known = node_metrics | recording_rules()
    d = DASHBOARDS[name]
    exprs = dash.queries(d, _sample_variables(d)) + dash.template_queries(d)
    assert exprs
    for title, expr in exprs:
        names = dash.metric_names(expr)
        assert names, (title, expr)
        unknown = {n for n in names if n not in known and not n.startswith(ALLOWED_PREFIXES)}
        assert not unknown, (title, unknown)


def test_the_recording_rules_the_dashboards_use_exist():
    rules = recording_rules()
    assert {
        "qnet:height_lag:blocks",
        "qnet:commit_latency_seconds:p99_5m",
        "qnet:mempool_fill:ratio",
        "qnet:mempool_size:validators",
        "qnet:validator_missed_precommits:ratio_10m_by_node",
        "qnet:validator:info",
    } <= rules
    used = set()
    for d in DASHBOARDS.values():
        for _, expr in dash.queries(d, _sample_variables(d)):
            used |= {n for n in dash.metric_names(expr) if ":" in n}
    assert used <= rules


# A variable left in a query: $name or ${name} (label_replace's $1 is PromQL's own).
_LEFT_OVER = re.compile(r"\$\{?[A-Za-z_]|\[\[")


def _balanced(expr: str) -> bool:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if text.count('"') % 2:
        return False
    stack = []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif ch in ")]}" and (not stack or "([{"[")]}".index(ch)] != stack.pop()):
            return False
    return not stack


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variables_substitute_to_complete_expressions(name):
    d = DASHBOARDS[name]
    for variables in (_sample_variables(d), {}):
        if not variables and any(
            not v.get("includeAll") for v in d["templating"]["list"]
        ):  # a single-value variable without a default needs a value
            with pytest.raises(KeyError):
                dash.queries(d, variables)
            continue
        for title, expr in dash.queries(d, variables) + dash.template_queries(d, variables):
            assert not _LEFT_OVER.search(expr), (title, expr)
            assert _balanced(expr), (title, expr)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables_have_runnable_queries(name):
    d = DASHBOARDS[name]
    query_vars = [v for v in d["templating"]["list"] if v["type"] == "query"]
    converted = dict(dash.template_queries(d, _sample_variables(d)))
    assert set(converted) == {v["name"] for v in query_vars}
    for v in query_vars:
        assert converted[v["name"]].startswith(f"count by ({v['name']}) ("), converted
        if v.get("multi") or v.get("includeAll"):
            # Grafana substitutes a regex: such a variable may only appear in =~ or !~.
            raw = [t["expr"] for p in dash.panels(d) for t in p["targets"]]
            raw += [dash.variable_query(w) for w in query_vars]
            for expr in raw:
                for m in re.finditer(rf'(=~|!~|=|!=)\s*"\$\{{?{v["name"]}\b', expr):
                    assert m.group(1) in ("=~", "!~"), (v["name"], expr)


def test_substitution_follows_grafana():
    d = {
        "templating": {
            "list": [
                {
                    "name": "region",
                    "type": "query",
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                },
                {
                    "name": "instance",
                    "type": "query",
                    "multi": False,
                    "includeAll": False,
                    "current": {"text": "v2", "value": "v2"},
                },
            ]
        },
        "panels": [
            {
                "type": "row",
                "title": "collapsed",
                "panels": [
                    {
                        "title": "nested",
                        "targets": [
                            {
                                "expr": 'rate(x{region=~"$region", instance="${instance}"}'
                                "[$__rate_interval])"
                            },
                        ],
                    }
                ],
            },
            {
                "title": "top",
                "targets": [{"expr": "increase(y[$__range]) / $__range_s"}, {"expr": ""}],
            },
            {"title": "replace", "targets": [{"expr": 'label_replace(z, "a", "$1", "b", "(.+)")'}]},
        ],
    }
    assert dash.queries(d, {"region": "All"}) == [
        ("nested", 'rate(x{region=~".*", instance="v2"}[1m])'),
        ("top", "increase(y[1h]) / 3600"),
        ("replace", 'label_replace(z, "a", "$1", "b", "(.+)")'),
    ]
    got = dash.queries(
        d, {"region": ["na", "e.u"], "instance": "v1", "__rate_interval": "30s", "__range": "10m"}
    )
    assert got[0] == ("nested", 'rate(x{region=~"(na|e\\.u)", instance="v1"}[30s])')
    assert got[1] == ("top", "increase(y[10m]) / 600")
    assert dash.queries(d, {"region": "na"})[0][1].startswith('rate(x{region=~"na"')


def test_template_queries_become_promql():
    d = {
        "templating": {
            "list": [
                {
                    "name": "region",
                    "type": "query",
                    "includeAll": True,
                    "query": {"query": 'label_values(up{job="qnet"}, region)'},
                },
                {
                    "name": "instance",
                    "type": "query",
                    "includeAll": True,
                    "query": 'label_values(up{job="qnet", region=~"$region"}, instance)',
                },
                {
                    "name": "version",
                    "type": "query",
                    "query": "query_result(count by (version) (qnet_build_info))",
                },
                {"name": "fixed", "type": "custom", "query": "a,b"},
            ]
        }
    }
    assert dash.template_queries(d, {"region": "All"}) == [
        ("region", 'count by (region) (up{job="qnet"})'),
        ("instance", 'count by (instance) (up{job="qnet", region=~".*"})'),
        ("version", "count by (version) (qnet_build_info)"),
    ]


def test_metric_names_are_parsed_out_of_promql():
    expr = (
        "label_replace(quantile by (validator) (0.5, rate(qnet_validator_missed_precommits_total"
        '{job="qnet", node_type="super"}[1m])), "node_id", "$1", "validator", "(.+)")\n'
        '* on (node_id) group_left (instance, region) qnet:validator:info{region=~".*"}'
        " or on () vector(0) and histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))"
        " - time() + 1e3"
    )
    assert dash.metric_names(expr) == {
        "qnet_validator_missed_precommits_total",
        "qnet:validator:info",
        "x_bucket",
    }


def test_dashboards_listed_beside_the_module():
    assert [p.parent for p in dash.dashboards()] == [dash.DASHBOARD_DIR] * len(EXPECTED_UIDS)
