"""The README's first command, `ha-voice demo`, tells its story and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ha_voice.demo import Voice
from tests.doc_commands import block
from tests.integration.test_speech_cluster import PARTS

README = Path(__file__).resolve().parents[2] / "README.md"
# The nodes hear once the speech service (started by the daemon) and the audio routes are in this
# tree; until both are, the demo must say why it sends text.
HEARS = PARTS["stt"]() and PARTS["audio"]()


@pytest.fixture(scope="module")
def demo() -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "ha_voice", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_demo_json_shows_a_takeover_the_robot_obeys(demo: list[dict[str, Any]]) -> None:
    events = demo
    kinds = [event["event"] for event in events]
    for kind in (
        "primary",
        "kill",
        "takeover",
        "halted",
        "safe",
        "journal",
        "retry",
        "rejoined",
        "verdict",
        "summary",
    ):
        assert kind in kinds, kinds
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["ok"] is True
    assert summary["robot_violations"] == 0
    assert summary["journal_survived"] is True
    walking = next(e for e in events if e["event"] == "walking")
    assert walking["speed"] > 0  # killed mid-walk, not before
    retry = next(e for e in events if e["event"] == "retry")
    assert retry["duplicate"] is True
    assert summary["old_primary"] != summary["new_primary"]
    assert 0 < summary["failover_ms"] < 10_000
    safe = next(e for e in events if e["event"] == "safe")
    assert safe["first_command"] == "stop_move"
    assert not Path(events[0]["dir"]).exists()  # the throwaway directory is gone


def test_demo_speaks_ga_liggen_to_a_backup_where_this_machine_can(
    demo: list[dict[str, Any]],
) -> None:
    spoken = [e for e in demo if e["event"] == "spoken"]
    summary = demo[-1]
    sat = next(e for e in demo if e["event"] == "takeover")["node"]
    voice = Voice.of_this_machine()
    if voice.why_not or not HEARS:
        # Said why, then sent the text; a machine without espeak-ng or the extras still demos.
        (fallback,) = spoken
        assert fallback["mode"] == "text"
        assert fallback["why"]
        assert summary["spoken"] is None
        return
    (heard,) = spoken
    assert heard["mode"] == "audio", heard
    assert heard["status"] == "success", heard
    assert heard["intent"] == "lie_down"
    assert "liggen" in heard["heard"].lower()
    assert heard["to"] != sat  # a backup took the audio ...
    assert heard["executed_by"] == sat  # ... the primary ran the command
    assert 0 < heard["confidence"] <= 1
    assert heard["stt_node"] in {"n1", "n2", "n3"}
    assert {"decode_ms", "stt_ms", "total_ms"} <= set(heard["timings"])
    assert summary["spoken"] is True


def test_readme_first_command_installs_what_the_demo_needs() -> None:
    first = re.search(r"^```sh\n(.*)\n", README.read_text(encoding="utf-8"), re.M)
    assert first is not None
    assert "pip install -q -e '.[demo]'" in first[1]
    assert first[1].endswith("ha-voice demo")
    assert shutil.which("espeak-ng") is None or Voice.of_this_machine().why_not == ""


VOICE_DOC = README.parent / "docs" / "voice.md"


@pytest.fixture(scope="module")
def listen_demo() -> tuple[int, list[str]]:
    """docs/voice.md's `ha-voice demo --listen`, run as written: its exit status and lines."""
    if Voice.of_this_machine().why_not:
        pytest.skip(f"the demo cannot listen here: {Voice.of_this_machine().why_not}")
    script = block("demo-listen", VOICE_DOC)
    assert script.strip() == "ha-voice demo --listen"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def _line(lines: list[str], pattern: str) -> re.Match[str]:
    found = next((m for line in lines if (m := re.search(pattern, line))), None)
    assert found is not None, (pattern, lines)
    return found


def test_demo_listen_hears_the_stream_and_listens_on_through_a_failover(
    listen_demo: tuple[int, list[str]],
) -> None:
    code, lines = listen_demo
    assert code == 0, "\n".join(lines)
    first = _line(lines, r"(n\d) listens to udp://127\.0\.0\.1:\d+ \(waited")[1]
    assert _line(lines, rf'{first} heard "ga liggen" \(lie_down\): ran')
    assert _line(lines, rf'SIGKILL {first} 0\.3 s into "opstaan"')
    second = _line(lines, r"(n\d) took over: failover \d+ ms")[1]
    assert second != first
    gap = _line(
        lines, rf"{second} listens to udp://\S+ \(waited [\d.]+ s, ([\d.]+) s after the kill"
    )
    assert float(gap[1]) > 0
    assert _line(lines, rf'{second} heard "opstaan" \(stand_up\): ran')
    assert _line(lines, rf'{second} heard "stop" \(stop\): ran')
    assert _line(lines, rf'journal: "ga liggen" -> stand_down by {first} \(done')
    assert _line(lines, rf"-> stop_move by {second} \(done")
    script = _line(lines, r"ran (\d), lost (\d) .* not heard 0, duplicated 0$")
    assert (int(script[1]), int(script[2])) in ((3, 1), (4, 0))  # "opstaan" lost or run once
    assert _line(lines, r"overlapping writers / stale terms / after lease: 0$")
    assert _line(lines, r"SIGTERM to all: every node exited 0")
    directory = _line(lines, r"in (/\S+ha-voice-cluster-\S+)$")[1]
    assert not Path(directory).exists()  # nothing left behind


def test_demo_listen_without_espeak_says_why_and_starts_nothing(tmp_path: Path) -> None:
    """On a machine without espeak-ng (here: a PATH without it) the listening demo cannot
    speak: it says so and exits 2 before starting a node."""
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "ha_voice", "demo", "--listen", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (event,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["event"] == "unavailable"
    assert "espeak-ng is not installed" in event["why"]
