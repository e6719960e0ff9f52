"""Seeded schedules on every configuration: safety at every instant, liveness after the faults.

`HA_VOICE_SIM_SEEDS=N` runs N seeds per configuration and kind. A failure prints the first
failing seed's trace and the command that replays it.
"""

from __future__ import annotations

import pytest

from ha_voice.simulation.engine import ClusterSpec
from ha_voice.simulation.schedules import (
    CONFIGURATIONS,
    ScheduleResult,
    run_hostile,
    run_stability,
)
from tests.sim.conftest import FIRST_SEED, SEEDS, record

# Generous per-seed budget (a slow 2-core machine runs ~0.5 s per 5-node schedule), so that
# HA_VOICE_SIM_SEEDS=2000 is not cut short by the suite's default 900 s timeout.
BUDGET = pytest.mark.timeout(max(900, 2 * SEEDS))
WIFI = tuple(ClusterSpec.from_name(f"{spec.name}+wifi") for spec in CONFIGURATIONS)


def _explain(failed: list[ScheduleResult], total: int) -> str:
    first = failed[0]
    lines = [
        f"{len(failed)} of {total} schedules failed; first: {first.spec} seed {first.seed}",
        *first.safety[:5],
        *first.liveness[:5],
        f"replay: {first.replay_hint()}",
        "trace (last lines):",
        *first.trace[-60:],
    ]
    return "\n".join(lines)


def _run(request: pytest.FixtureRequest, results: list[ScheduleResult]) -> None:
    record(request, results)
    failed = [r for r in results if not r.ok]
    assert not failed, _explain(failed, len(results))


@BUDGET
@pytest.mark.parametrize("spec", CONFIGURATIONS, ids=lambda s: s.name)
def test_hostile_schedules(request: pytest.FixtureRequest, spec: ClusterSpec) -> None:
    seeds = range(FIRST_SEED, FIRST_SEED + SEEDS)
    results = [run_hostile(spec, seed) for seed in seeds]
    assert sum(r.faults for r in results) >= 10 * len(results)  # the nemesis did strike
    _run(request, results)


@BUDGET
@pytest.mark.parametrize("spec", CONFIGURATIONS + WIFI, ids=lambda s: s.name)
def test_stability_on_a_lossy_network(request: pytest.FixtureRequest, spec: ClusterSpec) -> None:
    seeds = range(FIRST_SEED, FIRST_SEED + SEEDS)
    _run(request, [run_stability(spec, seed) for seed in seeds])
