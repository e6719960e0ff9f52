"""`ha-voice keygen`: a new cluster key and API token file, created with mode 0600 from the start.

Invariants:
- All or nothing: every request is checked first (something to write, absolute paths, a valid
  token name, a known owner, files that exist only with `force`, a token file to add to that
  is private and well-formed), then every file is staged complete and put in place together
  (keyfiles.PrivateBatch). A run that fails leaves the files as they were, so running it
  again after the fix does not meet a half-made result ("exists").
- Nothing that exists is overwritten without `force` (the error names the flag), and a
  replaced file is swapped in whole. `add` replaces the token file with its old lines plus
  the new one, keeping its owner: readers see the old file or the new, never half of one.
- The token is printed once, here, and otherwise only stored in the token file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ha_voice.errors import ConfigError
from ha_voice.keyfiles import CLUSTER_KEY_BYTES, PrivateBatch, owner_ids
from ha_voice.tokens import check_token_name, new_token, read_token_file, token_line

__all__ = ["DEFAULT_TOKEN_FILE", "DEFAULT_TOKEN_NAME", "KeygenRequest", "keygen"]

DEFAULT_TOKEN_FILE: Final = Path("/etc/ha-voice/api.tokens")
DEFAULT_TOKEN_NAME: Final = "admin"


@dataclass(frozen=True)
class KeygenRequest:
    """What to write: a key to `key_file` and/or a token named `token_name` to `token_file`."""

    key_file: Path | None
    token_file: Path | None
    token_name: str = DEFAULT_TOKEN_NAME
    owner: str | None = None
    add: bool = False  # add the token to an existing token file
    force: bool = False


def keygen(request: KeygenRequest) -> list[str]:
    """Write what `request` asks for, all of it or nothing; the lines that say where it went
    (and the token, once).

    ConfigError for a request that would write nothing, a relative path, a file that exists
    (without force), a bad token name, an unknown owner, or a token file to add to that is
    missing, exposed or malformed.
    """
    _check(request)
    ids = None if request.owner is None else owner_ids(request.owner)
    lines = []
    with PrivateBatch() as batch:
        if request.key_file is not None:
            _stage(batch, request.key_file, os.urandom(CLUSTER_KEY_BYTES), request, ids)
            lines.append(
                f"cluster key: {request.key_file} ({CLUSTER_KEY_BYTES} random bytes, mode 0600"
                f"{_owned(request)}); copy this same file to every node and the witness"
            )
        if request.token_file is not None:
            token = new_token()
            line = token_line(request.token_name, token).encode()
            if request.add:
                _stage_added(batch, request.token_file, request.token_name, line, ids)
            else:
                _stage(batch, request.token_file, line, request, ids)
            lines.append(
                f"API token file: {request.token_file} (mode 0600{_owned(request)}); set "
                f'api_token_file = "{request.token_file}" on every node, with the same file'
            )
            lines.append(f"token {request.token_name}: {token}")
            lines.append("(shown once: clients send it as 'Authorization: Bearer TOKEN')")
        _commit(batch)
    return lines


def _check(request: KeygenRequest) -> None:
    """ConfigError for a request that cannot be carried out whole, before anything is written."""
    if request.key_file is None and request.token_file is None:
        raise ConfigError(
            "keygen: nothing to write (--no-key and --no-token together); fix: leave out one "
            "of them"
        )
    if request.add and request.token_file is None:
        raise ConfigError("keygen: --add adds a token, so not with --no-token; fix: drop one")
    for flag, path in (("--key-file", request.key_file), ("--token-file", request.token_file)):
        if path is not None and not path.is_absolute():
            raise ConfigError(
                f"{flag} {str(path)!r} is a relative path; allowed: an absolute path, as the "
                f"configuration takes (the daemon starts in /); fix: {flag} {path.absolute()}"
            )
    if request.key_file is not None and request.key_file == request.token_file:
        raise ConfigError(
            f"--key-file and --token-file are both {request.key_file}; fix: two different files"
        )
    if request.token_file is not None:
        check_token_name(request.token_name)


def _stage(
    batch: PrivateBatch,
    path: Path,
    data: bytes,
    request: KeygenRequest,
    ids: tuple[int, int] | None,
) -> None:
    try:
        batch.stage(path, data, replace=request.force, ids=ids)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists; fix: keep it, or replace it with --force (nodes that use the old "
            "one must get the new one)"
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            f"{path.parent} does not exist; fix: create it first (install -d -m 0750 {path.parent})"
        ) from None
    except OSError as exc:
        raise _unwritable(path, exc) from None


def _stage_added(
    batch: PrivateBatch, path: Path, name: str, line: bytes, ids: tuple[int, int] | None
) -> None:
    """Stage `path`'s lines plus `line`, owned by `ids` or else as `path` is."""
    names = [entry.name for entry in read_token_file(path, "--token-file")]
    if name in names:
        raise ConfigError(
            f"{path} already holds a token named {name!r}; fix: choose another --token-name "
            "(or delete that line to revoke it)"
        )
    try:
        old = path.read_bytes()
        owner = ids or (path.stat().st_uid, path.stat().st_gid)
        separator = b"" if not old or old.endswith(b"\n") else b"\n"
        batch.stage(path, old + separator + line, replace=True, ids=owner)
    except OSError as exc:
        raise _unwritable(path, exc) from None


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"{path}: cannot be written ({exc.strerror}); nothing was changed; fix: run keygen as "
        f"a user that may write to {path.parent} (root, for /etc/ha-voice)"
    )


def _commit(batch: PrivateBatch) -> None:
    try:
        batch.commit()
    except OSError as exc:
        raise _unwritable(Path(exc.filename or "?"), exc) from None


def _owned(request: KeygenRequest) -> str:
    return f", owner {request.owner}" if request.owner else ""
