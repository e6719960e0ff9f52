"""Benchmark: a long scripted live stream through N failovers, scored against the script.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run as root (network
namespaces) from the repository root:

    PYTHONPATH=. python tests/bench/bench_listening_failover.py [--minutes 6] [--failovers 5]

The rig of tests/e2e/test_netns_listening_failover.py (tests/listening_failover.py): three nodes
in network namespaces, a floating IP, every node listening on udp://0.0.0.0:9999 (and :9998),
the packaged Whisper base model on two of them, a simulated Go2; a client streams a script of
Dutch commands, chatter, pauses and noise (tests/speech_script.py) to the floating IP in real
time, and the primary is SIGKILLed 40 % into a command N times (the killed node started again
once the new primary listens). Prints and writes: commands recognised / lost / duplicated /
extra, and the listening gap per failover (the stream time from the kill to the first audio
block the new primary's source took) p50 / max.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from tests.listening_failover import kill_times, listening_lan
from tests.speech_script import make_script

START, END = "<!-- bench_listening_failover:start -->", "<!-- bench_listening_failover:end -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=6.0, help="of speech per run")
    parser.add_argument("--failovers", type=int, default=5, help="primaries killed per run")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--two-sources", action="store_true", help="also a second source")
    args = parser.parse_args()
    script = make_script(args.minutes * 60.0, args.seed)
    kills = kill_times(script, args.failovers)
    started = time.monotonic()
    with listening_lan() as rig:
        outcome = rig.run(script, kills, two_sources=args.two_sources, restart_killed=True)
    took = time.monotonic() - started
    summary = outcome.score.summary()
    gaps = [f.gap_s for f in outcome.failovers if f.gap_s is not None]
    print(json.dumps({**outcome.report(), "took_s": round(took)}))
    for ran in outcome.score.extra:
        print(f"extra: {ran}")
    for said in outcome.score.lost:
        print(f"lost: {said}")
    for said in outcome.score.duplicated:
        index = script.said.index(said)
        runs = [r for r in outcome.ran if r.said == index or r.said is None]
        print(f"duplicated: {said}, ran: {runs}")
    print(f"unattributed (matched by time): {[r for r in outcome.ran if r.said is None]}")
    heard, said = outcome.score.outside_windows()
    command = (
        f"PYTHONPATH=. python tests/bench/bench_listening_failover.py --minutes {args.minutes:g} "
        f"--failovers {args.failovers} --seed {args.seed}"
        + (" --two-sources" if args.two_sources else "")
    )
    load = os.getloadavg()[0]
    lines = [
        "## Live listening through failovers (scripted stream)",
        "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {took:.0f} s, load average at the end "
        f"{load:.1f} on this 2-core machine shared with other work): "
        f"{script.duration_s:.0f} s of speech, {len(script.commands)} commands and "
        f"{len(script.said) - len(script.commands)} chatter sentences, "
        f"{len(outcome.failovers)} primaries SIGKILLed mid-command"
        + (", the same speech on two sources" if args.two_sources else "")
        + ".",
        "",
        "| commands | recognised | lost | of which in failover windows | duplicated | extra "
        "| outside windows heard | gap p50 s | gap max s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {summary['commands']} | {summary['recognised']} | {summary['lost']} "
        f"| {summary['lost_in_failover_windows']} | {summary['duplicated']} "
        f"| {summary['extra']} | {heard}/{said} "
        f"| {statistics.median(gaps):.2f} | {max(gaps):.2f} |"
        if gaps
        else "| no failover measured |",
        "",
        "Gaps per failover (s): " + ", ".join(f"{g:.2f}" for g in gaps) + ".",
    ]
    write_section(lines, START, END)
    return 0 if summary["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
