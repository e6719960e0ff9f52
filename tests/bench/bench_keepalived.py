"""Benchmark: ha-voice against keepalived (VRRPv3) on one harness, in the same run.

Not a pass/fail test. Writes its section of docs/benchmarks.md and CSV files. Run (as root,
keepalived and nftables installed):

    python tests/bench/bench_keepalived.py --results /tmp/kabench [--trials 20]
        [--cases crash,graceful,host,loss] [--intervals 1.0,0.1] [--loss 5,20]
        [--loss-minutes 3] [--ha-voice-timers advert|defaults|HB/ET] [--quick] [--no-docs]

Each advert interval gets two rigs at once (tests/bench/vip_daemons.py): keepalived on one
LAN of network namespaces, ha-voice (2 nodes, a witness, the sim robot) on another, with the
same priorities (150/100), the same kind of floating IP and the same client. Trials alternate
between the daemons (k, h, h, k, k, h, ...), each after a random wait of 0.3 s + 2 adverts +
U(0, 1 advert) so the fault lands at a random phase of the heartbeat. Per trial, from the
signal (tests/bench/vip_probe.py): the floating IP on B (rtnetlink), the client's first TCP
connect to it, and for ha-voice the first robot command B accepted (as the client sees it) and
the first command the sim robot got from B. Then A is restarted (or its link restored) and the
rig waits until A holds the floating IP again. Cases:

- crash: keepalived SIGSTOP parent, SIGKILL VRRP child, SIGKILL parent; ha-voice SIGKILL.
- graceful: SIGTERM to the daemon (keepalived's parent).
- host: A's bridge port set down (no evidence of death reaches anyone), then up.
- loss: N % of the frames on A's and B's bridge ports dropped (nftables `numgen random`) for the
  given minutes while nothing fails: how often the floating IP moves (spurious failovers).

--ha-voice-timers: ha-voice's heartbeat follows the advert interval ("advert", the default),
or ha-voice runs its default timers ("defaults") or a given heartbeat and election timeout
("0.03/0.25") beside keepalived at each interval; those runs write their own section.

--quick: 2 trials, advert 0.1 only, 0.25 minutes of loss, results not written to the docs.
"""

from __future__ import annotations

import argparse
import csv
import functools
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: for `tests`
from ha_voice.markdown import table
from tests.bench.bench_sim_failover import write_section
from tests.bench.vip_daemons import CLIENT, LISTEN_PORT, A, B, HaVoiceRig, KeepalivedRig, Rig
from tests.bench.vip_probe import measure, watch_holders

START, END = "<!-- bench_keepalived:start -->", "<!-- bench_keepalived:end -->"
CASES = ("crash", "graceful", "host", "loss")
TRIAL_FIELDS = [
    "daemon",
    "advert_s",
    "case",
    "trial",
    "ok",
    "vip_new_ms",
    "vip_old_gone_ms",
    "tcp_ok_ms",
    "command_ok_ms",
    "robot_first_ms",
    "connects",
    "refused",
    "timeouts",
    "recover_s",
]
LOSS_FIELDS = [
    "daemon",
    "advert_s",
    "loss_pct",
    "minutes",
    "takes_a",
    "takes_b",
    "none_s",
    "both_s",
    "dropped_pct",
]
METRICS = (
    ("vip_new_ms", "floating IP on B"),
    ("tcp_ok_ms", "first TCP connect"),
    ("command_ok_ms", "first accepted robot command"),
    ("robot_first_ms", "first command at the robot from B"),
)
HA_VOICE_ONLY = {"command_ok_ms", "robot_first_ms"}  # keepalived drives no robot


@dataclass
class Options:
    results: Path
    trials: int = 20
    cases: Sequence[str] = ("crash", "graceful", "host")
    intervals: Sequence[float] = (1.0, 0.1)
    loss: Sequence[int] = (5, 20)
    loss_minutes: float = 3.0
    seed: int | None = None
    docs: bool = True
    ha_voice_timers: str = "advert"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f}"


def one_trial(rig: Rig, case: str, trial: int) -> dict[str, Any]:
    """Fault A's daemon (or host) once and measure the move to B; then bring A back."""
    if case == "crash":
        act = functools.partial(rig.send, rig.crash_signals())
    elif case == "graceful":
        act = functools.partial(rig.send, rig.graceful_signals())
    else:
        act = functools.partial(rig.cut_a, True)
    t0, seen = measure(
        act,
        vip=(rig.vip, LISTEN_PORT),
        client=rig.ns(CLIENT),
        new=rig.watches[B],
        old=rig.watches[A],
        command=rig.command_target(),
    )
    robot_first = rig.robot_first_s(t0)
    if case == "host":
        rig.cut_a(False)
        rig.forget_neighbours()
    else:
        rig.reap(A)
        rig.start(A)
    recover = rig.home()
    wanted = [seen.vip_new_s, seen.tcp_ok_s]
    if rig.command_target() is not None:
        wanted.append(seen.command_ok_s)
    return {
        "daemon": rig.name,
        "advert_s": rig.advert_s,
        "case": case,
        "trial": trial,
        "ok": all(value is not None for value in wanted),
        "vip_new_ms": _ms(seen.vip_new_s),
        "vip_old_gone_ms": _ms(seen.vip_old_gone_s),
        "tcp_ok_ms": _ms(seen.tcp_ok_s),
        "command_ok_ms": _ms(seen.command_ok_s),
        "robot_first_ms": _ms(robot_first),
        "connects": seen.connects["started"],
        "refused": seen.connects["refused"],
        "timeouts": seen.connects["timeouts"],
        "recover_s": f"{recover:.2f}",
    }


def loss_run(rig: Rig, percent: int, minutes: float) -> dict[str, Any]:
    """Drop `percent` % on A's and B's links for `minutes`; count the floating IP's moves."""
    rig.set_loss(percent)
    try:
        log = watch_holders({"a": rig.watches[A], "b": rig.watches[B]}, rig.vip, minutes * 60)
        seen, dropped = rig.loss_counts()
    finally:
        rig.set_loss(0)
    rig.home()
    return {
        "daemon": rig.name,
        "advert_s": rig.advert_s,
        "loss_pct": percent,
        "minutes": minutes,
        "takes_a": log.takes["a"],
        "takes_b": log.takes["b"],
        "none_s": f"{log.none_s:.2f}",
        "both_s": f"{log.both_s:.2f}",
        "dropped_pct": f"{100 * dropped / max(1, seen):.1f}",
    }


def settle(advert_s: float) -> None:
    """0.3 s + 2 adverts + U(0, 1 advert): the next fault lands at a random heartbeat phase."""
    time.sleep(0.3 + 2 * advert_s + random.uniform(0, advert_s))


@dataclass
class Results:
    """What the run found so far, rewritten to the results folder after every row."""

    folder: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    about: dict[str, list[str]] = field(default_factory=dict)

    def add_trial(self, row: dict[str, Any]) -> None:
        self.trials.append(row)
        _write_csv(self.folder / "trials.csv", TRIAL_FIELDS, self.trials)

    def add_loss(self, row: dict[str, Any]) -> None:
        self.losses.append(row)
        _write_csv(self.folder / "loss.csv", LOSS_FIELDS, self.losses)


def run_interval(
    options: Options, advert_s: float, results: Results, report: Callable[[str], None]
) -> None:
    """Every case at one advert interval, both daemons up for the whole of it."""
    logs = options.results / "logs"
    keepalived = KeepalivedRig(advert_s, "10.231.0.0/24", "kvk", logs)
    ha_voice = HaVoiceRig(advert_s, "10.232.0.0/24", "kvh", logs)
    ha_voice.timer_choice = options.ha_voice_timers
    with keepalived, ha_voice:
        rigs: list[Rig] = [keepalived, ha_voice]
        for rig in rigs:
            rig.home()
            results.about.setdefault(rig.name, []).extend(rig.describe())
        _save_configs(options.results / "configs", advert_s, rigs)
        for case in [c for c in options.cases if c != "loss"]:
            for trial in range(1, options.trials + 1):
                order = rigs if trial % 2 else rigs[::-1]
                for rig in order:
                    settle(advert_s)
                    row = one_trial(rig, case, trial)
                    results.add_trial(row)
                    report(_line(row))
        if "loss" in options.cases:
            for percent in options.loss:
                for rig in rigs:
                    row = loss_run(rig, percent, options.loss_minutes)
                    results.add_loss(row)
                    report(str(row))


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['daemon']:10} {row['advert_s']:>4} {row['case']:8} #{row['trial']:<3} "
        f"ok={row['ok']!s:5} vip={row['vip_new_ms']:>8} tcp={row['tcp_ok_ms']:>8} "
        f"cmd={row['command_ok_ms']:>8} robot={row['robot_first_ms']:>8} "
        f"recover={row['recover_s']}s"
    )


def _save_configs(folder: Path, advert_s: float, rigs: list[Rig]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rig in rigs:
        for name, text in rig.configs().items():
            (folder / f"{advert_s}_{name}").write_text(text)


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _stats(values: list[float]) -> str:
    """min / median / p90 / max in ms (p90: nearest rank), or "-"."""
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    median = statistics.median(ordered)
    return f"{ordered[0]:.0f} / {median:.0f} / {p90:.0f} / {ordered[-1]:.0f}"


def failover_table(trials: list[dict[str, Any]]) -> list[str]:
    """One row per (case, interval, measure): both daemons' distributions and the ratio of
    their medians (ha-voice / keepalived)."""
    rows = []
    keys = sorted({(r["case"], float(r["advert_s"])) for r in trials}, key=_case_order)
    for case, advert in keys:
        for metric, label in METRICS:
            found = {
                daemon: [
                    float(r[metric])
                    for r in trials
                    if r["daemon"] == daemon
                    and r["case"] == case
                    and float(r["advert_s"]) == advert
                    and r[metric] != ""
                ]
                for daemon in ("keepalived", "ha-voice")
            }
            if not found["ha-voice"] and not found["keepalived"]:
                continue
            counts = [
                "-"
                if daemon == "keepalived" and metric in HA_VOICE_ONLY
                else f"{len(found[daemon])}/{_row_count(trials, (daemon, case, advert))}"
                for daemon in ("keepalived", "ha-voice")
            ]
            ratio = "-"
            if found["ha-voice"] and found["keepalived"]:
                medians = [statistics.median(found[d]) for d in ("ha-voice", "keepalived")]
                ratio = f"{medians[0] / medians[1]:.2f}"
            rows.append(
                [
                    case,
                    f"{advert:g} s",
                    label,
                    counts[0],
                    _stats(found["keepalived"]),
                    counts[1],
                    _stats(found["ha-voice"]),
                    ratio,
                ]
            )
    header = [
        "case",
        "interval",
        "from the signal to",
        "n",
        "keepalived min / med / p90 / max ms",
        "n",
        "ha-voice min / med / p90 / max ms",
        "ratio (medians)",
    ]
    return table(header, rows)


def _row_keys(trials: list[dict[str, Any]]) -> set[tuple[str, str, float]]:
    return {(r["daemon"], r["case"], float(r["advert_s"])) for r in trials}


def _row_count(trials: list[dict[str, Any]], key: tuple[str, str, float]) -> int:
    return sum(1 for r in trials if (r["daemon"], r["case"], float(r["advert_s"])) == key)


def _case_order(key: tuple[str, float]) -> tuple[int, float]:
    return (CASES.index(key[0]), -key[1])


def loss_table(losses: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in losses:
        minutes = float(r["minutes"])
        rows.append(
            [
                f"{r['loss_pct']} %",
                f"{float(r['advert_s']):g} s",
                str(r["daemon"]),
                f"{minutes:g}",
                f"{int(r['takes_b']) / minutes:.2f}",
                f"{int(r['takes_a'])}",
                f"{float(r['none_s']):.1f}",
                f"{float(r['both_s']):.1f}",
                f"{r['dropped_pct']} %",
            ]
        )
    header = [
        "loss on A's and B's links",
        "interval",
        "daemon",
        "minutes",
        "failovers to B per minute",
        "takes back by A",
        "s without a holder",
        "s with two holders",
        "dropped (nft counters)",
    ]
    return table(header, rows)


def section(command: str, results: Results, took_s: float, timers: str = "advert") -> list[str]:
    """The docs section: how it was measured, versions, the tables, A's configurations."""
    title = {
        "advert": "## ha-voice against keepalived, side by side",
        "defaults": "## ha-voice's default timers against keepalived, side by side",
    }.get(timers, f"## ha-voice at {timers} s (heartbeat / election timeout) against keepalived")
    trials, losses = results.trials, results.losses
    fewest = min((_row_count(trials, key) for key in _row_keys(trials)), default=0)
    caveat = (
        [f"Preliminary: {fewest} trials per row where the issue asks for at least 20.", ""]
        if fewest < 20
        else []
    )
    lines = [
        title,
        "",
        *caveat,
        f"`{command}` ({took_s / 60:.1f} min; as root, with keepalived and nftables). Two rigs "
        "of network namespaces on their own bridges, up at the same time: keepalived (VRRPv3, "
        "multicast adverts) on one, ha-voice (2 nodes, `ha-voice witness`, `ha-voice "
        "sim-robot`) on the other; A has priority 150, B 100, the floating IP is host .100 of "
        "the rig's /24 and a TCP listener on it answers in B only. Trials alternate between "
        "the daemons, each after 0.3 s + 2 adverts + U(0, 1 advert). Times run from the signal "
        "(or the cut of A's bridge port) to: the floating IP added in B (rtnetlink event), the "
        "client's first successful TCP connect to it (a new connect every 5 ms, each given "
        "250 ms), and (ha-voice) the first `stop` posted to the floating IP (one every 5 ms) "
        "that B ran (`executed_by`) and the first command the sim robot journalled from B (its "
        "take-over stop). The sim robot is on the same bridge, so a cut A loses its robot too. "
        "After a crash or a SIGTERM, A's daemon is restarted; after a cut, A's port comes back "
        "up and the client forgets its ARP entry for the floating IP (a keepalived master that "
        "never stopped being one sends no new gratuitous ARP); either way the next trial waits "
        "until A holds the floating IP alone. The exact configs are written to the results "
        "folder (`configs/`), one row per trial to `trials.csv`, daemon logs to `logs/`.",
        "",
        *[line for lines in results.about.values() for line in lines],
        "",
        *failover_table(trials),
    ]
    if losses:
        lines += [
            "",
            "Spurious failovers: nothing fails, but nftables drops the given share of frames "
            "at random in and out of A's and B's links, on the bridge (`numgen random mod 100 "
            "< N drop` on their bridge ports, so a frame from A to B meets two draws and the "
            "sender never learns of the loss); a failover is the floating IP added in B. "
            "keepalived's A never lets go of it: each failover is a time with two masters (s "
            "with two holders) until B hears A again. ha-voice's A steps down when its lease "
            "ends (s without a holder) and takes the primary back by preemption (`preempt = "
            "true`, `preempt_delay_s = 1` here; the defaults are false and 10 s).",
            "",
            *loss_table(losses),
        ]
    return lines + _config_listing(results.folder / "configs")


def _config_listing(folder: Path) -> list[str]:
    """Node A's configuration files as run (B's differ in the priority, the node id and the
    peers; the witness's is A's without the node keys)."""
    lines = ["", "Node A's configurations (all of them are in the results folder, `configs/`):"]
    for path in sorted(folder.glob("*-a.*"), key=lambda p: p.name):
        lines += ["", f"`{path.name}`:", "", "```text", *path.read_text().splitlines(), "```"]
    return lines


def _report(line: str) -> None:
    print(line, flush=True)


def run(options: Options, command: str, report: Callable[[str], None] = _report) -> list[str]:
    """The whole benchmark; returns the Markdown section (also written where asked)."""
    if options.seed is not None:
        random.seed(options.seed)
    options.results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = Results(options.results)
    for advert_s in options.intervals:
        run_interval(options, advert_s, results, report)
    lines = section(command, results, time.monotonic() - started, options.ha_voice_timers)
    (options.results / "summary.md").write_text("\n".join(lines) + "\n")
    if options.docs:
        if options.ha_voice_timers == "advert":
            write_section(lines, START, END)
        else:
            choice = options.ha_voice_timers
            write_section(
                lines,
                f"<!-- bench_keepalived:start:{choice} -->",
                f"<!-- bench_keepalived:end:{choice} -->",
            )
    return lines


def _parse(argv: Sequence[str]) -> tuple[Options, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="folder for CSV and logs")
    parser.add_argument("--trials", type=int, help="trials per case, interval and daemon [20]")
    parser.add_argument("--cases", help=f"comma-separated, of {','.join(CASES)} [all]")
    parser.add_argument("--intervals", help="advert intervals in seconds [1.0,0.1]")
    parser.add_argument("--loss", default="5,20", help="loss percentages [5,20]")
    parser.add_argument("--loss-minutes", type=float, help="minutes per loss run [3]")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--ha-voice-timers", default="advert", help="advert, defaults or HB/ET [advert]"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run; see above")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    cases = args.cases.split(",") if args.cases else list(CASES)
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"--cases: unknown {sorted(unknown)}; known: {', '.join(CASES)}")
    default_intervals = "0.1" if args.quick else "1.0,0.1"
    options = Options(
        results=args.results,
        trials=args.trials or (2 if args.quick else 20),
        cases=cases,
        intervals=[float(x) for x in (args.intervals or default_intervals).split(",")],
        loss=[int(x) for x in args.loss.split(",")],
        loss_minutes=args.loss_minutes or (0.25 if args.quick else 3.0),
        seed=args.seed,
        docs=not (args.quick or args.no_docs),
        ha_voice_timers=args.ha_voice_timers,
    )
    command = (
        "python tests/bench/bench_keepalived.py --results DIR "
        f"--trials {options.trials} --cases {','.join(options.cases)} "
        f"--intervals {','.join(f'{i:g}' for i in options.intervals)} "
        f"--loss {','.join(map(str, options.loss))} --loss-minutes {options.loss_minutes:g}"
        + (
            f" --ha-voice-timers {options.ha_voice_timers}"
            if options.ha_voice_timers != "advert"
            else ""
        )
    )
    return options, command


def main(argv: Sequence[str] | None = None) -> int:
    options, command = _parse(sys.argv[1:] if argv is None else argv)
    # SIGTERM unwinds like Ctrl-C, so the rigs stop their daemons and delete their namespaces.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run(options, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
