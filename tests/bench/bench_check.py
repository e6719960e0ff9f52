"""Benchmark: how long `ha-voice check` takes, start to exit, in each of its ways.

Not a pass/fail test; prints one markdown row per way. Run it from the checkout under test:

    cd CHECKOUT && python tests/bench/bench_check.py [--runs 3]

A cluster of three `ha-voice run` processes (static peers, mDNS on) and a simulated Go2 on
127.0.0.1 runs; the configuration checked is that of its node n1. Each way runs `--runs` times
as a new process, after one untimed run that warms the page cache; the row gives the median and
the slowest wall time, and the exit status. `--load-model` loads the packaged multilingual base
model on the CPU in one worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the checkout under test, as `python -m ha_voice` sees it

from ha_voice.local_cluster import LocalCluster, SimRobotProcess, toml_text
from ha_voice.voice.models import packaged_model

WAYS = {
    "--offline": ["--offline"],
    "default (mDNS 2 s)": [],
    "--mdns-wait 0.5": ["--mdns-wait", "0.5"],
    "--offline --load-model (base, CPU)": ["--offline", "--load-model"],
}


def _config(cluster: LocalCluster, robot: str, directory: Path) -> Path:
    values = cluster.config_values(
        "n1",
        mdns=True,
        robot=robot,
        whisper_model=str(packaged_model("base")),
        stt_device="cpu",
        stt_cpu_threads=1,
    )
    path = directory / "n1.toml"
    path.write_text(toml_text(values))
    return path


def _time(argv: list[str], runs: int) -> tuple[list[float], set[int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    walls, codes = [], set()
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "ha_voice", "check", *argv],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        walls.append(time.perf_counter() - start)
        codes.add(done.returncode)
    return walls, codes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, mdns=True, extra_flags=(f"--robot={sim.spec}",)) as cluster,
        tempfile.TemporaryDirectory() as scratch,
    ):
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        config = _config(cluster, sim.spec, Path(scratch))
        _time(["--offline", "--config", str(config)], 1)  # warm the page cache, untimed
        print("| way | wall s, median | wall s, slowest | exit status |")
        print("|---|---|---|---|")
        for name, argv in WAYS.items():
            walls, codes = _time([*argv, "--config", str(config)], args.runs)
            shown = ", ".join(map(str, sorted(codes)))
            print(f"| `{name}` | {statistics.median(walls):.2f} | {max(walls):.2f} | {shown} |")


if __name__ == "__main__":
    main()
