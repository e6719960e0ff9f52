"""Shared settings of the simulation tier and the one-line total it ends with."""

from __future__ import annotations

import os

import pytest

from ha_voice.simulation.schedules import ScheduleResult

# CI-sized by default; HA_VOICE_SIM_SEEDS=2000 for the full proof.
SEEDS = int(os.environ.get("HA_VOICE_SIM_SEEDS", "50"))
# Seeds start here, so that a long run can be split or resumed.
FIRST_SEED = int(os.environ.get("HA_VOICE_SIM_FIRST_SEED", "0"))

_totals = {"schedules": 0, "safety": 0, "liveness": 0}


def record(request: pytest.FixtureRequest, results: list[ScheduleResult]) -> None:
    """Attach a test's counts to its report, so the total survives pytest-xdist."""
    request.node.user_properties.append(("sim_schedules", len(results)))
    request.node.user_properties.append(("sim_safety", sum(len(r.safety) > 0 for r in results)))
    request.node.user_properties.append(("sim_liveness", sum(len(r.liveness) > 0 for r in results)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name.startswith("sim_"):
            _totals[name[4:]] += int(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _totals["schedules"]:
        terminalreporter.write_line(
            f"sim: {_totals['schedules']} schedules, {_totals['safety']} safety violations, "
            f"{_totals['liveness']} liveness violations"
        )
