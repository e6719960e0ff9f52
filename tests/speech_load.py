"""Speech work flat out on a LocalCluster, for the standing rule's test and benchmark.

`hammer(cluster, seconds, clients_per_node)` keeps `clients_per_node` clients per node busy for
`seconds`: each in turn posts a spoken command to `/api/voice/listen?dry_run=true` (recognised,
never run) and a ~6 s recording to `/v1/audio/transcriptions` (free transcription, batch
priority), so that every speech worker of the cluster always has a job. Returns the answers'
status codes counted, the first answer of each other kind, and how busy the CPUs were.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import cache
from typing import Any

import httpx
import numpy as np
import psutil

from ha_voice.local_cluster import LocalCluster, LocalNode
from tests.speech_corpus import say, wav_bytes

__all__ = ["hammer", "scrape", "terms"]


@cache
def _clips() -> tuple[bytes, bytes]:
    command = wav_bytes(say("stop"))
    sentence = say("de robot loopt vooruit en draait dan naar links, en daarna gaat hij zitten")
    recording = wav_bytes(np.concatenate([sentence] * 2)[: 6 * 16_000])
    return command, recording


def _client(
    node: LocalNode,
    stop_at: float,
    counts: Counter[str],
    samples: dict[str, str],
    lock: threading.Lock,
) -> None:
    command, recording = _clips()
    headers = node.auth_headers
    with httpx.Client(base_url=node.url, headers=headers, timeout=120.0) as client:
        turn = 0
        while time.monotonic() < stop_at:
            try:
                if turn % 2 == 0:
                    response = client.post(
                        "/api/voice/listen",
                        params={"dry_run": "true"},
                        content=command,
                        headers={"Content-Type": "audio/wav"},
                    )
                    kind = "listen"
                else:
                    files = {"file": ("speech.wav", recording, "audio/wav")}
                    response = client.post(
                        "/v1/audio/transcriptions",
                        files=files,
                        data={"model": "whisper-1", "language": "nl"},
                    )
                    kind = "transcribe"
                outcome = f"{kind} {response.status_code}"
                detail = response.text[:200] if response.status_code != 200 else ""
            except httpx.HTTPError as exc:
                outcome, detail = f"error {type(exc).__name__}", str(exc)[:200]
            with lock:
                counts[outcome] += 1
                if detail:
                    samples.setdefault(outcome, detail)
            if outcome.endswith(" 503"):
                time.sleep(0.2)  # every queue is full: come back, as a client would
            turn += 1


def hammer(cluster: LocalCluster, seconds: float, clients_per_node: int) -> dict[str, Any]:
    """Speech flat out on every node for `seconds`; answers by route and status, CPU use."""
    _clips()
    counts: Counter[str] = Counter()
    samples: dict[str, str] = {}  # the first answer of each kind that was not a 200
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(node, stop_at, counts, samples, lock), daemon=True)
        for node in cluster.running()
        for _ in range(clients_per_node)
    ]
    psutil.cpu_percent(percpu=True)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 180.0)
    return {
        "answers": dict(sorted(counts.items())),
        "not_200": samples,
        "cpu_percent": psutil.cpu_percent(percpu=True),
    }


def scrape(cluster: LocalCluster) -> dict[str, str]:
    """Every running node's /metrics text ("" for one that does not answer)."""
    out = {}
    for node_id, node in cluster.nodes.items():
        response = node.get("/metrics", timeout_s=5.0)
        out[node_id] = response.text if response is not None else ""
    return out


def terms(cluster: LocalCluster) -> dict[str, int]:
    """Every node's term as its /cluster says (-1 for one that does not answer)."""
    out = {}
    for node_id, node in cluster.nodes.items():
        view = node.cluster()
        out[node_id] = view["term"] if view else -1
    return out
