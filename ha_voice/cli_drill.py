"""`ha-voice drill`: its flags, their parsers and its handler, a thin call into drill.py.

`drill_command` adds the subcommand to cli.py's parser; its handler turns the flags and the
configuration into a `drill.DrillOptions` and runs it.

Invariants:
- Exit status (`_DRILL_EPILOG`, printed by `ha-voice drill --help`): drill.py's `EXIT_*` (0 all
  within --max-ms, 1 one slower or incomplete, 3 not drilled, 130 Ctrl-C); 2 for a bad flag
  (argparse, from the parsers below) or a ConfigError (a bad --vip, --crash with --to, the
  token), which cli.py's `main` prints and turns into 2.
- Light to import, like cli.py: drill.py (httpx, the watchers) is imported by the handler.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from ha_voice.cli_args import base_url, ca_argument, token, token_arguments, url_argument, verify
from ha_voice.config import load_config
from ha_voice.errors import ConfigError

__all__ = ["drill_command"]

_DRILL_EPILOG = (
    "A repetition's failover time is the latest of what it measures, from the trigger: robot "
    "commands accepted again (/cluster/primary 200 from a newer primary), the floating IP "
    "answering from it (with vip), and the mDNS endpoint naming it (with mdns). Exit status: "
    "0 every failover within --max-ms, 1 one was slower or did not complete within --timeout, "
    "2 bad flags or configuration, 3 not drilled (the cluster is not healthy enough, refused "
    "the hand-over or the token, or --crash is not run on the primary's host), 130 Ctrl-C."
)


def drill_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `drill` to `commands`, with its flags and handler."""
    drill = commands.add_parser(
        "drill",
        help="a measured, controlled failover of the live cluster, repeated",
        description="Hand leadership over (or, with --crash on the primary's host, SIGKILL "
        "the local daemon), watch from this host when clients see the new primary, print a "
        "report; repeat. Never moves the robot.",
        epilog=_DRILL_EPILOG,
    )
    drill.add_argument(
        "-n", "--count", type=_count, default=1, metavar="N", help="repetitions (default 1)"
    )
    drill.add_argument(
        "--max-ms",
        type=_positive,
        metavar="MS",
        help="exit 1 if a failover takes longer than MS milliseconds",
    )
    drill.add_argument(
        "--crash",
        action="store_true",
        help="SIGKILL this host's daemon (it must be the primary) instead of a transfer",
    )
    drill.add_argument(
        "--interval",
        type=_seconds,
        default=2.0,
        metavar="S",
        help="seconds between repetitions, then until the cluster is healthy again (default 2)",
    )
    drill.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="bound on each wait: one failover, the cluster healthy again (default 30)",
    )
    drill.add_argument(
        "--to",
        metavar="NODE",
        help="transfer target (default, and while NODE leads already: the best backup)",
    )
    drill.add_argument("--json", action="store_true", help="one JSON object per line")
    drill.add_argument(
        "--vip",
        metavar="ADDRESS",
        help="the floating IP to watch (default: the configured vip, if any)",
    )
    drill.add_argument("--cluster", help="cluster name of the mDNS endpoint (default: configured)")
    url_argument(drill)
    token_arguments(drill)
    ca_argument(drill)
    drill.set_defaults(handler=_drill)


def _count(text: str) -> int:
    """--count: a whole number from 1 to 1000; argparse.ArgumentTypeError otherwise."""
    number = int(text) if text.isdigit() else 0
    if not 1 <= number <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number from 1 to 1000")
    return number


def _positive(text: str) -> float:
    """--max-ms: milliseconds, above 0 and below an hour; argparse.ArgumentTypeError
    otherwise."""
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0 < number < 3_600_000:
        raise argparse.ArgumentTypeError(f"{text!r}: milliseconds, above 0")
    return number


def _seconds(text: str) -> float:
    """--interval, --timeout: seconds from 0 to 3600; argparse.ArgumentTypeError otherwise."""
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0 <= number <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds, from 0 to 3600")
    return number


def _vip_host(vip: str | None) -> str | None:
    """The address of a floating IP given as `ADDRESS` or `ADDRESS/PREFIX`; ConfigError if it
    is none."""
    if vip is None:
        return None
    host = vip.split("/", 1)[0]
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(
            f"drill: --vip {vip[:40]!r}: an IPv4 address, like 192.168.1.50"
        ) from None
    return host


def _drill(args: argparse.Namespace) -> int:
    """Run the drill the flags and the configuration describe; its exit status (drill.py)."""
    from ha_voice import drill

    if args.crash and args.to:
        raise ConfigError("drill: --to names a transfer's target; --crash does not transfer")
    config = load_config()
    vip = _vip_host(args.vip or config.vip)
    scheme = "http" if config.tls_cert_file is None and args.ca_file is None else "https"
    options = drill.DrillOptions(
        base_url=base_url(args),
        count=args.count,
        max_ms=args.max_ms,
        crash=args.crash,
        interval_s=args.interval,
        timeout_s=max(args.timeout, 0.1),
        to=args.to,
        token=token(args),
        verify=verify(args),
        cluster=args.cluster or config.cluster,
        mdns=config.mdns,
        vip_url=None if vip is None else f"{scheme}://{vip}:{config.port}",
        as_json=args.json,
    )
    try:
        return drill.run_drill(options, sys.stdout, sys.stderr)
    except drill.NotDrillable as exc:
        print(f"ha-voice drill: not drilled: {exc}", file=sys.stderr)
        return drill.EXIT_NOT_DRILLED
