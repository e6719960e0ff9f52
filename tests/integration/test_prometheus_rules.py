"""The Prometheus rules, scrape configuration and Grafana dashboard of docs/: promtool accepts
them, the rules' unit tests pass, and every metric a rule or a dashboard query names is one a
running node exports (docs/operations.md, "Monitoring: Prometheus and Grafana")."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ha_voice.local_cluster import LocalCluster
from tests.doc_commands import ROOT, block, run

PROMETHEUS_DIR = ROOT / "docs" / "prometheus"
RULES = PROMETHEUS_DIR / "ha-voice-rules.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "ha-voice.json"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install prometheus; CI installs it)",
)

# Words of PromQL that look like metric names: keywords, and the names Prometheus itself makes.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
    | {"group_left", "group_right"}
)
_SYNTHETIC = frozenset({"up"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier (colons allowed, as in recording rules) that is not a function call and not a
# Grafana variable ($node) or a number's exponent (1e3).
_NAME = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def promql_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, ranges, grouping labels,
    functions and keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def test_the_name_parser_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (job, le) (rate(a_bucket{x="b(c) d", y=~"$node"}'
        "[$__rate_interval]))) > on (job) group_left (node) b:rec:sum unless c offset 5m "
        "or vector(1e3) and bool_metric == bool 1 - on (job) group_right d"
    )
    assert promql_names(expr) == {"a_bucket", "b:rec:sum", "c", "bool_metric", "d"}


def rules() -> list[dict[str, Any]]:
    """Every rule of ha-voice-rules.yml, alerts and recordings."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panels, annotations, variables."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        target["expr"] for panel in _panels(board["panels"]) for target in panel.get("targets", [])
    ]
    exprs += [note["expr"] for note in board["annotations"]["list"] if "expr" in note]
    exprs += [
        variable["query"]["query"].split("(", 1)[1].rsplit(",", 1)[0]
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]
    return exprs


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a /metrics page can have: its samples, and each declared family with
    a histogram's _bucket, _sum and _count (a labelled family may have no sample yet)."""
    names = set(re.findall(r"^([a-zA-Z_:][\w:]*)(?:\{|\s)", metrics_text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


@pytest.fixture(scope="module")
def metrics_text() -> Iterator[str]:
    with LocalCluster(3) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        response = cluster.nodes[found[0]].get("/metrics", timeout_s=5.0)
        assert response is not None
        assert response.status_code == 200
        yield response.text


def test_every_metric_the_rules_use_is_exported(metrics_text: str) -> None:
    exported = exported_names(metrics_text)
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used: set[str] = set()
    for rule in rules():
        used |= promql_names(rule["expr"])
    assert {"ha_voice_is_primary", "ha_voice_speech_seconds_bucket"} <= used
    assert used - exported - recorded - _SYNTHETIC == set()
    assert recorded <= used  # no recording rule that nothing reads


def test_the_labels_the_rules_join_on_are_exported(metrics_text: str) -> None:
    # The RTT alert compares with the node's own election timeout; the robot alerts leave out
    # nodes with robot = "none"; "primary unscraped" maps a node's name to its instance.
    timers = dict(
        re.findall(r'^ha_voice_timer_seconds\{timer="(\w+)"\} (\S+)$', metrics_text, re.M)
    )
    assert set(timers) == {"heartbeat_interval", "election_timeout", "lease"}
    assert all(float(value) > 0 for value in timers.values())
    [info] = re.findall(r"^ha_voice_node_info\{([^}]*)\} 1\.0$", metrics_text, re.M)
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    assert set(labels) == {"node", "cluster", "robot"}
    assert labels["robot"] in {"none", "sim", "go2"}


def test_every_metric_the_dashboard_queries_is_exported(metrics_text: str) -> None:
    exported = exported_names(metrics_text)
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= promql_names(expr)
    assert {"ha_voice_role", "ha_voice_robot_reachable", "ha_voice_speech_seconds_bucket"} <= used
    assert used - exported - _SYNTHETIC == set()


def test_the_dashboard_is_importable() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["schemaVersion"] == 39
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["node"]["type"] == "query"
    panels = list(_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert "$job" in target["expr"], (panel["title"], target["expr"])


@needs_promtool
def test_the_documented_promtool_checks_pass() -> None:
    out = run(block("prometheus-check"), ROOT).stdout
    assert "SUCCESS" in out
    assert "FAILED" not in out


@needs_promtool
def test_every_alert_has_unit_tests_firing_and_not_firing() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "ha-voice-rules.test.yml").read_text("utf-8"))
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - fired == set()
    assert alerts - quiet == set()
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


@needs_promtool
def test_promtool_test_rules_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: one expected alert removed makes promtool say FAILED."""
    tests = yaml.safe_load((PROMETHEUS_DIR / "ha-voice-rules.test.yml").read_text("utf-8"))
    tests["rule_files"] = [str(RULES)]
    case = next(c for g in tests["tests"] for c in g["alert_rule_test"] if c["exp_alerts"])
    case["exp_alerts"] = []
    wrong = tmp_path / "wrong.test.yml"
    wrong.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "test", "rules", str(wrong)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
