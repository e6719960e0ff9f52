"""Benchmark: the Jepsen run at length, exactly-once commands under hundreds of faults.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_jepsen.py [--faults 200] [--interval 2.5] [--seed 0]

The harness and the checker are tests/jepsen.py; tests/integration/test_jepsen.py is the short
run CI does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.markdown import table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: for `tests`
from tests.jepsen import FaultKind, JepsenRun, percentile, run_jepsen

START, END = "<!-- bench_jepsen:start -->", "<!-- bench_jepsen:end -->"


def _ms(values: list[float]) -> list[str]:
    """n, p50, p90, max."""
    if not values:
        return ["0", "-", "-", "-"]
    return [str(len(values)), *(f"{percentile(values, q):.0f}" for q in (0.5, 0.9, 1.0))]


def section(run: JepsenRun, args: argparse.Namespace) -> list[str]:
    report = run.report
    kinds = [kind.value for kind in FaultKind]
    statuses = ("done", "stopped", "failed", "unknown")
    violations = report.violations
    faults = [[str(len(run.faults)), *(str(report.faults[kind]) for kind in kinds)]]
    found = [[str(len(v)) for v in violations.values()]]
    unavailable = [[kind, *_ms(report.unavailable_ms.get(kind, []))] for kind in kinds]
    return [
        "## Exactly-once commands under faults (Jepsen-style)",
        "",
        f"`python tests/bench/bench_jepsen.py --faults {args.faults} --interval {args.interval:g} "
        f"--seed {args.seed}` ({run.took_s:.0f} s on this machine). Three `ha-voice run` "
        "processes and one `ha-voice sim-robot` on 127.0.0.1. One client (`HAVoiceClient` "
        "given every node's address: any node forwards to the primary, a connection error "
        "moves on to the next; 1 s per attempt, 3 s deadline) sends commands one after the "
        "other, each under a fresh idempotency key (about a third not idempotent: hello, "
        "stretch, 0.2 s moves), and retries an unanswered key later (up to 4 tries). Every "
        f"{args.interval:g} s a nemesis kills (SIGKILL, restart after 1 s), pauses (SIGSTOP "
        "0.3-1.5 s) or gracefully restarts (SIGTERM) the primary, or kills a backup; one node "
        "at a time. Then the cluster is healed and settles, and tests/jepsen.py's checker reads "
        "every node's journal and the robot's.",
        "",
        *table(["faults", *kinds], faults),
        "",
        *table(
            ["commands sent", "answered", *statuses, "indeterminate", "robot executions"],
            [
                [
                    str(report.sent),
                    str(report.acknowledged),
                    *(str(report.statuses[s]) for s in statuses),
                    str(report.indeterminate),
                    str(report.executions),
                ]
            ],
        ),
        "",
        *table([n.replace("_", " ") for n in violations], found),
        "",
        "Unavailability per fault, as the client sees it: from the fault to the first answer to a "
        f"command sent after it ({report.unmeasured} faults without one).",
        "",
        *table(
            ["fault", "n", "p50 ms", "p90 ms", "max ms"],
            [*unavailable, ["all", *_ms(report.all_unavailable_ms())]],
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--interval", type=float, default=2.5, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the history and journals here")
    args = parser.parse_args()
    run = run_jepsen(args.faults, seed=args.seed, interval_s=args.interval)
    print(run.report.summary())
    if args.keep is not None:
        run.dump(args.keep)
    lines = section(run, args)
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0 if run.report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
