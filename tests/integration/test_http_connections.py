"""Connections to the API server are bounded: real uvicorn, our protocol, real sockets.

The server is built by `api.server.build_server` exactly as the daemon builds it, around a small
FastAPI app: `/echo` reads its body through the routes' one reader (limit 1 KiB), `/hello`
never reads one, `/slow` works for longer than every read deadline. Deadlines are set to their
least (0.5 s) so the suite stays fast; each test asserts what the client sees (408, 503, 413,
the connection closed), never how long it took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from ha_voice.api import problems
from ha_voice.api.body import read_limited
from ha_voice.api.server import EmbeddedServer, build_server
from ha_voice.config import Config
from ha_voice.local_cluster import free_port
from ha_voice.metrics import Metrics

LIMIT = 1024
CAP = 8
_READ_S = 10.0  # a test fails rather than hangs if the server never answers
METRICS = Metrics("t")


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app, METRICS.registry)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await read_limited(request, LIMIT))}

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/bug")
    async def bug() -> dict[str, str]:
        raise RuntimeError("a genuine bug")

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(1.5)  # longer than every read deadline: work is not a read
        return {"slow": "done"}

    return app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    key = tmp_path_factory.mktemp("key") / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)  # a secret readable by others refuses the start
    config = Config(
        node_id="t",
        cluster_key_file=key,
        api_listen_address="127.0.0.1",
        port=free_port(),
        api_header_timeout_s=0.5,
        api_body_timeout_s=0.5,
        api_keepalive_timeout_s=0.5,
        api_max_connections=CAP,
        trusted_networks=["127.0.0.0/8"],  # connections are under test, not authentication
    )
    uvicorn_server, sock = build_server(config, _app())
    thread = threading.Thread(target=_serve, args=(uvicorn_server, sock), daemon=True)
    thread.start()
    yield "127.0.0.1", config.port
    uvicorn_server.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


def _serve(server: EmbeddedServer, sock: socket.socket) -> None:
    asyncio.run(server.serve(sockets=[sock]))


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=_READ_S)
    sock.settimeout(_READ_S)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _status_and_json(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def _get(address: tuple[str, int], path: str) -> tuple[int, dict[str, Any]]:
    with _connect(address) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return _status_and_json(_read_all(sock))


def test_a_request_head_that_never_ends_gets_408_and_the_connection_closes(
    server: tuple[str, int],
) -> None:
    slow = [_connect(server) for _ in range(CAP - 1)]
    for sock in slow:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # and never more
    for sock in slow:
        status, body = _status_and_json(_read_all(sock))
        sock.close()
        assert status == 408
        assert body["status"] == "error"
        assert "request head" in body["error"]
    assert _get(server, "/hello") == (200, {"hello": "world"})


def test_a_connection_that_says_nothing_is_closed_too(server: tuple[str, int]) -> None:
    with _connect(server) as sock:
        status, _ = _status_and_json(_read_all(sock))
    assert status == 408


def test_a_body_that_never_ends_gets_408(server: tuple[str, int]) -> None:
    with _connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        status, body = _status_and_json(_read_all(sock))
    assert status == 408
    assert "request body" in body["error"]


def test_an_idle_kept_alive_connection_is_closed_after_its_answer(
    server: tuple[str, int],
) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = _read_all(sock)  # returns only because the server closes the idle connection
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.count(b"HTTP/1.1") == 1


def test_past_the_cap_a_connection_is_answered_503_and_closed(server: tuple[str, int]) -> None:
    held = [_connect(server) for _ in range(CAP + 3)]
    answers = []
    for sock in held:  # each ends: 503 at once past the cap, 408 within it (it said nothing)
        answers.append(_read_all(sock))
        sock.close()
    statuses = [_status_and_json(raw)[0] for raw in answers]
    assert set(statuses) <= {408, 503}
    assert statuses.count(408) <= CAP
    refused = [raw for raw, status in zip(answers, statuses, strict=True) if status == 503]
    assert len(refused) >= 3
    for raw in refused:
        assert b"retry-after: 1" in raw.lower()
        assert "api_max_connections" in _status_and_json(raw)[1]["error"]
    assert _get(server, "/hello") == (200, {"hello": "world"})


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    server: tuple[str, int],
) -> None:
    with _connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 104857600\r\n\r\n")
        status, body = _status_and_json(_read_all(sock))
    assert status == 413
    assert body["limit_bytes"] == LIMIT


def test_a_chunked_body_over_the_limit_is_cut_off_and_answered_413(
    server: tuple[str, int],
) -> None:
    with _connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        try:
            for _ in range(10_000):  # 10 MB offered; the server stops reading long before
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = _read_all(sock)
    status, body = _status_and_json(raw)
    assert status == 413
    assert "over the limit of 1024 bytes" in body["error"]


def test_a_body_nobody_reads_is_not_read(server: tuple[str, int]) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 104857600\r\n\r\n")
        sent = 0
        try:
            while sent < 100 * 1024 * 1024:
                sock.sendall(b"y" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = _read_all(sock)
    assert sent < 100 * 1024 * 1024  # the server closed the connection first
    assert raw.startswith(b"HTTP/1.1 200")


def test_work_that_outlasts_every_read_deadline_is_answered(server: tuple[str, int]) -> None:
    assert _get(server, "/slow") == (200, {"slow": "done"})


def test_pipelined_requests_are_all_answered(server: tuple[str, int]) -> None:
    with _connect(server) as sock:
        request = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
        sock.sendall(request * 3)
        raw = _read_all(sock)
    assert raw.count(b"HTTP/1.1 200") == 3


def test_garbage_gets_a_json_400(server: tuple[str, int]) -> None:
    with _connect(server) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        status, body = _status_and_json(_read_all(sock))
    assert status == 400
    assert body["status"] == "error"


def test_an_answer_before_the_body_is_read_says_connection_close(server: tuple[str, int]) -> None:
    url = f"http://{server[0]}:{server[1]}"
    with httpx.Client(timeout=_READ_S) as client:  # one kept-alive connection, reused
        for _ in range(3):
            early = client.request("GET", url + "/hello", content=b"y" * 200_000)
            assert early.status_code == 200
            assert early.headers["connection"] == "close"  # so the next goes on a new one
            refused = client.post(url + "/echo", content=b"y" * 200_000)
            assert refused.status_code == 413
            assert refused.headers["connection"] == "close"
            kept = client.post(url + "/echo", content=b"y" * 10)
            assert kept.json() == {"bytes": 10}
            assert kept.headers.get("connection") != "close"


def test_a_genuine_bug_is_logged_with_its_traceback_and_answered_a_short_json_500(
    server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="ha_voice.api.problems"):
        status, body = _get(server, "/bug")
    assert status == 500
    assert body == {
        "status": "error",
        "error": "internal error; the traceback is in this node's log",
    }
    (record,) = [r for r in caplog.records if r.name == "ha_voice.api.problems"]
    assert record.exc_info is not None
    assert "a genuine bug" in str(record.exc_info[1])


def _refusals(status: int, reason: str) -> float:
    labels = {"status": str(status), "reason": reason}
    return METRICS.registry.get_sample_value("ha_voice_api_refusals_total", labels) or 0.0


@pytest.mark.parametrize("pieces", [1, 60], ids=["one packet", "60 packets"])
def test_a_head_over_16_kib_is_431_however_it_arrives(server: tuple[str, int], pieces: int) -> None:
    """h11 bounds a head only while it is incomplete: 60 KB in one packet was parsed whole."""
    head = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
    before = _refusals(431, "head_too_large")
    with _connect(server) as sock:
        size = len(head) // pieces + 1
        try:
            for start in range(0, len(head), size):
                sock.sendall(head[start : start + size])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent
        status, body = _status_and_json(_read_all(sock))
    assert status == 431
    assert "16384" in body["error"]
    assert _refusals(431, "head_too_large") == before + 1


def test_a_head_just_under_16_kib_is_answered(server: tuple[str, int]) -> None:
    with _connect(server) as sock:
        pad = b"a" * 16_000
        sock.sendall(
            b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-P: " + pad + b"\r\n\r\n"
        )
        status, _ = _status_and_json(_read_all(sock))
    assert status == 200


@pytest.mark.parametrize("name", ["Authorization", "Idempotency-Key", "Content-Type", "Host"])
def test_a_header_that_must_be_single_sent_twice_is_400_naming_it(
    server: tuple[str, int], name: str
) -> None:
    headers = f"{name}: one\r\n{name}: two\r\n"
    host = "" if name == "Host" else "Host: t\r\n"
    body = b'{"command": "stop"}'
    with _connect(server) as sock:
        sock.sendall(
            f"POST /echo HTTP/1.1\r\n{host}{headers}Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        status, answer = _status_and_json(_read_all(sock))
    assert status == 400
    if name != "Host":  # two Host headers h11 refuses itself (RFC 9112 §3.2), in its words
        assert name.lower() in answer["error"]


def test_connection_level_refusals_are_counted(server: tuple[str, int]) -> None:
    timeouts, garbage = _refusals(408, "head_timeout"), _refusals(400, "bad_http")
    with _connect(server) as sock:
        assert _status_and_json(_read_all(sock))[0] == 408
    with _connect(server) as sock:
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert _status_and_json(_read_all(sock))[0] == 400
    assert _refusals(408, "head_timeout") == timeouts + 1
    assert _refusals(400, "bad_http") == garbage + 1
