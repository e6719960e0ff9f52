"""The commands that prepare a host before its node runs: `ha-voice keygen` (the secret files)
and `ha-voice check` (what this host can do as a node). Their flags and thin handlers; the work
is in keygen.py and check.py.

Invariants:
- `keygen` writes through keygen.py only (all or nothing, mode 0600, the token printed once)
  and exits 0; every refusal is a ConfigError, which cli.py's `main` prints and turns into 2.
  The configuration is read only when a file's path is not given.
- `check` always prints a report (text, or one JSON object with --json) and exits with its
  worst finding: 0 all ok, 1 a warning, 2 a failure; a check that raises is a bug, reported as
  a failure (2), never a traceback or a 1.
- Light to import, like cli.py: check.py is imported by the handler; keygen.py is light (the
  standard library and the secret-file format) and gives the defaults --help shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ha_voice.config import load_config
from ha_voice.keygen import DEFAULT_TOKEN_FILE, DEFAULT_TOKEN_NAME

__all__ = ["check_command", "keygen_command"]


def keygen_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keygen` to `commands`, with its flags and handler."""
    keygen_parser = commands.add_parser(
        "keygen",
        help="write a cluster key and an API token file, mode 0600",
        description="Creates both files with mode 0600 (never wider, not for a moment) and "
        "prints the token once. All or nothing: a run that fails changes no file. Refuses to "
        "overwrite without --force, relative paths, and --no-key with --no-token.",
    )
    keygen_parser.add_argument(
        "--key-file", type=Path, help="default: the configured cluster_key_file"
    )
    keygen_parser.add_argument(
        "--token-file",
        type=Path,
        help=f"default: the configured api_token_file, else {DEFAULT_TOKEN_FILE}",
    )
    keygen_parser.add_argument(
        "--token-name", default=DEFAULT_TOKEN_NAME, help="recorded as the journal's source"
    )
    keygen_parser.add_argument("--owner", help="user to own the files (the one ha-voice runs as)")
    keygen_parser.add_argument("--no-key", action="store_true", help="write no cluster key")
    keygen_parser.add_argument("--no-token", action="store_true", help="write no token file")
    keygen_parser.add_argument(
        "--add", action="store_true", help="append a new token to an existing token file"
    )
    keygen_parser.add_argument("--force", action="store_true", help="replace existing files")
    keygen_parser.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    """Write the files the flags ask for (the configured paths where none is given) and print
    where they went and the token; 0, or a ConfigError from keygen.py."""
    from ha_voice.keygen import KeygenRequest, keygen

    needs_config = (not args.no_key and args.key_file is None) or (
        not args.no_token and args.token_file is None
    )
    config = load_config() if needs_config else None
    key_file = args.key_file or (config.cluster_key_file if config else None)
    token_file = args.token_file or (config.api_token_file if config else None)
    request = KeygenRequest(
        key_file=None if args.no_key else key_file,
        token_file=None if args.no_token else (token_file or DEFAULT_TOKEN_FILE),
        token_name=args.token_name,
        owner=args.owner,
        add=args.add,
        force=args.force,
    )
    for line in keygen(request):
        print(line)
    return 0


def check_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `check` to `commands`, with its flags and handler."""
    check = commands.add_parser(
        "check",
        help="what this host can do as a node: config, secrets, model, GPU, robot, peers, clock",
        description="One line per check, ok, warn or fail, with the fix. Every probe has a "
        "timeout; nothing is changed, and the model is not loaded without --load-model.",
        epilog="Exit status: 0 all ok, 1 the worst is a warning, 2 something failed.",
    )
    check.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file (default: $HA_VOICE_CONFIG or /etc/ha-voice/config.toml if present)",
    )
    check.add_argument(
        "--witness", dest="as_witness", action="store_true", help="check a witness's host"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument(
        "--offline",
        action="store_true",
        help="no network probe (running node, peers, round trip, robot): for ExecStartPre=",
    )
    check.add_argument(
        "--load-model",
        action="store_true",
        help="load the configured model in a worker, as a node does (seconds to minutes)",
    )
    check.add_argument(
        "--mdns-wait",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long to listen for the peers' mDNS records (default 2)",
    )
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    """Run the checks, print the report and return its exit status (0, 1 or 2)."""
    from ha_voice.check import (
        CheckOptions,
        exit_code,
        internal_finding,
        report,
        run_checks,
        text_lines,
    )

    options = CheckOptions(
        config_path=args.config,
        role="witness" if args.as_witness else "node",
        network=not args.offline,
        load_model=args.load_model,
        mdns_wait_s=min(max(args.mdns_wait, 0.0), 30.0),
    )
    try:
        findings = run_checks(options)
    except Exception as exc:  # a bug: still a report, and exit 2, never 1 ("warnings only")
        findings = [internal_finding("check", exc)]
    if args.json:
        print(json.dumps(report(findings), indent=2))
    else:
        print("\n".join(text_lines(findings)))
    return exit_code(findings)
