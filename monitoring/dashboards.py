"""The QNet Grafana dashboards (monitoring/dashboards/*.json) as data, for tests and checks.

``queries`` lists every panel's PromQL with Grafana's variables substituted the way Grafana
does for a Prometheus data source, so that each expression can be sent to a real
Prometheus: template variables from the values given (a multi-value or "All" variable
becomes a regex, hence the dashboards' ``=~"$var"`` matchers), and the built-in
``$__rate_interval``, ``$__interval`` and ``$__range`` (with their ``_s``/``_ms`` forms)
from the durations given, else from ``DEFAULT_INTERVALS``. ``template_queries`` turns the
template variables' own ``label_values(...)`` and ``query_result(...)`` queries into PromQL.

Standard library only.
"""

import json
import re
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# What Grafana would put for the built-in interval variables (rate interval: at least four
# scrape intervals of the production 15 s).
DEFAULT_INTERVALS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}

ALL = ("All", "$__all")

# $name, ${name}, ${name:format}, [[name]] and [[name:format]], as Grafana reads them.
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<bracketed>\w+)(?::[^\]]*)?\]\]|\$(?P<plain>\w+)"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# Characters Grafana escapes in the values of multi-value variables for Prometheus.
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|{}\[\]]")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.S
)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.S)


def load(path: str | Path) -> dict:
    """One dashboard's JSON."""
    return json.loads(Path(path).read_text())


def dashboards() -> list[Path]:
    """The dashboard files beside this module, in dashboards/."""
    return sorted(DASHBOARD_DIR.glob("*.json"))


def panels(dashboard: dict, rows: bool = False) -> list[dict]:
    """Every panel, including those nested in (collapsed) rows; the rows themselves only
    with ``rows``."""
    out = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            if rows:
                out.append(panel)
            out.extend(panels({"panels": panel.get("panels", [])}, rows))
        else:
            out.append(panel)
    return out


def seconds(duration: str) -> float:
    """A Prometheus duration such as ``1m`` or ``1h30m`` in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _builtins(variables: dict[str, str]) -> dict[str, str]:
    values = {}
    for name, default in DEFAULT_INTERVALS.items():
        given = variables.get(name, variables.get("$" + name, default))
        values[name] = given
        values[name + "_s"] = f"{seconds(given):g}"
        values[name + "_ms"] = f"{seconds(given) * 1000:g}"
    return values


def _template_value(variable: dict, given) -> str:
    """The text Grafana puts for a template variable in a Prometheus query."""
    regex = variable.get("multi") or variable.get("includeAll")
    if given is None:
        current = variable.get("current", {}).get("value")
        if variable.get("includeAll"):
            given = current if current not in (None, "", []) else "All"
        elif current not in (None, "", []):
            given = current
        else:
            raise KeyError(f"no value for the variable {variable['name']!r}")
    values = [given] if isinstance(given, str) else list(given)
    if any(v in ALL for v in values):
        if not variable.get("includeAll"):
            raise ValueError(f"the variable {variable['name']!r} has no All option")
        return variable.get("allValue") or ".*"
    if not regex:
        return values[0]
    escaped = [_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, dashboard: dict, variables: dict | None = None) -> str:
    """``expr`` with the dashboard's template variables and Grafana's interval built-ins
    replaced; anything else that looks like a variable (``$1`` in label_replace) stays."""
    variables = variables or {}
    builtins = _builtins(variables)
    templated = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}

    def replace(match: re.Match) -> str:
        name = match.group("braced") or match.group("bracketed") or match.group("plain")
        if name in builtins:
            return builtins[name]
        if name in templated:
            return _template_value(templated[name], variables.get(name))
        return match.group(0)

    return _VARIABLE.sub(replace, expr)


def queries(dashboard: dict, variables: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, variables substituted."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append(
                    (panel.get("title", ""), substitute(target["expr"], dashboard, variables))
                )
    return out


def variable_query(variable: dict) -> str:
    """The query text of a query variable (a string, or the editor's object)."""
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return query or variable.get("definition", "")


def template_queries(dashboard: dict, variables: dict | None = None) -> list[tuple[str, str]]:
    """(variable name, PromQL) for each query variable: ``label_values(expr, label)``
    becomes ``count by (label) (expr)`` (empty unless some series has the label),
    ``label_values(label)`` becomes ``count by (label) ({label!=""})``,
    ``query_result(expr)`` becomes ``expr``."""
    out = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = substitute(variable_query(variable), dashboard, variables)
        if m := _LABEL_VALUES.match(query):
            label = m.group("label")
            expr = (m.group("expr") or "").strip() or f'{{{label}!=""}}'
            promql = f"count by ({label}) ({expr})"
        elif m := _QUERY_RESULT.match(query):
            promql = m.group("expr").strip()
        else:
            raise ValueError(f"variable {variable['name']!r}: unsupported query {query!r}")
        out.append((variable["name"], promql))
    return out


# Words of PromQL that look like metric names.
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, label names, durations and
    strings left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors and subqueries
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", text, flags=re.I)
    return {n for n in _IDENTIFIER.findall(text) if n.lower() not in _KEYWORDS}
