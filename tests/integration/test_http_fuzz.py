"""Hypothesis against every body route of three real nodes: no input gets a 5xx it should not.

Bodies are drawn as JSON built around each route's own fields (right names, wrong values),
arbitrary JSON, arbitrary bytes and JSON with NaN, sent with every kind of content type to any
node. The only 5xx allowed are the ones that are not about the input: 502 (the robot failed the
command: this cluster has no robot) and 503 (no primary could take it). Every refusal is an
ErrorBody. `HA_VOICE_HTTP_FUZZ_EXAMPLES` sets the number of inputs per route (CI: 100; the
benchmark in docs/benchmarks.md ran 25 000 per route).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ha_voice.local_cluster import LocalCluster

EXAMPLES = int(os.environ.get("HA_VOICE_HTTP_FUZZ_EXAMPLES", "100"))
ROUTE_FIELDS = {
    "/api/robot/command": ("command", "params", "duration_s", "idempotency_key"),
    "/api/voice/listen": ("text", "idempotency_key"),
    "/api/settings": ("language", "listening"),
    "/cluster/step-down": ("target",),
}
WORDS = ("stand", "sit", "stop", "move", "sta op", "ga zitten", "vx", "nl", "en", "n1", "n2")
CONTENT_TYPES = (
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/merge-patch+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain",
    "audio/wav",
    "application/octet-stream",
    "image/png",
    "application/",
    ";;;",
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(WORDS)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# Request handling is under test here, not authentication (tests/integration/test_auth.py):
# the clients sit on a trusted network.
TRUSTED = "--trusted-networks=127.0.0.0/8"


def _shaped(route: str) -> st.SearchStrategy[Any]:
    """Objects with the route's own field names (and sometimes others) and any values."""
    names = st.sampled_from(ROUTE_FIELDS[route]) | st.text(max_size=10)
    params = st.dictionaries(st.sampled_from(("vx", "vy", "vyaw")) | st.text(max_size=5), values)
    return st.dictionaries(names, values | params, max_size=5)


def _bodies(route: str) -> st.SearchStrategy[bytes]:
    as_json = (_shaped(route) | values).map(lambda v: json.dumps(v, allow_nan=True).encode())
    return as_json | st.binary(max_size=300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    flags = ("--api-rate-per-s=10000", "--api-rate-burst=100000", TRUSTED)
    with LocalCluster(3, extra_flags=flags) as running:
        running.start()
        assert running.wait_for_primary(20.0) is not None
        yield running
        for node in running.nodes.values():
            log = node.log_path.read_text(errors="replace")
            assert "bug answering" not in log, log[-3000:]


def _would_step_down(route: str, body: bytes) -> bool:
    """A valid step-down body: sending it would hand leadership over (not what is fuzzed)."""
    if route != "/cluster/step-down":
        return False
    try:
        value = json.loads(body) if body.strip() else {}
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) <= {"target"}


def _check(response: httpx.Response) -> None:
    status = response.status_code
    assert status < 500 or status in (502, 503), response.text[:300]
    assert len(response.content) < 4096
    if status >= 400 and status != 502:
        body = response.json()
        assert body["status"] == "error"
        assert len(body["error"]) <= 400


@pytest.mark.parametrize("route", sorted(ROUTE_FIELDS))
def test_no_body_on_any_route_gets_a_server_error(cluster: LocalCluster, route: str) -> None:
    urls = [node.url for node in cluster.nodes.values()]
    client = httpx.Client(timeout=30)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        body=_bodies(route),
        content_type=st.sampled_from(CONTENT_TYPES),
        url=st.sampled_from(urls),
    )
    def one(body: bytes, content_type: str | None, url: str) -> None:
        if _would_step_down(route, body):
            return
        headers = {} if content_type is None else {"content-type": content_type}
        _check(client.post(url + route, content=body, headers=headers))

    try:
        one()
    finally:
        client.close()
