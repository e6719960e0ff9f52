"""Issue 12, live listening: generated Dutch speech streamed over UDP into a running cluster.

Three `ha-voice run` processes on loopback, each with `audio_sources = ["udp://127.0.0.1:PORT"]`
(its own port: on Jetsons every node binds the same port and the floating IP picks the
primary), the packaged Whisper base model on n1 and n2 (n3 places its speech there) and a
simulated Go2. A sender streams 16 kHz s16le PCM in real time, in 32 ms datagrams as the seed's
streamer does, to the primary's port: what the floating IP would do.
- "ga liggen", a pause, "opstaan" → lie down and stand up run once each on the robot;
- listening off (`/api/voice/stop`) → the sources close and nothing runs; on again → it listens;
- the primary killed during the stream → the new primary listens and nothing runs twice.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess, free_port
from ha_voice.robot.base import Action
from ha_voice.voice.models import packaged_model
from ha_voice.voice.speech import SAMPLE_RATE
from tests.integration.test_speech_cluster import Rig, _children, wait_speech_ready
from tests.speech_corpus import have_espeak, say

pytestmark = pytest.mark.skipif(
    not have_espeak(), reason="espeak-ng is not installed (.ci/run installs it)"
)

NODES = ("n1", "n2", "n3")
DATAGRAM_SAMPLES = 512  # 1024 bytes of s16le: 32 ms, the seed's streamer
_HEARD_TIMEOUT_S = 90.0  # recognition on a 2-core machine shared with other tests


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def script(*parts: str | float) -> np.ndarray:
    """Phrases (str, spoken by espeak-ng) and pauses (float, seconds) as one stream."""
    voices = iter(("nl", "nl+f3", "mb-nl2", "nl+m3") * 4)
    pieces = [say(p, next(voices)) if isinstance(p, str) else _silence(p) for p in parts]
    return np.concatenate([_silence(0.3), *pieces])


@dataclass
class Streamer:
    """Streams audio in real time to whichever port `target` names (the floating IP)."""

    target: int
    sent: int = 0
    _socket: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )

    def stream(self, audio: np.ndarray, *, at: Any = None) -> None:
        """Send `audio` paced at 16 kHz; `at(t_s)` is called before each datagram with the
        stream time of its first sample (seconds from the start of `audio`)."""
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
        started = time.monotonic()
        for offset in range(0, len(pcm), DATAGRAM_SAMPLES):
            due = started + offset / SAMPLE_RATE
            time.sleep(max(0.0, due - time.monotonic()))
            if at is not None:
                at(offset / SAMPLE_RATE)
            chunk = pcm[offset : offset + DATAGRAM_SAMPLES].tobytes()
            with contextlib.suppress(OSError):  # a closed port refuses: as on a real network
                self._socket.sendto(chunk, ("127.0.0.1", self.target))
            self.sent += 1

    def close(self) -> None:
        self._socket.close()


@dataclass
class ListeningRig(Rig):
    ports: dict[str, int] = field(default_factory=dict)  # the robot's stream, per node
    mics: dict[str, int] = field(default_factory=dict)  # a second source: a "microphone"

    def status(self, node: str) -> dict[str, Any]:
        response = self.cluster.nodes[node].get("/api/voice/status", timeout_s=5.0)
        assert response is not None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(self, node: str, predicate: Any, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):
                body = self.status(node)
                if predicate(body):
                    return body
            time.sleep(0.1)
        raise AssertionError(f"{node}'s /api/voice/status never got there: {body}")

    def wait_robot(self, action: Action, count: int) -> list[str]:
        deadline = time.monotonic() + _HEARD_TIMEOUT_S
        senders = self.robot_commands(action)
        while len(senders) < count and time.monotonic() < deadline:
            time.sleep(0.2)
            senders = self.robot_commands(action)
        return senders


@contextlib.contextmanager
def _rig(flags: tuple[str, ...] = (), local_mics: bool = False) -> Iterator[ListeningRig]:
    """The three nodes and the robot; `flags` go to every node. Each node's "microphone" is a
    second source of the primary's, or with `local_mics` a local source (local_audio_sources:
    every member hears its own)."""
    model = str(packaged_model("base"))
    ports = {n: free_port(socket.SOCK_DGRAM) for n in NODES}
    mics = {n: free_port(socket.SOCK_DGRAM) for n in NODES}

    def sources(n: str) -> list[str]:
        stream, mic = f"udp://127.0.0.1:{ports[n]}", f"udp://127.0.0.1:{mics[n]}"
        if local_mics:
            return [f"--audio-sources={stream}", f"--local-audio-sources={mic}"]
        return [f"--audio-sources={stream},{mic}"]

    node_flags = {
        n: [
            *sources(n),
            *flags,
            *([f"--whisper-model={model}"] if n != "n3" else []),
        ]
        for n in NODES
    }
    with (
        SimRobotProcess() as robot,
        LocalCluster(3, extra_flags=(f"--robot={robot.spec}",), node_flags=node_flags) as cluster,
    ):
        rig = ListeningRig(cluster, robot, ports=ports, mics=mics)
        workers: list[psutil.Process] = []
        try:
            cluster.start()
            assert cluster.wait_for_primary(30.0) is not None
            for node in ("n1", "n2"):
                wait_speech_ready(cluster.nodes[node])
            workers = [c for n in cluster.nodes.values() for c in _children(n)]
            yield rig
        finally:
            workers += [c for n in cluster.running() for c in _children(n)]
            cluster.close()
            for child in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


def _listening_here(body: dict[str, Any]) -> bool:
    return bool(body["listening_here"]) and all(s["open"] for s in body["sources"])


def _ran(body: dict[str, Any]) -> list[str]:
    return [u["intent"] for u in body["utterances"] if u["outcome"] == "ran"]


def test_speech_streamed_to_the_primary_runs_each_command_once_and_stop_stops_it() -> None:
    with _rig() as rig:
        primary, backups = rig.roles()
        rig.wait_status(primary, _listening_here)
        streamer = Streamer(rig.ports[primary])
        try:
            streamer.stream(script("ga liggen", 1.5, "opstaan", 1.5))
            assert rig.wait_robot(Action.STAND_DOWN, 1) == [primary], rig.status(primary)[
                "utterances"
            ]
            assert rig.wait_robot(Action.STAND_UP, 1) == [primary], rig.status(primary)[
                "utterances"
            ]
            status = rig.wait_status(primary, lambda b: len(b["utterances"]) >= 2)
            assert status["listener"] == primary
            source, mic = status["sources"]
            assert mic["packets_received"] == 0
            assert source["id"] == f"udp://127.0.0.1:{rig.ports[primary]}"
            assert source["packets_received"] == streamer.sent
            assert source["packets_dropped"] == 0
            assert source["level_dbfs"] is not None
            ran = [u for u in status["utterances"] if u["outcome"] == "ran"]
            assert {u["intent"] for u in ran} == {"lie_down", "stand_up"}
            assert status["is_listening"] is True
            assert {"last_command", "command_count"} <= set(status)
            for backup in backups:  # a backup says who listens, and listens to nothing
                seen = rig.status(backup)
                assert seen["listener"] == primary
                assert seen["listening_here"] is False
                assert [s["open"] for s in seen["sources"]] == [False, False]

            # Listening off, cluster-wide: the primary closes its source; speech runs nothing.
            stopped = rig.cluster.nodes[backups[0]].post("/api/voice/stop")
            assert stopped.status_code == 200, stopped.text
            rig.wait_status(primary, lambda b: not b["listening_here"])
            assert rig.status(primary)["listener"] is None
            streamer.stream(script("ga liggen", 1.5))
            time.sleep(3.0)  # what recognition of one utterance takes here, several times
            assert rig.robot_commands(Action.STAND_DOWN) == [primary]
            assert rig.status(primary)["sources"][0]["open"] is False

            # On again: the primary listens again, and a new utterance is a new command.
            assert rig.cluster.nodes[primary].post("/api/voice/start").status_code == 200
            rig.wait_status(primary, _listening_here)
            streamer.stream(script("ga liggen", 1.5))
            assert rig.wait_robot(Action.STAND_DOWN, 2) == [primary, primary]

            # Two sources hear the same words (the mic fainter and noisier): one command, the
            # better hearing wins and the other is a duplicate.
            mic = Streamer(rig.mics[primary])
            speech = script("opstaan", 1.5)
            noisy = 0.5 * speech + np.random.default_rng(7).normal(0, 0.005, len(speech))
            both = threading.Thread(target=mic.stream, args=(noisy.astype(np.float32),))
            both.start()
            streamer.stream(speech)
            both.join()
            mic.close()
            heard = rig.wait_status(
                primary, lambda b: sum(u["intent"] == "stand_up" for u in b["utterances"]) >= 3
            )
            assert rig.robot_commands(Action.STAND_UP) == [primary, primary], heard
            assert _ran(heard).count("stand_up") == 2
            assert sum(u["outcome"] == "duplicate" for u in heard["utterances"]) == 1
        finally:
            streamer.close()


def test_the_primary_killed_mid_stream_the_new_primary_listens_and_nothing_runs_twice() -> None:
    with _rig() as rig:
        first, _ = rig.roles()
        rig.wait_status(first, _listening_here)
        streamer = Streamer(rig.ports[first])
        try:
            streamer.stream(script("ga liggen", 1.5))
            assert rig.wait_robot(Action.STAND_DOWN, 1) == [first]
            # Kill the primary while "opstaan" is being said: that utterance is lost (or, had the
            # primary cut it already, run once); the stream moves to the new primary as the
            # floating IP would, and what is said afterwards runs there, once.
            killed: list[str] = []
            speech_s = 0.3 + 1.0  # the script's lead-in and pause: "opstaan" starts here

            def kill_mid_utterance(t_s: float) -> None:
                if t_s >= speech_s + 0.2 and not killed:
                    rig.kill_node(first)
                    killed.append(first)

            streamer.stream(script(1.0, "opstaan", 0.5), at=kill_mid_utterance)
            assert killed
            found = rig.cluster.wait_for_primary(30.0, exclude=first)
            assert found is not None
            second = found[0]
            rig.wait_status(second, _listening_here)
            streamer.target = rig.ports[second]
            streamer.stream(script("ga liggen", 1.5, "opstaan", 1.5))
            assert rig.wait_robot(Action.STAND_DOWN, 2) == [first, second]
            heard = rig.wait_status(
                second, lambda b: sum(u["outcome"] == "ran" for u in b["utterances"]) == 2, 60.0
            )
            assert heard["listener"] == second
            # "opstaan" under the kill: lost, or (cut before the kill) run once by the first.
            assert rig.robot_commands(Action.STAND_UP) in ([second], [first, second])
            assert rig.robot_commands(Action.STAND_DOWN) == [first, second]
        finally:
            streamer.close()
            with contextlib.suppress(Exception):
                rig.cluster.nodes[first].signal(signal.SIGCONT)
