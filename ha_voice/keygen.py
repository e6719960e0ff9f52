"""`ha-voice keygen`: a new cluster key and API token file, created with mode 0600 from the start.

Invariants:
- Nothing that exists is overwritten without `force` (FileExistsError names the flag), and a
  replaced file is swapped in whole (keyfiles.write_private).
- The token is printed once, here, and otherwise only stored in the token file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ha_voice.errors import ConfigError
from ha_voice.keyfiles import CLUSTER_KEY_BYTES, append_private, write_private
from ha_voice.tokens import new_token, read_token_file, token_line

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
    add: bool = False  # append the token to an existing token file
    force: bool = False


def keygen(request: KeygenRequest) -> list[str]:
    """Write what `request` asks for; the lines that say where it went (and the token, once).

    ConfigError for a file that exists (without force), a bad token name or an unknown owner.
    """
    lines = []
    if request.key_file is not None:
        _create(request.key_file, os.urandom(CLUSTER_KEY_BYTES), request)
        lines.append(
            f"cluster key: {request.key_file} ({CLUSTER_KEY_BYTES} random bytes, mode 0600"
            f"{_owned(request)}); copy this same file to every node and the witness"
        )
    if request.token_file is not None:
        token = new_token()
        line = token_line(request.token_name, token).encode()
        if request.add:
            _append(request.token_file, request.token_name, line)
        else:
            _create(request.token_file, line, request)
        lines.append(
            f"API token file: {request.token_file} (mode 0600{_owned(request)}); set "
            f'api_token_file = "{request.token_file}" on every node, with the same file'
        )
        lines.append(f"token {request.token_name}: {token}")
        lines.append("(shown once: clients send it as 'Authorization: Bearer TOKEN')")
    return lines


def _create(path: Path, data: bytes, request: KeygenRequest) -> None:
    try:
        write_private(path, data, force=request.force, owner=request.owner)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists; fix: keep it, or replace it with --force (nodes that use the old "
            "one must get the new one)"
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            f"{path.parent} does not exist; fix: create it first (install -d -m 0750 {path.parent})"
        ) from None


def _append(path: Path, name: str, line: bytes) -> None:
    names = [entry.name for entry in read_token_file(path, "--token-file")]
    if name in names:
        raise ConfigError(
            f"{path} already holds a token named {name!r}; fix: choose another --token-name "
            "(or delete that line to revoke it)"
        )
    append_private(path, line, "--token-file")


def _owned(request: KeygenRequest) -> str:
    return f", owner {request.owner}" if request.owner else ""
