"""TLS is a floor the network cannot lower: a client that asked for TLS (a CA file, `verify`, an
https URL) never sends a request, and so never its token, in plain HTTP — not to an endpoint
that an mDNS answer names (anyone on the LAN can answer), not to a `leader_url` hint, not to a
redirect; the same for `JetsonVoiceClient`, `ha-voice send` and `ha-voice step-down`.

Real uvicorn servers (scripted, as in test_client.py; the https ones with a certificate made by
docs/operations.md's openssl commands, valid for 127.0.0.1) and real zeroconf on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from ha_voice.client import (
    AsyncHAVoiceClient,
    ClientError,
    CommandResult,
    HAVoiceClient,
    JetsonVoiceClient,
    tls_floor,
)
from tests.doc_commands import block, run
from tests.integration.test_client import (
    Reply,
    Scripted,
    _advertised,
    _start,
    _unavailable,
    _unique_cluster,
)

TOKEN = "s3cret-token-of-admin-0123456789"
Serve = Callable[..., Scripted]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster CA and node certificates of docs/operations.md (jetson-1's names 127.0.0.1)."""
    directory = tmp_path_factory.mktemp("pki")
    run(block("tls-certificates"), directory)
    return directory


@pytest.fixture
def serve(pki: Path) -> Iterator[Serve]:
    """serve(reply, ..., tls=False): a scripted server, in HTTPS with jetson-1's certificate."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*replies: Reply, tls: bool = False) -> Scripted:
        cert = (pki / "jetson-1.crt", pki / "jetson-1.key") if tls else None
        server, uvicorn_server, thread = _start(list(replies), cert)
        running.append((uvicorn_server, thread))
        return server

    yield start
    for uvicorn_server, _ in running:
        uvicorn_server.should_exit = True
    for _, thread in running:
        thread.join(10)


def _port(server: Scripted) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _ca(pki: Path) -> str:
    return str(pki / "ca.crt")


# --- an endpoint named by mDNS ---------------------------------------------------------------


class Sniffer:
    """A plain TCP server that an mDNS spoof points at: it keeps how each connection began (a TLS
    handshake, or a plain HTTP request with its Authorization header) and closes it."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.openings: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._sock.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5.0)
                with contextlib.suppress(OSError):
                    self.openings.append(connection.recv(4096))

    @property
    def tls_handshakes(self) -> int:
        return sum(opening.startswith(b"\x16\x03") for opening in self.openings)

    @property
    def plain(self) -> list[bytes]:
        """What came in plain text. A connection closed before its first byte sent nothing (a
        client whose deadline ended between the TCP connect and its TLS hello: CI, once)."""
        return [
            opening for opening in self.openings if opening and not opening.startswith(b"\x16\x03")
        ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in the thread
        self._sock.close()
        self._thread.join(10)


@pytest.fixture
def spoof() -> Iterator[Sniffer]:
    sniffer = Sniffer()
    yield sniffer
    sniffer.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port where nothing listens: it stays bound, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _asked_for_tls(how: str, pki: Path, dead_port: int) -> dict[str, Any]:
    return {
        "ca_file": {"ca_file": _ca(pki)},
        "verify": {"verify": ssl.create_default_context(cafile=_ca(pki))},
        # A node's https URL that refuses, then mDNS as the fallback (the system's CAs).
        "https url": {"url": f"https://127.0.0.1:{dead_port}"},
    }[how]


# Long enough for an mDNS answer under load: with two test processes on loopback, a resolve
# takes ~1.3 s (the QU question's unicast answer may reach the other process; the QM that
# follows is answered by multicast). The call ends in DeadlineExceeded, or NoPrimaryError when
# the deadline cuts its last resolve short: a ClientError either way.
DEADLINE_S = 6.0


@pytest.mark.parametrize("how", ["ca_file", "verify", "https url"])
def test_a_spoofed_plain_endpoint_never_gets_the_token(
    spoof: Sniffer, pki: Path, dead_port: int, how: str
) -> None:
    """An mDNS answer for the cluster, without scheme=https, pointing at a plain TCP server."""
    cluster = _unique_cluster()
    tls = _asked_for_tls(how, pki, dead_port)
    with _advertised(cluster, spoof.port):
        client = HAVoiceClient(
            cluster=cluster, interfaces=["127.0.0.1"], token=TOKEN, deadline_s=DEADLINE_S, **tls
        )
        with client, pytest.raises(ClientError):
            client.say("sta op")
    assert spoof.tls_handshakes >= 1  # it was found, and spoken to in TLS only
    assert spoof.plain == []


def test_the_async_client_keeps_tls_too(spoof: Sniffer, pki: Path) -> None:
    cluster = _unique_cluster()

    async def scenario() -> None:
        async with AsyncHAVoiceClient(
            cluster=cluster,
            interfaces=["127.0.0.1"],
            token=TOKEN,
            deadline_s=DEADLINE_S,
            ca_file=_ca(pki),
        ) as client:
            with pytest.raises(ClientError):
                await client.command("stop")

    with _advertised(cluster, spoof.port):
        asyncio.run(scenario())
    assert spoof.tls_handshakes >= 1
    assert spoof.plain == []


def test_the_seeds_client_and_the_cli_keep_tls_too(
    spoof: Sniffer, pki: Path, tmp_path: Path
) -> None:
    """Both resolve on every interface (loopback among them), as they do on a robot's LAN."""
    cluster = _unique_cluster()
    tokens = tmp_path / "api.tokens"
    tokens.write_text(f"admin:{TOKEN}\n")
    tokens.chmod(0o600)
    with _advertised(cluster, spoof.port):
        jetson = JetsonVoiceClient(
            cluster=cluster, token=TOKEN, ca_file=_ca(pki), timeout=DEADLINE_S
        )
        answer = jetson.send_command("sta op")
        jetson.close()
        found = spoof.tls_handshakes
        sent = _cli(
            tmp_path,
            *("send", "sta op", "--cluster", cluster, "--deadline", str(DEADLINE_S)),
            *("--ca-file", _ca(pki), "--token-file", str(tokens)),
        )
    assert answer["status"] == "error"
    assert found >= 1
    assert sent.returncode in (4, 6), sent.stderr  # no answer in time, or no primary
    assert spoof.tls_handshakes > found
    assert spoof.plain == []


# --- addresses in answers: a leader hint, a redirect ------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_hint_or_redirect_to_plain_http_is_followed_in_https_only(
    serve: Serve, pki: Path, asynchronous: bool
) -> None:
    plain = serve()  # would record the token, were it sent there
    moved = Reply(307, {}, {"Location": plain.url + "/api/robot/command"})
    node = serve(_unavailable(leader_url=plain.url), moved, tls=True)
    settings: dict[str, Any] = {"url": node.url, "token": TOKEN, "ca_file": _ca(pki)}
    if asynchronous:

        async def scenario() -> CommandResult:
            async with AsyncHAVoiceClient(**settings) as client:
                return await client.command("stop", key="key-t1")

        result = asyncio.run(scenario())
    else:
        with HAVoiceClient(**settings) as client:
            result = client.command("stop", key="key-t1")
    # node: 503 with the hint; the hint, in https: refused; node: 307; the redirect, in https:
    # refused; node: done.
    assert (result.status, result.attempts) == ("done", 5)
    assert plain.seen == []
    assert [(s.key, s.authorization) for s in node.seen] == [("key-t1", f"Bearer {TOKEN}")] * 3


def test_tls_floor_raises_http_only_when_tls_is_required() -> None:
    assert tls_floor("http://10.0.0.2:8888", tls=True) == "https://10.0.0.2:8888"
    assert tls_floor("https://10.0.0.2:8888", tls=True) == "https://10.0.0.2:8888"
    assert tls_floor("http://10.0.0.2:8888", tls=False) == "http://10.0.0.2:8888"
    assert tls_floor("https://10.0.0.2:8888", tls=False) == "https://10.0.0.2:8888"


# --- what the caller chose itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("http://127.0.0.1:1", {"ca_file": "CA"}),
        ("http://127.0.0.1:1", {"verify": True}),
        ("https://127.0.0.1:1,http://127.0.0.1:2", {}),
    ],
)
def test_a_plain_url_contradicting_tls_is_refused_at_once(
    pki: Path, url: str, tls: dict[str, Any]
) -> None:
    if tls.get("ca_file") == "CA":
        tls = {"ca_file": _ca(pki)}
    with pytest.raises(ValueError, match=r"plain HTTP, but TLS was asked for .* use https://"):
        HAVoiceClient(url=url, **tls)
    with pytest.raises(ValueError, match="plain HTTP"):
        AsyncHAVoiceClient(url=url, **tls)


def test_without_tls_asked_for_plain_http_is_the_callers_choice(serve: Serve) -> None:
    server = serve()
    with HAVoiceClient(url=server.url, token=TOKEN, verify=False) as client:
        assert client.command("stop").status == "done"
    assert [s.authorization for s in server.seen] == [f"Bearer {TOKEN}"]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    (tmp_path / "none.toml").write_text("")
    env["HA_VOICE_CONFIG"] = str(tmp_path / "none.toml")
    env["HA_VOICE_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "ha_voice", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_cli_refuses_a_plain_url_with_a_ca_file(
    serve: Serve, pki: Path, tmp_path: Path
) -> None:
    plain = serve()
    sent = _cli(tmp_path, "send", "--action", "stop", "--url", plain.url, "--ca-file", _ca(pki))
    assert sent.returncode == 2
    assert f"url {plain.url} is plain HTTP, but TLS was asked for" in sent.stderr
    assert plain.seen == []


def test_step_down_sends_its_token_to_the_named_primary_in_https_only(
    serve: Serve, pki: Path, tmp_path: Path
) -> None:
    plain = serve()
    view = {"node": "n1", "role": "backup", "leader": "n2", "leader_api": plain.url}
    node = serve(Reply(200, view), tls=True)
    stepped = _cli(tmp_path, "step-down", "--url", node.url, "--ca-file", _ca(pki))
    assert stepped.returncode == 1
    assert f"ha-voice: https://127.0.0.1:{_port(plain)}: " in stepped.stderr  # asked in TLS
    assert plain.seen == []
    assert [(s.method, s.path) for s in node.seen] == [("GET", "/cluster")]
