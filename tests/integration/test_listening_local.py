"""Issue 12, a microphone on each Jetson: `local_audio_sources` are heard by every member.

Three `ha-voice run` processes on loopback; each has the robot's stream as `audio_sources`
(only the primary opens it) and a "microphone" as `local_audio_sources`: a UDP port of its own
standing in for `alsa:hw:1,0` (no sound card here; the listener does not tell them apart). A
backup recognises what its microphone hears and hands the command to the primary, sealed.
- a backup's microphone alone → the command runs once, on the primary;
- the robot's stream and a backup's microphone hearing the same words → one command;
- listening off → a backup's microphone closes, nothing runs;
- the primary killed: a backup's microphone keeps hearing, and what it heard while there was no
  primary runs once the new one serves (within the hand-over deadline), once;
- no member's seal → 403, a forged hearing runs nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from ha_voice.api.auth import FORWARD_SEAL, FORWARDED_BY
from ha_voice.api.listen_relay import HEARING_PATH
from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from ha_voice.robot.base import Action
from tests.integration.test_listening_cluster import (
    NODES,
    ListeningRig,
    Streamer,
    script,
)
from tests.integration.test_listening_cluster import _rig as listening_rig
from tests.integration.test_speech_cluster import Rig
from tests.speech_corpus import have_espeak

pytestmark = pytest.mark.skipif(
    not have_espeak(), reason="espeak-ng is not installed (.ci/run installs it)"
)


def _rig() -> contextlib.AbstractContextManager[ListeningRig]:
    return listening_rig(local_mics=True)


def _mic_open(body: dict[str, Any]) -> bool:
    return any(s["scope"] == "local" and s["open"] for s in body["sources"])


def _outcomes(body: dict[str, Any], intent: str) -> list[str]:
    return [u["outcome"] for u in body["utterances"] if u["intent"] == intent]


def _backup_with_model(rig: ListeningRig, backups: list[str]) -> str:
    return next(b for b in backups if b != "n3") if "n3" in backups else backups[0]


def test_a_backup_s_microphone_is_heard_and_runs_once_on_the_primary() -> None:
    with _rig() as rig:
        primary, backups = rig.roles()
        backup = _backup_with_model(rig, backups)
        for node in NODES:  # every member opens its microphone, whatever its role
            rig.wait_status(node, _mic_open)
        status = rig.status(backup)
        assert status["listening_here"] is False  # the robot's stream is the primary's
        local = [s for s in status["sources"] if s["scope"] == "local"]
        assert [s["id"] for s in local] == [f"udp://127.0.0.1:{rig.mics[backup]}"]

        mic = Streamer(rig.mics[backup])
        try:
            mic.stream(script("ga liggen", 1.5))
            assert rig.wait_robot(Action.STAND_DOWN, 1) == [primary]
            heard = rig.wait_status(backup, lambda b: "ran" in _outcomes(b, "lie_down"))
            (mine,) = [u for u in heard["utterances"] if u["intent"] == "lie_down"]
            assert mine["source"] == f"{backup}/udp://127.0.0.1:{rig.mics[backup]}"
            assert mine["key"].startswith("listen-")
            on_primary = rig.wait_status(primary, lambda b: "ran" in _outcomes(b, "lie_down"))
            assert [u["key"] for u in on_primary["utterances"] if u["outcome"] == "ran"] == [
                mine["key"]
            ]

            # The robot's stream and the backup's microphone hear the same words: one command.
            stream = Streamer(rig.ports[primary])
            speech = script("opstaan", 1.5)
            fainter = 0.5 * speech + np.random.default_rng(5).normal(0, 0.005, len(speech))
            both = threading.Thread(target=mic.stream, args=(fainter.astype(np.float32),))
            both.start()
            stream.stream(speech)
            both.join()
            stream.close()
            rig.wait_status(primary, lambda b: len(_outcomes(b, "stand_up")) >= 2, 90.0)
            rig.wait_status(backup, lambda b: len(_outcomes(b, "stand_up")) >= 1, 90.0)
            time.sleep(2.0)  # a second StandUp, if any, would have come by now
            assert rig.robot_commands(Action.STAND_UP) == [primary]
            assert sorted(_outcomes(rig.status(primary), "stand_up")) == ["duplicate", "ran"]

            # Listening off: the backups close their microphones; what they hear runs nothing.
            assert rig.cluster.nodes[primary].post("/api/voice/stop").status_code == 200
            rig.wait_status(backup, lambda b: not _mic_open(b))
            mic.stream(script("ga liggen", 1.5))
            time.sleep(3.0)
            assert rig.robot_commands(Action.STAND_DOWN) == [primary]
        finally:
            mic.close()


def test_a_backup_s_microphone_hears_through_a_failover_and_nothing_runs_twice() -> None:
    with _rig() as rig:
        first, backups = rig.roles()
        backup = _backup_with_model(rig, backups)
        rig.wait_status(backup, _mic_open)
        mic = Streamer(rig.mics[backup])
        killed: list[str] = []

        def kill_before_speech(t_s: float) -> None:
            if t_s >= 0.2 and not killed:
                rig.kill_node(first)
                killed.append(first)

        try:
            # The primary dies just before "ga liggen" is said to the backup's microphone: the
            # backup hears it while there is no primary and hands it over once one serves.
            mic.stream(script("ga liggen", 1.5), at=kill_before_speech)
            assert killed
            found = rig.cluster.wait_for_primary(30.0, exclude=first)
            assert found is not None
            second = found[0]
            heard = rig.wait_status(backup, lambda b: bool(_outcomes(b, "lie_down")), 90.0)
            outcome = _outcomes(heard, "lie_down")
            assert outcome in (["ran"], ["refused"]), heard["utterances"]
            expected = [second] if outcome == ["ran"] else []
            time.sleep(1.0)
            assert rig.robot_commands(Action.STAND_DOWN) == expected

            # Served again: the microphone's next command runs once on the new primary.
            mic.stream(script("opstaan", 1.5))
            assert rig.wait_robot(Action.STAND_UP, 1) == [second]
            time.sleep(1.0)
            assert rig.robot_commands(Action.STAND_UP) == [second]
        finally:
            mic.close()


def test_a_hearing_without_a_member_s_seal_runs_nothing() -> None:
    # No speech needed: the route refuses before it reads a phrase.
    with (
        SimRobotProcess() as robot,
        LocalCluster(3, extra_flags=(f"--robot={robot.spec}",)) as cluster,
    ):
        cluster.start()
        found = cluster.wait_for_primary(30.0)
        assert found is not None
        rig = Rig(cluster, robot)
        url = f"{cluster.nodes[found[0]].url}{HEARING_PATH}"
        body = {
            "text": "ga liggen",
            "key": "listen-forged",
            "source": "n2/alsa:hw:1,0",
            "start_s": time.time(),
            "confidence": 0.9,
        }
        for headers in ({}, {FORWARDED_BY: "n2", FORWARD_SEAL: "forged"}):
            answer = httpx.post(url, json=body, headers=headers, timeout=5.0)
            assert answer.status_code == 403, answer.text
            assert "members only" in answer.json()["error"], answer.text
        assert rig.robot_commands(Action.STAND_DOWN) == []
