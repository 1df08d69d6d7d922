"""Filters of the prometheus role over Prometheus rule files (YAML text).

``alert_rungs``: the rungs of a rule file's alerts, as "AlertName/severity".
``alert_for_overrides``: the rule file with the ``for:`` of the rungs named in a dict
("AlertName/severity" -> duration) replaced. A file none of whose rungs is named comes back
exactly as it was, comments and all, so production rule files land unchanged.
"""

import yaml


def _alerting_rules(document: dict) -> list[dict]:
    return [
        rule
        for group in (document or {}).get("groups", [])
        for rule in group.get("rules", [])
        if "alert" in rule
    ]


def _rung(rule: dict) -> str:
    return f"{rule['alert']}/{rule.get('labels', {}).get('severity', '')}"


def alert_rungs(text: str) -> list[str]:
    return [_rung(rule) for rule in _alerting_rules(yaml.safe_load(text))]


def alert_for_overrides(text: str, overrides: dict) -> str:
    document = yaml.safe_load(text)
    rules = [rule for rule in _alerting_rules(document) if _rung(rule) in overrides]
    if not rules:
        return text
    for rule in rules:
        rule["for"] = str(overrides[_rung(rule)])
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)


class FilterModule:
    def filters(self):
        return {"alert_rungs": alert_rungs, "alert_for_overrides": alert_for_overrides}
