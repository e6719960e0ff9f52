"""`ha-voice demo --listen`: live listening on a generated stream, through a failover.

Three `ha-voice run` processes and `ha-voice sim-robot` on 127.0.0.1, each node with the packaged
Whisper base model and `audio_sources = ["udp://127.0.0.1:PORT"]` (a port of its own: on
Jetsons every node binds the same one and the floating IP picks the primary). The demo plays
the Go2's audio streamer: Dutch that espeak-ng speaks, as 16 kHz mono s16le PCM in 32 ms
datagrams, in real time, to the primary's port (what the floating IP would do):

1. "ga liggen": the primary hears it, the robot lies down;
2. "opstaan", with the primary SIGKILLed while it is being said: that utterance is lost (or,
   cut before the kill, run once), and the audio sent to the dead primary is not heard;
3. the new primary listens once it has taken over; the stream moves to it; "opstaan" again and
   "stop" run there.

It prints what each primary heard and what the robot did, then judges the replicated journal:
every command said once ran at most once (duplicates: 0), and what was lost.

It needs espeak-ng and the speech extras (`pip install 'ha-voice[demo]'`); without them it says
which is missing and exits 2 before starting anything. Every wait has a deadline, and every
process and file it made is gone when it returns.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import numpy as np

from ha_voice.demo import (
    DemoRobot,
    Printer,
    Voice,
    speech_unready,
    spoken_wav,
    stop_all,
    verdict_and_stop,
)
from ha_voice.local_cluster import LocalCluster, LocalNode, free_port
from ha_voice.voice.audio import decode_upload
from ha_voice.voice.speech import SAMPLE_RATE, Audio

__all__ = ["run_listen_demo"]

_START_TIMEOUT_S: Final = 20.0
_TAKEOVER_TIMEOUT_S: Final = 10.0
_LISTENING_TIMEOUT_S: Final = 15.0
# Recognition of one utterance takes 0.3-0.7 s on two cores (docs/benchmarks.md); the nodes'
# model loads and the other utterances may be ahead of it.
_HEARD_TIMEOUT_S: Final = 60.0
_DATAGRAM_SAMPLES: Final = 512  # 1024 bytes of s16le: 32 ms, as the seed's streamer sends
_KILL_INTO_S: Final = 0.3  # how far into "opstaan" the primary dies
_NODES: Final = ("n1", "n2", "n3")


@dataclass(frozen=True)
class Said:
    """One phrase of the stream: its text, the intent it names, and when it was said."""

    text: str
    intent: str
    part: str  # "before", "under the kill", "after"


_SCRIPT: Final = (
    Said("ga liggen", "lie_down", "before"),
    Said("opstaan", "stand_up", "under the kill"),
    Said("opstaan", "stand_up", "after"),
    Said("stop", "stop", "after"),
)


def _speech(text: str) -> Audio:
    """`text` spoken by espeak-ng, as 16 kHz mono float32, trimmed of silence."""
    return decode_upload(spoken_wav(text), "audio/wav", 30.0).audio


def _silence(seconds: float) -> Audio:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


class Streamer:
    """The Go2's streamer: PCM datagrams in real time to one port on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def stream(self, audio: Audio, at: Callable[[float], None] | None = None) -> None:
        """Send `audio` paced at 16 kHz; `at(t_s)` before each datagram, `t_s` its offset."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
        started = time.monotonic()
        for offset in range(0, len(pcm), _DATAGRAM_SAMPLES):
            time.sleep(max(0.0, started + offset / SAMPLE_RATE - time.monotonic()))
            if at is not None:
                at(offset / SAMPLE_RATE)
            with contextlib.suppress(OSError):  # nobody there: as on a real network
                self._socket.sendto(pcm[offset : offset + _DATAGRAM_SAMPLES].tobytes(), self._to)
            self.sent += 1

    @property
    def _to(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        self._socket.close()


def run_listen_demo(*, as_json: bool, out: TextIO) -> int:
    """Run the demo; 0 if every phrase said ran at most once and the new primary heard what
    was said after the failover, 2 if this machine cannot speak or hear, 1 otherwise."""
    emit = Printer(out, as_json)
    voice = Voice.of_this_machine()
    if voice.why_not or voice.model_dir is None:
        emit(
            "unavailable",
            f"ha-voice demo --listen cannot run here: {voice.why_not}",
            why=voice.why_not,
        )
        return 2
    phrases = {said.text: _speech(said.text) for said in _SCRIPT}
    ports = {node: free_port(socket.SOCK_DGRAM) for node in _NODES}
    node_flags = {node: [f"--audio-sources=udp://127.0.0.1:{ports[node]}"] for node in _NODES}
    robot = DemoRobot()
    try:
        flags = (f"--robot={robot.spec}", f"--whisper-model={voice.model_dir}")
        with LocalCluster(3, extra_flags=flags, node_flags=node_flags) as cluster:
            emit(
                "start",
                f"ha-voice demo --listen: 3 listening nodes and a simulated Go2 on 127.0.0.1,"
                f" in {cluster.dir}",
                dir=str(cluster.dir),
                robot=robot.spec,
                ports=ports,
            )
            return _story(cluster, robot, emit, phrases, ports)
    finally:
        robot.close()


def _story(
    cluster: LocalCluster,
    robot: DemoRobot,
    emit: Printer,
    phrases: dict[str, Audio],
    ports: dict[str, int],
) -> int:
    cluster.start()
    found = cluster.wait_for_primary(_START_TIMEOUT_S)
    if found is None:
        return _fail(emit, cluster, f"no primary within {_START_TIMEOUT_S:.0f} s")
    first = _listener(cluster, emit)
    if first is None:
        return _fail(emit, cluster, "no node listens")
    streamer = Streamer(ports[first])
    try:
        streamer.stream(np.concatenate([_silence(0.3), phrases["ga liggen"], _silence(1.5)]))
        emit_heard(emit, _wait_heard(cluster.nodes[first], 1), first)
        killed_at = _kill_mid_utterance(cluster, streamer, first, phrases["opstaan"], emit)
        taken = cluster.wait_for_primary(_TAKEOVER_TIMEOUT_S, exclude=first, poll_s=0.01)
        if taken is None:
            return _fail(emit, cluster, "no backup took over")
        taker, at = taken
        emit(
            "takeover",
            f"{taker} took over: failover {(at - killed_at) * 1000:.0f} ms",
            node=taker,
            failover_ms=round((at - killed_at) * 1000, 1),
        )
        second = _listener(cluster, emit, since=killed_at, exclude=first)
        if second is None:
            return _fail(emit, cluster, f"no node listens after {taker} took over")
        streamer.port = ports[second]  # the floating IP moved to the new primary
        after = [phrases["opstaan"], _silence(1.5), phrases["stop"], _silence(1.5)]
        streamer.stream(np.concatenate([_silence(0.3), *after]))
        emit_heard(emit, _wait_heard(cluster.nodes[second], 2), second)
    finally:
        streamer.close()
    return _judge(cluster, robot, emit, first, second)


def _listener(
    cluster: LocalCluster, emit: Printer, since: float | None = None, exclude: str | None = None
) -> str | None:
    """The node that listens, once every node's speech is ready: the one whose
    /api/voice/status says it listens here with every source open (the primary). Found, not
    assumed: on a busy machine leadership can move while three nodes load their models. Says
    how long listening took; None (and why) if no node listens in time."""
    waited_from = time.monotonic()
    nodes = [node for node in cluster.nodes.values() if node.node_id != exclude]
    for node in nodes:
        unready = speech_unready(node)
        if unready is not None:
            emit("error", unready[0])
            return None
    deadline = time.monotonic() + _LISTENING_TIMEOUT_S
    while time.monotonic() < deadline:
        for node in nodes:
            status = _status(node)
            if status and status["listening_here"] and all(s["open"] for s in status["sources"]):
                ids = ", ".join(s["id"] for s in status["sources"])
                now = time.monotonic()
                gap = "" if since is None else f", {now - since:.1f} s after the kill"
                emit(
                    "listening",
                    f"{node.node_id} listens to {ids} (waited {now - waited_from:.1f} s{gap})",
                    node=node.node_id,
                    sources=[s["id"] for s in status["sources"]],
                    after_kill_s=None if since is None else round(now - since, 2),
                )
                return node.node_id
        time.sleep(0.1)
    return None


def _kill_mid_utterance(
    cluster: LocalCluster, streamer: Streamer, node: str, opstaan: Audio, emit: Printer
) -> float:
    """Stream "opstaan" and SIGKILL `node` while it is being said; the monotonic kill time."""
    lead_s = 0.5
    killed: list[float] = []

    def kill(t_s: float) -> None:
        if t_s >= lead_s + _KILL_INTO_S and not killed:
            cluster.kill(node)
            killed.append(time.monotonic())
            emit(
                "kill",
                f'SIGKILL {node} {_KILL_INTO_S:.1f} s into "opstaan" (the stream goes on to its'
                " address: not heard)",
                node=node,
                signal="SIGKILL",
            )

    streamer.stream(np.concatenate([_silence(lead_s), opstaan, _silence(1.0)]), at=kill)
    return killed[0]


def _status(node: LocalNode) -> dict[str, Any] | None:
    response = node.get("/api/voice/status", timeout_s=2.0)
    if response is None or response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def _wait_heard(node: LocalNode, count: int) -> list[dict[str, Any]]:
    """`node`'s last `count` utterances with an intent, oldest first, once it has them (or
    what it has at the deadline)."""
    deadline = time.monotonic() + _HEARD_TIMEOUT_S
    heard: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status = _status(node) or {"utterances": []}
        heard = [u for u in status["utterances"] if u["outcome"] != "lost"]
        if len(heard) >= count:
            break
        time.sleep(0.2)
    return list(reversed(heard[:count]))


def emit_heard(emit: Printer, heard: Sequence[dict[str, Any]], node: str) -> None:
    """One "heard" event per utterance `node` heard."""
    for utterance in heard:
        emit(
            "heard",
            f'{node} heard "{utterance["heard"]}" ({utterance["intent"]}): {utterance["outcome"]}',
            node=node,
            heard=utterance["heard"],
            intent=utterance["intent"],
            outcome=utterance["outcome"],
            key=utterance["key"],
        )


def _journal(node: LocalNode) -> list[dict[str, Any]]:
    response = node.get("/api/journal?limit=1000", timeout_s=5.0)
    if response is None or response.status_code != 200:
        return []
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def _judge(cluster: LocalCluster, robot: DemoRobot, emit: Printer, first: str, second: str) -> int:
    """The replicated journal against the script: ran, lost, duplicated; the robot's verdict."""
    time.sleep(0.5)  # the last command's outcome, replicated
    heard = [e for e in _journal(cluster.nodes[second]) if e["source"].startswith("listen:")]
    ran = Counter((e["action"], e["executed_by"]) for e in heard)
    for entry in heard:
        emit(
            "ran",
            f'journal: "{entry["text"]}" -> {entry["action"]} by {entry["executed_by"]}'
            f" ({entry['status']}, key {entry['key'][:15]}…)",
            action=entry["action"],
            executed_by=entry["executed_by"],
            status=entry["status"],
        )
    expected = {
        ("stand_down", first): 1,
        ("stand_up", second): 1,
        ("stop_move", second): 1,
    }
    lost_under_kill = ran[("stand_up", first)] == 0
    duplicates = sum(max(0, n - expected.get(k, 1)) for k, n in ran.items())
    missing = sum(max(0, n - ran[k]) for k, n in expected.items())
    said = ", ".join(f'"{s.text}" ({s.part})' for s in _SCRIPT)
    emit(
        "script",
        f"said: {said}; ran {sum(ran.values())}, lost {1 if lost_under_kill else 0}"
        f' ("opstaan" under the kill), not heard {missing}, duplicated {duplicates}',
        said=len(_SCRIPT),
        ran=sum(ran.values()),
        lost=1 if lost_under_kill else 0,
        missing=missing,
        duplicates=duplicates,
    )
    did = robot.commands()
    emit(
        "robot",
        "the robot did: " + ", ".join(f"{action} ({node})" for action, node in did),
        commands=[{"action": action, "node": node} for action, node in did],
    )
    verdict, stopped = verdict_and_stop(cluster, robot, emit)
    ok = duplicates == 0 and missing == 0 and verdict.ok and stopped
    summary = {
        "old_primary": first,
        "new_primary": second,
        "ran": sum(ran.values()),
        "lost": 1 if lost_under_kill else 0,
        "missing": missing,
        "duplicates": duplicates,
        "robot_violations": len(verdict.violations),
        "clean_exit": stopped,
        "ok": ok,
    }
    emit.summary(
        summary,
        f"{second} listened on after {first} died; duplicates {duplicates},"
        f" not heard {missing}, robot violations {len(verdict.violations)}",
    )
    return 0 if ok else 1


def _fail(emit: Printer, cluster: LocalCluster, why: str) -> int:
    emit("error", f"{why}; logs in {cluster.dir}", why=why)
    stop_all(cluster)
    return 1
