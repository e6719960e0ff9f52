"""Benchmark: how long the `ha-voice` commands that start no server take, start to exit.

Not a pass/fail test; prints one markdown row per command, labelled `--label`. Run it from the
checkout under test, so that the commands and the nodes (`python -m ha_voice`, started in the
current directory) are that code:

    cd CHECKOUT && python /path/to/tests/bench/bench_cli_startup.py --label after [--runs 10]

A cluster of three `ha-voice run` processes and a simulated Go2 on 127.0.0.1 answers the
commands that need a node: `status` and `journal` ask the primary, `send` says "sta op" to it
(the robot stands), `step-down` asks it to hand over with a wrong token (refused, 401: no run
moves the leadership). Each command runs `--runs` times, one after the other, as a new
process; the row gives the median and the slowest wall time of a run, the median CPU time
(user + system: what a loaded machine's wall time would be on an idle one, near enough), and
the time spent importing `ha_voice.cli` (`python -X importtime`, cumulative, one run).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the checkout under test, as `python -m ha_voice` sees it

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

_IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| ha_voice\.cli$", re.M)


def _command_lines(primary: str) -> dict[str, list[str]]:
    return {
        "--version": ["--version"],
        "--help": ["--help"],
        "run --help": ["run", "--help"],
        "status": ["status", "--url", primary],
        "send": ["send", "--url", primary, "sta op"],
        "journal": ["journal", "--url", primary],
        "step-down": ["step-down", "--url", primary],
    }


def _environment(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["HA_VOICE_TOKEN"] = token
    env["HA_VOICE_CONFIG"] = os.devnull  # no /etc/ha-voice/config.toml of this machine
    return env


def _time_runs(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of each run, in order."""
    walls, cpus = [], []
    for _ in range(runs):
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "ha_voice", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, _, usage = os.wait4(process.pid, 0)
        walls.append(time.perf_counter() - start)
        cpus.append(usage.ru_utime + usage.ru_stime)
        process.returncode = 0  # reaped above; keeps Popen from waiting again
    return walls, cpus


def _import_ms(argv: list[str], env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ha_voice", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    match = _IMPORT_LINE.search(result.stderr)
    return int(match[1]) / 1000 if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with SimRobotProcess() as robot, LocalCluster(3, extra_flags=[f"--robot={robot.spec}"]) as c:
        c.start()
        found = c.wait_for_primary(30.0)
        assert found is not None, "no primary"
        primary = c.nodes[found[0]]
        assert c.token is not None
        print(
            "| checkout | command | wall s, median | wall s, slowest | CPU s, median "
            "| importing ha_voice.cli, ms |"
        )
        print("|---|---|---|---|---|---|")
        for name, argv in _command_lines(primary.url).items():
            env = _environment("not-a-token" if name == "step-down" else c.token)
            walls, cpus = _time_runs(argv, env, args.runs)
            imports = _import_ms(argv, env)
            print(
                f"| {args.label} | `ha-voice {name}` | {statistics.median(walls):.2f} | "
                f"{max(walls):.2f} | {statistics.median(cpus):.2f} | {imports:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
