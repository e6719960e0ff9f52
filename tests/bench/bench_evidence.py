"""Benchmark: failover by evidence of death, real processes in network namespaces, as a client
sees it through the floating IP. Not a pass/fail test. Writes its section of
docs/benchmarks.md. Run as root (namespaces):

    python tests/bench/bench_evidence.py [--kills 20] [--stops 10]

Per configuration (3 nodes; 2 nodes and a witness), the settled primary is sent SIGKILL or
SIGSTOP at a random phase of its 50 ms heartbeat. From the signal, a client in its own
namespace (beside the simulated robot) asks for /cluster/primary through the floating IP every
millisecond, on a fresh connection, until a new primary answers 200, and POSTs a robot command
("stop", one idempotency key) through it until a new primary accepts it (200). The new
primary's /cluster says why it stood. A killed node is restarted, a stopped one resumed, and
each rejoins before the next trial.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from tests.e2e.evidence_rig import Outcome, evidence_rig

START, END = "<!-- bench_evidence:start -->", "<!-- bench_evidence:end -->"
SHAPES = (("3 nodes", 3, False, "10.221.0.0/24"), ("2 nodes + witness", 2, True, "10.222.0.0/24"))


def stats(values: list[float | None]) -> str:
    """n | min | p50 | p90 | max, in ms; misses (None) counted after n."""
    got = sorted(v * 1000 for v in values if v is not None)
    missed = len(values) - len(got)
    if not got:
        return f"0 (+{missed} missed) | - | - | - | -"

    def pct(q: float) -> float:
        return got[min(len(got) - 1, int(q * len(got)))]

    n = f"{len(got)}" + (f" (+{missed} missed)" if missed else "")
    return f"{n} | {got[0]:.0f} | {statistics.median(got):.0f} | {pct(0.9):.0f} | {got[-1]:.0f}"


def causes(outcomes: list[Outcome]) -> str:
    counted: dict[str, int] = {}
    for outcome in outcomes:
        counted[str(outcome.cause)] = counted.get(str(outcome.cause), 0) + 1
    return ", ".join(f"{cause} {n}" for cause, n in sorted(counted.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--stops", type=int, default=10)
    args = parser.parse_args()
    rows = []
    started = time.monotonic()
    for name, nodes, witness, subnet in SHAPES:
        with evidence_rig(nodes, witness=witness, subnet=subnet, prefix="hvbe") as rig:
            kills = [rig.fail(signal.SIGKILL) for _ in range(args.kills)]
            stops = [rig.fail(signal.SIGSTOP) for _ in range(args.stops)]
        for label, outcomes in (("SIGKILL", kills), ("SIGSTOP", stops)):
            for what, values in (
                ("floating IP reaches the new primary", [o.connected_s for o in outcomes]),
                ("robot command accepted through it", [o.accepted_s for o in outcomes]),
            ):
                rows.append(f"| {name} | {label} | {what} | {stats(values)} | {causes(outcomes)} |")
            print(rows[-2], rows[-1], sep="\n", flush=True)
    took = time.monotonic() - started
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Failover by evidence of death (issue 14), real processes in namespaces",
        "",
        f"`python tests/bench/bench_evidence.py --kills {args.kills} --stops {args.stops}` "
        f"(as root; {took / 60:.0f} min on a 2-core host, load average at the end {load}, "
        f"Linux {platform.release()}, "
        f"Python {platform.python_version()}): `ha-voice run` processes each in a network "
        "namespace on one bridge, default `wired` timers (heartbeat 50 ms, election timeout "
        "0.5 s), a floating IP, `ha-voice sim-robot` and the client in one more namespace. The "
        "settled primary is signalled at a random phase of its heartbeat; from the signal the "
        "client, every millisecond and on a fresh connection each time, GETs /cluster/primary "
        "through the floating IP until a new primary answers 200, and POSTs "
        '`{"command": "stop"}` through it until a new primary accepts it (200). The killed node is '
        "restarted (the stopped one resumed) and rejoins before the next trial. Causes are what "
        "the new primary's `/cluster` reported (`last_failover.cause`).",
        "",
        "| cluster | signal | from the signal to | n | min ms | p50 ms | p90 ms | max ms "
        "| takeover cause |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
