"""The speech service inside `ha-voice run`: loaded at start off the election's path, shown in
/health and /metrics, and never a condition for leading.

n1 (the preferred primary) is configured with a model that does not exist; n2 and n3 load the
packaged base model. One cluster serves every test of this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from ha_voice.voice.models import packaged_model

NO_MODEL = "/nonexistent/whisper-model"
READY_TIMEOUT_S = 120.0  # three daemons and two model loads on a shared 2-core machine


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    model = str(packaged_model("base"))
    flags = {
        "n1": ["--priority=200", f"--whisper-model={NO_MODEL}"],
        "n2": [f"--whisper-model={model}"],
        "n3": [f"--whisper-model={model}", "--stt-workers=2"],
    }
    with (
        SimRobotProcess() as robot,
        # Preemption (the primary hands over to a better node) makes n1 lead whoever won first.
        LocalCluster(
            3,
            extra_flags=(f"--robot={robot.spec}", "--preempt", "--preempt-delay-s=0"),
            node_flags=flags,
        ) as running,
    ):
        running.start()
        assert running.wait_for_primary(60.0) is not None
        yield running


def health_until(cluster: LocalCluster, node_id: str, predicate: Any) -> dict[str, Any]:
    """`node_id`'s /health once `predicate(body)` holds; fails the test after READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = cluster.nodes[node_id].get("/health", timeout_s=2.0)
        if response is not None and response.status_code == 200:
            body = response.json()
            if predicate(body):
                return body
        time.sleep(0.1)
    pytest.fail(f"{node_id}'s /health never got there: {body}")


def test_a_node_whose_model_does_not_load_leads_drives_the_robot_and_says_why(
    cluster: LocalCluster,
) -> None:
    health = health_until(cluster, "n1", lambda b: "load failed" in b["speech"]["reason"])
    assert health["whisper_model"].startswith(
        f"not loaded: load failed: no model directory at {NO_MODEL}"
    )
    assert NO_MODEL in health["whisper_model"]
    assert health["whisper_model_configured"] == NO_MODEL
    speech = health["speech"]
    assert (speech["ready"], speech["model"], speech["workers"]) == (False, None, 0)
    assert "fix: whisper_model" in speech["reason"]
    # Degraded for speech alone, and still the primary that commands the robot.
    # A primary reports its takeover (robot to its safe state, journal settling) while it
    # lasts, before anything else: wait until that is done.
    health = health_until(
        cluster,
        "n1",
        lambda b: b["role"] == "primary" and "taking over" not in (b["fault_reason"] or ""),
    )
    assert health["status"] == "degraded"
    assert health["fault_reason"].startswith("speech not ready: load failed")
    assert cluster.nodes["n1"].status_code("/cluster/primary", 2.0) == 200
    answer = cluster.nodes["n1"].post("/api/voice/listen", {"text": "sta op"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["outcome"], answer.json()["executed_by"]) == ("done", "n1")
    metrics = cluster.nodes["n1"].get("/metrics", timeout_s=2.0)
    assert metrics is not None
    assert "ha_voice_speech_ready 0.0" in metrics.text


def test_nodes_with_a_model_show_what_they_loaded(cluster: LocalCluster) -> None:
    model = str(packaged_model("base"))
    for node_id, workers in (("n2", 1), ("n3", 2)):
        health = health_until(cluster, node_id, lambda b, w=workers: b["speech"]["workers"] == w)
        assert health["whisper_model"] == model
        speech = health["speech"]
        assert (speech["ready"], speech["reason"], speech["configured"]) == (True, "", model)
        assert (speech["model"], speech["device"], speech["compute_type"]) == (
            model,
            "cpu",
            "int8",
        )
        assert (speech["running"], speech["queued"], speech["restarts"]) == (0, 0, 0)
        assert health["status"] == "ok", health["fault_reason"]
        metrics = cluster.nodes[node_id].get("/metrics", timeout_s=2.0)
        assert metrics is not None
        assert "ha_voice_speech_ready 1.0" in metrics.text
        assert "ha_voice_speech_queue_depth 0.0" in metrics.text


def test_a_node_without_speech_says_it_is_disabled() -> None:
    with LocalCluster(3) as plain:  # no --whisper-model: stt_enabled = false
        plain.start()
        assert plain.wait_for_primary(60.0) is not None
        health = health_until(plain, "n1", lambda b: b["status"] == "ok")
        assert health["whisper_model"] == "not loaded: disabled: stt_enabled = false"
        assert health["speech"]["ready"] is False
