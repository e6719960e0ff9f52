"""The `ha-voice` command: one subcommand per job, each a thin call into the package.

Start-up is part of the interface: a command that starts no server (`--version`, `status`,
`send`, `journal`, `step-down`) must answer within half a second, so this module imports at the
top only the standard library, the configuration model, the outcome table and the cli_*.py
modules, which keep the same rule; each handler imports what its job needs (the daemon's FastAPI
and uvicorn only for `run`, `witness` and `demo`). tests/integration/test_cli_imports.py keeps it
so; tests/bench/bench_cli_startup.py measures it.

Some commands live beside it: the flags every client command shares and what they resolve to
(cli_args.py), `drill` (cli_drill.py), `keygen` and `check` (cli_setup.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ha_voice import __version__, cli_args
from ha_voice.cli_drill import drill_command
from ha_voice.cli_setup import check_command, keygen_command
from ha_voice.config import Config, Role, load_config
from ha_voice.config_render import (
    add_arguments,
    flags_from_namespace,
    render_markdown,
    render_toml,
    witness_keys,
)
from ha_voice.errors import ConfigError, UnreachableError
from ha_voice.interfaces import network_wait_reason
from ha_voice.journal import MAX_TAIL
from ha_voice.preflight import startable_problems
from ha_voice.send_outcomes import (
    DONE,
    NO_PRIMARY,
    UNAUTHORIZED,
    USAGE,
    Outcome,
    help_table,
    of_answer,
    of_refusal,
)
from ha_voice.tokens import TOKEN_ENV

if TYPE_CHECKING:
    from ha_voice.client import CommandResult, HAVoiceClient

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["sim-robot"]:  # its own parser: argparse cannot pass options through
        from ha_voice.robot import sim_server

        return sim_server.main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"ha-voice: {exc}", file=sys.stderr)
        return 2
    except UnreachableError as exc:
        print(f"ha-voice: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


_CONFIG_USAGE = "%(prog)s [-h] [--config FILE] [--KEY VALUE ...]"
_CONFIG_EPILOG = (
    "Each option sets the configuration key of its name and overrides HA_VOICE_<KEY> and the "
    "file. docs/configuration.md (or `ha-voice config docs`) gives each key's unit, bounds "
    "and the reason for its default."
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser, and the parser of every subcommand, that takes whole flags only:
    argparse's default would read `witness --priority 9` as `--priority-skew-s 9`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="ha-voice",
        description="High-availability voice commands for a Unitree Go2 on several Jetsons.",
    )
    parser.add_argument("--version", action="version", version=f"ha-voice {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run this node (the daemon)",
        usage=_CONFIG_USAGE,
        epilog=_CONFIG_EPILOG,
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file (default: $HA_VOICE_CONFIG or /etc/ha-voice/config.toml if present)",
    )
    add_arguments(run)
    run.set_defaults(handler=_run)

    witness = commands.add_parser(
        "witness",
        help="run a vote-only member that never leads",
        usage=_CONFIG_USAGE,
        description="A witness votes and serves /health and /metrics; it never leads, so it "
        "takes no robot, speech or floating-IP options.",
        epilog=_CONFIG_EPILOG,
    )
    witness.add_argument("--config", type=Path, metavar="FILE", help="TOML file")
    add_arguments(witness, witness_keys())
    witness.set_defaults(handler=_witness)

    status = commands.add_parser("status", help="the cluster as a table, from any node")
    cli_args.url_argument(status)
    cli_args.ca_argument(status)
    status.add_argument("--watch", action="store_true", help="refresh every second")
    status.add_argument("--json", action="store_true", help="print the /cluster JSON")
    status.set_defaults(handler=_status)

    step_down = commands.add_parser("step-down", help="hand leadership to the best backup")
    cli_args.url_argument(step_down)
    step_down.add_argument("--target", help="node to hand over to (default: the first in line)")
    cli_args.token_arguments(step_down)
    cli_args.ca_argument(step_down)
    step_down.set_defaults(handler=_step_down)

    drill_command(commands)
    keygen_command(commands)
    check_command(commands)

    # Listed for --help only: main() hands `sim-robot ...` to the simulator's own parser.
    _client_commands(commands)
    commands.add_parser("sim-robot", help="serve a simulated Go2: --listen HOST:PORT")

    demo = commands.add_parser("demo", help="a local cluster that shows a failover")
    demo.add_argument("--json", action="store_true", help="one JSON object per event")
    demo.add_argument(
        "--simulated", action="store_true", help="run it on the simulator, in virtual time"
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated run")
    demo.add_argument(
        "--listen",
        action="store_true",
        help="live listening instead: a generated Dutch stream, the primary killed mid-stream",
    )
    demo.set_defaults(handler=_demo)

    simulate = commands.add_parser(
        "simulate", help="try timers against faults in the deterministic simulator"
    )
    _simulate_arguments(simulate)
    simulate.set_defaults(handler=_simulate)

    config = commands.add_parser("config", help="show, check or document the configuration")
    config_commands = config.add_subparsers(metavar="ACTION", required=True)
    show = config_commands.add_parser("show", help="the effective configuration as TOML")
    show.add_argument("--config", type=Path, metavar="FILE", help="TOML file to read")
    add_arguments(show)
    show.set_defaults(handler=_config_show)
    check = config_commands.add_parser(
        "check",
        help="validate a file (and HA_VOICE_*) and what it names: everything run checks but "
        "binding sockets",
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--witness",
        dest="as_witness",
        action="store_true",
        help="check it as ha-voice witness reads it",
    )
    check.set_defaults(handler=_config_check)
    docs = config_commands.add_parser("docs", help="print docs/configuration.md")
    docs.set_defaults(handler=lambda args: _write(render_markdown()))
    return parser


def _client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser(
        "send",
        help="send a command to the cluster's primary (found by mDNS) and print its outcome",
        description="Send what was said (or --action) to the primary; print the outcome on "
        "stdout and, when it is not done, the likely cause on stderr.",
        epilog=help_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("text", nargs="?", help='what was said, e.g. "sta op"')
    send.add_argument("--action", help="a robot action instead of text, e.g. sit, hello")
    send.add_argument("--key", help="idempotency key (default: a new UUID); reuse it to retry")
    cli_args.client_arguments(send)
    send.set_defaults(handler=_send)

    listen = commands.add_parser(
        "listen",
        help="send a recording to the cluster and print what was heard and what ran",
        description="Send a recording (WAV, FLAC, Ogg, MP3, WebM; - reads stdin) to the primary "
        "(found by mDNS, as send): it is recognised against the active vocabulary and the "
        "command runs as if said. Prints what was heard and the outcome.",
        epilog=help_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument("file", help="the recording, or - for stdin")
    listen.add_argument(
        "--dry-run", action="store_true", help="recognise and answer only: nothing runs"
    )
    listen.add_argument(
        "--content-type",
        help="the recording's media type (default: by its extension, else the node tells)",
    )
    listen.add_argument("--key", help="idempotency key (default: a new UUID); reuse it to retry")
    cli_args.client_arguments(listen)
    # Speech takes seconds on a busy CPU, and the node that has it may be queued.
    listen.set_defaults(handler=_listen, deadline=30.0)

    journal = commands.add_parser("journal", help="tail the replicated command journal")
    journal.add_argument("--since", type=int, default=0, help="entries after this index")
    journal.add_argument("--limit", type=int, default=20, help="the last N entries (default 20)")
    journal.add_argument("--follow", action="store_true", help="keep printing new entries")
    cli_args.client_arguments(journal)
    journal.set_defaults(handler=_journal)


def _write(text: str) -> int:
    sys.stdout.write(text)
    return 0


def _run(args: argparse.Namespace) -> int:
    return _serve(_startable(args, args.config, "node"))


def _witness(args: argparse.Namespace) -> int:
    return _serve(_startable(args, args.config, "witness"))


def _startable(args: argparse.Namespace, path: Path | None, role: Role) -> Config:
    """The configuration `run`, `witness` and `config check` read: file, environment and flags,
    and the files and directory a start needs, every problem in one ConfigError."""
    flags = flags_from_namespace(args)
    return load_config(path, flags=flags, role=role, checks=(startable_problems,))


def _serve(config: Config) -> int:
    from ha_voice import daemon

    try:
        return daemon.run(config)
    except OSError as exc:
        print(f"ha-voice: cannot start: {exc}", file=sys.stderr)
        return 1


def _send(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.action is None):
        raise ConfigError('send: give what was said ("sta op") or --action NAME, not both')
    key = args.key or str(uuid.uuid4())
    if args.action:
        return _deliver(args, key, lambda client: client.command(args.action, key=key))
    return _deliver(args, key, lambda client: client.say(args.text, key=key))


# Media types by file extension: what `ha-voice listen` says it sends (the node checks).
_AUDIO_TYPES: Final = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".webm": "audio/webm",
}
# Larger than any node reads (audio_max_bytes is at most 64 MiB): refused before sending.
_MAX_RECORDING_BYTES: Final = 64 * 1024 * 1024


def _listen(args: argparse.Namespace) -> int:
    audio = _recording(args.file)
    content_type = args.content_type or _AUDIO_TYPES.get(
        Path(args.file).suffix.lower(), "application/octet-stream"
    )
    key = args.key or str(uuid.uuid4())
    return _deliver(
        args,
        key,
        lambda client: client.listen(audio, content_type, key=key, dry_run=args.dry_run),
    )


def _recording(name: str) -> bytes:
    """The bytes of file `name` (- for stdin), at most _MAX_RECORDING_BYTES; ConfigError if
    it cannot be read or is larger."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(_MAX_RECORDING_BYTES + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(_MAX_RECORDING_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"listen: cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > _MAX_RECORDING_BYTES:
        raise ConfigError(f"listen: {name} is larger than any node takes (64 MiB)")
    return data


def _deliver(
    args: argparse.Namespace, key: str, call: Callable[[HAVoiceClient], CommandResult]
) -> int:
    """Make `call` with a client of `args`; print the answer (and what was heard, for audio)
    and return its exit status (send_outcomes.py)."""
    from ha_voice import status
    from ha_voice.client import ClientError, DeadlineExceeded, NoPrimaryError, RequestError

    with cli_args.client(args) as client:
        try:
            result = call(client)
        except (DeadlineExceeded, NoPrimaryError):
            outcome, why = _why_no_primary(args)
            return _fail(outcome, f"{why}; retry with --key {key} (it runs at most once)")
        except RequestError as exc:
            outcome = of_refusal(exc.status)
            hint = (
                f"; give a token: --token-file FILE or ${TOKEN_ENV}"
                if outcome is UNAUTHORIZED
                else ""
            )
            return _fail(outcome, f"HTTP {exc.status}: {exc.error}{hint}")
        except ClientError as exc:  # this client's own rule (TLS required): nothing was sent
            return _fail(USAGE, str(exc))
    body = result.body
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        if "stt_node" in body:
            print(status.render_heard(body))
        print(status.render_outcome(body, result.attempts))
    outcome = of_answer(body)
    if outcome is not DONE:
        print(
            f"ha-voice: {outcome.name} (exit {outcome.exit_code}): {outcome.meaning}",
            file=sys.stderr,
        )
    return outcome.exit_code


def _fail(outcome: Outcome, why: str) -> int:
    print(f"ha-voice: {outcome.name} (exit {outcome.exit_code}): {why}", file=sys.stderr)
    return outcome.exit_code


def _why_no_primary(args: argparse.Namespace) -> tuple[Outcome, str]:
    """What the nodes say about their leader: from --url's nodes, else those mDNS finds."""
    from ha_voice.diagnose import diagnose, find_nodes

    verify = cli_args.verify(args)
    if args.url:
        urls = [url.strip().rstrip("/") for url in str(args.url).split(",")]
        return diagnose(urls, verify)
    config = load_config()
    cluster = args.cluster or config.cluster
    tls = args.ca_file is not None or config.tls_ca_file is not None
    urls = find_nodes(cluster, "https" if tls else "http")
    if not urls:
        return NO_PRIMARY, (
            f"no node of cluster {cluster!r} answers mDNS: is it running, is the name right "
            "(--cluster), does multicast pass between this host and the nodes (else --url)?"
        )
    return diagnose(urls, verify)


def _journal(args: argparse.Namespace) -> int:
    from ha_voice import status

    with cli_args.client(args) as client:
        since = args.since
        first = True
        while True:
            entries = _entries_after(client, since)
            if first:
                entries = entries[-args.limit :]
                first = False
            for entry in entries:
                print(json.dumps(entry) if args.json else status.render_entry(entry), flush=True)
                since = max(since, int(entry["index"]))
            if not args.follow:
                return 0
            time.sleep(0.5)


def _entries_after(client: HAVoiceClient, since: int) -> list[dict[str, Any]]:
    """Every journal entry after `since`, a page (MAX_TAIL, the most one answer holds) at a
    time."""

    entries: list[dict[str, Any]] = []
    while True:
        page = client.journal(since, MAX_TAIL)
        entries += page
        if len(page) < MAX_TAIL:
            return entries
        since = int(page[-1]["index"])


def _status(args: argparse.Namespace) -> int:
    from ha_voice import status

    base = cli_args.base_url(args)
    verify = cli_args.verify(args)
    while True:
        view = status.fetch_cluster(base, verify)
        text = json.dumps(view, indent=2) if args.json else status.render_table(view)
        if args.watch:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        if not args.watch:
            return 0
        time.sleep(1.0)


def _step_down(args: argparse.Namespace) -> int:
    from ha_voice import status

    ok, message = status.step_down(
        cli_args.base_url(args), args.target, cli_args.token(args), cli_args.verify(args)
    )
    print(message)
    return 0 if ok else 1


def _demo(args: argparse.Namespace) -> int:
    if args.simulated and args.listen:
        print("ha-voice demo: --listen runs real daemons; it does not go with --simulated")
        return 2
    if args.listen:
        from ha_voice.demo_listen import run_listen_demo

        return run_listen_demo(as_json=args.json, out=sys.stdout)
    if args.simulated:
        from ha_voice.simulation.demo import run_demo as run_sim_demo

        return run_sim_demo(seed=args.seed, as_json=args.json)
    from ha_voice import demo as process_demo

    return process_demo.run_demo(as_json=args.json)


def _config_show(args: argparse.Namespace) -> int:
    config = load_config(args.config, flags=flags_from_namespace(args))
    return _write(render_toml(config))


def _config_check(args: argparse.Namespace) -> int:
    if not args.file.exists():
        raise ConfigError(f"{args.file}: no such file")
    config = _startable(args, args.file, "witness" if args.as_witness else "node")
    _write(render_toml(config))
    waiting = network_wait_reason(config)
    if waiting is not None:  # not an error: at boot the network may come up after the node
        print(
            f"{args.file}: note: a start now would wait for the network: {waiting}", file=sys.stderr
        )
    print(f"{args.file}: valid", file=sys.stderr)
    return 0


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", help="print the transcript of a classic case (see --list)")
    parser.add_argument("--list", action="store_true", help="list scenarios and cluster specs")
    parser.add_argument("--spec", default="3n", help="cluster: 3n, 5n+witness, 2n+two_node+wifi…")
    parser.add_argument(
        "--kind",
        choices=("hostile", "stability", "crash", "transfer"),
        default="hostile",
        help="faults then quiet; a lossy healthy run; or failover times",
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds")
    parser.add_argument("--trace", action="store_true", help="print each run's whole trace")
    parser.add_argument("--config", type=Path, metavar="FILE", help="use this file's timers")
    parser.add_argument("--max-loss", type=float, help="stability: upper bound of random loss")


def _simulate(args: argparse.Namespace) -> int:
    from ha_voice.simulation import schedules
    from ha_voice.simulation.engine import ClusterSpec
    from ha_voice.simulation.scenarios import SCENARIOS, run_scenario

    if args.list:
        print("scenarios:", ", ".join(sorted(SCENARIOS)))
        print("specs:", ", ".join(spec.name for spec in schedules.CONFIGURATIONS), "(+wifi)")
        return 0
    if args.scenario:
        if args.scenario not in SCENARIOS:
            print(f"unknown scenario {args.scenario!r}; known: {sorted(SCENARIOS)}")
            return 2
        return _write("\n".join(run_scenario(args.scenario, args.seed or 7)) + "\n")
    spec = ClusterSpec.from_name(args.spec)
    timers = load_config(args.config).election_timers() if args.config else None
    seeds = range(args.seed, args.seed + args.seeds)
    if args.kind in ("crash", "transfer"):
        measure = (
            schedules.measure_crash_failover if args.kind == "crash" else schedules.measure_transfer
        )
        times = sorted(measure(spec, seed, timers).lease_s * 1000 for seed in seeds)
        print(json.dumps(_distribution(times)))
        return 0
    failed = 0
    for seed in seeds:
        if args.kind == "hostile":
            result = schedules.run_hostile(spec, seed, keep_trace=args.trace, timers=timers)
        else:
            result = schedules.run_stability(
                spec, seed, keep_trace=args.trace, timers=timers, max_loss=args.max_loss
            )
        if args.trace:
            print("\n".join(result.trace))
        verdict = "ok" if result.ok else "FAILED " + "; ".join(result.safety + result.liveness)
        print(f"{spec.name} {args.kind} seed {seed}: {result.faults} faults, {verdict}")
        failed += not result.ok
    print(f"sim: {len(seeds)} schedules, {failed} failed")
    return 1 if failed else 0


def _distribution(values_ms: list[float]) -> dict[str, float]:
    def pct(q: float) -> float:
        return round(values_ms[min(len(values_ms) - 1, int(q * len(values_ms)))], 1)

    return {
        "n": len(values_ms),
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": round(values_ms[-1], 1),
        "mean_ms": round(statistics.fmean(values_ms), 1),
    }


if __name__ == "__main__":
    sys.exit(main())
