"""The keepalived comparison (tests/bench/bench_keepalived.py) in small: one crash each.

The benchmark is not run by CI; this runs its command with one trial of the crash case at a
0.1 s advert, so that the harness (namespaces, keepalived's pid files, ha-voice's config, the
probes) cannot rot unnoticed. It checks what the benchmark measured, not how fast.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        shutil.which("keepalived") is None, reason="keepalived: apt-get install keepalived"
    ),
]


@pytest.mark.timeout(600)
def test_the_keepalived_bench_measures_a_crash_of_each_daemon(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        str(ROOT / "tests" / "bench" / "bench_keepalived.py"),
        "--quick",
        "--cases=crash",
        "--trials=1",
        f"--results={tmp_path}",
    ]
    bench = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bench.communicate(timeout=540)
    assert bench.returncode == 0, (out + err).decode()[-3000:]
    with (tmp_path / "trials.csv").open() as rows:
        trials = {row["daemon"]: row for row in csv.DictReader(rows)}
    assert set(trials) == {"keepalived", "ha-voice"}
    for daemon, row in trials.items():
        assert row["ok"] == "True", f"{daemon}: {dict(row)}\n{(out + err).decode()[-3000:]}"
        vip, tcp = float(row["vip_new_ms"]), float(row["tcp_ok_ms"])
        # Only B listens on the floating IP: no connect can succeed before B holds it (the
        # slack: both may be seen in one turn of the probe's loop, in either order).
        assert 0 < vip <= tcp + 2.0, (daemon, row)
        assert row["vip_old_gone_ms"] == "", "a SIGKILL leaves the floating IP on A"
    ha_voice = trials["ha-voice"]
    # The new primary runs a command only once it holds its lease, i.e. after its take-over
    # stop has reached the robot.
    assert float(ha_voice["robot_first_ms"]) <= float(ha_voice["command_ok_ms"])
    summary = (tmp_path / "summary.md").read_text()
    assert "| crash | 0.1 s | first TCP connect | 1/1 |" in summary
    assert (tmp_path / "configs" / "0.1_keepalived-a.conf").read_text().count("priority 150") == 1
    # Its namespaces' names carry its process id: none is left.
    listing = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    leftovers = listing.stdout
    assert f"kvk{bench.pid}-" not in leftovers
    assert f"kvh{bench.pid}-" not in leftovers
