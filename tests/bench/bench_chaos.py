"""Benchmark: the chaos suite at length, hundreds of faults over the three topologies.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run as root:

    python tests/bench/bench_chaos.py [--faults 300] [--seed 0]

The faults are shared out over the topologies (half to three nodes, a quarter each to two nodes
and a witness and to `two_node`), each run a seeded random schedule of every fault its topology
allows; tests/e2e/test_chaos.py is the short run CI does. The harness is tests/chaos.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.markdown import table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: for `tests`
from tests.chaos.checker import CHAOS_VIOLATIONS
from tests.chaos.lan import ChaosSpec, run_outside
from tests.jepsen import VIOLATIONS, percentile

START, END = "<!-- bench_chaos:start -->", "<!-- bench_chaos:end -->"
SHARES = {"three": 0.5, "witness": 0.25, "two_node": 0.25}


def _ms(values: list[float]) -> list[str]:
    """n, p50, max."""
    if not values:
        return ["0", "-", "-"]
    return [str(len(values)), *(f"{percentile(values, q):.0f}" for q in (0.5, 1.0))]


def _merge(results: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    merged: dict[str, list[float]] = {}
    for result in results:
        for kind, values in result[key].items():
            merged.setdefault(kind, []).extend(values)
    return merged


def section(results: list[dict[str, Any]], args: argparse.Namespace, took_s: float) -> list[str]:
    faults: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    for result in results:
        faults.update(result["kinds"])
        violations.update(result["violations"])
    unavailable, back = _merge(results, "unavailable_ms"), _merge(results, "back_ms")
    lag = _merge(results, "view_lag_ms")
    kinds = sorted(faults)
    runs = ", ".join(f"{r['topology']} {r['faults']} faults" for r in results)
    details = [
        f"- {r['topology']}: {name}: {detail}"
        for r in results
        for name, found in r.get("details", {}).items()
        for detail in found[:5]
    ]
    return [
        "## The chaos suite: faults in namespaces, journals and what clients see",
        "",
        f"`python tests/bench/bench_chaos.py --faults {args.faults} --seed {args.seed}` "
        f"({took_s:.0f} s on this machine; {runs}). Each member, the sim robot and the client "
        "in its own network namespace on one bridge, mDNS and a floating IP on, the default "
        "(wired) timers. The client sends commands through `HAVoiceClient` (the floating IP "
        "and every node's address) under idempotency keys; a seeded nemesis causes one fault at "
        "a time, heals it, then leaves the cluster alone for the bound (2 s) plus 1 s. The "
        "checkers: tests/jepsen.py's (nothing answered lost, nothing non-idempotent run twice, "
        "journals agree, the robot's verdict) and tests/chaos/checker.py's (terms monotonic, a "
        "primary back within 2 s of the heal, the mDNS browser and the floating IP's ARP owner "
        "in the client's namespace on the primary within 2 s).",
        "",
        *table(
            [
                "fault",
                "n",
                "unavailable p50 ms",
                "max ms",
                "primary back after heal p50 ms",
                "max ms",
            ],
            [
                [k, str(faults[k]), *_ms(unavailable.get(k, []))[1:], *_ms(back.get(k, []))[1:]]
                for k in kinds
            ],
        ),
        "",
        "Unavailable: from the fault to the first answer to a command sent after it (the "
        "client's view). Primary back: from the heal to one serving primary (0: there was one "
        "already, elected during the fault).",
        "",
        *table(
            ["client view", "n", "lag behind a new primary p50 ms", "max ms"],
            [[channel, *_ms(values)] for channel, values in sorted(lag.items())],
        ),
        "",
        *table(
            [n.replace("_", " ") for n in (*VIOLATIONS, *CHAOS_VIOLATIONS)],
            [[str(violations[n]) for n in (*VIOLATIONS, *CHAOS_VIOLATIONS)]],
        ),
        "",
        *(["Violations (first few per run):", "", *details, ""] if details else []),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    results = []
    for topology, share in SHARES.items():
        spec = ChaosSpec(topology, args.seed, round(args.faults * share))
        result, err = run_outside(spec, timeout_s=4 * 3600)
        print(err[-3000:], file=sys.stderr)
        results.append(result)
    write_section(section(results, args, time.monotonic() - started), START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
