"""`ha-voice check`: what this host can do as a node right now, each finding with its fix.

Invariants:
- The rules are the daemon's own: the configuration and the files a start reads are judged by
  `load_config` and `preflight.startable_problems`, the timers against a round trip by
  `cluster.timers.round_trip_problem`, the model by the recogniser's own resolution, the robot
  by the backend the daemon would make (check_host.py, check_network.py).
- Every probe is bounded: each subprocess, HTTP request, mDNS browse and robot probe has a
  timeout, and the model is loaded (only with `--load-model`) within `load_timeout_s`.
- A check that raises is a bug, and its report is still a report: the exception becomes a
  `fail` finding for that check (exit 2), never a traceback or an exit status of 1.
- Nothing is changed: files are read, never written; a model is looked up in its cache, never
  downloaded.
- The server (FastAPI, uvicorn) and speech (faster-whisper, CTranslate2) are not imported at
  import time: `ha-voice check` must run where the daemon cannot (cli.py).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ha_voice.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, Role, load_config
from ha_voice.errors import ConfigError
from ha_voice.preflight import startable_problems

__all__ = [
    "EXIT_CODES",
    "CheckOptions",
    "Finding",
    "Level",
    "clock_finding",
    "exit_code",
    "file_findings",
    "guarded",
    "internal_finding",
    "report",
    "run_checks",
    "split_fix",
    "text_lines",
    "user_name",
]

Level = Literal["ok", "warn", "fail"]
# The exit status is the worst finding's: 1 for a warning lets a script tell "works, but look"
# from "cannot work" (2, as for a configuration ha-voice refuses).
EXIT_CODES: Final[dict[Level, int]] = {"ok": 0, "warn": 1, "fail": 2}
_SECRET_KEYS: Final = (
    "cluster_key_file",
    "cluster_key_accepted_file",
    "api_token_file",
    "tls_key_file",
)
_FILE_KEYS: Final = (*_SECRET_KEYS, "tls_cert_file", "tls_ca_file", "state_dir")
_NO_FILE: Final = "the defaults and HA_VOICE_*"
# timedatectl answers from systemd-timedated over D-Bus: at once, or not at all.
_TIMEDATECTL_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, how it stands, what was found, the fix."""

    check: str  # what: a configuration key or a part of the host ("config", "gpu", "peers")
    level: Level
    detail: str  # what was found, in words
    fix: str = ""  # what to do; "" when there is nothing to do


@dataclass(frozen=True)
class CheckOptions:
    """What `ha-voice check` looks at, and how long it may wait."""

    config_path: Path | None = None  # None: $HA_VOICE_CONFIG, else /etc/ha-voice/config.toml
    role: Role = "node"  # "witness": no model, GPU or robot
    network: bool = True  # False: no probe that uses the network (for ExecStartPre=)
    load_model: bool = False  # load the configured model in a worker process, as a node does
    mdns_wait_s: float = 2.0  # how long to listen for the peers' mDNS records, seconds
    http_timeout_s: float = 1.0  # each whole request to a node, body included, seconds
    # All the HTTP requests together: 9 nodes asked, then round trips, rarely take 1 s; a slow
    # or hostile node must not hold the check (and an ExecStartPre=) for minutes.
    network_budget_s: float = 10.0
    robot_timeout_s: float = 5.0  # the whole robot probe, seconds
    load_timeout_s: float = 300.0  # loading the model (--load-model), seconds


def run_checks(options: CheckOptions) -> list[Finding]:
    """Every finding for this host under `options`, in report order; never raises for what it
    finds (a broken configuration is a finding, and the checks that need it are left out)."""
    from ha_voice import check_host, check_network  # noqa: PLC0415 (their imports are heavier)

    try:
        config = load_config(options.config_path, role=options.role)
    except ConfigError as exc:
        found = _config_failures(str(exc), options)
        return [*found, *check_host.gpu_findings(None), clock_finding()]
    findings = [_config_finding(config, options)]
    findings += guarded("files", lambda: file_findings(config, options.role))
    if options.role == "node":
        findings += guarded("whisper_model", lambda: check_host.speech_findings(config, options))
    findings += guarded("clock", lambda: [clock_finding()])
    if options.network:
        findings += guarded("network", lambda: check_network.network_findings(config, options))
    return findings


def guarded(check: str, findings: Callable[[], list[Finding]]) -> list[Finding]:
    """`findings()`, or one `fail` finding for `check` naming the exception it raised."""
    try:
        return findings()
    except Exception as exc:  # a bug in a check: reported as one, the other checks still run
        return [internal_finding(check, exc)]


def internal_finding(check: str, exc: BaseException) -> Finding:
    """The `fail` finding for a check that raised `exc`."""
    said = " ".join(str(exc).split())[:300]
    return Finding(
        check,
        "fail",
        f"the check itself failed: {type(exc).__name__}: {said}",
        "report it as an ha-voice bug, with this line; the other lines still hold",
    )


def exit_code(findings: Sequence[Finding]) -> int:
    """0 when every finding is ok, 1 when the worst is a warning, 2 when one failed."""
    return max((EXIT_CODES[f.level] for f in findings), default=0)


def report(findings: Sequence[Finding]) -> dict[str, Any]:
    """The JSON shape: {"status": worst level, "exit": exit code, "checks": [Finding, ...]}."""
    code = exit_code(findings)
    status = next(level for level, number in EXIT_CODES.items() if number == code)
    return {"status": status, "exit": code, "checks": [asdict(f) for f in findings]}


def text_lines(findings: Sequence[Finding]) -> list[str]:
    """One line per finding, `LEVEL  check: detail  fix: ...`; a detail of several lines goes
    on indented lines below its first."""
    lines = []
    for finding in findings:
        first, *rest = finding.detail.splitlines() or [""]
        fix = f"  fix: {finding.fix}" if finding.fix else ""
        lines.append(f"{finding.level:<4}  {finding.check}: {first}{fix}")
        lines.extend(f"        {line.strip()}" for line in rest)
    return lines


def split_fix(text: str) -> tuple[str, str]:
    """(what, fix) of a problem worded as ha-voice words them, `...; fix: ...`."""
    what, sep, fix = text.rpartition("; fix: ")
    return (what, fix) if sep else (text, "")


def _config_failures(message: str, options: CheckOptions) -> list[Finding]:
    """One `fail` finding per problem of a refused configuration, each with its own fix; the
    message is `load_config`'s: a summary line, then one indented line per problem."""
    first, *rest = message.splitlines()
    problems = [line.strip() for line in rest if line.strip()] or [first]
    findings = []
    for problem in problems:
        detail, fix = split_fix(problem)
        if options.config_path is not None:  # named by --config, not by the variable
            fix = fix.replace(f"name an existing file in {CONFIG_ENV}", "give --config one")
        findings.append(
            Finding("config", "fail", detail, fix or "set it as docs/configuration.md says")
        )
    return findings


def _config_finding(config: Config, options: CheckOptions) -> Finding:
    peers = len(config.peers)
    witness = f", witness {config.witness_spec.node_id}" if config.witness_spec else ""
    detail = (
        f"{_config_source(options.config_path)} is valid: {options.role} {config.node_id!r} of "
        f"cluster {config.cluster!r}, {peers} peer{'s' if peers != 1 else ''}{witness}, "
        f"robot {config.robot!r}, timer_profile {config.timer_profile!r}"
    )
    if _config_source(options.config_path) == _NO_FILE:
        return Finding(
            "config",
            "warn",
            f"no configuration file (no --config, no ${CONFIG_ENV}, no {DEFAULT_CONFIG_PATH}): "
            f"{detail}",
            f"write {DEFAULT_CONFIG_PATH} (docs/operations.md) or name the file with --config",
        )
    return Finding("config", "ok", detail)


def _config_source(path: Path | None) -> str:
    if path is not None:
        return str(path)
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    if DEFAULT_CONFIG_PATH.exists():
        return str(DEFAULT_CONFIG_PATH)
    return _NO_FILE


# --- files -----------------------------------------------------------------------------------


def file_findings(config: Config, role: Role = "node") -> list[Finding]:
    """One finding per file a start reads or writes (secrets, TLS, state directory), judged by
    the daemon's own start checks; ok ones say mode, owner and who checked. A node without
    tokens is named too (a witness takes no commands)."""
    problems: dict[str, list[str]] = {}
    for problem in startable_problems(config):
        key = problem.split(" ", 1)[0]
        problems.setdefault(key if key in _FILE_KEYS else "start", []).append(problem)
    findings = [_as_root()] if os.geteuid() == 0 else []
    if config.api_token_file is None and role == "node":
        findings.append(_tokens_unset(config))
    for key in (*_FILE_KEYS, "start"):
        path = getattr(config, key, None)
        if key in problems:
            findings += [Finding(key, "fail", *split_fix(p)) for p in problems[key]]
        elif path is not None:
            findings.append(Finding(key, "ok", _describe(path)))
    return findings


def _tokens_unset(config: Config) -> Finding:
    if config.trusted_networks:
        return Finding(
            "api_token_file",
            "ok",
            f"unset: commands are taken from trusted_networks {config.trusted_networks} only",
        )
    return Finding(
        "api_token_file",
        "warn",
        "unset and no trusted_networks: this node refuses every command",
        "ha-voice keygen writes a token file; set api_token_file to it (docs/operations.md, "
        "'Who may command the robot')",
    )


def _describe(path: Path) -> str:
    """`path`'s mode and owner, and what this user may do with it."""
    try:
        info = path.stat() if path.exists() else None
    except OSError as exc:  # preflight names this as a problem; here only the words remain
        return f"{path}: this user ({user_name()}) cannot look at it ({exc.strerror or exc})"
    if info is None:
        return f"{path}: not there yet, and this user ({user_name()}) may create it"
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
    may = "write" if kind == "directory" else "read"
    return (
        f"{path}: {kind}, mode {stat.S_IMODE(info.st_mode):04o}, owner "
        f"{_name(pwd.getpwuid, info.st_uid)}:{_name(grp.getgrgid, info.st_gid)}; this user "
        f"({user_name()}) may {may} it"
    )


def _as_root() -> Finding:
    return Finding(
        "user",
        "ok",
        "checking as root, who may read and write any file: what the service's user may do "
        "is checked by running this as that user, with its environment file "
        "(docs/jetson-install.md, 'The whole node: ha-voice check')",
    )


def _name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def user_name() -> str:
    """The name of the user this process runs as (its uid if it has none)."""
    return _name(pwd.getpwuid, os.geteuid())


# --- clock -----------------------------------------------------------------------------------


def clock_finding() -> Finding:
    """Whether systemd says the wall clock is synchronised; a warning when it is not, or when
    nothing here can say. The election never reads the wall clock; logs, the journal's
    timestamps and TLS certificates' validity do."""
    fix = (
        "enable NTP (sudo timedatectl set-ntp true) with a time server the node reaches; "
        "the election does not need it, logs, journal times and TLS certificates do"
    )
    answer = _timedatectl()
    if answer == "yes":
        return Finding("clock", "ok", "synchronised (timedatectl: NTPSynchronized=yes)")
    if answer == "no":
        return Finding("clock", "warn", "not synchronised (timedatectl: NTPSynchronized=no)", fix)
    return Finding("clock", "warn", f"unknown: {answer}", fix)


def run_probe(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | str:
    """`argv` run with its output captured, at most `timeout_s` seconds; or why it did not
    answer ("timedatectl did not answer within 2 s", "nvidia-smi failed: …")."""
    name = Path(argv[0]).name
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"{name} did not answer within {timeout_s:g} s"
    except OSError as exc:
        return f"{name} failed: {exc.strerror}"


def _timedatectl() -> str:
    """ "yes", "no", or why timedatectl could not say."""
    exe = shutil.which("timedatectl")
    if exe is None:
        return "no timedatectl on this host"
    done = run_probe([exe, "show", "-p", "NTPSynchronized", "--value"], _TIMEDATECTL_TIMEOUT_S)
    if isinstance(done, str):
        return done
    value = done.stdout.strip()
    if done.returncode == 0 and value in ("yes", "no"):
        return value
    said = " ".join((done.stderr or done.stdout).split())[:200]
    return f"timedatectl says: {said or f'exit status {done.returncode}'}"
