"""`ha-voice check` against nodes that answer badly: a real HTTP server on the node's port (or
advertised over real mDNS, as any host on the LAN can) that answers wrong types, garbage,
too much, or a byte at a time. The check must report, never crash, and end within its budget.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from zeroconf import ServiceInfo, Zeroconf
from zeroconf.asyncio import AsyncZeroconf

from ha_voice import diagnose
from ha_voice.cluster.discovery import NODE_SERVICE_TYPE, node_instance
from ha_voice.interfaces import local_ipv4
from ha_voice.local_cluster import free_port
from tests.integration.test_check import _assert_shape, _check, _config, _only, _run, secrets

__all__ = ["secrets"]  # the fixture, shared with test_check.py

_CLUSTER_VIEW = {"node": "n1", "role": "primary", "term": 3, "leader": "n1"}
_HEALTH = {"node": "n1", "status": "ok"}


class FakeNode:
    """An HTTP server on `host` that answers each path with fixed bytes (JSON for other
    values), optionally a byte every `trickle_s` seconds; 404 for other paths."""

    def __init__(self, answers: dict[str, Any], trickle_s: float = 0.0, host: str = "127.0.0.1"):
        self.answers = answers
        self.trickle_s = trickle_s
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeNode:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5.0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = fake.answers.get(self.path.split("?")[0])
                if answer is None:
                    self.send_error(404)
                    return
                body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not fake.trickle_s:
                    self.wfile.write(body)
                    return
                for byte in body:
                    if fake.stopping.wait(fake.trickle_s):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the check gave up on us
                        return

            def log_message(self, *_: object) -> None:
                pass

        return Handler


def _values(secrets: dict[str, Any], port: int, **extra: Any) -> dict[str, Any]:
    return {**secrets, "node_id": "n1", "port": port, "peers": ["n2"], **extra}


def _members(members: Any) -> dict[str, Any]:
    return {"/health": _HEALTH, "/cluster": {**_CLUSTER_VIEW, "members": members}}


# Each: what a node (or something on its port) answered that made check crash, or its neighbour.
_BAD_ANSWERS = {
    "members not a list": _members(5),
    "members null": _members(None),
    "members of wrong types": _members([7, {"node": ["x"], "self": True}, {"node": {"a": 1}}]),
    "metrics not Prometheus text": {**_members([]), "/metrics": b"ha_voice_heartbeat_rtt {{{\n"},
    "metrics not UTF-8": {**_members([]), "/metrics": b"\xff\xfe\x00garbage"},
    "primary api not a URL": {
        "/health": _HEALTH,
        "/cluster": {
            **_CLUSTER_VIEW,
            "node": "n2",
            "members": [{"node": "n1", "api": "http://[bad"}, {"node": "n2", "self": True}],
        },
    },
    "primary api not a string": {
        "/health": _HEALTH,
        "/cluster": {**_CLUSTER_VIEW, "node": "n2", "members": [{"node": "n1", "api": 5}]},
    },
    "health a list": {"/health": [1, 2], "/cluster": _members([])["/cluster"]},
    "health fields of wrong types": {
        "/health": {"node": "n1", "status": ["ok"], "speech": 3, "fault_reason": {"x": 1}},
        "/cluster": {**_CLUSTER_VIEW, "role": "r" * 100_000, "members": []},
    },
    "health not UTF-8": {"/health": b"\xff\xfe{", "/cluster": b"\x00"},
    "health too long": {"/health": b" " * (2 << 20) + b"{}", "/cluster": {}},
    "health nested too deep": {"/health": b"[" * 200_000 + b"]" * 200_000, "/cluster": {}},
}


@pytest.mark.parametrize("answers", _BAD_ANSWERS.values(), ids=_BAD_ANSWERS.keys())
def test_bad_answers_on_the_node_port_are_findings_not_crashes(
    tmp_path: Path, secrets: dict[str, Any], answers: dict[str, Any]
) -> None:
    with FakeNode(answers) as fake:
        done = _run("--json", "--config", _config(tmp_path, _values(secrets, fake.port)))
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    _assert_shape(done.returncode, report)
    assert done.returncode in (1, 2)
    assert all("the check itself failed" not in f["detail"] for f in report["checks"])
    assert all(len(f["detail"]) < 2000 for f in report["checks"])


def test_a_node_that_answers_a_byte_at_a_time_is_given_up_on(
    tmp_path: Path, secrets: dict[str, Any]
) -> None:
    # A byte every 0.2 s: each read is within httpx's timeout, so only a whole-request deadline
    # ends it. Before, this took minutes; now each request ends at http_timeout_s (1 s).
    answers = {"/health": _HEALTH, "/cluster": _members([]), "/metrics": b"#" * 10_000}
    with FakeNode(answers, trickle_s=0.2) as fake:
        started = time.monotonic()
        done = _run("--json", "--config", _config(tmp_path, _values(secrets, fake.port)))
        took_s = time.monotonic() - started
    report = json.loads(done.stdout)
    _assert_shape(done.returncode, report)
    node = _only(report, "node")
    assert node["level"] == "warn"
    assert "no whole answer within 1 s" in node["detail"]
    assert took_s < 60.0, f"check took {took_s:.0f} s"  # generous: the budget is 10 s


def _advertise(zc: Zeroconf, cluster: str, node_id: str, host: str, api_port: int) -> None:
    name = f"{node_instance(cluster, node_id)}.{NODE_SERVICE_TYPE}"
    txt = {
        "cluster": cluster,
        "node": node_id,
        "priority": "100",
        "api_port": str(api_port),
        "version": "1",
    }
    info = ServiceInfo(
        NODE_SERVICE_TYPE,
        name,
        port=free_port(),
        properties=txt,
        server=f"{node_id}-fake.local.",
        parsed_addresses=[host],
    )
    zc.register_service(info)


@pytest.fixture
def lan_address() -> str:
    addresses = [address for _, address in local_ipv4() if not address.startswith("127.")]
    if not addresses:
        pytest.skip("no non-loopback IPv4 address for mDNS")
    return addresses[0]


@pytest.fixture
def zc() -> Iterator[Zeroconf]:
    zeroconf = Zeroconf()
    yield zeroconf
    zeroconf.close()


@pytest.mark.parametrize("trickle_s", [0.0, 0.2], ids=["garbage", "a byte at a time"])
def test_a_stranger_advertised_by_mdns_is_ignored_and_named(
    tmp_path: Path,
    secrets: dict[str, Any],
    lan_address: str,
    zc: Zeroconf,
    trickle_s: float,
) -> None:
    # Any host on the LAN can advertise itself in the cluster, without a key.
    answers = {"/health": b" " * 100 + b"[]", "/cluster": _members(5)["/cluster"]}
    with FakeNode(answers, trickle_s, host=lan_address) as fake:
        _advertise(zc, secrets["cluster"], "evil", lan_address, fake.port)
        closed = free_port()
        values = _values(secrets, closed, mdns=True)
        code, report = _check("--mdns-wait", "3", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    peers = _only(report, "peers")
    assert peers["level"] == "warn"
    assert "evil advertise cluster" in peers["detail"]
    said = "no whole answer" if trickle_s else "which is not an ha-voice node's answer"
    assert f"http://{lan_address}:{fake.port}: " in peers["detail"]
    assert said in peers["detail"]


def test_a_closed_port_is_still_just_not_running(tmp_path: Path, secrets: dict[str, Any]) -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # held, never listened on: connections are refused
        port = bound.getsockname()[1]
        code, report = _check("--config", _config(tmp_path, _values(secrets, port)))
    _assert_shape(code, report)
    assert _only(report, "node")["detail"].startswith("no ha-voice node answers at ")


def test_mdns_names_beyond_a_cluster_s_size_are_not_all_resolved(lan_address: str) -> None:
    # A host on the LAN can announce any number of names, in our cluster and in others:
    # `find_records` resolves only ours, and only the first _MAX_RESOLVED of them.
    cluster = f"flood{free_port()}"

    async def flood_and_find() -> list[Any]:
        azc = AsyncZeroconf()
        try:
            pending = []
            for i in range(40):
                for name in (cluster, f"{cluster}x"):
                    txt = {"cluster": name, "node": f"n{i}", "priority": "100", "api_port": "9"}
                    txt["version"] = "1"
                    info = ServiceInfo(
                        NODE_SERVICE_TYPE,
                        f"{node_instance(name, f'n{i}')}.{NODE_SERVICE_TYPE}",
                        port=1000 + i,
                        properties=txt,
                        server=f"n{i}-{name}.local.",
                        parsed_addresses=[lan_address],
                    )
                    pending.append(
                        await azc.async_register_service(info, cooperating_responders=True)
                    )
            await asyncio.gather(*pending)
            return await asyncio.to_thread(diagnose.find_records, cluster, 1.5)
        finally:
            await azc.async_close()

    records = asyncio.run(flood_and_find())
    assert 0 < len(records) <= diagnose._MAX_RESOLVED
    assert {r.cluster for r in records} == {cluster}
