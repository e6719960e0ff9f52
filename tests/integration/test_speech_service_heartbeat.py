"""THE STANDING RULE: with every core busy transcribing, 0 leader changes.

Three `ha-voice run` processes on this machine's cores, each with the base model loaded in one
worker process, and clients that keep every worker busy for 20 s through the HTTP API (spoken
commands to /api/voice/listen and recordings to /v1/audio/transcriptions, to the primary and
the backups alike). The term must not move and no node may see the primary change. How late
heartbeats were meanwhile is a measurement, not a pass/fail figure:
tests/bench/bench_heartbeat_speech.py and docs/benchmarks.md.
"""

from __future__ import annotations

import re

from ha_voice.local_cluster import LocalCluster
from ha_voice.voice.models import packaged_model
from tests.speech_load import hammer, scrape, terms

HAMMER_S = 20.0


def _count(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_transcribing_flat_out_on_every_node_moves_no_leader() -> None:
    model = str(packaged_model("base"))
    with LocalCluster(3, extra_flags=(f"--whisper-model={model}",)) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(60.0) is not None
        for node_id in cluster.nodes:
            assert cluster.wait_for(
                node_id,
                lambda view: all(m["speech"] and m["speech"]["ready"] for m in view["members"]),
                120.0,
            ), f"{node_id} never saw every member's speech ready"
        before, terms_before = scrape(cluster), terms(cluster)
        load = hammer(cluster, HAMMER_S, clients_per_node=2)
        after, terms_after = scrape(cluster), terms(cluster)
        assert terms_after == terms_before, (terms_before, terms_after, load)
        for node_id in cluster.nodes:
            changes = "ha_voice_leader_changes_total"
            assert _count(after[node_id], changes) == _count(before[node_id], changes)
            jobs = "ha_voice_speech_seconds_count"
            assert _count(after[node_id], jobs) > _count(before[node_id], jobs), (node_id, load)
        assert load["answers"].get("listen 200", 0) > 0, load
        assert load["answers"].get("transcribe 200", 0) > 0, load
