"""Three real daemons with an API token: every mutating route, every kind of credential, and
forwarding markers forged, replayed, stale or sealed for another body.

The cluster trusts 10.9.0.0/16 without a token (no test client is there: loopback is not), so
a sealed forward can claim such a client and the primary's own check of the network is seen.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ha_voice import clock
from ha_voice.api.forward_seal import ForwardSeal, Recipient
from ha_voice.local_cluster import LocalCluster
from ha_voice.tokens import new_token

ROUTES: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/robot/command", {"command": "stop"}),
    ("/api/voice/listen", {"text": "stop"}),
    ("/api/settings", {"listening": True}),
    ("/api/voice/start", None),
    ("/api/voice/stop", None),
    ("/cluster/step-down", None),
]
FORWARDING = [route for route in ROUTES if route[0] != "/cluster/step-down"]
# Changes nothing, yet needs a token: it takes a model's time (docs/voice.md); its 401s are
# tested with real recordings in tests/integration/test_voice_audio.py.
SPEECH_WORK = {"/v1/audio/transcriptions"}
READS = [
    "/health",
    "/metrics",
    "/cluster",
    "/cluster/primary",
    "/cluster/replica",
    "/api/commands",
    "/api/voice/status",
    "/api/journal",
    "/api/settings",
    "/docs",
    "/openapi.json",
]
TRUSTED = "10.9.0.0/16"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, extra_flags=(f"--trusted-networks={TRUSTED}",)) as running:
        running.start()
        assert running.wait_for_primary(20.0) is not None
        yield running


def roles(cluster: LocalCluster) -> tuple[str, str]:
    """The primary and a backup that follows it."""
    found = cluster.wait_for_primary(20.0)
    assert found is not None
    primary = found[0]
    backup = next(n for n in cluster.nodes if n != primary)
    view = cluster.wait_for(backup, lambda v: v["leader"] == primary, 10.0)
    assert view is not None
    return primary, backup


def post(
    cluster: LocalCluster, node: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    url = cluster.nodes[node].url + path
    return httpx.post(url, json=body, headers=headers, timeout=15.0)


def listen_again(cluster: LocalCluster, node: str, path: str) -> None:
    """Before a transcript: listening on (another test may have stopped it cluster-wide)."""
    if path == "/api/voice/listen":
        assert cluster.nodes[node].post("/api/voice/start").status_code == 200


def message(response: httpx.Response) -> str:
    body = response.json()
    return str(body.get("error") or body.get("detail"))


def counter(cluster: LocalCluster, node: str, name: str, reason: str) -> float:
    response = cluster.nodes[node].get("/metrics", timeout_s=5.0)
    assert response is not None
    found = re.search(rf'^{name}_total{{reason="{reason}"}} (\S+)$', response.text, re.M)
    assert found is not None, name
    return float(found[1])


def last_source(cluster: LocalCluster, node: str) -> str:
    response = cluster.nodes[node].get("/api/journal?limit=1000", timeout_s=5.0)
    assert response is not None
    entries = response.json()["entries"]
    return str(entries[-1]["source"])


def refusals(token: str) -> list[tuple[str, dict[str, str], str]]:
    """(what, headers, reason) for every kind of credential that must get 401."""
    return [
        ("no credentials", {}, "no_credentials"),
        ("an unknown token", {"Authorization": f"Bearer {new_token()}"}, "invalid_token"),
        ("one character short", {"Authorization": f"Bearer {token[:-1]}"}, "invalid_token"),
        ("one character long", {"Authorization": f"Bearer {token}x"}, "invalid_token"),
        ("twice the token", {"Authorization": f"Bearer {token}{token}"}, "invalid_token"),
        ("a bearer without a token", {"Authorization": "Bearer"}, "invalid_token"),
        ("another scheme", {"Authorization": f"Basic {token}"}, "wrong_scheme"),
        ("no scheme", {"Authorization": token}, "wrong_scheme"),
    ]


# --- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_every_mutating_route_refuses_anything_but_a_configured_token(
    cluster: LocalCluster, path: str, body: Any
) -> None:
    token = str(cluster.token)
    for node in roles(cluster):
        for what, headers, reason in refusals(token):
            before = counter(cluster, node, "ha_voice_api_auth_refusals", reason)
            answer = post(cluster, node, path, body, headers)
            assert answer.status_code == 401, (node, what, answer.text)
            challenge = answer.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="ha-voice"'), what
            assert ('error="invalid_token"' in challenge) == (reason == "invalid_token"), what
            assert "api_token_file" in message(answer), what
            assert token not in answer.text, what
            assert "x-ha-voice-forwarded-by" not in answer.headers, what  # refused, not forwarded
            assert counter(cluster, node, "ha_voice_api_auth_refusals", reason) == before + 1


@pytest.mark.parametrize(("path", "body"), ROUTES)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_a_configured_token_passes_whatever_the_scheme_casing(
    cluster: LocalCluster, path: str, body: Any, scheme: str
) -> None:
    _primary, backup = roles(cluster)  # on a backup, so that step-down is refused (409)
    listen_again(cluster, backup, path)
    answer = post(cluster, backup, path, body, {"Authorization": f"{scheme} {cluster.token}"})
    assert answer.status_code in (200, 409, 502), answer.text
    if path == "/cluster/step-down":
        assert answer.status_code == 409
    else:
        assert answer.headers["x-ha-voice-forwarded-by"] == backup


@pytest.mark.parametrize("path", READS)
def test_reads_need_no_token(cluster: LocalCluster, path: str) -> None:
    for node in roles(cluster):
        answer = httpx.get(cluster.nodes[node].url + path, timeout=5.0)
        assert answer.status_code in (200, 503), (path, answer.status_code)


def test_the_journal_records_who_sent_a_command_and_through_whom(cluster: LocalCluster) -> None:
    primary, backup = roles(cluster)
    auth = cluster.auth_headers
    post(cluster, primary, "/api/robot/command", {"command": "stop"}, auth)
    assert last_source(cluster, primary) == "local@127.0.0.1"
    post(cluster, backup, "/api/robot/command", {"command": "stop"}, auth)
    assert last_source(cluster, primary) == f"local@127.0.0.1 via {backup}"


# --- forged markers ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_a_forged_marker_grants_nothing_and_is_counted(
    cluster: LocalCluster, path: str, body: Any
) -> None:
    primary, backup = roles(cluster)
    for node in (primary, backup):
        other = next(n for n in cluster.nodes if n != node)
        before = counter(cluster, node, "ha_voice_forward_markers_ignored", "unsigned")
        forged = {"X-HA-Voice-Forwarded-By": other}
        answer = post(cluster, node, path, body, forged)
        assert answer.status_code == 401, answer.text
        assert counter(cluster, node, "ha_voice_forward_markers_ignored", "unsigned") == before + 1


@pytest.mark.parametrize(("path", "body"), FORWARDING)
def test_a_forged_marker_neither_stops_forwarding_nor_lands_in_the_journal(
    cluster: LocalCluster, path: str, body: Any
) -> None:
    primary, backup = roles(cluster)
    third = next(n for n in cluster.nodes if n not in (primary, backup))
    forged = {**cluster.auth_headers, "X-HA-Voice-Forwarded-By": third}
    listen_again(cluster, primary, path)
    direct = post(cluster, primary, path, body, forged)
    assert direct.status_code in (200, 502), direct.text
    listen_again(cluster, primary, path)
    forwarded = post(cluster, backup, path, body, forged)
    assert forwarded.status_code in (200, 502), forwarded.text  # forwarded, not 503
    assert forwarded.headers["x-ha-voice-forwarded-by"] == backup
    if path == "/api/robot/command":
        assert last_source(cluster, primary) == f"local@127.0.0.1 via {backup}"


@pytest.mark.parametrize(
    ("seal", "reason"),
    [
        ("v2;t=1;n=x;r=n1;a=1.2.3.4;p=network;b=x;m=x", "bad_version"),  # wall-clock seals
        ("v1;t=1;n=x;a=1.2.3.4;p=network;b=x;m=x", "bad_version"),  # before recipients
        ("v3;i=0000000000000001;t=oops", "malformed"),
        ("garbage", "malformed"),
    ],
)
def test_a_marker_with_a_broken_seal_is_counted_by_reason(
    cluster: LocalCluster, seal: str, reason: str
) -> None:
    primary, backup = roles(cluster)
    before = counter(cluster, primary, "ha_voice_forward_markers_ignored", reason)
    headers = {"X-HA-Voice-Forwarded-By": backup, "X-HA-Voice-Forward-Auth": seal}
    answer = post(cluster, primary, "/api/settings", {"listening": True}, headers)
    assert answer.status_code == 401
    assert counter(cluster, primary, "ha_voice_forward_markers_ignored", reason) == before + 1


# --- sealed forwards, as a member (or whoever holds the cluster key) makes them ---------------


def sealed(
    cluster: LocalCluster,
    forwarder: str,
    to: str,
    path: str,
    body: bytes,
    address: str = "10.9.1.2",
    principal: str = "network",
    key: bytes | None = None,
    boot: int | None = None,
    to_boot: int | None = None,
) -> dict[str, str]:
    """The headers of a forward `forwarder` seals for `to`, in its running boot unless `boot`,
    for `to`'s running boot unless `to_boot`; every node's monotonic clock is this host's."""
    if boot is None:
        boot = running_boot(cluster, forwarder) if forwarder in cluster.nodes else 1
    recipient = Recipient(to, running_boot(cluster, to) if to_boot is None else to_boot, 0.0)
    maker = ForwardSeal(
        cluster=cluster.cluster,
        keys=(key or cluster.key_file.read_bytes(),),
        node_id=forwarder,
        members=list(cluster.nodes),
    )
    seal = maker.seal("POST", path, address, principal, body, recipient, boot=boot)
    return {
        "X-HA-Voice-Forwarded-By": forwarder,
        "X-HA-Voice-Forward-Auth": seal,
        "Content-Type": "application/json",
    }


def running_boot(cluster: LocalCluster, node: str) -> int:
    view = cluster.nodes[node].cluster()
    assert view is not None
    return int(view["boot"], 16)


def send(cluster: LocalCluster, node: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    url = cluster.nodes[node].url + path
    return httpx.post(url, content=body, headers=headers, timeout=15.0)


COMMAND = b'{"command": "stop"}'


def test_a_sealed_forward_is_judged_for_the_client_it_names(cluster: LocalCluster) -> None:
    primary, backup = roles(cluster)
    path = "/api/robot/command"
    headers = sealed(cluster, backup, primary, path, COMMAND)  # a client of 10.9.0.0/16, no token
    answer = send(cluster, primary, path, COMMAND, headers)
    assert answer.status_code == 502, answer.text  # accepted: this node has no robot
    assert last_source(cluster, primary) == f"10.9.1.2 via {backup}"
    outside = sealed(cluster, backup, primary, path, COMMAND, address="192.0.2.1")
    refused = send(cluster, primary, path, COMMAND, outside)
    assert refused.status_code == 401
    assert "192.0.2.1 is not in trusted_networks" in message(refused)
    assert f"(forwarded by {backup})" in message(refused)


def test_a_replayed_forward_is_not_believed_again(cluster: LocalCluster) -> None:
    primary, backup = roles(cluster)
    path = "/api/settings"
    body = b'{"listening": true}'
    headers = sealed(cluster, backup, primary, path, body)
    assert send(cluster, primary, path, body, headers).status_code == 200
    before = counter(cluster, primary, "ha_voice_forward_markers_ignored", "replay")
    again = send(cluster, primary, path, body, headers)
    assert again.status_code == 401  # judged as loopback's own request: no token
    assert counter(cluster, primary, "ha_voice_forward_markers_ignored", "replay") == before + 1


def test_a_stale_forward_is_not_believed(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealed for 130 s ago on the primary's monotonic clock (this host's)."""
    primary, backup = roles(cluster)
    body = b'{"listening": true}'
    now_s = clock.monotonic()
    monkeypatch.setattr(clock, "monotonic", lambda: now_s - 130.0)
    headers = sealed(cluster, backup, primary, "/api/settings", body)
    monkeypatch.undo()
    before = counter(cluster, primary, "ha_voice_forward_markers_ignored", "stale")
    assert send(cluster, primary, "/api/settings", body, headers).status_code == 401
    assert counter(cluster, primary, "ha_voice_forward_markers_ignored", "stale") == before + 1


def test_a_forward_sealed_in_a_boot_the_primary_did_not_admit_is_not_believed(
    cluster: LocalCluster,
) -> None:
    """A key holder naming the backup, but not in the backup's running boot (a dead boot of
    it, or an impostor that never answered the primary's challenge)."""
    primary, backup = roles(cluster)
    running = running_boot(cluster, backup)
    body = b'{"listening": true}'
    headers = sealed(cluster, backup, primary, "/api/settings", body, boot=running ^ 1)
    before = counter(cluster, primary, "ha_voice_forward_markers_ignored", "unknown_boot")
    assert send(cluster, primary, "/api/settings", body, headers).status_code == 401
    assert counter(cluster, primary, "ha_voice_forward_markers_ignored", "unknown_boot") == (
        before + 1
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("body", "body_mismatch"),
        ("path", "bad_mac"),
        ("key", "bad_mac"),
        ("stranger", "not_member"),
        ("previous boot", "wrong_recipient"),  # made for the primary before it restarted
    ],
)
def test_a_seal_for_something_else_is_not_believed(
    cluster: LocalCluster, change: str, reason: str
) -> None:
    primary, backup = roles(cluster)
    path = "/api/robot/command"
    if change == "body":
        headers = sealed(cluster, backup, primary, path, b'{"command": "sit"}')
    elif change == "path":
        headers = sealed(cluster, backup, primary, "/api/settings", COMMAND)
    elif change == "key":
        headers = sealed(cluster, backup, primary, path, COMMAND, key=b"x" * 32)
    elif change == "previous boot":
        previous = running_boot(cluster, primary) ^ 1
        headers = sealed(cluster, backup, primary, path, COMMAND, to_boot=previous)
    else:
        headers = sealed(cluster, "n9", primary, path, COMMAND)
    before = counter(cluster, primary, "ha_voice_forward_markers_ignored", reason)
    assert send(cluster, primary, path, COMMAND, headers).status_code == 401
    assert counter(cluster, primary, "ha_voice_forward_markers_ignored", reason) == before + 1


def test_a_seal_for_the_primary_is_worth_nothing_at_another_member(cluster: LocalCluster) -> None:
    """As a seal sniffed from a backup's forward over plain HTTP would be replayed elsewhere."""
    primary, backup = roles(cluster)
    third = next(n for n in cluster.nodes if n not in (primary, backup))
    path = "/api/settings"
    body = b'{"listening": true}'
    headers = sealed(cluster, backup, primary, path, body)  # for a trusted client, no token
    before = counter(cluster, third, "ha_voice_forward_markers_ignored", "wrong_recipient")
    refused = send(cluster, third, path, body, headers)
    assert refused.status_code == 401, refused.text  # judged as loopback's own: no token
    after = counter(cluster, third, "ha_voice_forward_markers_ignored", "wrong_recipient")
    assert after == before + 1
    assert send(cluster, primary, path, body, headers).status_code == 200  # where it was sent


def raw_post(cluster: LocalCluster, node: str, head: dict[str, str], body: bytes) -> bytes:
    """Send a request head and then `body` as it is (framing included, unfinished if so), and
    return the status line of whatever answer comes first."""
    port = cluster.nodes[node].api_port
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    with socket.create_connection(("127.0.0.1", port), timeout=60.0) as sock:
        sock.sendall(f"POST /api/robot/command HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
        with contextlib.suppress(OSError):  # the node may close once it has answered
            sock.sendall(body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_valid_seal_buys_no_larger_body(cluster: LocalCluster, framing: str) -> None:
    """413 as soon as the body is known to pass api_max_body_bytes (16 KiB), as without a seal:
    the unfinished body below would leave a node that read it all waiting, then 408."""
    primary, backup = roles(cluster)
    path = "/api/robot/command"
    headers = {**sealed(cluster, backup, primary, path, COMMAND), **cluster.auth_headers}
    if framing == "chunked":
        head = {**headers, "Transfer-Encoding": "chunked"}
        body = b"8000\r\n" + b" " * 0x8000 + b"\r\n"  # 32 KiB, and no last chunk
    else:
        head = {**headers, "Content-Length": str(300 << 20)}  # 300 MB announced
        body = b" " * 0x8000
    assert raw_post(cluster, primary, head, body) == b"HTTP/1.1 413 Request Entity Too Large"
    small = send(cluster, primary, path, COMMAND, sealed(cluster, backup, primary, path, COMMAND))
    assert small.status_code == 502, small.text  # a sealed forward within the limit still goes


def test_a_sealed_forward_is_never_forwarded_again(cluster: LocalCluster) -> None:
    primary, backup = roles(cluster)
    third = next(n for n in cluster.nodes if n not in (primary, backup))
    path = "/api/settings"
    body = b'{"listening": true}'
    headers = {**sealed(cluster, third, backup, path, body), **cluster.auth_headers}
    answer = send(cluster, backup, path, body, headers)
    assert answer.status_code == 503
    assert f"forwarded by '{third}'" in answer.json()["error"]


def test_a_token_the_backup_knows_is_checked_again_by_the_primary(cluster: LocalCluster) -> None:
    primary, backup = roles(cluster)
    path = "/api/robot/command"
    # What a backup would send for a client whose token it accepted, had the token been wrong.
    headers = {
        **sealed(cluster, backup, primary, path, COMMAND, "127.0.0.1", "token:local"),
        "Authorization": f"Bearer {new_token()}",
    }
    answer = send(cluster, primary, path, COMMAND, headers)
    assert answer.status_code == 401
    assert f"(forwarded by {backup})" in message(answer)


def test_every_route_that_changes_state_and_only_those_need_a_token(cluster: LocalCluster) -> None:
    """A guard for routes yet to come: every POST/PUT/PATCH/DELETE depends on AUTHENTICATED
    (speech work included)."""
    response = cluster.nodes["n1"].get("/openapi.json", timeout_s=5.0)
    assert response is not None
    spec = response.json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    mutating = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            guarded = operation.get("security") == [{"bearer": []}]
            assert guarded == (method != "get"), (method, path)
            assert ("401" in operation["responses"]) == guarded, (method, path)
            if guarded:
                mutating.add(path)
    assert mutating == {path for path, _body in ROUTES} | SPEECH_WORK
