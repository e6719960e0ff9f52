"""A listening primary that cannot hear a source says so; the Wyoming server's state on /health.

Three `ha-voice run` processes (no speech model: hearing is not the point), every node with
`audio_sources` = a UDP port, an HTTP stream (a WAV served in real time, as an RTSP camera or
an Icecast stream would serve it) and a short file. Only the primary listens:
- the UDP port held by another process, the stream's server down: the primary is degraded,
  naming the first source and why (`/health`, `/cluster`), yet serves (`/cluster/primary` 200:
  listening is no condition for leading); the backups are fine;
- the port free and the stream up: ok, although nothing arrives on UDP (silence is no fault),
  and the file, read to its end, is done (no fault, not read again);
- the stream dropped mid-way: degraded while it is reopened with backoff; back: ok, counted.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ha_voice.local_cluster import LocalCluster, LocalNode, free_port
from tests.speech_corpus import wav_bytes

_CHUNK_S = 0.1
_RATE = 16_000


def _wait(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    found = None
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: last {found!r}")


def _health(node: LocalNode) -> dict[str, Any]:
    response = node.get("/health", timeout_s=2.0)
    assert response is not None
    body: dict[str, Any] = response.json()
    return body


class LiveWav:
    """An HTTP server streaming a WAV of silence in real time, until `drop()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.served = 0
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stream.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.end_headers()
                self.wfile.write(_wav_header())
                chunk = bytes(int(_RATE * _CHUNK_S) * 2)
                with contextlib.suppress(OSError):
                    while not stream._stop.wait(_CHUNK_S):
                        self.wfile.write(chunk)
                        self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self._stop.clear()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def drop(self) -> None:
        """Stop serving and end every stream under way (the camera went away)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _wav_header() -> bytes:
    """A WAV header for an endless 16 kHz mono s16le stream (sizes at their maximum)."""
    size = 0xFFFFFFFF - 36
    fmt = struct.pack("<HHIIHH", 1, 1, _RATE, _RATE * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", size + 36)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + (b"data" + struct.pack("<I", size))
    )


@contextlib.contextmanager
def _cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, str, str, str, str]]:
    udp_port = free_port(socket.SOCK_DGRAM)
    http_port = free_port()
    said = tmp_path / "said.wav"
    said.write_bytes(wav_bytes(np.zeros(_RATE // 2, dtype=np.float32)))
    udp, url, file = (
        f"udp://127.0.0.1:{udp_port}",
        f"http://127.0.0.1:{http_port}/live.wav",
        f"file:{said}",
    )
    with LocalCluster(3, extra_flags=(f"--audio-sources={udp},{url},{file}",)) as cluster:
        yield cluster, udp, url, file, str(http_port)


def test_a_primary_that_cannot_hear_a_source_says_so_and_still_serves(tmp_path: Path) -> None:
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with _cluster(tmp_path) as (cluster, udp, url, file, http_port):
        stream = LiveWav(int(http_port))
        try:
            held.bind(("127.0.0.1", int(udp.rsplit(":", 1)[1])))  # another process has it
            cluster.start()
            found = cluster.wait_for_primary(30.0)
            assert found is not None
            primary = cluster.nodes[found[0]]

            # The file (half a second, read in real time) may still be open when the other
            # two first fail: wait for it to end too.
            health = _wait(
                lambda: (
                    (h := _health(primary))["listening"]["problem"]
                    and h["fault_reason"] == h["listening"]["problem"]
                    and "(and" in h["fault_reason"]
                    and h["listening"]["open"] == 0
                    and h
                ),
                30.0,
                "the primary listens, has read the file and says what it cannot hear",
            )
            assert health["status"] == "degraded"
            assert health["fault_reason"].startswith(f"listening: {udp} does not open: "), health
            assert health["fault_reason"].endswith("(and 1 more)")  # the stream's server is down
            assert health["listening"]["open"] == 0
            assert primary.status_code("/cluster/primary", 2.0) == 200  # it still leads
            listed = primary.get("/cluster", timeout_s=2.0)
            assert listed is not None
            assert listed.json()["reason"].startswith(f"listening: {udp} does not open")
            for backup in cluster.nodes.values():
                if backup is not primary:  # they do not listen, so they miss nothing
                    seen = _health(backup)
                    assert seen["listening"] == {
                        "here": False,
                        "sources": 3,
                        "open": 0,
                        "problem": None,
                    }
                    assert seen["status"] == "ok", seen["fault_reason"]

            held.close()  # the port is free: it opens; the stream is still down
            health = _wait(
                lambda: (
                    (h := _health(primary))["fault_reason"].startswith(f"listening: {url}") and h
                ),
                10.0,
                "the stream named next",
            )
            assert "does not open" in health["fault_reason"]
            assert "(and" not in health["fault_reason"]

            stream.start()  # the stream is up: all heard, UDP silent, the file done
            health = _wait(
                lambda: (h := _health(primary))["status"] == "ok" and h, 20.0, "ok once heard"
            )
            assert health["listening"] == {"here": True, "sources": 3, "open": 2, "problem": None}
            sources = _status_sources(primary)
            assert sources[udp]["packets_received"] == 0  # silence on UDP is no fault
            assert sources[file]["ended"] is True
            assert sources[file]["error"] == "end of file"
            assert sources[url]["open"] is True

            stream.drop()  # the stream goes away mid-way
            health = _wait(
                lambda: (h := _health(primary))["status"] == "degraded" and h, 20.0, "degraded"
            )
            assert health["fault_reason"].startswith(f"listening: {url} "), health
            assert primary.status_code("/cluster/primary", 2.0) == 200
            log = primary.log_path.read_text(errors="replace")
            assert f"audio source {url} stopped" in log
            assert "reopening in" in log

            stream.start()  # back: reopened after the backoff, counted
            _wait(lambda: _health(primary)["status"] == "ok", 30.0, "ok again")
            sources = _status_sources(primary)
            assert sources[url]["reopens"] >= 1
            assert sources[url]["open"] is True
            assert f"audio source {url} reopened" in primary.log_path.read_text(errors="replace")
            metrics = primary.get("/metrics", timeout_s=2.0)
            assert metrics is not None
            found = re.search(
                rf'^ha_voice_audio_source_reopens_total\{{source="{re.escape(url)}"\}} (\S+)$',
                metrics.text,
                re.M,
            )
            assert found is not None
            assert float(found[1]) == sources[url]["reopens"]
        finally:
            held.close()
            stream.drop()


def _status_sources(node: LocalNode) -> dict[str, dict[str, Any]]:
    response = node.get("/api/voice/status", timeout_s=2.0)
    assert response is not None
    return {s["id"]: s for s in response.json()["sources"]}


def test_health_shows_the_wyoming_server_its_connections_and_what_it_refused() -> None:
    with LocalCluster(3) as cluster:
        cluster.start()
        node = cluster.nodes["n1"]
        _wait(lambda: node.get("/health", timeout_s=1.0) is not None, 20.0, "n1 answers")
        wyoming = _health(node)["wyoming"]
        assert wyoming == {
            "serving": True,
            "address": f"127.0.0.1:{node.wyoming_port}",
            "connections": 0,
            "accepted": 0,
            "refused": {},
        }
        with socket.create_connection(("127.0.0.1", node.wyoming_port), timeout=5.0) as held:
            seen = _wait(lambda: _health(node)["wyoming"]["connections"] == 1, 5.0, "one held")
            assert seen
            with socket.create_connection(("127.0.0.1", node.wyoming_port), timeout=5.0) as bad:
                bad.sendall(b"this is no event\n")
                bad.recv(4096)  # the error event, then the close
            held.sendall(b'{"type": "describe"}\n')
            assert b'"type": "info"' in held.recv(65536)
        wyoming = _wait(
            lambda: (w := _health(node)["wyoming"])["connections"] == 0 and w, 5.0, "closed"
        )
        assert wyoming["accepted"] == 2
        assert wyoming["refused"] == {"bad_event": 1}
