"""A real Prometheus (the Debian package's binary) scrapes a running 3-node cluster with the
rules of docs/prometheus/ unchanged; the primary is killed, and Prometheus's own HTTP API shows
the failover alert with its duration and the failover metrics."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ha_voice.local_cluster import LocalCluster, LocalNode, free_port
from tests.integration.test_prometheus_rules import DASHBOARD, RULES, dashboard_exprs, rules

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (apt-get install prometheus; CI installs it)",
)

# Generous polling deadlines, not timings: a loaded CI machine scrapes and evaluates late.
_DEADLINE_S = 60.0


@dataclass
class Prometheus:
    """A prometheus process on 127.0.0.1 with its own storage; `close()` stops it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=5.0)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        alerts = self.get("/api/v1/alerts")["alerts"]
        return [alert for alert in alerts if alert["labels"]["alertname"] == name]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _start_prometheus(directory: Path, targets: list[str]) -> Prometheus:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ha-voice", "static_configs": [{"targets": targets}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait(lambda: _ready(prometheus), "prometheus never ready", prometheus)
    except BaseException:
        prometheus.close()
        raise
    return prometheus


def _ready(prometheus: Prometheus) -> bool:
    assert prometheus.process.poll() is None, prometheus.log.read_text()
    try:
        return httpx.get(f"{prometheus.url}/-/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(condition: Callable[[], Any], what: str, prometheus: Prometheus | None = None) -> Any:
    deadline = time.monotonic() + _DEADLINE_S
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            log = "" if prometheus is None else prometheus.log.read_text()[-4000:]
            raise AssertionError(f"{what}\n{log}")
        time.sleep(0.25)


def _instance(node: LocalNode) -> str:
    return f"{node.host}:{node.api_port}"


def _value(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        assert running.wait_for_primary(30.0) is not None
        yield running


@pytest.fixture
def prometheus(cluster: LocalCluster, tmp_path: Path) -> Iterator[Prometheus]:
    targets = [_instance(node) for node in cluster.nodes.values()]
    running = _start_prometheus(tmp_path, targets)
    try:
        yield running
    finally:
        running.close()


def test_prometheus_shows_a_killed_primarys_failover(
    cluster: LocalCluster, prometheus: Prometheus
) -> None:
    nodes = cluster.nodes
    _wait(lambda: _value(prometheus, 'sum(up{job="ha-voice"})') == 3, "3 targets never up")
    _wait(
        lambda: _value(prometheus, "job:ha_voice_is_primary:sum") == 1,
        "prometheus never saw one primary",
        prometheus,
    )
    (old,) = cluster.primaries()
    # Scraped at 0 before the kill, so that increase() sees the takeover.
    for node in nodes.values():
        if node.node_id != old:
            expr = f'sum(ha_voice_failovers_total{{instance="{_instance(node)}"}})'
            _wait(lambda e=expr: _value(prometheus, e) == 0, f"no {expr} sample")
    cluster.kill(old)
    found = cluster.wait_for_primary(30.0, exclude=old)
    assert found is not None
    new = nodes[found[0]]

    def failover_alert() -> dict[str, Any] | None:
        firing = [a for a in prometheus.alerts("HaVoiceFailover") if a["state"] == "firing"]
        return firing[0] if firing else None

    alert = _wait(failover_alert, "HaVoiceFailover never fired", prometheus)
    assert alert["labels"]["instance"] == _instance(new)
    assert alert["labels"]["severity"] == "info"
    duration_s = float(alert["value"])
    assert math.isfinite(duration_s)
    assert duration_s > 0
    assert "took over as primary" in alert["annotations"]["summary"]
    assert "the takeover took" in alert["annotations"]["description"]

    new_sel = f'{{instance="{_instance(new)}"}}'
    assert _value(prometheus, f"sum(ha_voice_failovers_total{new_sel})") == 1
    # A killed process leaves its ports closed: the survivors' own probes said so.
    evidence = f'ha_voice_failovers_total{{instance="{_instance(new)}",cause="evidence"}}'
    assert _value(prometheus, evidence) == 1
    assert _value(prometheus, f"ha_voice_election_duration_seconds_count{new_sel}") == 1
    measured = _value(prometheus, f"ha_voice_election_duration_seconds_sum{new_sel}")
    assert measured == pytest.approx(duration_s)
    (third,) = (n for n in nodes.values() if n.node_id not in {old, new.node_id})
    changes = f'ha_voice_leader_changes_total{{instance="{_instance(third)}"}}'
    _wait(lambda: _value(prometheus, changes) == 1, "the third node's leader change not seen")
    _wait(
        lambda: _value(prometheus, "job:ha_voice_failovers:increase15m") == 1,
        "the recorded failover count never 1",
    )
    _wait(
        lambda: _value(prometheus, f'up{{instance="{_instance(nodes[old])}"}}') == 0,
        "the killed node still up",
    )
    _wait(
        lambda: _value(prometheus, "job:ha_voice_is_primary:sum") == 1,
        "no primary again in prometheus",
    )
    down = _wait(lambda: prometheus.alerts("HaVoiceNodeDown"), "HaVoiceNodeDown not pending")
    assert {alert["labels"]["instance"] for alert in down} == {_instance(nodes[old])}
    for name in ("HaVoiceNoPrimary", "HaVoiceSplitBrain"):  # pending for a scrape is allowed
        assert [a for a in prometheus.alerts(name) if a["state"] == "firing"] == [], name
    print(f"HaVoiceFailover: {alert['labels']['instance']} took over in {duration_s:.3f} s")


def test_prometheus_evaluates_every_rule_and_dashboard_query(
    cluster: LocalCluster, prometheus: Prometheus
) -> None:
    """Each expression parses and runs in a real Prometheus (Grafana's variables filled in)."""
    _wait(lambda: _value(prometheus, 'sum(up{job="ha-voice"})') == 3, "3 targets never up")
    groups = prometheus.get("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == {rule.get("alert", rule.get("record")) for rule in rules()}
    assert all(rule["health"] != "err" for group in groups for rule in group["rules"])
    for expr in dashboard_exprs():
        prometheus.query(_filled(expr))  # asserts "success"
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    role = next(p for p in board["panels"] if p.get("title") == "Role of each node")
    # 1 is primary and 3 backup in the dashboard's value mappings.
    result = prometheus.query(_filled(role["targets"][0]["expr"]))
    assert len(result) == 3
    assert sorted(float(sample["value"][1]) for sample in result) == [1.0, 3.0, 3.0]


def _filled(expr: str) -> str:
    """A dashboard query with Grafana's variables as Grafana fills them for "All"."""
    for name, value in {"$__rate_interval": "1m", "$job": ".*", "$node": ".*"}.items():
        expr = expr.replace(name, value)
    return expr
