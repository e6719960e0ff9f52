"""A node that cannot do its job says so, with a reason, wherever a person or a proxy looks.

Real `ha-voice run` processes (and `ha-voice sim-robot`): a primary the robot fences, a node
that hears none of its peers, a Go2 node without unitree_sdk2py, a primary whose core is stuck
while the others elect, and the health checks as load balancers probe them (HEAD, OPTIONS).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess, free_port
from ha_voice.robot.base import Action, Command, FencingToken
from ha_voice.robot.sim_server import SimRobotClient
from tests.integration.test_stuck_main_loop import frozen_thread


def _wait(condition: Callable[[], object], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _json(node: LocalNode, path: str) -> dict[str, Any] | None:
    response = node.get(path, timeout_s=2.0)
    if response is None:
        return None
    body = response.json()
    assert isinstance(body, dict)
    return body


def _log(node: LocalNode) -> str:
    return node.log_path.read_text(errors="replace")


def _gauge(node: LocalNode, name: str) -> float | None:
    response = node.get("/metrics", timeout_s=2.0)
    if response is None:
        return None
    found = re.search(rf"^{name} (\S+)$", response.text, re.M)
    assert found is not None, f"no {name} on /metrics"
    return float(found.group(1))


def _is_primary(node: LocalNode) -> float | None:
    return _gauge(node, "ha_voice_is_primary")


def _role_is_primary(node: LocalNode) -> float | None:
    """ha_voice_role{role="primary"}: the role gauge follows the lease as is_primary does."""
    response = node.get("/metrics", timeout_s=2.0)
    if response is None:
        return None
    found = re.search(r'^ha_voice_role\{role="primary"\} (\S+)$', response.text, re.M)
    assert found is not None, "no ha_voice_role on /metrics"
    return float(found.group(1))


async def _command_at_term(sim: SimRobotProcess, term: int) -> None:
    client = SimRobotClient(sim.host, sim.port)
    await client.connect()
    try:
        await client.execute(Command(Action.STOP_MOVE), FencingToken(term, 1, "old-cluster"))
    finally:
        await client.close()


def test_a_primary_the_robot_fences_moves_past_its_term_and_is_never_ready_meanwhile() -> None:
    """All state moved aside against a robot that has seen term 7: the first primary (term 1)
    is refused; it must not answer /cluster/primary 200 while it cannot command, and the
    cluster must end up serving in a term above 7."""
    with SimRobotProcess() as sim:
        asyncio.run(_command_at_term(sim, 7))  # the old cluster's last command
        with LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as cluster:
            cluster.start()
            answers: list[tuple[int, int]] = []

            def serving() -> str | None:
                for node in cluster.nodes.values():
                    response = node.get("/cluster/primary", timeout_s=1.0)
                    if response is not None:
                        answers.append((response.status_code, response.json()["term"]))
                        if response.status_code == 200:
                            return node.node_id
                return None

            primary = _wait(serving, 30.0, "no node ever served after the robot's fence")
            assert all(term > 7 for status, term in answers if status == 200), answers
            health = _json(cluster.nodes[primary], "/health")
            assert health is not None
            assert health["status"] == "ok", health
            assert health["term"] > 7
            answer = cluster.nodes[primary].post("/api/robot/command", {"command": "stop"})
            assert answer.status_code == 200, answer.text
            logs = "".join(_log(node) for node in cluster.nodes.values())
            assert "it has seen term 7" in logs
            assert "the robot has seen term 7" in logs  # the role change names the reason


def test_a_primary_fenced_after_its_takeover_stops_saying_it_serves() -> None:
    """Another primary commands the robot in a newer term (a two_node partition, another
    cluster on this robot): this primary's commands fail, and it says so instead of ok."""
    with SimRobotProcess() as sim, LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as c:
        c.start()
        primary = _wait(
            lambda: next(
                (n for n in c.nodes.values() if n.status_code("/cluster/primary", 1.0) == 200), None
            ),
            30.0,
            "no primary served",
        )
        health = _json(primary, "/health")
        assert health is not None
        assert health["status"] == "ok", health
        term = int(health["term"])
        asyncio.run(_command_at_term(sim, term + 5))  # the other primary's command
        answer = primary.post("/api/robot/command", {"command": "stand"})
        assert answer.status_code == 502, answer.text  # failed: fenced by the robot
        health = _json(primary, "/health")
        assert health is not None
        assert health["status"] == "degraded", health
        assert f"the robot follows term {term + 5}" in str(health["fault_reason"]), health
        assert primary.status_code("/cluster/primary", 2.0) == 503


def test_a_node_that_hears_no_peer_names_them_in_health_and_the_log() -> None:
    with LocalCluster(3) as cluster:
        lone = cluster.nodes["n1"]
        lone.start()

        def reason() -> str | None:
            health = _json(lone, "/health")
            why = None if health is None else health["fault_reason"]
            return why if why and "no quorum" in why else None

        why = _wait(reason, 20.0, "a lone node never said why it has no primary")
        for peer in ("n2", "n3"):
            other = cluster.nodes[peer]
            assert f"{peer} not heard at 127.0.0.1:{other.cluster_port}" in why
        assert "0 of 2 peers heard" in why
        view = _json(lone, "/cluster")
        assert view is not None
        assert view["status"] == "degraded"
        assert "no quorum: 0 of 2 peers heard" in view["reason"]
        assert _json(lone, "/health")["status"] == "degraded"  # type: ignore[index]
        assert _gauge(lone, "ha_voice_healthy") == 0.0
        _wait(lambda: "no quorum: 0 of 2 peers heard" in _log(lone), 20.0, "nothing logged")
        # Once a peer is back, the cluster elects and the node says it is fine again.
        cluster.nodes["n2"].start()
        _wait(
            lambda: (_json(lone, "/health") or {}).get("status") == "ok",
            30.0,
            "never ok with a quorum",
        )
        _wait(lambda: "no primary: resolved after" in _log(lone), 10.0, "its end not logged")
        assert _log(lone).count("no quorum: 0 of 2 peers heard") == 1  # not once per check


def test_a_go2_node_without_the_sdk_says_why_verbatim() -> None:
    with LocalCluster(3, node_flags={"n1": ("--robot=go2",)}) as cluster:
        node = cluster.nodes["n1"]
        # Whatever this machine has installed, the node must not find the SDK.
        node.argv[1:1] = ["-c", _WITHOUT_SDK]
        node.start()

        def fault() -> str | None:
            health = _json(node, "/health")
            why = None if health is None else health["fault_reason"]
            return why if why and "unitree_sdk2py" in why else None

        why = _wait(fault, 20.0, "the SDK's import error is not in fault_reason")
        assert why.startswith(
            "robot unreachable: not_connected: 4003: No module named 'unitree_sdk2py'"
        ), why
        assert "pip install" in why  # the install hint, verbatim
        health = _json(node, "/health")
        assert health is not None
        assert health["role"] == "fault"
        assert health["robot_connected"] is False
        _wait(
            lambda: "robot unreachable: not_connected: 4003: No module named" in _log(node),
            10.0,
            "not logged",
        )


# Runs the node as `python -c ...` with unitree_sdk2py made unimportable (a meta path finder
# that refuses it), then hands over to `python -m ha_voice`.
_WITHOUT_SDK = (
    "import runpy, sys\n"
    "class NoSdk:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'unitree_sdk2py':\n"
    "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
    "sys.meta_path.insert(0, NoSdk())\n"
    "sys.argv = ['ha_voice', *sys.argv[3:]]\n"
    "runpy.run_module('ha_voice', run_name='__main__', alter_sys=True)\n"
)


def _threads_but_main(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)


@contextmanager
def _frozen_threads(tids: list[int]) -> Iterator[None]:
    with frozen_thread(tids[0]):
        if len(tids) == 1:
            yield
        else:
            with _frozen_threads(tids[1:]):
                yield


def test_a_primary_whose_core_is_stuck_stops_reporting_primary_when_its_lease_ends() -> None:
    """Every thread of the primary but its main one (the core, its disk writer, the log) is
    stopped: the others elect; the stuck node's HTTP still answers, from the view its core last
    published. At no scrape may two nodes report ha_voice_is_primary 1, and the stuck one must
    not call itself primary once its lease is over."""
    with LocalCluster(3) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        stuck = cluster.nodes[found[0]]
        assert stuck.process is not None
        others = [n for n in cluster.nodes.values() if n is not stuck]
        rounds: list[dict[str, float | None]] = []
        roles: list[dict[str, float | None]] = []
        with _frozen_threads(_threads_but_main(stuck.process.pid)):
            successor = None
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and successor is None:
                rounds.append({n.node_id: _is_primary(n) for n in cluster.nodes.values()})
                successor = next((n for n in others if n.is_primary()), None)
            assert successor is not None, "nobody took over from a stuck primary"
            for _ in range(20):  # and for a while after
                rounds.append({n.node_id: _is_primary(n) for n in cluster.nodes.values()})
                roles.append({n.node_id: _role_is_primary(n) for n in cluster.nodes.values()})
            view = _json(stuck, "/cluster")
            assert view is not None
            assert view["role"] != "primary", view
            assert view["lease_remaining_s"] == 0
            assert stuck.status_code("/cluster/primary", timeout_s=2.0) == 503
            status = cluster.nodes[successor.node_id].status_code("/cluster/primary", 2.0)
            assert status == 200
        assert rounds
        for scrape in rounds + roles:
            assert sum(v or 0.0 for v in scrape.values()) <= 1.0, scrape
        assert roles[-1][stuck.node_id] == 0.0, roles[-1]  # not "primary" without a lease
        assert _is_primary(stuck) in (0.0, 1.0)  # it answers again once thawed


@pytest.fixture(scope="module")
def trio() -> Iterator[tuple[LocalCluster, str, str]]:
    with LocalCluster(3) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        primary = found[0]
        backup = next(n for n in cluster.nodes if n != primary)
        _wait(
            lambda: cluster.nodes[backup].status_code("/cluster/replica", 1.0) == 200,
            10.0,
            "the backup never followed",
        )
        yield cluster, primary, backup


@pytest.mark.parametrize("path", ["/cluster/primary", "/cluster/replica", "/health"])
def test_health_checks_answer_head_and_options_with_the_status_of_get(
    trio: tuple[LocalCluster, str, str], path: str
) -> None:
    cluster, primary, backup = trio
    for node_id in (primary, backup):
        url = cluster.nodes[node_id].url + path
        get = httpx.get(url)
        head = httpx.head(url)
        options = httpx.options(url)
        assert get.status_code in (200, 503)
        assert head.status_code == get.status_code, (node_id, head.text)
        assert options.status_code == get.status_code, (node_id, options.text)
        assert head.content == b""
        assert options.content == b""
        assert "OPTIONS" in options.headers["allow"]
    expected = {"/cluster/primary": (200, 503), "/cluster/replica": (503, 200)}.get(path)
    if expected is not None:
        for node_id, status in zip((primary, backup), expected, strict=True):
            assert httpx.options(cluster.nodes[node_id].url + path).status_code == status


def test_metrics_say_who_is_healthy_and_who_serves(trio: tuple[LocalCluster, str, str]) -> None:
    cluster, primary, backup = trio
    assert _gauge(cluster.nodes[primary], "ha_voice_serving") == 1.0
    assert _gauge(cluster.nodes[backup], "ha_voice_serving") == 0.0
    for node_id in (primary, backup):
        assert _gauge(cluster.nodes[node_id], "ha_voice_healthy") == 1.0


def test_health_reports_the_speech_model_loaded_not_the_one_configured(
    trio: tuple[LocalCluster, str, str],
) -> None:
    cluster, primary, _ = trio
    health = _json(cluster.nodes[primary], "/health")
    assert health is not None
    assert isinstance(health["whisper_model"], str)  # the seed's monitor prints it
    assert health["whisper_model"].startswith("not loaded: ")
    assert health["whisper_model_configured"] == "medium"


def test_status_shows_why_a_node_is_degraded() -> None:
    from ha_voice.status import fetch_cluster, render_table

    with LocalCluster(3) as cluster:
        lone = cluster.nodes["n1"]
        lone.start()
        _wait(lambda: lone.get("/cluster") is not None, 20.0, "never answered")
        view = _wait(
            lambda: v if (v := fetch_cluster(lone.url)).get("reason") else None, 20.0, "no reason"
        )
        assert "n1 is degraded: no " in render_table(view)


def test_haproxy_with_a_patroni_style_check_sends_traffic_to_the_primary_only(
    trio: tuple[LocalCluster, str, str], tmp_path: Path
) -> None:
    """`option httpchk OPTIONS /cluster/primary`, as Patroni's HAProxy template has it (HAProxy
    sends OPTIONS unless told otherwise): the primary is up, the backups down."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; .ci/run installs it)")
    cluster, primary, _ = trio
    port = free_port()
    servers = "\n".join(
        f"    server {n.node_id} 127.0.0.1:{n.api_port} check" for n in cluster.nodes.values()
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        "    timeout server 5s\n"
        f"listen voice\n    bind 127.0.0.1:{port}\n"
        "    option httpchk OPTIONS /cluster/primary\n    http-check expect status 200\n"
        "    default-server inter 100ms fall 2 rise 1\n"
        f"{servers}\n"
    )
    process = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def through_the_proxy() -> str | None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/cluster", timeout=2.0)
            except httpx.HTTPError:
                return None
            return str(response.json()["node"]) if response.status_code == 200 else None

        # HAProxy starts every server up and marks one down after two failed checks (200 ms):
        # wait until its checks have run, then every answer must come from the primary.
        def checked() -> bool | None:
            return all(through_the_proxy() == primary for _ in range(6)) or None

        _wait(checked, 10.0, "HAProxy never sent all traffic to the primary")
        answered = {through_the_proxy() for _ in range(20)}
        assert answered == {primary}, answered
    finally:
        process.terminate()
        process.wait(10)


def test_robot_reachable_on_metrics_follows_the_robot() -> None:
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as cluster,
    ):
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        nodes = list(cluster.nodes.values())
        for node in nodes:
            _wait(lambda n=node: _gauge(n, "ha_voice_robot_reachable") == 1.0, 10.0, "never 1")
        sim.close()
        for node in nodes:
            _wait(lambda n=node: _gauge(n, "ha_voice_robot_reachable") == 0.0, 20.0, "never 0")
            health = _json(node, "/health")
            assert health is not None
            assert health["robot_connected"] is False
