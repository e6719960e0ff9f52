"""Benchmark: candidate default timers for host loss, next to VRRPv3 at a 0.1 s advert.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_host_loss_timers.py [--seeds 300] [--runs 12] [--duration 600]

Host loss leaves no evidence of death (the primary's link is cut or its host frozen), so a
backup learns of it only by silence: the simulator's crash (a node that stops answering) is
exactly that. For each candidate: the time from the loss to a new primary holding a valid
lease (p50/p90 over seeds, kill phase random against the heartbeat), and the leader changes
per hour of a healthy cluster at 5 % and 20 % random loss on every datagram.

VRRPv3 (RFC 5798 §6.1) with the same loss model: a backup of priority 100 declares the master
down after Master_Down_Interval = 3 x advert + (256 - 100) / 256 x advert = 0.361 s without an
advert, so after 3 adverts in a row are lost (the 4th would come at 0.4 s). From a host loss,
the takeover comes Master_Down_Interval after the last advert heard: uniform in (0.261, 0.361]
s. Spurious takeovers: each advert heard and then 3 lost, (1 - p) x p^3 per advert, checked
here by a Monte Carlo run of the same adverts.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.cluster.timers import ElectionTimers, timers_for
from ha_voice.simulation.engine import ClusterSpec
from ha_voice.simulation.schedules import measure_crash_failover, run_stability

START, END = "<!-- bench_host_loss_timers:start -->", "<!-- bench_host_loss_timers:end -->"
CLUSTERS = ("2n+witness", "2n+two_node")
LOSSES = (0.05, 0.20)
VRRP_ADVERT_S = 0.1
VRRP_PRIORITY = 100


def candidates() -> list[tuple[str, ElectionTimers]]:
    """(label, timers): today's wired profile, shorter election timeouts at 50 ms, and VRRP's
    count of heartbeats at 100 ms."""
    return [
        ("50 ms / 0.5 s (wired today)", timers_for("wired")),
        ("50 ms / 0.4 s", timers_for("wired", election_timeout_s=0.4)),
        ("50 ms / 0.3 s", timers_for("wired", election_timeout_s=0.3)),
        ("50 ms / 0.25 s", timers_for("wired", election_timeout_s=0.25)),
        ("30 ms / 0.25 s", timers_for("wired", heartbeat_interval_s=0.03, election_timeout_s=0.25)),
        # As bench_sim_failover's: the derived lease (0.144 s) would not cover 2 heartbeats.
        (
            "100 ms / 0.3 s (VRRP's 3)",
            timers_for(
                "wired", heartbeat_interval_s=0.1, election_timeout_s=0.3, lease_timeout_s=0.244
            ),
        ),
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def vrrp_master_down_s() -> float:
    skew = (256 - VRRP_PRIORITY) * VRRP_ADVERT_S / 256
    return 3 * VRRP_ADVERT_S + skew


def vrrp_failover(seeds: int) -> list[float]:
    """From the host loss to the backup's takeover, kill phase uniform against the advert."""
    rng = random.Random("vrrp/failover")
    down = vrrp_master_down_s()
    return [down - rng.uniform(0.0, VRRP_ADVERT_S) for _ in range(seeds)]


def vrrp_spurious_per_hour(loss: float, hours: float) -> tuple[float, float]:
    """(analytic, Monte Carlo) spurious takeovers per hour at `loss` per advert."""
    per_hour = 3600 / VRRP_ADVERT_S
    analytic = per_hour * (1 - loss) * loss**3
    rng = random.Random(f"vrrp/{loss}")
    missed, events = 0, 0
    for _ in range(int(per_hour * hours)):
        if rng.random() < loss:
            missed += 1
            if missed == 3:  # Master_Down_Interval (3.61 adverts) runs out before the 4th
                events += 1
        else:
            missed = 0
    return analytic, events / hours


def failover_ms(spec: ClusterSpec, timers: ElectionTimers, seeds: int) -> tuple[float, float]:
    times = [measure_crash_failover(spec, seed, timers).lease_s for seed in range(seeds)]
    return pct(times, 0.5) * 1000, pct(times, 0.9) * 1000


def spurious_per_hour(
    spec: ClusterSpec, timers: ElectionTimers, loss: float, runs: int, duration_s: float
) -> tuple[int, float]:
    changes = 0
    for seed in range(runs):
        result = run_stability(
            spec, seed, duration_s=duration_s, max_loss=loss, timers=timers, fixed_loss=True
        )
        changes += sum(1 for line in result.liveness if "primary->" in line)
    return changes, changes / (runs * duration_s / 3600)


def table(
    seeds: int, runs: int, duration_s: float, labels: str = "", clusters: tuple[str, ...] = CLUSTERS
) -> list[str]:
    hours = runs * duration_s / 3600
    rows = [
        "| timers (heartbeat / election timeout) | lease s | cluster | host loss p50 ms "
        "| p90 ms | spurious/h at 5 % | spurious/h at 20 % |",
        "|---|---|---|---|---|---|---|",
    ]
    vrrp = vrrp_failover(seeds)
    rates = [vrrp_spurious_per_hour(loss, hours) for loss in LOSSES]
    rows.append(
        f"| VRRPv3 advert 0.1 s, priority 100 (keepalived) | - | 2 routers "
        f"| {pct(vrrp, 0.5) * 1000:.0f} | {pct(vrrp, 0.9) * 1000:.0f} | "
        + " | ".join(f"{a:.1f} (Monte Carlo {m:.1f})" for a, m in rates)
        + " |"
    )
    for label, timers in candidates():
        if labels and labels not in label:
            continue
        for name in clusters:
            spec = ClusterSpec.from_name(name)
            p50, p90 = failover_ms(spec, timers, seeds)
            cells = []
            for loss in LOSSES:
                count, rate = spurious_per_hour(spec, timers, loss, runs, duration_s)
                cells.append(f"{rate:.1f} ({count})")
            rows.append(
                f"| {label} | {timers.lease_timeout_s:.3f} | {name} | {p50:.0f} | {p90:.0f} | "
                + " | ".join(cells)
                + " |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=300, help="host losses per candidate")
    parser.add_argument("--runs", type=int, default=12, help="lossy runs per candidate and loss")
    parser.add_argument("--duration", type=float, default=600.0, help="virtual seconds per run")
    parser.add_argument("--only", default="", help="only candidates whose label holds this")
    parser.add_argument("--clusters", default=",".join(CLUSTERS), help="e.g. 2n+witness,3n")
    args = parser.parse_args()
    started = time.monotonic()
    clusters = tuple(args.clusters.split(","))
    rows = table(args.seeds, args.runs, args.duration, args.only, clusters)
    tag = f":{args.only}" if args.only else ""
    command = (
        f"python tests/bench/bench_host_loss_timers.py --seeds {args.seeds} --runs {args.runs} "
        f"--duration {args.duration:g}"
        + (f" --only '{args.only}'" if args.only else "")
        + (f" --clusters {args.clusters}" if clusters != CLUSTERS else "")
    )
    took = time.monotonic() - started
    hours = args.runs * args.duration / 3600
    lines = [
        f"## Default timers for host loss, next to VRRPv3{' (' + args.only + ')' if tag else ''}",
        "",
        f"`{command}` ({took:.0f} s on this machine). Simulator, virtual "
        "time: host loss is a primary that falls silent (no evidence of death), timed to the "
        "first valid lease of a new primary; spurious failovers are leader changes of a "
        f"healthy cluster with random loss on every datagram, {hours:g} virtual hours per cell "
        "(the count in brackets). Skew and jitter are the wired profile's (50 / 20 ms). "
        "VRRPv3 is computed from RFC 5798's timers with the same loss per advert (takeover "
        "Master_Down_Interval after the last advert heard; spurious when 3 adverts in a row "
        "are lost), checked by Monte Carlo.",
        "",
        *rows,
    ]
    start, end = (START, END) if not tag else (START[:-4] + tag + " -->", END[:-4] + tag + " -->")
    write_section(lines, start, end)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
