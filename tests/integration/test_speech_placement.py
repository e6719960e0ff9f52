"""Speech work on the least loaded ready member, on a running cluster with the real base model.

Three `ha-voice run` processes and a simulated Go2; n1 leads (priority) and has no model, so it
is never ready for speech; n2 and n3 load the packaged multilingual base model. Spoken Dutch
comes from espeak-ng (tests/speech_corpus.py). A node is made busy by holding its speech
workers (SIGSTOP) with a job in them:
Every upload is a spoken "stop" (what it says is the recogniser's business, tested elsewhere);
each must run once, on n1, whichever node recognised it (the replicated journal, by key):
- a node that is not ready is never chosen, whoever receives the audio, for commands and for
  transcriptions alike;
- a node with a job in hand passes the next upload to an idle node, and gets its own back;
- the node a job was handed to is SIGKILLed mid-job: the receiving node takes the job itself,
  the client gets the right answer and the command runs once.
"""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess
from ha_voice.voice.models import packaged_model
from tests.speech_corpus import have_espeak, say, wav_bytes

pytestmark = pytest.mark.skipif(
    not have_espeak(), reason="espeak-ng is not installed (.ci/run installs it)"
)

NO_MODEL = "/nonexistent/ha-voice-no-model"
_READY_TIMEOUT_S = 120.0  # two nodes load the base model at once on a 2-core machine


class Rig:
    def __init__(self, cluster: LocalCluster, robot: SimRobotProcess) -> None:
        self.cluster = cluster
        self.robot = robot
        self.stopped: list[psutil.Process] = []
        self.started: list[psutil.Process] = []

    def node(self, name: str) -> LocalNode:
        return self.cluster.nodes[name]

    def hold_workers(self, name: str) -> None:
        """SIGSTOP `name`'s speech workers: a job they take stays in hand until released."""
        for child in children(self.node(name)):
            child.send_signal(signal.SIGSTOP)
            self.stopped.append(child)

    def release_workers(self) -> None:
        for child in self.stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGCONT)
        self.stopped.clear()

    def kill(self, name: str) -> None:
        """SIGKILL `name` and its workers, as systemd kills a unit."""
        workers = children(self.node(name))
        self.cluster.kill(name)
        for child in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(workers, timeout=5.0)


def children(node: LocalNode) -> list[psutil.Process]:
    if node.process is None:
        return []
    try:
        return psutil.Process(node.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    model = str(packaged_model("base"))
    flags = {
        "n1": ["--priority=200", f"--whisper-model={NO_MODEL}"],
        "n2": [f"--whisper-model={model}"],
        "n3": [f"--whisper-model={model}"],
    }
    with (
        SimRobotProcess() as robot,
        LocalCluster(3, extra_flags=(f"--robot={robot.spec}",), node_flags=flags) as cluster,
    ):
        running = Rig(cluster, robot)
        try:
            cluster.start()
            lead_with_n1(cluster)
            running.started = [c for n in cluster.nodes.values() for c in children(n)]
            wait_ready(running, {"n1": False, "n2": True, "n3": True})
            yield running
        finally:
            running.release_workers()
            running.started += [c for n in cluster.running() for c in children(n)]
            cluster.close()
            for child in running.started:  # a SIGKILLed daemon's workers must not outlive us
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


@pytest.fixture(autouse=True)
def n1_leads(rig: Rig) -> None:
    """Each test starts with n1 (no model) leading, as the rig began: on a loaded CI machine n1
    can lose its lease between tests and n3 lead, and a primary passes speech on to the
    backups (CI, Python 3.10: n3, leading, never took the job the kill test handed it)."""
    lead_with_n1(rig.cluster)


def lead_with_n1(cluster: LocalCluster) -> None:
    """Until n1 leads: the first election is a race, a step-down hands it over."""
    for _ in range(5):
        found = cluster.wait_for_primary(30.0)
        assert found is not None
        if found[0] == "n1":
            return
        cluster.nodes[found[0]].post("/cluster/step-down", {"target": "n1"})
        cluster.wait_for("n1", lambda view: view.get("role") == "primary", 10.0)
    raise AssertionError("n1 never led")


def speech_seen(node: LocalNode) -> dict[str, Any]:
    """Each member's `speech` on `node`'s /cluster."""
    view = node.cluster()
    return {} if view is None else {m["node"]: m["speech"] for m in view["members"]}


def wait_ready(rig: Rig, expected: dict[str, bool]) -> None:
    """Until every node sees every member's readiness as `expected`."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = {n: speech_seen(rig.node(n)) for n in expected}
        ready = [
            {m: bool(s and s["ready"]) for m, s in view.items() if m in expected}
            for view in seen.values()
        ]
        if all(r == expected for r in ready):
            return
        time.sleep(0.5)
    raise AssertionError(f"speech readiness not as {expected} after {_READY_TIMEOUT_S} s: {seen}")


def wait_busy(rig: Rig, name: str, timeout_s: float = 30.0) -> None:
    """Until `name` has a speech job in hand (as its own /cluster says)."""
    deadline = time.monotonic() + timeout_s
    own: Any = None
    while time.monotonic() < deadline:
        own = speech_seen(rig.node(name)).get(name)
        if own and own["running"] + own["queued"] > 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} took no speech job within {timeout_s} s: {own}")


# The recogniser is tuned elsewhere; "stop" it hears in every voice, and a stop always runs.
STOP = wav_bytes(say("stop", "nl"))


def wait_idle_seen(rig: Rig, hearer: str, peer: str, timeout_s: float = 10.0) -> None:
    """Until `hearer` has heard from `peer` that it is ready and has no speech job."""
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while time.monotonic() < deadline:
        seen = speech_seen(rig.node(hearer)).get(peer)
        if seen and seen["ready"] and seen["running"] + seen["queued"] == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"{hearer} does not hear {peer} idle within {timeout_s} s: {seen}")


def listen(node: LocalNode, key: str) -> httpx.Response:
    """The spoken "stop" as the seed's JSON body, under idempotency key `key`."""
    body = {"audio": base64.b64encode(STOP).decode("ascii"), "idempotency_key": key}
    return node.post("/api/voice/listen", body, timeout_s=90.0)


class Upload(threading.Thread):
    """An upload in the background; `result()` waits for its answer."""

    def __init__(self, node: LocalNode, key: str) -> None:
        super().__init__(daemon=True)
        self.args_ = (node, key)
        self.answer: httpx.Response | BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.answer = listen(*self.args_)
        except BaseException as exc:  # reported by result()
            self.answer = exc

    def result(self, timeout_s: float = 90.0) -> dict[str, Any]:
        self.join(timeout_s)
        assert isinstance(self.answer, httpx.Response), self.answer
        return answered(self.answer)


def answered(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert (body["intent"], body["processed"]) == ("stop", True), body
    return body


def counter(node: LocalNode, name: str, label: str, value: str) -> float:
    response = node.get("/metrics", timeout_s=5.0)
    assert response is not None
    found = re.search(rf'^{name}{{{label}="{value}"}} (\S+)$', response.text, re.M)
    return float(found.group(1)) if found else 0.0


def ran(rig: Rig, key: str) -> list[tuple[str, str | None]]:
    """(status, executed by) of every journal entry of idempotency key `key`, as n1 has them
    (a stop is also what a new primary sends the robot first: the robot's own journal cannot
    tell one upload's stop from a takeover's)."""
    response = rig.node("n1").get("/api/journal?limit=1000", timeout_s=5.0)
    assert response is not None
    entries = response.json()["entries"]
    return [(e["status"], e["executed_by"]) for e in entries if e["key"] == key]


def ran_once(rig: Rig, *keys: str, by: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
    """Each key's command ran once, done, by one of `by`: whichever node led when it ran. n1
    leads by priority, but on a loaded CI machine (two test workers, three Whisper workers) it
    can lose its lease and n3 take over (CI, Python 3.10, twice); where a command is
    transcribed is what these tests are about, and who runs it follows the lease."""
    for key in keys:
        entries = ran(rig, key)
        assert len(entries) == 1, (key, entries)
        assert entries[0][0] == "done", (key, entries)
        assert entries[0][1] in by, (key, entries)


def test_a_node_whose_speech_is_not_ready_is_never_chosen(rig: Rig) -> None:
    for i, receiver in enumerate(("n1", "n2", "n1", "n3")):
        body = answered(listen(rig.node(receiver), f"placement-ready-{i}"))
        assert body["stt_node"] in ("n2", "n3")
    for name in ("n1", "n2", "n3"):
        assert counter(rig.node(name), "ha_voice_speech_placed_total", "node", "n1") == 0
    assert counter(rig.node("n1"), "ha_voice_speech_handoffs_total", "outcome", "remote") == 2
    ran_once(rig, *(f"placement-ready-{i}" for i in range(4)))


def test_batch_work_is_placed_too(rig: Rig) -> None:
    """A transcription sent to n1 (no model) is done on another node, with its prompt."""
    node = rig.node("n1")
    remote = counter(node, "ha_voice_speech_handoffs_total", "outcome", "remote")
    response = httpx.post(
        node.url + "/v1/audio/transcriptions",
        files={"file": ("stop.wav", STOP, "audio/wav")},
        data={"model": "whisper-1", "language": "nl", "prompt": "stop, sta op, ga zitten"},
        headers=node.auth_headers,
        timeout=90.0,
    )
    assert response.status_code == 200, response.text
    assert "stop" in response.json()["text"].lower()
    assert counter(node, "ha_voice_speech_handoffs_total", "outcome", "remote") == remote + 1


def test_a_node_with_a_job_in_hand_passes_the_next_to_an_idle_one(rig: Rig) -> None:
    remote = counter(rig.node("n3"), "ha_voice_speech_handoffs_total", "outcome", "remote")
    rig.hold_workers("n3")
    first = Upload(rig.node("n3"), "placement-busy-1")
    wait_busy(rig, "n3")
    wait_idle_seen(rig, "n3", "n2")
    second = answered(listen(rig.node("n3"), "placement-busy-2"))
    assert second["stt_node"] == "n2"
    assert first.is_alive()  # still held on n3 when n2 answered the second
    rig.release_workers()
    assert first.result()["stt_node"] == "n3"
    after = counter(rig.node("n3"), "ha_voice_speech_handoffs_total", "outcome", "remote")
    assert after == remote + 1
    ran_once(rig, "placement-busy-1", "placement-busy-2")


def test_a_node_killed_mid_job_the_job_is_done_elsewhere_and_runs_once(rig: Rig) -> None:
    """n3 holds one job; the next goes to n2, which is SIGKILLed with it in hand: n3 does it
    itself once its workers run again (n1 is not ready), and n1 runs the command once."""
    rig.hold_workers("n3")
    rig.hold_workers("n2")
    first = Upload(rig.node("n3"), "placement-kill-1")
    wait_busy(rig, "n3")
    wait_idle_seen(rig, "n3", "n2")
    second = Upload(rig.node("n3"), "placement-kill-2")
    wait_busy(rig, "n2")
    rig.kill("n2")
    rig.release_workers()
    body = second.result()
    # Run by the primary: n1, unless the load of two workers transcribing beside the killed
    # node's restart cost n1 its lease and n3 took over (CI, once); never by the dead n2.
    assert body["stt_node"] == "n3"
    assert body["executed_by"] in ("n1", "n3")
    assert first.result()["stt_node"] == "n3"
    assert counter(rig.node("n3"), "ha_voice_speech_handoffs_total", "outcome", "retried") >= 1
    ran_once(rig, "placement-kill-1", "placement-kill-2", by=("n1", "n3"))
