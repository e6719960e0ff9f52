"""Exactly-once commands under faults: a client, a nemesis and the checker of tests/jepsen.py.

Three `ha-voice run` processes and one `ha-voice sim-robot` on 127.0.0.1. One client sends a
stream of commands, each under a fresh idempotency key, and retries an unanswered key through the
next node; a nemesis kills, pauses or restarts a node every 2.5 s, one at a time. Then the cluster
is healed and settles, and the checker reads every node's journal and the robot's.

HA_VOICE_JEPSEN_FAULTS (default 20) sets the number of faults, HA_VOICE_JEPSEN_SEED the seed of
the workload and the nemesis (random by default, and printed). On a failure the history, the
journals and the node logs are kept and the assertion says where.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from tests.jepsen import run_jepsen

FAULTS = int(os.environ.get("HA_VOICE_JEPSEN_FAULTS", "20"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_answered_command_is_lost_and_none_runs_twice_under_faults() -> None:
    seed = int(os.environ.get("HA_VOICE_JEPSEN_SEED", str(random.randrange(1 << 16))))
    run = run_jepsen(FAULTS, seed=seed, keep_dir=True)
    summary = f"seed {seed}, {run.took_s:.0f} s\n{run.report.summary()}"
    print(summary)
    if not run.report.ok:
        run.dump(run.cluster_dir)
    assert run.report.ok, f"{summary}\nhistory, journals and node logs in {run.cluster_dir}"
    shutil.rmtree(run.cluster_dir, ignore_errors=True)
    assert len(run.faults) >= FAULTS
    assert run.report.acknowledged > 0
    assert run.report.statuses["done"] > 0
