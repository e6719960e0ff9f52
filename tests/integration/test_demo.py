"""The README's first command, `ha-voice demo`, tells its story and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_json_shows_a_takeover_the_robot_obeys() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ha_voice", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
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
