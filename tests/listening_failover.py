"""A scripted live stream into a 3-node cluster on a real LAN, with the primary killed
mid-utterance: the rig of tests/e2e/test_netns_listening_failover.py and
tests/bench/bench_listening_failover.py.

Three `ha-voice run` processes, each in its own network namespace on one bridge (found by mDNS
alone), with a floating IP (`VIP`) that follows the primary and `audio_sources =
["udp://0.0.0.0:PORT", "udp://0.0.0.0:PORT2"]` on every node, as on Jetsons; n1 and n2 load the
packaged Whisper base model, n3 places its speech there. A simulated Go2 and a client live in a
fourth namespace; the client streams the script to VIP:PORT in real time in 32 ms datagrams (the
seed's streamer), and with two sources also a fainter, noisier copy 0.1 s later to VIP:PORT2.

`ListeningLan.run(script, kills_s, two_sources=)` SIGKILLs the primary at each stream time of
`kills_s`, waits for the new primary and reads when its sources took their first block
(`listening_since`): the listening gap. After the stream it reads the replicated journal from
the primary and scores it against the script (tests/speech_script.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ha_voice.local_cluster import LocalCluster
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.listening import utterance_key
from ha_voice.voice.models import packaged_model
from tests.integration.netns import Lan, NsProcess, created, http_probe
from tests.speech_corpus import SAMPLE_RATE
from tests.speech_script import Ran, Score, Script, score

__all__ = ["VIP", "Failover", "ListeningLan", "Outcome", "kill_times", "listening_lan"]

SUBNET = "10.223.0.0/24"
VIP = "10.223.0.200"  # the floating IP, on SUBNET
CLIENT = 3
ROBOT_PORT = 7601
MODEL_NODES = ("n1", "n2")  # n3 has no model: it places its speech on these
PORTS = (9999, 9998)  # the robot's stream (the seed's port), and a second "microphone"
SECOND_DELAY_S = 0.1
_READY_TIMEOUT_S = 150.0
_FAILOVER_TIMEOUT_S = 30.0
_SETTLE_TIMEOUT_S = 120.0  # the last utterances recognised on a loaded 2-core machine

# Runs in the client namespace: streams s16le files to VIP ports in 32 ms datagrams, paced in
# real time; prints when it started (wall and monotonic clock) and how many datagrams it sent.
_STREAMER = """
import socket, sys, time
vip, *pairs = sys.argv[1:]
streams = [(open(path, "rb").read(), int(port)) for path, port in zip(pairs[::2], pairs[1::2])]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
step = 1024  # 512 samples of s16le: 32 ms
length = max(len(data) for data, _ in streams)
started, wall = time.monotonic(), time.time()
print(f"start {wall!r} {started!r}", flush=True)
sent = 0
for offset in range(0, length, step):
    time.sleep(max(0.0, started + offset / 32000 - time.monotonic()))
    for data, port in streams:
        chunk = data[offset : offset + step]
        if chunk:
            try:
                sock.sendto(chunk, (vip, port))
            except OSError:
                pass
    sent += 1
print(f"sent {sent}", flush=True)
"""


@dataclass
class Failover:
    """One kill: when (stream time), whom, who took over, and the listening gap."""

    at_s: float
    killed: str
    new_primary: str = ""
    listening_since_s: float | None = None  # stream time of the new primary's first block

    @property
    def gap_s(self) -> float | None:
        """Stream time between the kill and the first audio the new primary's source took."""
        if self.listening_since_s is None:
            return None
        return self.listening_since_s - self.at_s


@dataclass
class Outcome:
    """One scripted run: the score, the failovers, what each node's listener saw."""

    score: Score
    failovers: list[Failover]
    ran: list[Ran]
    robot_ok: bool
    robot_violations: list[str] = field(default_factory=list)
    utterances: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            **self.score.summary(),
            "gaps_s": [None if f.gap_s is None else round(f.gap_s, 3) for f in self.failovers],
            "robot_ok": self.robot_ok,
        }


def kill_times(script: Script, count: int, after_s: float = 20.0) -> list[float]:
    """`count` stream times, spread over the script after `after_s`, each 40 % into a command of
    at least 0.5 s (so the kill falls inside the utterance), at least 25 s apart."""
    usable = [s for s in script.commands if s.end_s - s.start_s >= 0.5 and s.start_s >= after_s]
    span = script.duration_s - after_s
    times: list[float] = []
    for i in range(count):
        aim = after_s + span * (i + 0.5) / count
        options = [s for s in usable if all(abs(s.start_s - t) >= 25.0 for t in times)]
        if not options:
            break
        said = min(options, key=lambda s: abs(s.start_s - aim))
        times.append(round(said.start_s + 0.4 * (said.end_s - said.start_s), 3))
    return sorted(times)


def _intent_of(vocabulary: Vocabulary) -> dict[tuple[str, tuple[tuple[str, float], ...]], str]:
    """(action, its parameters) → the intent that sends them."""
    return {
        (intent.action.value, tuple(sorted(intent.action_params.items()))): intent.name
        for intent in vocabulary.intents
        if intent.action is not None
    }


@dataclass
class ListeningLan:
    lan: Lan
    cluster: LocalCluster
    probe: NsProcess
    robot_address: str
    tmp: Path

    def fetch(self, url: str, timeout_s: float = 10.0) -> tuple[int | None, Any]:
        """GET `url` from the client namespace; (status, parsed JSON or None)."""
        start = len(self.probe.stdout.lines)
        self.probe.send(url)
        line = self.probe.wait_for(lambda text: json.loads(text)["url"] == url, timeout_s, start)
        reply = json.loads(line)
        try:
            return reply["status"], json.loads(reply.get("body") or "null")
        except json.JSONDecodeError:
            return reply["status"], None

    def get(self, node: str, path: str) -> tuple[int | None, Any]:
        return self.fetch(self.cluster.nodes[node].url + path)

    def primary(self, exclude: str = "", timeout_s: float = _FAILOVER_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.cluster.running():
                if node.node_id != exclude and self.get(node.node_id, "/cluster/primary")[0] == 200:
                    return node.node_id
            time.sleep(0.1)
        raise AssertionError(f"no primary\n{self.logs()}")

    def wait_listening(self, node: str, after_s: float = 0.0) -> float:
        """Wall time of the first block `node`'s first source took after `after_s`."""
        deadline = time.monotonic() + _FAILOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = self.get(node, "/api/voice/status")
            since = body["sources"][0].get("listening_since") if status == 200 else None
            if since is not None and since > after_s:
                return float(since)
            time.sleep(0.1)
        raise AssertionError(f"{node} never listened\n{self.logs()}")

    def wait_open(self, node: str, predicate: Any = None) -> None:
        """Until `node` listens with its sources open (or `predicate` of its voice status)."""

        def listening(body: Any) -> bool:
            return bool(body["listening_here"]) and all(s["open"] for s in body["sources"])

        deadline = time.monotonic() + _FAILOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = self.get(node, "/api/voice/status")
            if status == 200 and (predicate or listening)(body):
                return
            time.sleep(0.1)
        raise AssertionError(f"{node} never got there\n{self.logs()}")

    def wait_ready(self, node: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status, health = self.get(node, "/health")
            speech = health.get("speech") if isinstance(health, dict) else None
            if status is not None and (speech is None or speech.get("ready") is True):
                return
            time.sleep(0.3)
        raise AssertionError(f"{node}'s speech never ready\n{self.logs()}")

    def restart(self, node: str) -> None:
        """Start a killed node again and wait until it answers (with its model loaded)."""
        self.cluster.nodes[node].start()
        if node in MODEL_NODES:
            self.wait_ready(node)
        else:
            self.wait_open(node, lambda body: body["listener"] is not None)

    def _files(self, script: Script, two_sources: bool) -> list[str]:
        first = self.tmp / f"stream-{script.seed}.s16"
        first.write_bytes(_s16(script.audio))
        files = [str(first), str(PORTS[0])]
        if two_sources:
            lead = np.zeros(round(SECOND_DELAY_S * SAMPLE_RATE), dtype=np.float32)
            noise = np.random.default_rng(script.seed + 2).normal(0, 0.004, len(script.audio))
            copy = np.concatenate([lead, 0.6 * script.audio + noise])[: len(script.audio)]
            second = self.tmp / f"mic-{script.seed}.s16"
            second.write_bytes(_s16(copy))
            files += [str(second), str(PORTS[1])]
        return files

    def run(
        self,
        script: Script,
        kills_s: Sequence[float],
        *,
        two_sources: bool,
        restart_killed: bool = False,
    ) -> Outcome:
        """Stream `script` (to both sources with `two_sources`), SIGKILL the primary at each
        of `kills_s` (stream time), score what ran. With `restart_killed` each killed node is
        started again once the new primary listens (more than two kills keep a majority)."""
        primary = self.primary()
        self.wait_open(primary)
        journal_from = int(self.get(primary, "/api/journal?limit=1")[1]["last_index"])
        streamer = self.lan[CLIENT].spawn(
            [sys.executable, "-c", _STREAMER, VIP, *self._files(script, two_sources)]
        )
        _, wall, mono = streamer.wait_for(lambda line: line.startswith("start "), 10.0).split()
        started_wall, started_mono = float(wall), float(mono)
        failovers: list[Failover] = []
        for at_s in kills_s:
            time.sleep(max(0.0, started_mono + at_s - time.monotonic()))
            self.cluster.kill(primary)
            failover = Failover(at_s, primary)
            failovers.append(failover)
            primary = failover.new_primary = self.primary(exclude=failover.killed)
            since = self.wait_listening(primary, after_s=started_wall + at_s)
            failover.listening_since_s = since - started_wall
            if restart_killed:
                self.cluster.nodes[failover.killed].start()
        streamer.wait_for(lambda line: line.startswith("sent "), script.duration_s + 60.0)
        ran = self._settled(script, primary, journal_from, started_wall)
        windows = [(f.at_s, f.listening_since_s or f.at_s) for f in failovers]
        return Outcome(
            score(script, ran, windows),
            failovers,
            ran,
            *self._robot_verdict(),
            utterances=self.get(primary, "/api/voice/status")[1]["utterances"],
        )

    def _settled(self, script: Script, primary: str, since: int, started_wall: float) -> list[Ran]:
        """The listened commands in the journal once the primary's listener has none pending."""
        deadline = time.monotonic() + _SETTLE_TIMEOUT_S
        previous: list[Ran] | None = None
        while time.monotonic() < deadline:
            ran = self._listened(script, primary, since, started_wall)
            if ran == previous:
                return ran
            previous = ran
            time.sleep(8.0)  # longer than a queued utterance's recognition here
        raise AssertionError("the journal never settled")

    def _listened(self, script: Script, primary: str, since: int, started_wall: float) -> list[Ran]:
        vocabulary = Vocabulary.load("nl")
        intent_of = _intent_of(vocabulary)
        ran: list[Ran] = []
        while True:
            status, page = self.get(primary, f"/api/journal?since={since}&limit=500")
            assert status == 200, page
            for entry in page["entries"]:
                if str(entry["source"]).startswith("listen:"):
                    params = tuple(sorted(entry["params"].items()))
                    intent = intent_of.get((entry["action"], params), entry["action"])
                    at_s = entry["accepted_at"] - started_wall
                    said = _utterance(script, vocabulary, intent, entry["key"], at_s, started_wall)
                    ran.append(Ran(intent, at_s, entry["key"], said))
            if not page["entries"]:
                return ran
            since = page["entries"][-1]["index"]

    def _robot_verdict(self) -> tuple[bool, list[str]]:
        code = (
            "import asyncio, json\n"
            "from ha_voice.robot.sim_server import fetch_verdict\n"
            f"v = asyncio.run(fetch_verdict({self.robot_address!r}, {ROBOT_PORT}))\n"
            "print(json.dumps([str(x) for x in v.violations]))\n"
        )
        out = self.lan[CLIENT].run([sys.executable, "-c", code], check=True).stdout
        violations: list[str] = json.loads(out)
        return not violations, violations

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id}\n{n.log_path.read_text()[-2500:]}"
            for n in self.cluster.nodes.values()
            if n.log_path.exists()
        )


def _utterance(
    script: Script, vocabulary: Vocabulary, intent: str, key: str, at_s: float, wall_s: float
) -> int | None:
    """The index in `script.said` of the utterance whose journal key is `key`: the listener's
    key is its source, its start (stream time, 100 ms) and its phrase (utterance_key), so each
    thing said shortly before `at_s` is tried with every start near it and every phrase of
    `intent` (with and without a wake word). None when none fits."""
    phrases = next((i.phrases for i in vocabulary.intents if i.name == intent), ())
    forms = [*phrases, *(f"{w} {p}" for w in vocabulary.wake_words for p in phrases)]
    sources = [f"udp://0.0.0.0:{port}" for port in PORTS]
    for index, said in enumerate(script.said):
        if not at_s - 30.0 <= said.start_s <= at_s:
            continue
        first = round((wall_s + said.start_s - 1.0) * 10)
        last = round((wall_s + said.end_s + SECOND_DELAY_S) * 10)
        for tenths in range(first, last + 1):
            for source in sources:
                for form in forms:
                    if utterance_key(source, tenths / 10, form) == key:
                        return index
    return None


def _s16(audio: np.ndarray) -> bytes:
    return bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


@contextlib.contextmanager
def listening_lan() -> Iterator[ListeningLan]:
    """The rig of the module docstring, started, every speech node ready; removed on exit."""
    model = str(packaged_model("base"))
    sources = ",".join(f"udp://0.0.0.0:{port}" for port in PORTS)
    with (
        tempfile.TemporaryDirectory() as tmp,
        created(Lan(4, subnet=SUBNET, prefix="hvl")) as lan,
    ):
        robot_address = lan.address(CLIENT)
        listen = f"{robot_address}:{ROBOT_PORT}"
        sim = lan[CLIENT].spawn([sys.executable, "-m", "ha_voice", "sim-robot", "--listen", listen])
        sim.wait_for(lambda line: line.startswith("listening"), 15.0)
        probe = lan[CLIENT].spawn([sys.executable, "-c", http_probe(timeout_s=5.0)])
        node_flags = {f"n{i}": [f"--whisper-model={model}"] if i != 3 else [] for i in range(1, 4)}
        cluster = LocalCluster(
            3,
            hosts=[lan.address(i) for i in range(3)],
            prefixes=[lan[i].exec_argv([]) for i in range(3)],
            mdns=True,
            static_peers=False,
            extra_flags=(
                f"--robot=sim://{listen}",
                f"--vip={VIP}/24",
                "--vip-interface=eth0",
                f"--audio-sources={sources}",
            ),
            node_flags=node_flags,
        )
        workers: list[psutil.Process] = []
        with cluster:
            try:
                cluster.start()
                rig = ListeningLan(lan, cluster, probe, robot_address, Path(tmp))
                for node in MODEL_NODES:
                    rig.wait_ready(node)
                yield rig
            finally:
                for node in cluster.nodes.values():
                    if node.process is not None:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            parent = psutil.Process(node.process.pid)
                            workers += parent.children(recursive=True)
                cluster.close()
                for child in workers:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
