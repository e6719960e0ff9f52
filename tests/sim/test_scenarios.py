"""The classic cases as transcripts: checked in, compared, regenerated with HA_VOICE_REGEN=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ha_voice.simulation.scenarios import SCENARIOS, run_scenario

TRANSCRIPTS = Path(__file__).parent / "scenarios"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_transcript(name: str) -> None:
    lines = run_scenario(name)
    text = "\n".join(lines) + "\n"
    path = TRANSCRIPTS / f"{name}.txt"
    if os.environ.get("HA_VOICE_REGEN"):
        path.write_text(text)
    assert path.exists(), f"no transcript {path}; run with HA_VOICE_REGEN=1 and review it"
    assert text == path.read_text(), (
        f"{name} behaves differently from {path}: rerun with HA_VOICE_REGEN=1, "
        "review `git diff tests/sim/scenarios`, and commit it if the change is intended"
    )
    assert lines[-1].startswith("# safety violations: 0")


def test_every_scenario_ends_with_one_primary() -> None:
    for name in SCENARIOS:
        ending = run_scenario(name)[-2]
        assert ending.count("=primary") == 1, (name, ending)
