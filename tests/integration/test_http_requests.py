"""Every request the API refuses is refused clearly, on every node, and no input reaches a 500.

Three real `ha-voice run` processes and a simulated Go2 (`ha-voice sim-robot`). Rate limits
are lifted here (tests/integration/test_http_limits.py has them), so that only the body decides.
Each refusal must be one of 400/413/415/422 with a JSON `ErrorBody` that names the problem and
echoes at most a short prefix of what was sent; at the end, no node has logged a bug.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

# Request handling is under test here, not authentication (tests/integration/test_auth.py):
# the clients sit on a trusted network.
TRUSTED = "--trusted-networks=127.0.0.0/8"
ROUTES = ("/api/robot/command", "/api/voice/listen", "/api/settings", "/cluster/step-down")
LONG = "Z" * 20_000  # over the 16 KiB limit once in a body
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00" + b"\0" * 64


@dataclass
class Rig:
    cluster: LocalCluster
    primary: str
    backup: str

    def url(self, node: str) -> str:
        return self.cluster.nodes[node].url

    @property
    def nodes(self) -> tuple[str, str]:
        return self.primary, self.backup


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    flags = ("--api-rate-per-s=10000", "--api-rate-burst=100000", TRUSTED)
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}", *flags)) as cluster,
    ):
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        primary = found[0]
        time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
        backup = next(n for n in cluster.nodes if n != primary)
        yield Rig(cluster, primary, backup)
        for node in cluster.nodes.values():
            log = node.log_path.read_text(errors="replace")
            assert "bug answering" not in log, log[-3000:]
            assert "Exception in ASGI application" not in log, log[-3000:]


def _post(url: str, body: bytes | None, content_type: str | None, **kw: Any) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    headers.update(kw.pop("headers", {}))
    return httpx.post(url, content=body, headers=headers, timeout=20, **kw)


def assert_refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A clear refusal: one of `statuses`, an ErrorBody, short, echoing no long input."""
    assert response.status_code in statuses, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.content) < 2048
    body = response.json()
    assert body["status"] == "error"
    assert isinstance(body["error"], str)
    assert "\n" not in body["error"]
    assert "Z" * 65 not in response.text
    return body  # type: ignore[no-any-return]


# --- what every body route refuses ------------------------------------------------------------

MULTIPART = (
    b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n",
    "multipart/form-data; boundary=x",
)
COMMON: dict[str, tuple[bytes, str | None, tuple[int, ...]]] = {
    "brace": (b"{", None, (400,)),
    "truncated": (b'{"command": "stand"', "application/json", (400,)),
    "form fields": (b"a=b&c=d", "application/x-www-form-urlencoded", (415,)),
    "multipart": (*MULTIPART, (415,)),
    "raw wav": (WAV, "audio/wav", (415,)),
    "octet-stream": (bytes(range(256)), "application/octet-stream", (415,)),
    "text/plain": (b'{"text": "sta op"}', "text/plain", (415,)),
    "not utf-8": (b'{"text": "\xff\xfe"}', None, (400,)),
    "lone surrogate": (b'{"text": "\\ud800"}', None, (400,)),
    "null": (b"null", None, (422,)),
    "list": (b"[]", None, (422,)),
    "string": (b'"sta op"', None, (422,)),
    "number": (b"1", None, (422,)),
    "NaN alone": (b"NaN", None, (400, 422)),
    "deep nesting": (b"[" * 10_000 + b"]" * 10_000, None, (400, 413, 422)),
    "over the limit": (json.dumps({"text": LONG}).encode(), None, (413,)),
}
# /api/voice/listen takes audio: a form with no recording, a WAV header without samples and a
# JSON body as large as base64 audio are judged as such (tests/integration/test_voice_audio.py).
LISTEN = "/api/voice/listen"
LISTEN_STATUSES: dict[str, tuple[int, ...]] = {
    "multipart": (422,),
    "raw wav": (422,),
    "over the limit": (422,),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", sorted(COMMON))
def test_malformed_bodies_are_refused_on_every_route_and_node(
    rig: Rig, route: str, case: str
) -> None:
    body, content_type, statuses = COMMON[case]
    if route == LISTEN:
        statuses = LISTEN_STATUSES.get(case, statuses)
    for node in rig.nodes:
        assert_refused(_post(rig.url(node) + route, body, content_type), *statuses)


def test_an_empty_body_is_400_where_one_is_needed(rig: Rig) -> None:
    for node in rig.nodes:
        for route in ROUTES[:3]:
            for empty in (b"", b"  \r\n"):
                body = assert_refused(_post(rig.url(node) + route, empty, None), 400)
                assert "empty body" in body["error"]


def test_audio_on_listen_is_decoded_and_a_broken_wav_named(rig: Rig) -> None:
    for node in rig.nodes:
        response = _post(rig.url(node) + LISTEN, WAV, "audio/wav")
        body = assert_refused(response, 422)
        assert "not a valid WAV upload" in body["error"]
        body = assert_refused(_post(rig.url(node) + LISTEN, WAV, "image/png"), 415)
        assert "application/json" in body["accepted"]
        assert any(accepted.startswith("audio/wav") for accepted in body["accepted"])


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(rig: Rig) -> None:
    for node in rig.nodes:
        local = rig.cluster.nodes[node]
        for route in ROUTES:
            head = (
                f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
            )
            with socket.create_connection((local.host, local.api_port), timeout=20) as sock:
                sock.sendall(head.encode())  # and not one byte of the 100 MB
                raw = b"".join(iter(lambda: sock.recv(65536), b""))  # until the server closes
            status, _, rest = raw.partition(b"\r\n")
            assert status == b"HTTP/1.1 413 Request Entity Too Large" or b" 413 " in status
            body = json.loads(rest.partition(b"\r\n\r\n")[2])
            # listen reads base64 audio: 8 MiB of it (audio_max_bytes) and room for the JSON
            assert body["limit_bytes"] == (11_185_836 if route == LISTEN else 16_384)


def test_a_chunked_body_over_the_limit_is_413(rig: Rig) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(64):
            yield b"Z" * 1024

    for node in rig.nodes:
        response = httpx.post(rig.url(node) + "/api/voice/listen", content=chunks(), timeout=20)
        assert_refused(response, 413)


# Field by field: each wrong value, and the field its answer must name.
FIELDS: dict[str, list[tuple[str, str, int]]] = {
    "/api/robot/command": [
        ('{"command": "move", "duration_s": NaN}', "duration_s", 422),
        ('{"command": "move", "duration_s": Infinity}', "duration_s", 422),
        ('{"command": "move", "duration_s": -Infinity}', "duration_s", 422),
        ('{"command": "move", "duration_s": 1e999}', "duration_s", 422),
        ('{"command": "move", "params": {"vx": NaN}}', "params.vx", 422),
        ('{"command": "move", "params": {"vyaw": Infinity}}', "params.vyaw", 422),
        ('{"command": "move", "duration_s": "1"}', "duration_s", 422),
        ('{"command": "move", "duration_s": true}', "duration_s", 422),
        ('{"command": "move", "duration_s": -1}', "duration_s", 422),
        ('{"command": "move", "duration_s": 61}', "duration_s", 422),
        ('{"command": 5}', "command", 422),
        ('{"command": null}', "command", 422),
        ('{"command": ["stand"]}', "command", 422),
        ('{"command": {"a": 1}}', "command", 422),
        ('{"command": "' + "x" * 65 + '"}', "command", 422),
        ('{"command": "fly"}', "command", 400),
        ('{"params": {}}', "command", 422),
        ('{"command": "move", "params": [1]}', "params", 422),
        ('{"command": "move", "params": "vx"}', "params", 422),
        ('{"command": "move", "params": {"vx": "0.5"}}', "params.vx", 422),
        ('{"command": "move", "params": {"speed": 1}}', "params", 400),
        ('{"command": "move", "params": {"vx": 99}}', "params", 400),
        ('{"command": "stand", "params": {"vx": 0.1}}', "params", 400),
        ('{"command": "stand", "idempotency_key": 5}', "idempotency_key", 422),
        ('{"command": "stand", "idempotency_key": ""}', "idempotency_key", 422),
        ('{"command": "stand", "idempotency_key": "a b"}', "idempotency_key", 422),
        ('{"command": "stand", "idempotency_key": "' + "k" * 65 + '"}', "idempotency_key", 422),
        ('{"command": "stand", "duration": 1}', "duration", 422),
        ('{"command": "stand", "duration_s": 1}', "duration_s", 422),
        ('{"command": "stop", "duration_s": 0}', "duration_s", 422),
        ('{"command": "stand", "command": "sit"}', "command", 422),
        ('{"command": "move", "params": {"vx": 0.1, "vx": 0.5}}', "params.vx", 422),
    ],
    "/api/voice/listen": [
        ('{"text": 5}', "text", 422),
        ('{"text": null}', "text", 422),
        ('{"text": ""}', "text", 422),
        ('{"text": "' + "x" * 501 + '"}', "text", 422),
        ('{"text": ["sta op"]}', "text", 422),
        ('{"txt": "sta op"}', "txt", 422),
        ('{"text": "sta op", "idempotency_key": 1.5}', "idempotency_key", 422),
        ('{"text": "sta op", "text": "ga zitten"}', "text", 422),
    ],
    "/api/settings": [
        ("{}", "", 400),
        ('{"language": 5}', "language", 422),
        ('{"language": "xx"}', "language", 400),
        ('{"language": "' + "x" * 17 + '"}', "language", 422),
        ('{"listening": "yes"}', "listening", 422),
        ('{"listening": 1}', "listening", 422),
        ('{"listen": true}', "listen", 422),
        ('{"listening": true, "listening": false}', "listening", 422),
    ],
    "/cluster/step-down": [
        ('{"target": 5}', "target", 422),
        ('{"target": "' + "x" * 64 + '"}', "target", 422),
        ('{"to": "n2"}', "to", 422),
        ('{"target": "n2", "target": "n3"}', "target", 422),
    ],
}


@pytest.mark.parametrize("route", sorted(FIELDS))
def test_each_wrong_field_is_named(rig: Rig, route: str) -> None:
    for node in rig.nodes:
        for raw, field, status in FIELDS[route]:
            response = _post(rig.url(node) + route, raw.encode(), "application/json")
            body = assert_refused(response, status)
            if field:
                assert body.get("field") == field, (raw, body)
                assert field.split(".")[0] in body["error"]


def test_405_and_404_are_json_and_name_the_allowed_methods(rig: Rig) -> None:
    url = rig.url(rig.backup)
    body = assert_refused(httpx.put(url + "/api/settings"), 405)
    assert "GET, POST" in body["error"]
    assert_refused(httpx.get(url + "/" + "Z" * 1000), 404)
    assert_refused(httpx.get(url + "/api/journal", params={"since": -1}), 422)
    assert_refused(httpx.get(url + "/api/journal", params={"limit": "Z" * 5000}), 422)
    too_many = assert_refused(httpx.get(url + "/api/journal", params={"limit": 1001}), 422)
    assert too_many["field"] == "limit"
    assert httpx.get(url + "/api/journal", params={"limit": 1000}).status_code == 200


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key", "Content-Type"])
def test_a_header_sent_twice_is_refused_naming_it_before_anything_else(
    rig: Rig, header: str
) -> None:
    """Two Authorization headers: the primary used the first, a backup authenticated the first
    and forwarded the last. Now no node reads either."""
    values = {
        "Authorization": ("Bearer one", "Bearer two"),
        "Idempotency-Key": ("key-a", "key-b"),
        "Content-Type": ("application/json", "text/plain"),
    }[header]
    for node in rig.nodes:
        response = httpx.post(
            rig.url(node) + "/api/robot/command",
            content=b'{"command": "stand"}',
            headers=[(header, value) for value in values],
            timeout=20,
        )
        body = assert_refused(response, 400)
        assert header.lower() in body["error"]


def test_an_x_forwarded_for_header_is_not_believed(rig: Rig) -> None:
    """No proxy stands in front of a node: a client's X-Forwarded-For would let it pose as
    any address (to trusted_networks, to the rate limits, in the journal)."""
    response = httpx.post(
        rig.url(rig.primary) + "/api/robot/command",
        json={"command": "stand"},
        headers={"X-Forwarded-For": "10.9.9.9"},
        timeout=20,
    )
    assert response.status_code == 200, response.text  # 10.9.9.9 is not a trusted network
    index = response.json()["index"]
    page = httpx.get(rig.url(rig.primary) + "/api/journal", params={"since": index - 1}).json()
    assert page["entries"][0]["source"] == "127.0.0.1"


def test_the_known_commands_are_listed_once_each(rig: Rig) -> None:
    body = assert_refused(_command(rig, rig.primary, "known-1", {"command": "fly"}), 400)
    assert len(body["known"]) == len(set(body["known"]))
    assert {"sit", "stand", "stop", "stand_up", "stop_move"} <= set(body["known"])


# --- texts are limited in bytes where they are stored in bytes --------------------------------

NASTY = {
    "control characters": "\x01",
    "NUL": "\x00",
    "emoji": "😀",
    "combining marks": "e\u0301\u0308",
    "right-to-left": "\u202eא",
}


@pytest.mark.parametrize("kind", sorted(NASTY))
def test_stop_followed_by_300_nasty_characters_still_stops_the_robot(rig: Rig, kind: str) -> None:
    text = "stop " + (NASTY[kind] * 300)[:300]
    for node in rig.nodes:
        response = httpx.post(rig.url(node) + "/api/voice/listen", json={"text": text}, timeout=20)
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        assert (body["processed"], body["intent"]) == (True, "stop")
        journal = httpx.get(
            rig.url(rig.primary) + "/api/journal", params={"since": body["index"] - 1}
        )
        (entry,) = [e for e in journal.json()["entries"] if e["key"] == body["key"]]
        assert entry["text"].startswith("stop ")
        assert entry["action"] == "stop_move"


@pytest.mark.parametrize("kind", sorted(NASTY))
def test_nasty_characters_in_other_fields_are_refused_with_a_short_echo(
    rig: Rig, kind: str
) -> None:
    nasty = NASTY[kind] * 300
    cases = [
        ("/api/robot/command", {"command": "stop" + nasty}, 422),
        ("/api/robot/command", {"command": "move", "params": {nasty: 0.1}}, 400),
        ("/api/robot/command", {"command": "stop", "idempotency_key": nasty}, 422),
        ("/api/voice/listen", {"text": "stop", "idempotency_key": nasty}, 422),
        ("/api/settings", {"language": nasty}, 422),
        ("/api/settings", {"language": NASTY[kind]}, 400),
    ]
    for node in rig.nodes:
        for route, payload, status in cases:
            response = httpx.post(rig.url(node) + route, json=payload, timeout=20)
            body = assert_refused(response, status)
            assert nasty[:65] not in body["error"]


# --- idempotency keys -------------------------------------------------------------------------


def _command(rig: Rig, node: str, key: str, payload: dict[str, Any]) -> httpx.Response:
    url = rig.url(node) + "/api/robot/command"
    return httpx.post(url, json=payload, headers={"Idempotency-Key": key}, timeout=30)


MOVE = {"command": "move", "params": {"vx": 0.5}, "duration_s": 0.2}


def test_a_key_reused_for_another_command_is_409_naming_the_held_one(rig: Rig) -> None:
    first = _command(rig, rig.primary, "reuse-1", {"command": "stand"})
    assert first.status_code == 200
    assert first.json()["command"] == "stand_up"
    for node in rig.nodes:  # the backup answers from its own copy of the journal, or forwards
        conflict = assert_refused(_command(rig, node, "reuse-1", MOVE), 409)
        assert conflict["key"] == "reuse-1"
        assert conflict["held"] == {"command": "stand_up", "params": {}, "duration_s": None}
        assert "stand_up" in conflict["error"]
        for same in ({"command": "stand"}, {"command": "stand_up", "params": {}}):
            again = _command(rig, node, "reuse-1", same)
            assert again.status_code == 200, again.text
            assert (again.json()["duplicate"], again.json()["command"]) == (True, "stand_up")
            assert again.json()["index"] == first.json()["index"]
    different = [
        {"command": "move", "params": {"vx": 0.4}, "duration_s": 0.2},
        {"command": "move", "params": {"vx": 0.5}, "duration_s": 0.3},
        {"command": "move", "params": {"vx": 0.5, "vy": 0.1}, "duration_s": 0.2},
    ]
    assert _command(rig, rig.primary, "reuse-2", MOVE).status_code == 200
    for payload in different:
        assert_refused(_command(rig, rig.backup, "reuse-2", payload), 409)


def test_listen_compares_what_the_transcript_means(rig: Rig) -> None:
    url = rig.url(rig.primary) + "/api/voice/listen"
    headers = {"Idempotency-Key": "listen-1"}
    said = httpx.post(url, json={"text": "sta op"}, headers=headers, timeout=30)
    assert said.status_code == 200
    # Another phrase for the same action is the same command; a robot command too.
    assert _command(rig, rig.backup, "listen-1", {"command": "stand"}).json()["duplicate"]
    other = httpx.post(url, json={"text": "ga zitten"}, headers=headers, timeout=30)
    assert assert_refused(other, 409)["held"]["command"] == "stand_up"


def _stand(rig: Rig) -> None:
    """The robot standing, as a move needs it (whichever tests ran before on this cluster)."""
    standing = _command(rig, rig.primary, f"stand-{time.monotonic_ns()}", {"command": "stand"})
    assert standing.status_code == 200, standing.text


def test_a_key_in_flight_is_compared_too(rig: Rig) -> None:
    walk = {"command": "move", "params": {"vx": 0.2}, "duration_s": 1.5}
    results: dict[str, httpx.Response] = {}
    _stand(rig)
    walker = threading.Thread(
        target=lambda: results.setdefault("walk", _command(rig, rig.primary, "flight-1", walk))
    )
    walker.start()
    try:
        time.sleep(0.4)  # the move streams now
        conflict = _command(rig, rig.primary, "flight-1", {"command": "sit"})
        assert assert_refused(conflict, 409)["held"]["command"] == "move"
        same = _command(rig, rig.backup, "flight-1", walk)
    finally:
        walker.join(30)
    assert results["walk"].status_code == 200
    assert same.status_code == 200
    assert same.json()["duplicate"] is True
    assert same.json()["index"] == results["walk"].json()["index"]


def test_a_stop_whose_key_holds_another_command_is_taken_under_a_new_key(rig: Rig) -> None:
    assert _command(rig, rig.primary, "stop-1", {"command": "stand"}).status_code == 200
    for node in rig.nodes:
        stop = _command(rig, node, "stop-1", {"command": "stop"})
        assert stop.status_code == 200, stop.text
        body = stop.json()
        assert (body["status"], body["command"], body["duplicate"]) == ("done", "stop_move", False)
        assert body["key"] != "stop-1"
        assert "stop-1" in body["note"]
        assert "stand_up" in body["note"]
    halt = httpx.post(
        rig.url(rig.backup) + "/api/voice/listen",
        json={"text": "halt"},
        headers={"Idempotency-Key": "stop-1"},
        timeout=30,
    )
    assert halt.status_code == 200, halt.text
    assert halt.json()["outcome"] == "done"
    assert halt.json()["key"] != "stop-1"
    assert "stop-1" in halt.json()["note"]
    kept = _command(rig, rig.backup, "stop-1", {"command": "stand"})
    assert (kept.json()["duplicate"], kept.json()["command"]) == (True, "stand_up")


def test_a_careless_stop_with_the_key_of_a_running_move_stops_it(rig: Rig) -> None:
    """A client that sends its stop under the key of the move it wants stopped once got 409
    while the robot walked on for up to 60 s."""
    walk = {"command": "move", "params": {"vx": 0.2}, "duration_s": 30}
    results: dict[str, httpx.Response] = {}
    _stand(rig)
    walker = threading.Thread(
        target=lambda: results.setdefault("walk", _command(rig, rig.primary, "careless-1", walk))
    )
    walker.start()
    try:
        assert _wait_for_key(rig, "careless-1")
        stop = _command(rig, rig.backup, "careless-1", {"command": "stop"})
    finally:
        walker.join(40)
    assert stop.status_code == 200, stop.text
    assert stop.json()["key"] != "careless-1"
    assert "move" in stop.json()["note"]
    assert results["walk"].status_code == 200
    assert results["walk"].json()["status"] == "stopped"


def _wait_for_key(rig: Rig, key: str, timeout_s: float = 20.0) -> bool:
    """Whether the primary's journal holds `key` within `timeout_s` (a wait, not a measure)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = httpx.get(rig.url(rig.primary) + "/api/journal", params={"limit": 1000}).json()
        if any(entry["key"] == key for entry in page["entries"]):
            return True
        time.sleep(0.05)
    return False


# --- curl -d, as the seed's users send ----------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl: apt-get install curl")
def test_curl_d_works_and_curl_multipart_is_refused(rig: Rig) -> None:
    url = rig.url(rig.backup) + "/api/robot/command"
    ok = subprocess.run(
        ["curl", "-s", "-d", '{"command": "stand"}', url], capture_output=True, check=True
    )
    assert json.loads(ok.stdout)["status"] == "done"
    refused = subprocess.run(
        ["curl", "-s", "-F", "command=stand", url], capture_output=True, check=True
    )
    assert "not accepted" in json.loads(refused.stdout)["error"]


# --- the schema -------------------------------------------------------------------------------


def test_the_openapi_schema_documents_every_body_and_status(rig: Rig) -> None:
    schema = httpx.get(rig.url(rig.backup) + "/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("/api/robot/command", "post"): {
            "200",
            "400",
            "409",
            "413",
            "415",
            "422",
            "429",
            "502",
            "503",
        },
        ("/api/voice/listen", "post"): {
            "200",
            "400",
            "409",
            "413",
            "415",
            "422",
            "429",
            "502",
            "503",
        },
        ("/api/settings", "post"): {"200", "400", "413", "415", "422", "429", "503"},
        ("/cluster/step-down", "post"): {"202", "400", "409", "413", "415", "422", "429"},
        ("/cluster/primary", "get"): {"200", "503"},
        ("/cluster/replica", "get"): {"200", "503"},
        ("/api/voice/start", "post"): {"200", "429", "503"},
        ("/api/journal", "get"): {"200", "422"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert statuses <= set(operation["responses"]), (path, sorted(operation["responses"]))
    for path, method in list(expected)[:4]:
        body = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]
        for variant in body.get("oneOf", [body]):  # the robot command: one per action
            assert variant["additionalProperties"] is False
            assert variant["properties"]
    command = paths["/api/robot/command"]["post"]["requestBody"]["content"]["application/json"]
    move = next(v for v in command["schema"]["oneOf"] if v["title"] == "move")
    assert set(move["properties"]["params"]["properties"]) == {"vx", "vy", "vyaw"}
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text  # every 422 is our ErrorBody
    assert "ErrorBody" in schema["components"]["schemas"]


def test_refusals_are_counted_by_status_and_reason(rig: Rig) -> None:
    url = rig.url(rig.backup)
    assert_refused(_post(url + "/api/settings", b"{", None), 400)
    metrics = httpx.get(url + "/metrics", timeout=20).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("ha_voice_api_refusals_total{")
        and 'reason="bad_json"' in line
        and 'status="400"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert 'reason="bug"' not in metrics
