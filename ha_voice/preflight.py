"""What a node checks before it starts, besides the values of its keys: the files it reads and
the directory it writes.

Invariants:
- `startable_problems` is the one list of these checks: `ha-voice run`, `ha-voice witness` and
  `ha-voice config check` load their configuration with it (`load_config(checks=...)`, so its
  problems come in the same round as the values'), and the daemon checks again before anything
  votes or binds; a file that `check` calls valid is one that starts (binding sockets aside).
- Every check runs, and the one ConfigError lists every problem, each naming the key and a fix;
  a path this user cannot look at (an OSError such as EACCES) is such a problem, not a crash.
- Nothing is created or changed: the state directory is only looked at, and an existing state
  database is opened read-only.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ha_voice.cluster.storage import SCHEMA_VERSION, STATE_FILE_NAME
from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.errors import ConfigError
from ha_voice.tokens import read_token_file

__all__ = ["check_startable", "startable_problems"]

_WRITABLE: Final = os.W_OK | os.X_OK


def startable_problems(config: Config) -> list[str]:
    """Every secret file, TLS file and state-directory problem that would refuse the start of a
    node with `config`, one line each naming the key and the fix; a `config.Check`."""
    problems = []
    for key, check in _CHECKS.items():
        try:
            check(config)
        except ConfigError as exc:
            problems.append(str(exc))
        except OSError as exc:  # a path under a directory this user cannot enter, and the like
            problems.append(_unreachable(key, getattr(config, key), exc))
    return problems


def _unreachable(key: str, path: Path | None, exc: OSError) -> str:
    """The problem of a file or directory this user cannot look at, naming the directory that
    stops it: the unit's ProtectHome= hides /home, and /var/lib/ha-voice is 0700."""
    where = f"{key} = {str(path)!r}"
    blocked = _closed_parent(Path(exc.filename)) if exc.filename else None
    stopped = f" ({blocked} cannot be entered)" if blocked is not None else ""
    return (
        f"{where}: this user ({_user()}) cannot reach it: {exc.strerror or exc}{stopped}; fix: "
        f"run ha-voice as the user that owns it (sudo -u ha-voice), or move it to a directory "
        "that user may enter (state_dir: /var/lib/ha-voice, systemd's StateDirectory=)"
    )


def _closed_parent(path: Path) -> Path | None:
    """The first directory above `path`, from the root down, that this user may not enter."""
    for parent in reversed(path.parents):
        if not os.access(parent, os.X_OK):
            return parent
    return None


def check_startable(config: Config) -> None:
    """ConfigError listing `startable_problems(config)`, if there are any."""
    problems = startable_problems(config)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise ConfigError(f"cannot start ({len(problems)} {noun}):\n{lines}")


def _cluster_keys(config: Config) -> None:
    read_cluster_key(config)


def _accepted_keys(config: Config) -> None:
    read_accepted_keys(config)


def _token_file(config: Config) -> None:
    if config.api_token_file is not None:
        read_token_file(config.api_token_file, "api_token_file")


def _tls(config: Config) -> None:
    # Imported only with TLS: api.tls pulls in FastAPI, which `config check` and `check`
    # without TLS need not (tests/integration/test_check.py).
    if config.tls_cert_file is None and config.tls_key_file is None:
        return
    from ha_voice.api.tls import server_options  # noqa: PLC0415

    server_options(config)


def _tls_ca(config: Config) -> None:
    if config.tls_ca_file is None:
        return
    from ha_voice.api.tls import client_context  # noqa: PLC0415

    client_context(config)


def _state_dir(config: Config) -> None:
    path = config.state_dir
    shown = f"state_dir = {str(path)!r}"
    if not path.exists():
        _check_creatable(shown, path)
        return
    if not path.is_dir():
        raise ConfigError(f"{shown}: not a directory; fix: move it aside or set state_dir")
    if not os.access(path, _WRITABLE):
        raise ConfigError(
            f"{shown}: this user ({_user()}) cannot write it; fix: chown it to the user "
            "ha-voice runs as and chmod 700 it"
        )
    database = path / STATE_FILE_NAME
    if database.exists():
        _check_database(shown, database)


def _check_creatable(shown: str, path: Path) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, _WRITABLE):
        raise ConfigError(
            f"{shown}: does not exist, and this user ({_user()}) cannot create it in {parent}; "
            f"fix: create it for the ha-voice user (install -d -m 0700 -o ha-voice {path}; "
            "systemd's StateDirectory= does this) or set state_dir to a writable directory"
        )


def _check_database(shown: str, database: Path) -> None:
    if not os.access(database, os.R_OK | os.W_OK):
        raise ConfigError(
            f"{shown}: this user ({_user()}) cannot read and write {database}; fix: chown it "
            "to the user ha-voice runs as"
        )
    try:
        connection = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
            version = (
                connection.execute("SELECT version FROM schema_version WHERE id = 0").fetchone()
                if "schema_version" in tables
                else None
            )
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"{shown}: {database} is not a usable SQLite database ({exc}); fix: move the "
            "state directory aside (docs/operations.md, 'State')"
        ) from None
    if tables and version is None:
        raise ConfigError(
            f"{shown}: {database} is not an ha-voice state database; fix: set state_dir to a "
            "directory of its own"
        )
    if version is not None and int(version[0]) > SCHEMA_VERSION:
        raise ConfigError(
            f"{shown}: {database} has schema version {version[0]}, newer than this ha-voice "
            f"knows ({SCHEMA_VERSION}); fix: upgrade ha-voice"
        )


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# Each check by the key whose files it reads.
_CHECKS: Final[dict[str, Callable[[Config], None]]] = {
    "cluster_key_file": _cluster_keys,
    "cluster_key_accepted_file": _accepted_keys,
    "api_token_file": _token_file,
    "tls_cert_file": _tls,
    "tls_ca_file": _tls_ca,
    "state_dir": _state_dir,
}
