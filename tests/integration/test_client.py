"""The client library against real uvicorn servers on 127.0.0.1 and real mDNS on loopback.

Each server is a tiny FastAPI app that answers from a script the test writes (then 200) and
records every request it gets, so a test can check what each attempt carried. Servers listen on
a socket bound to port 0 before uvicorn starts: no fixed ports, nothing to wait for (a
connection that comes early waits in the listen backlog), safe under pytest-xdist.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from zeroconf import ServiceInfo, Zeroconf

from ha_voice.api.members import CLUSTER_HEADER, MEMBERS_HEADER
from ha_voice.client import (
    MAX_URLS,
    AsyncHAVoiceClient,
    CommandResult,
    DeadlineExceeded,
    HAVoiceClient,
    JetsonVoiceClient,
    NoPrimaryError,
    RequestError,
    _judge,
)
from ha_voice.cluster.discovery import ENDPOINT_SERVICE_TYPE, endpoint_name

DONE = {"status": "done", "executed_by": "n2", "node": "n1", "term": 3, "index": 7}


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    key: str | None
    body: Any
    authorization: str | None


@dataclass
class Scripted:
    """A running server: its base URL, the replies it still has to give, what it was asked."""

    url: str
    script: list[Reply]
    seen: list[Seen] = field(default_factory=list)


def _app(server: Scripted) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def anything(path: str, request: Request) -> JSONResponse:
        raw = await request.body()
        query = f"?{request.url.query}" if request.url.query else ""
        server.seen.append(
            Seen(
                request.method,
                f"/{path}{query}",
                request.headers.get("idempotency-key"),
                json.loads(raw) if raw else None,
                request.headers.get("authorization"),
            )
        )
        reply = server.script.pop(0) if server.script else Reply(200, DONE)
        return JSONResponse(reply.body, reply.status, headers=reply.headers)

    return app


def _start(
    replies: list[Reply], tls: tuple[Path, Path] | None = None
) -> tuple[Scripted, uvicorn.Server, threading.Thread]:
    """A scripted server on 127.0.0.1; HTTPS with `tls` (certificate, key)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    scheme = "https" if tls else "http"
    server = Scripted(f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", replies)
    certificate = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    config = uvicorn.Config(
        _app(server), log_level="warning", lifespan="off", access_log=False, **certificate
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]})
    thread.start()
    return server, uvicorn_server, thread


@pytest.fixture
def serve() -> Iterator[Callable[..., Scripted]]:
    """serve(reply, ...): a new scripted server; all of them stop together at the end."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*replies: Reply) -> Scripted:
        server, uvicorn_server, thread = _start(list(replies))
        running.append((uvicorn_server, thread))
        return server

    yield start
    for uvicorn_server, _ in running:
        uvicorn_server.should_exit = True
    for _, thread in running:
        thread.join(10)


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A URL where nothing listens: the port stays bound, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def _advertised(cluster: str, port: int) -> Iterator[None]:
    """The cluster's endpoint on loopback mDNS, as a primary would publish it."""
    zc = Zeroconf(interfaces=["127.0.0.1"])
    info = ServiceInfo(
        ENDPOINT_SERVICE_TYPE,
        endpoint_name(cluster),
        port=port,
        properties={"cluster": cluster, "node": "n1", "term": "1", "version": "test"},
        server=f"{cluster}.ha-voice.local.",
        parsed_addresses=["127.0.0.1"],
    )
    zc.register_service(info, cooperating_responders=True)
    try:
        yield
    finally:
        zc.close()


def _unique_cluster() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _unavailable(**extra: Any) -> Reply:
    return Reply(503, {"status": "error", "error": "not leading", **extra}, {"Retry-After": "0"})


@pytest.mark.parametrize(
    ("status", "headers", "body", "is_command", "expected"),
    [
        (200, {}, {}, False, "final"),
        (502, {}, {"status": "failed"}, True, "final"),
        (502, {}, {"error": "bad gateway"}, False, "refused"),
        (503, {"retry-after": "2"}, {"leader_url": "http://p:1/"}, True, "again"),
        (504, {}, {}, False, "again"),
        (429, {"retry-after": "1"}, {"error": "queue full", "retry_after_s": 0.2}, True, "again"),
        (409, {}, {"error": "key already holds another command"}, True, "refused"),
        (401, {"www-authenticate": "Bearer"}, {"error": "no token"}, True, "refused"),
        (307, {"location": "/elsewhere"}, {}, True, "again"),
        (308, {"location": "http://p:1/x"}, {}, True, "again"),
        (400, {}, {"error": "unknown command 'fly'"}, True, "refused"),
        (404, {}, {"detail": "Not Found"}, False, "refused"),
        (500, {}, {}, True, "refused"),
    ],
)
def test_judge_retries_only_what_is_safe(
    status: int, headers: dict[str, str], body: dict[str, Any], is_command: bool, expected: str
) -> None:
    url = "http://n1:8080/api/x"
    if expected == "refused":
        with pytest.raises(RequestError) as caught:
            _judge(url, status, headers, body, is_command)
        assert caught.value.status == status
    else:
        again = _judge(url, status, headers, body, is_command)
        assert expected == ("final" if again is None else "again")


def test_judge_reads_the_hints_for_the_next_attempt() -> None:
    again = _judge(
        "http://n1:8080/a/b", 503, {"retry-after": "2"}, {"leader_url": "http://p:1/"}, True
    )
    assert again is not None
    assert (again.leader_url, again.min_wait_s, again.location) == ("http://p:1", 2.0, None)
    redirect = _judge("http://n1:8080/a/b", 307, {"location": "/c"}, {}, True)
    assert redirect is not None
    assert redirect.location == "http://n1:8080/c"
    odd = _judge(
        "http://n1:8080/a", 503, {"retry-after": "Wed, 21 Oct 2015"}, {"leader_url": 7}, True
    )
    assert odd is not None
    assert (odd.leader_url, odd.min_wait_s) == (None, 0.0)
    # ha-voice's sub-second hint wins over the header, which cannot say less than a second.
    hinted = _judge("http://n1:8080/a", 503, {"retry-after": "1"}, {"retry_after_s": 0.1}, True)
    assert hinted is not None
    assert hinted.min_wait_s == 0.1


def test_command_retries_503_follows_leader_url_and_keeps_its_key(
    serve: Callable[..., Scripted],
) -> None:
    leader = serve(_unavailable())
    first = serve(_unavailable(), _unavailable(), _unavailable(leader_url=leader.url + "/"))
    with HAVoiceClient(url=first.url, deadline_s=10.0, token="s3cret") as client:
        result = client.command("move", {"vx": 0.3}, duration_s=1.5, key="key-1")
    assert (result.status, result.key, result.node, result.term, result.index) == (
        "done",
        "key-1",
        "n2",
        3,
        7,
    )
    assert (result.attempts, result.duplicate) == (5, False)
    seen = first.seen + leader.seen
    assert [(s.method, s.path) for s in seen] == [("POST", "/api/robot/command")] * 5
    assert {s.key for s in seen} == {"key-1"}
    assert {s.authorization for s in seen} == {"Bearer s3cret"}
    assert seen[0].body == {"command": "move", "params": {"vx": 0.3}, "duration_s": 1.5}
    assert (len(first.seen), len(leader.seen)) == (3, 2)


def test_a_drawn_key_is_the_same_on_every_attempt(serve: Callable[..., Scripted]) -> None:
    server = serve(_unavailable(), Reply(504, {}, {"Retry-After": "0"}))
    with HAVoiceClient(url=server.url) as client:
        result = client.say("sta op")
    assert [s.key for s in server.seen] == [result.key] * 3
    assert server.seen[0].body == {"text": "sta op"}
    assert server.seen[0].path == "/api/voice/listen"


def test_a_redirect_is_followed_at_once(serve: Callable[..., Scripted]) -> None:
    primary = serve()
    backup = serve(Reply(307, {}, {"Location": primary.url + "/api/robot/command"}))
    with HAVoiceClient(url=backup.url) as client:
        result = client.command("sit", key="key-2")
    assert result.attempts == 2
    assert [(s.method, s.key, s.body["command"]) for s in primary.seen] == [
        ("POST", "key-2", "sit")
    ]


def test_a_refusal_is_final_after_one_attempt(serve: Callable[..., Scripted]) -> None:
    server = serve(Reply(400, {"error": "unknown command 'fly'", "known": ["sit"]}))
    with HAVoiceClient(url=server.url) as client, pytest.raises(RequestError) as caught:
        client.command("fly")
    assert (caught.value.status, caught.value.error) == (400, "unknown command 'fly'")
    assert len(server.seen) == 1


def test_a_failed_command_is_a_final_answer(serve: Callable[..., Scripted]) -> None:
    server = serve(Reply(502, {"status": "failed", "executed_by": "n1", "duplicate": True}))
    with HAVoiceClient(url=server.url) as client:
        result = client.command("stand_up", key="key-3")
    assert (result.status, result.node, result.duplicate, result.attempts) == (
        "failed",
        "n1",
        True,
        1,
    )
    assert len(server.seen) == 1


def test_connection_refused_is_retried_until_the_deadline(dead_url: str) -> None:
    with (
        HAVoiceClient(url=dead_url, deadline_s=0.5) as client,
        pytest.raises(DeadlineExceeded) as caught,
    ):
        client.command("sit", key="key-4")
    assert caught.value.key == "key-4"
    assert caught.value.attempts >= 2
    assert "ConnectError" in str(caught.value)


def test_after_a_connection_error_the_next_of_several_urls_is_tried(
    serve: Callable[..., Scripted], dead_url: str
) -> None:
    server = serve()
    with HAVoiceClient(url=f"{dead_url},{server.url}", deadline_s=5.0) as client:
        result = client.command("sit", key="key-5")
    assert result.status == "done"
    assert result.attempts == 2
    assert [seen.key for seen in server.seen] == ["key-5"]


def test_a_retry_after_past_the_deadline_ends_the_call(serve: Callable[..., Scripted]) -> None:
    server = serve(Reply(503, {"error": "electing"}, {"Retry-After": "30"}))
    with (
        HAVoiceClient(url=server.url, deadline_s=5.0) as client,
        pytest.raises(DeadlineExceeded) as caught,
    ):
        client.command("sit", key="key-5")
    assert "electing" in str(caught.value)
    assert (caught.value.key, len(server.seen)) == ("key-5", 1)


def test_reads_are_plain_gets(serve: Callable[..., Scripted]) -> None:
    entries = [{"index": 6, "key": "k"}]
    server = serve(Reply(200, {"entries": entries}), Reply(200, {"status": "ok"}))
    with HAVoiceClient(url=server.url) as client:
        assert client.journal(since=5, limit=10) == entries
        assert client.health() == {"status": "ok"}
        assert client.set_listening(False, key="key-6") == DONE
    assert [(s.method, s.path, s.key) for s in server.seen] == [
        ("GET", "/api/journal?since=5&limit=10", None),
        ("GET", "/health", None),
        ("POST", "/api/voice/stop", "key-6"),
    ]


def test_the_async_client_behaves_the_same(serve: Callable[..., Scripted], dead_url: str) -> None:
    leader = serve()
    first = serve(_unavailable(), _unavailable(leader_url=leader.url))
    refusing = serve(Reply(400, {"error": "no"}))

    async def scenario() -> None:
        async with AsyncHAVoiceClient(url=first.url) as client:
            result = await client.command("sit", key="key-7")
            assert (result.status, result.attempts) == ("done", 3)
            assert await client.status() == DONE
        async with AsyncHAVoiceClient(url=refusing.url) as client:
            with pytest.raises(RequestError, match="no"):
                await client.say("vlieg")
        async with AsyncHAVoiceClient(url=dead_url, deadline_s=0.3) as client:
            with pytest.raises(DeadlineExceeded) as caught:
                await client.command("sit", key="key-8")
            assert caught.value.key == "key-8"

    asyncio.run(scenario())
    assert [s.key for s in first.seen] == ["key-7", "key-7"]
    assert [(s.key, s.path) for s in leader.seen] == [
        ("key-7", "/api/robot/command"),
        (None, "/api/voice/status"),
    ]
    assert len(refusing.seen) == 1


def test_jetson_client_returns_the_seed_answers(
    serve: Callable[..., Scripted], dead_url: str
) -> None:
    said = {"status": "success", "recognized": "sta op", "processed": True, "response": "ok"}
    server = serve(Reply(200, said), Reply(200, {"status": "ok"}))
    jetson = JetsonVoiceClient(server.url)
    assert jetson.send_command("sta op") == said
    assert jetson.health_check()
    jetson.close()
    nobody = JetsonVoiceClient(dead_url, timeout=0.3)
    answer = nobody.send_command("sta op")
    assert answer["status"] == "error"
    assert "ConnectError" in answer["message"]
    assert not nobody.health_check()
    assert not nobody.start_listening()
    nobody.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_client_given_one_url_learns_the_members_and_fails_over_to_them(
    serve: Callable[..., Scripted], dead_url: str, asynchronous: bool
) -> None:
    other = serve()
    junk = [f"http://10.255.255.{i}:1" for i in range(2 * MAX_URLS)]
    members = ", ".join([dead_url, other.url, "not-a-url", "ftp://x", *junk])
    named = Reply(200, DONE, {MEMBERS_HEADER: members, CLUSTER_HEADER: "seed-test"})
    given, uvicorn_server, thread = _start([named])

    def kill_given() -> None:
        uvicorn_server.should_exit = True
        thread.join(10)

    if asynchronous:

        async def scenario() -> tuple[CommandResult, int]:
            async with AsyncHAVoiceClient(url=given.url) as client:
                await client.status()
                kill_given()
                return await client.command("sit", key="key-m1"), len(client._urls)

        result, kept = asyncio.run(scenario())
    else:
        with HAVoiceClient(url=given.url) as client:
            client.status()
            kill_given()
            result, kept = client.command("sit", key="key-m1"), len(client._urls)
    # the given node (refused), the first member it named (refused), the second: done
    assert (result.status, result.attempts) == ("done", 3)
    assert [(s.key, s.path) for s in other.seen] == [("key-m1", "/api/robot/command")]
    assert kept == MAX_URLS  # a long list cannot make the client hold more


def test_a_client_given_one_url_asks_mdns_for_the_learned_cluster_when_every_url_refuses(
    serve: Callable[..., Scripted],
) -> None:
    other = serve()
    cluster = _unique_cluster()
    named = Reply(200, DONE, {CLUSTER_HEADER: cluster, MEMBERS_HEADER: ""})
    given, uvicorn_server, thread = _start([named])
    with (
        _advertised(cluster, int(other.url.rsplit(":", 1)[1])),
        HAVoiceClient(url=given.url, interfaces=["127.0.0.1"]) as client,
    ):
        client.status()
        uvicorn_server.should_exit = True
        thread.join(10)
        result = client.command("sit", key="key-m2")
    assert (result.status, result.attempts) == ("done", 2)  # the given URL, then mDNS's
    assert [(s.key, s.path) for s in other.seen] == [("key-m2", "/api/robot/command")]


def test_the_endpoint_is_found_over_mdns(serve: Callable[..., Scripted], dead_url: str) -> None:
    """Loopback multicast works in this sandbox (checked); both resolvers use 127.0.0.1 only."""
    server = serve()
    cluster = _unique_cluster()
    with _advertised(cluster, int(server.url.rsplit(":", 1)[1])):
        # A given url comes first; after it refuses, the cluster given falls back to mDNS.
        with HAVoiceClient(url=dead_url, cluster=cluster, interfaces=["127.0.0.1"]) as client:
            result = client.command("sit", key="key-9")
        assert result.attempts == 2

        async def resolve() -> dict[str, Any]:
            async with AsyncHAVoiceClient(cluster=cluster, interfaces=["127.0.0.1"]) as client:
                return await client.health()

        assert asyncio.run(resolve()) == DONE
    assert [(s.path, s.key) for s in server.seen] == [
        ("/api/robot/command", "key-9"),
        ("/health", None),
    ]


def test_no_primary_is_reported_with_the_name_looked_for() -> None:
    cluster = _unique_cluster()
    client = HAVoiceClient(cluster=cluster, resolve_timeout_s=0.3, interfaces=["127.0.0.1"])
    with client, pytest.raises(NoPrimaryError, match=f"{cluster}._ha-voice._tcp.local."):
        client.command("sit", key="key-10")
