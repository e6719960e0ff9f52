"""Commands that start no server import none of the server's libraries (start-up time).

Importing FastAPI, uvicorn and the daemon took `ha-voice status` and `send` 2-4 s on this
machine (docs/benchmarks.md, "CLI start-up"); what a command imports is checked here, not how
long it takes. Each command runs as `ha-voice` would run it, in a fresh interpreter, against a
real node where it needs one, and reports the modules it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice.local_cluster import LocalCluster

# What only the daemon (`run`, `witness`) and the local demo may load.
SERVER_ONLY = (
    "fastapi",
    "uvicorn",
    "starlette",
    "faster_whisper",
    "ha_voice.daemon",
    "ha_voice.api",
)
_PROBE = """
import json, sys
from ha_voice.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --version and --help exit from argparse
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        assert running.wait_for_primary(30.0) is not None
        yield running


def _loaded(cluster: LocalCluster, *argv: str, token: str | None = None) -> tuple[int, list[str]]:
    """The exit status of `ha-voice ARGV` and the server-only modules it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["HA_VOICE_TOKEN"] = token or cluster.token or ""
    env["HA_VOICE_CONFIG"] = os.devnull
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [
        name
        for name in report["modules"]
        if any(name == root or name.startswith(root + ".") for root in SERVER_ONLY)
    ]
    return report["code"], heavy


def _primary_url(cluster: LocalCluster) -> str:
    found = cluster.wait_for_primary(10.0)
    assert found is not None
    return cluster.nodes[found[0]].url


@pytest.mark.parametrize(
    "argv",
    [("--version",), ("--help",), ("run", "--help"), ("witness", "--help"), ("config", "show")],
    ids=" ".join,
)
def test_commands_without_a_node_load_no_server(cluster: LocalCluster, argv: tuple[str]) -> None:
    code, heavy = _loaded(cluster, *argv)
    assert code == 0
    assert heavy == []


def test_status_loads_no_server(cluster: LocalCluster) -> None:
    code, heavy = _loaded(cluster, "status", "--url", _primary_url(cluster))
    assert code == 0
    assert heavy == []


def test_send_loads_no_server(cluster: LocalCluster) -> None:
    # No robot: the command fails on the robot (exit 1), after the whole client path ran.
    code, heavy = _loaded(cluster, "send", "--url", _primary_url(cluster), "--action", "stand")
    assert code == 1
    assert heavy == []


def test_listen_loads_no_server(cluster: LocalCluster, tmp_path: Path) -> None:
    # A second of silence: answered "no speech" (exit 5) without a model, after the whole
    # client path ran (read, send, print what was heard).
    recording = tmp_path / "quiet.wav"
    with wave.open(str(recording), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\0\0" * 16_000)
    code, heavy = _loaded(cluster, "listen", "--url", _primary_url(cluster), str(recording))
    assert code == 5
    assert heavy == []


def test_journal_and_step_down_load_no_server(cluster: LocalCluster) -> None:
    url = _primary_url(cluster)
    assert _loaded(cluster, "journal", "--url", url) == (0, [])
    # A wrong token: the primary answers 401 (exit 1) after the whole path ran, and stays.
    assert _loaded(cluster, "step-down", "--url", url, token="not-a-token") == (1, [])


def test_config_check_without_tls_loads_no_server(cluster: LocalCluster) -> None:
    # The file names no cluster key that exists: refused (exit 2) after every check ran.
    assert _loaded(cluster, "config", "check", os.devnull) == (2, [])
