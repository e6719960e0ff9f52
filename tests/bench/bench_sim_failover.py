"""Benchmark: failover and transfer times in the simulator, and spurious failovers per timer set.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_sim_failover.py [--seeds 1000]

This is the theoretical floor that the real daemon is measured against: virtual time, the
real election core and codec, a wired network of 0.2-2 ms one way, clocks drifting up to 1 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from ha_voice.cluster.timers import ElectionTimers, max_safe_lease_s, timers_for
from ha_voice.simulation.engine import ClusterSpec
from ha_voice.simulation.schedules import (
    measure_crash_failover,
    measure_transfer,
    run_stability,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
START, END = "<!-- bench_sim_failover:start -->", "<!-- bench_sim_failover:end -->"
SPECS = ("3n", "5n", "2n+witness", "2n+two_node", "3n+wifi")


def percentiles(values: list[float]) -> str:
    values = sorted(values)

    def pct(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return f"{pct(0.5):.0f} | {pct(0.9):.0f} | {pct(0.99):.0f} | {values[-1] * 1000:.0f}"


def failover_table(seeds: int) -> list[str]:
    rows = [
        "| cluster | event | n | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SPECS:
        spec = ClusterSpec.from_name(name)
        crashes = [measure_crash_failover(spec, seed).lease_s for seed in range(seeds)]
        transfers = [measure_transfer(spec, seed).lease_s for seed in range(seeds)]
        rows.append(f"| {name} | SIGKILL of the primary | {seeds} | {percentiles(crashes)} |")
        rows.append(f"| {name} | graceful transfer | {seeds} | {percentiles(transfers)} |")
    return rows


def _vrrp_like() -> ElectionTimers:
    """The first design's sketch: 100 ms heartbeats, about 3 of them before an election."""
    wired = timers_for("wired")
    return replace(
        wired,
        heartbeat_interval_s=0.1,
        election_timeout_s=0.3,
        lease_timeout_s=round(max_safe_lease_s(0.3, wired.clock_drift) - 0.05, 4),
    )


def spurious_table(runs: int, duration_s: float) -> list[str]:
    candidates = [
        ("100 ms / 0.3 s (3 heartbeats)", _vrrp_like(), "2n", 0.05),
        ("100 ms / 0.3 s (3 heartbeats)", _vrrp_like(), "3n", 0.05),
        ("wired: 50 ms / 0.5 s", timers_for("wired"), "2n", 0.05),
        ("wired: 50 ms / 0.5 s", timers_for("wired"), "3n", 0.05),
        ("wired: 50 ms / 0.5 s", timers_for("wired"), "2n", 0.20),
        ("wifi: 100 ms / 2 s", timers_for("wifi"), "2n", 0.20),
        ("wifi: 100 ms / 2 s", timers_for("wifi"), "3n", 0.20),
    ]
    rows = [
        "| timers (heartbeat / election timeout) | cluster | loss | virtual hours "
        "| leader changes | per hour |",
        "|---|---|---|---|---|---|",
    ]
    for label, timers, name, loss in candidates:
        spec = ClusterSpec.from_name(name)
        changes = 0
        for seed in range(runs):
            result = run_stability(
                spec, seed, duration_s=duration_s, max_loss=loss, timers=timers, fixed_loss=True
            )
            changes += sum(1 for line in result.liveness if "primary->" in line)
        hours = runs * duration_s / 3600
        rows.append(
            f"| {label} | {name} | {loss:.0%} | {hours:.1f} | {changes} | {changes / hours:.1f} |"
        )
    return rows


def write_section(lines: list[str], start: str = START, end: str = END) -> None:
    """Replace the section between `start` and `end` in docs/benchmarks.md, or append it."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = "\n".join([start, *lines, end])
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=40, help="long lossy runs per timer set")
    parser.add_argument("--duration", type=float, default=600.0, help="virtual seconds per run")
    args = parser.parse_args()
    started = time.monotonic()
    failover = failover_table(args.seeds)
    spurious = spurious_table(args.runs, args.duration)
    took = time.monotonic() - started
    lines = [
        "## Failover in the simulator (the floor)",
        "",
        f"`python tests/bench/bench_sim_failover.py --seeds {args.seeds} --runs {args.runs} "
        f"--duration {args.duration:g}` ({took:.0f} s on this machine). Time from the fault to "
        "the first moment a new primary holds a valid lease (it may command the robot), in "
        "virtual time, with the default (`wired`) timers unless the cluster says `wifi`; "
        "a settled cluster, then one fault per seed.",
        "",
        *failover,
        "",
        "## Spurious failovers on a lossy network",
        "",
        "A healthy primary, random loss on every datagram, no other fault: how often does the "
        "cluster change leader anyway? This is why the default timers are not VRRP's three "
        "heartbeats: a lease needs a round trip from a quorum, not one advert.",
        "",
        *spurious,
    ]
    write_section(lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
