"""`ha-voice demo`: three real daemons and a simulated Go2, the primary SIGKILLed mid-walk.

It starts `ha-voice sim-robot` and three `ha-voice run` processes on 127.0.0.1 in a throwaway
directory, with mDNS on and an API token (mode 0600, in that directory) that every command
carries. Every command goes through `HAVoiceClient`, which finds the primary
by the mDNS service `<cluster>._ha-voice._tcp.local.`. It says "sta op" and "loop vooruit",
kills the primary with SIGKILL while the robot walks, shows the robot halting by itself (its
Move watchdog), times the takeover (to the first 200 on a survivor's /cluster/primary), shows
the new primary's safe takeover and that its journal holds every command answered before the
kill, says "ga liggen" out loud, sends the first command's idempotency key again (answered from
the journal, not run twice), restarts the killed node as a backup, prints the robot's verdict on
who commanded it, stops everything with SIGTERM and removes the directory.

"ga liggen" is spoken when this machine can: espeak-ng makes a WAV of it, which goes as the
seed's `{"audio": <base64 WAV>}` to a backup's `/api/voice/listen`; the demo prints what was
heard, how sure, which node transcribed it and the timings. The nodes load the packaged Whisper
base model (ha_voice.voice.models) at start, in their speech workers. Without espeak-ng, the
speech extras (`pip install 'ha-voice[demo]'`) or a node whose speech is ready, the demo says
why and sends the text through `HAVoiceClient` instead.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from ha_voice.client import ClientError, HAVoiceClient
from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess
from ha_voice.robot.sim import Verdict
from ha_voice.robot.sim_server import SimRobotClient, fetch_journal, fetch_verdict
from ha_voice.voice.models import PackagedModelMissing, packaged_model

__all__ = ["DemoRobot", "Printer", "Voice", "run_demo", "speech_unready", "spoken_wav", "stop_all"]

_START_TIMEOUT_S = 20.0
_TAKEOVER_TIMEOUT_S = 10.0
# Loading the base model takes ~1-2 s of CPU per node; three nodes share this machine's cores.
_SPEECH_READY_TIMEOUT_S = 60.0
_SPOKEN = "ga liggen"


class Printer:
    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.started = time.monotonic()

    def __call__(self, event: str, line: str, **fields: Any) -> None:
        elapsed = time.monotonic() - self.started
        if self.as_json:
            self.out.write(json.dumps({"t_s": round(elapsed, 3), "event": event, **fields}) + "\n")
        else:
            self.out.write(f"{elapsed:7.2f} s  {line}\n")
        self.out.flush()

    def summary(self, fields: dict[str, Any], line: str) -> None:
        """The run's last word: `fields` as one JSON object, or `line` for people."""
        if self.as_json:
            self.out.write(json.dumps({"event": "summary", **fields}) + "\n")
        else:
            self.out.write(f"summary: {line}\n")
        self.out.flush()


class DemoRobot(SimRobotProcess):
    """The sim-robot process, and what the demo asks it."""

    def speed(self) -> float:
        async def ask() -> float:
            client = SimRobotClient(self.host, self.port)
            await client.connect()
            try:
                state = await client.state()
            finally:
                await client.close()
            return max(abs(v) for v in state.velocity)

        return asyncio.run(ask())

    def verdict(self) -> Verdict:
        return asyncio.run(fetch_verdict(self.host, self.port))

    def commands(self) -> list[tuple[str, str]]:
        """(action, sending node) of every command the robot accepted, in order."""
        return [
            (entry.action.value, entry.token.node)
            for entry in asyncio.run(fetch_journal(self.host, self.port))
            if entry.token is not None and entry.action is not None and entry.accepted
        ]

    def first_command_of(self, node: str) -> str | None:
        for entry in asyncio.run(fetch_journal(self.host, self.port)):
            if entry.token is not None and entry.token.node == node and entry.action:
                return entry.action.value
        return None


def _client(cluster: LocalCluster) -> HAVoiceClient:
    # The token the cluster provisioned (its api_token_file): commands need one.
    return HAVoiceClient(
        cluster=cluster.cluster, interfaces=["127.0.0.1"], deadline_s=15.0, token=cluster.token
    )


def _say(cluster: LocalCluster, text: str, key: str | None = None) -> dict[str, Any]:
    try:
        with _client(cluster) as client:
            result = client.say(text, key=key)
    except ClientError as exc:
        return {"status": "error", "error": str(exc)}
    return {**result.body, "attempts": result.attempts}


@dataclass(frozen=True)
class Voice:
    """Whether the demo can speak: the model directory the nodes load, or why it cannot."""

    model_dir: Path | None
    why_not: str  # "" when it can speak

    @staticmethod
    def of_this_machine() -> Voice:
        """espeak-ng on PATH, faster-whisper installed and the packaged base model at hand."""
        if shutil.which("espeak-ng") is None:
            return Voice(None, "espeak-ng is not installed (apt-get install espeak-ng)")
        if importlib.util.find_spec("faster_whisper") is None:
            return Voice(None, "faster-whisper is not installed (pip install 'ha-voice[demo]')")
        try:
            return Voice(packaged_model("base"), "")
        except (PackagedModelMissing, OSError) as exc:
            return Voice(None, f"no packaged Whisper model: {exc}")


def run_demo(*, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 if a backup took over, the robot obeyed it (spoken to, where this
    machine can speak) and nobody overlapped."""
    emit = Printer(out, as_json)
    voice = Voice.of_this_machine()
    robot = DemoRobot()
    try:
        model = [f"--whisper-model={voice.model_dir}"] if voice.model_dir else []
        with LocalCluster(3, extra_flags=(f"--robot={robot.spec}", *model), mdns=True) as cluster:
            if as_json:
                emit("start", "", dir=str(cluster.dir), robot=robot.spec)
            else:
                out.write(
                    f"ha-voice demo: 3 nodes and a simulated Go2 on 127.0.0.1, in {cluster.dir}\n"
                )
            return _story(cluster, robot, emit, voice)
    finally:
        robot.close()


def _story(cluster: LocalCluster, robot: DemoRobot, emit: Printer, voice: Voice) -> int:
    cluster.start()
    first = cluster.wait_for_primary(_START_TIMEOUT_S)
    if first is None:
        emit("error", f"no primary within {_START_TIMEOUT_S:.0f} s; logs in {cluster.dir}")
        return 1
    old = first[0]
    time.sleep(0.5)
    emit("primary", f"{old} is primary", node=old)
    first_key = "demo-sta-op"
    reply = _say(cluster, "sta op", first_key)
    emit(
        "say",
        f'"sta op" -> {reply.get("executed_by")} (found by mDNS): {reply.get("response")}'
        f" [journal index {reply.get('index')}]",
        text="sta op",
        executed_by=reply.get("executed_by"),
    )
    _say_in_background(cluster, "loop vooruit", emit)
    _wait_until(lambda: robot.speed() > 0.0, 5.0)
    time.sleep(0.3)
    emit("walking", f"the robot walks at {robot.speed():.1f} m/s", speed=robot.speed())
    emit("kill", f"SIGKILL {old} mid-walk", node=old, signal="SIGKILL")
    killed_at = time.monotonic()
    cluster.kill(old)
    taken = cluster.wait_for_primary(_TAKEOVER_TIMEOUT_S, exclude=old, poll_s=0.002)
    if taken is None:
        emit("error", "no backup took over")
        return 1
    new, at = taken
    failover_ms = (at - killed_at) * 1000
    emit(
        "takeover",
        f"{new} took over: failover {failover_ms:.0f} ms",
        node=new,
        failover_ms=round(failover_ms, 1),
    )
    halted = _wait_until(lambda: robot.speed() == 0.0, 5.0)
    emit(
        "halted",
        f"the robot stood still {halted - killed_at:.2f} s after the kill"
        " (no Move for ~1 s: the watchdog, or the new primary's StopMove)",
        after_s=round(halted - killed_at, 2),
    )
    time.sleep(0.3)
    emit(
        "safe",
        f"{new}'s first command to the robot: {robot.first_command_of(new)}",
        first_command=robot.first_command_of(new),
    )
    survived = _journal_survived(cluster, new, first_key)
    emit(
        "journal",
        f"{new}'s journal holds the commands answered before the kill: "
        + ("yes" if survived else "NO"),
        survived=survived,
    )
    reply, spoken = _sit(cluster, new, voice, emit)
    again = _say(cluster, "sta op", first_key)
    emit(
        "retry",
        f'"sta op" again with its first key: {again.get("outcome")} at index {again.get("index")},'
        f" duplicate={again.get('duplicate')} (answered from the journal, not run twice)",
        duplicate=again.get("duplicate"),
    )
    cluster.nodes[old].start()
    rejoined = cluster.wait_for(old, lambda v: v["role"] == "backup", _START_TIMEOUT_S)
    emit("rejoined", f"{old} rejoined as backup", node=old, ok=rejoined is not None)
    verdict, stopped = verdict_and_stop(cluster, robot, emit)
    ok = (
        rejoined is not None
        and verdict.ok
        and stopped
        and reply.get("status") == "success"
        and survived
        and again.get("duplicate") is True
        and spoken is not False
    )
    summary = {
        "failover_ms": round(failover_ms, 1),
        "journal_survived": survived,
        "old_primary": old,
        "new_primary": new,
        "robot_violations": len(verdict.violations),
        "clean_exit": stopped,
        "spoken": spoken,
        "ok": ok,
    }
    emit.summary(
        summary,
        f"{new} took over from {old} in {failover_ms:.0f} ms; "
        f"robot violations: {len(verdict.violations)}",
    )
    return 0 if ok else 1


def _sit(
    cluster: LocalCluster, primary: str, voice: Voice, emit: Printer
) -> tuple[dict[str, Any], bool | None]:
    """Say "ga liggen" to a backup as audio where this machine can speak, else as text through
    the client; the answer, and whether speaking worked (None: not tried, and why is printed)."""
    backup = next(n for n in cluster.running() if n.node_id != primary)
    waited_from = time.monotonic()
    unready = (voice.why_not, False) if voice.why_not else speech_unready(backup)
    if unready is None:
        emit(**_ready(backup, time.monotonic() - waited_from))
        reply = _speak(backup, _SPOKEN)
        emit(**_heard(backup.node_id, reply))
        if reply.get("status") == "success":
            return reply, True
        unready = (f"the spoken command failed: {reply.get('error')}", True)
    why_not, has_speech = unready
    spoken = False if has_speech else None  # nodes with speech must hear: else the demo fails
    emit("spoken", f"not spoken ({why_not}): sending the text instead", mode="text", why=why_not)
    reply = _say(cluster, _SPOKEN)
    emit(
        "say",
        f'"{_SPOKEN}" -> {reply.get("executed_by")}: {reply.get("response")}'
        f" ({reply.get('attempts')} attempt(s), the client found the new primary by itself)",
        text=_SPOKEN,
        status=reply.get("status"),
        executed_by=reply.get("executed_by"),
    )
    return reply, spoken


def speech_unready(node: LocalNode) -> tuple[str, bool] | None:
    """None once `node`'s /health says its speech is ready; else why not at the deadline, and
    whether the node has speech at all (a build without it reports none)."""
    why = "no answer on /health"
    deadline = time.monotonic() + _SPEECH_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        response = node.get("/health", timeout_s=2.0)
        if response is not None and response.status_code in (200, 503):
            speech = response.json().get("speech")
            if not isinstance(speech, dict):
                return (
                    f"{node.node_id}'s /health reports no speech: this build does not hear",
                    False,
                )
            if speech.get("ready") is True:
                return None
            why = f"speech not ready on {node.node_id}: {speech.get('reason') or 'no reason'}"
        time.sleep(0.2)
    return f"{why} after {_SPEECH_READY_TIMEOUT_S:.0f} s", True


def _ready(node: LocalNode, waited_s: float) -> dict[str, Any]:
    """The "speech" event: what `node` loaded, and how long the demo waited for it."""
    response = node.get("/health", timeout_s=2.0)
    speech = (response.json().get("speech") if response is not None else None) or {}
    model = Path(str(speech.get("model"))).name
    on = f"{speech.get('device')}, {speech.get('compute_type')}"
    return {
        "event": "speech",
        "line": f"{node.node_id}'s speech is ready: {model} on {on} (waited {waited_s:.1f} s)",
        "node": node.node_id,
        "waited_s": round(waited_s, 2),
        "model": speech.get("model"),
        "device": speech.get("device"),
        "compute_type": speech.get("compute_type"),
    }


def spoken_wav(text: str, voice: str = "nl") -> bytes:
    """`text` spoken by espeak-ng `voice`, as a WAV file's bytes (22.05 kHz mono, 16-bit).

    Raises OSError when espeak-ng cannot run, subprocess.CalledProcessError when it fails."""
    with tempfile.TemporaryDirectory(prefix="ha-voice-demo-") as tmp:
        wav = Path(tmp) / "spoken.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return wav.read_bytes()


def _speak(node: LocalNode, text: str) -> dict[str, Any]:
    """POST `text`, spoken, to `node`'s /api/voice/listen as {"audio": <base64 WAV>}; the
    answer's fields, or {"status": "error", "error": why}."""
    try:
        wav = spoken_wav(text)
        body = {"audio": base64.b64encode(wav).decode("ascii"), "idempotency_key": "demo-spoken"}
        response = node.post("/api/voice/listen", body, timeout_s=30.0)
        answer: dict[str, Any] = response.json()
    except (OSError, subprocess.SubprocessError, httpx.HTTPError, ValueError) as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if response.status_code != 200 and answer.get("status") != "error":
        answer = {**answer, "status": "error", "error": f"HTTP {response.status_code}"}
    return {"audio_bytes": len(wav), "http_status": response.status_code, **answer}


def _heard(to: str, reply: dict[str, Any]) -> dict[str, Any]:
    """The "spoken" event for the answer to audio: what was heard, how sure, where, how fast."""
    timings = reply.get("timings") or {}
    confidence = reply.get("confidence")
    sure = f"{confidence:.2f}" if isinstance(confidence, (int, float)) else "?"
    steps = ", ".join(
        f"{k.removesuffix('_ms')} {v:.0f} ms"
        for k, v in timings.items()
        if isinstance(v, (int, float))
    )
    line = (
        f'"{_SPOKEN}" spoken (espeak-ng, {reply.get("audio_bytes", 0) // 1024} KiB WAV) to {to}, a'
        f' backup: heard "{reply.get("recognized")}" (intent {reply.get("intent")}, confidence'
        f" {sure}) on {reply.get('stt_node')}; {steps or 'no timings'}"
        f" -> {reply.get('executed_by')}: {reply.get('response') or reply.get('error')}"
    )
    return {
        "event": "spoken",
        "line": line,
        "mode": "audio",
        "to": to,
        "http_status": reply.get("http_status"),
        "status": reply.get("status"),
        "heard": reply.get("recognized"),
        "intent": reply.get("intent"),
        "confidence": confidence,
        "stt_node": reply.get("stt_node"),
        "timings": timings,
        "executed_by": reply.get("executed_by"),
        "error": reply.get("error"),
    }


def _say_in_background(cluster: LocalCluster, text: str, emit: Printer) -> None:
    threading.Thread(target=_say, args=(cluster, text), daemon=True).start()
    emit("say", f'"{text}"', text=text)


def _journal_survived(cluster: LocalCluster, node: str, key: str) -> bool:
    """Whether `node`'s journal holds the command with `key`, finished."""
    response = cluster.nodes[node].get("/api/journal?limit=1000", timeout_s=2.0)
    if response is None or response.status_code != 200:
        return False
    entries = response.json()["entries"]
    return any(e["key"] == key and e["status"] == "done" for e in entries)


def _wait_until(condition: Any, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
    return time.monotonic()


def verdict_and_stop(
    cluster: LocalCluster, robot: DemoRobot, emit: Printer
) -> tuple[Verdict, bool]:
    """A demo's end: the robot's verdict on its journal, then SIGTERM to every node (printed);
    the verdict, and whether every node exited 0."""
    verdict = robot.verdict()
    emit(
        "verdict",
        f"robot journal: {verdict.accepted} commands from {', '.join(verdict.senders)};"
        f" overlapping writers / stale terms / after lease: {len(verdict.violations)}",
        violations=len(verdict.violations),
        commands=verdict.accepted,
    )
    stopped = stop_all(cluster)
    emit("stopped", "SIGTERM to all: " + ("every node exited 0" if stopped else "not all exited 0"))
    return verdict, stopped


def stop_all(cluster: LocalCluster) -> bool:
    """SIGTERM to every running node; whether each exited 0 within 15 s."""
    running = cluster.running()
    for node in running:
        node.signal(signal.SIGTERM)
    return all(node.wait(15.0) == 0 for node in running)
