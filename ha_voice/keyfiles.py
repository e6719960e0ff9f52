"""Secret files: who may read them, and writing new ones without a moment of exposure.

Invariants:
- A secret (the cluster key, a second accepted key, the API tokens, the TLS private key) is
  refused when its mode lets group or others read or write it, as OpenSSH refuses a private
  key: one readable copy is enough to forge every heartbeat or drive the robot. The mode is read
  from the opened file (`fstat`), so what is checked is what is read.
- A new secret is created with `O_CREAT | O_EXCL` and mode 0600 in one system call, owned as
  asked before a byte is written: there is no moment at which it exists with a wider mode or
  another owner. Replacing one (`force`) writes a new file the same way and renames it over
  the old (atomic on POSIX), so readers see the old secret or the new, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat
from pathlib import Path
from typing import Final

from ha_voice.errors import ConfigError

__all__ = [
    "CLUSTER_KEY_BYTES",
    "PRIVATE_MODE",
    "append_private",
    "private_problem",
    "read_private",
    "write_private",
]

PRIVATE_MODE: Final = 0o600
# Group and others: any of read, write or execute is too much for a secret.
_EXPOSED: Final = 0o077
# RFC 2104 §3: a key no shorter than the hash's output, 32 bytes for SHA-256 (the protocol
# accepts 16).
CLUSTER_KEY_BYTES: Final = 32


def private_problem(key: str, path: Path, mode: int) -> str | None:
    """Why a secret with permission bits `mode` must not be used, naming the fix; or None."""
    if not mode & _EXPOSED:
        return None
    return (
        f"{key} = {str(path)!r} has mode {mode:04o}: group or others may read or write it, and "
        f"it is a secret (as ssh refuses such a key); fix: chmod 600 {path} (owned by the user "
        "ha-voice runs as; docs/operations.md, 'Secret files')"
    )


def read_private(path: Path, key: str) -> bytes:
    """The bytes of secret `path`; ConfigError if its mode exposes it, OSError if unreadable."""
    with path.open("rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        problem = private_problem(key, path, mode)
        if problem is not None:
            raise ConfigError(problem)
        return handle.read()


def write_private(
    path: Path, data: bytes, *, force: bool = False, owner: str | None = None
) -> None:
    """Create `path` holding `data`, mode 0600, owned by user `owner` if given.

    FileExistsError if it exists and not `force`; with `force` it is replaced atomically.
    """
    target = path if not force else path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        _own(fd, owner)
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    if force:
        os.replace(target, path)
    _sync_directory(path.parent)


def append_private(path: Path, data: bytes, key: str) -> None:
    """Append `data` to the existing secret `path` after checking that its mode is private."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        problem = private_problem(key, path, stat.S_IMODE(os.fstat(fd).st_mode))
        if problem is not None:
            raise ConfigError(problem)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _own(fd: int, owner: str | None) -> None:
    # umask may have taken bits off 0600 (never added any): set the mode we mean.
    os.fchmod(fd, PRIVATE_MODE)
    if owner is None:
        return
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise ConfigError(
            f"--owner {owner!r}: no such user; fix: create it (useradd --system {owner}) or "
            "name the user ha-voice runs as"
        ) from None
    os.fchown(fd, entry.pw_uid, entry.pw_gid)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_directory(directory: Path) -> None:
    """Make a new name in `directory` durable (a crash must not lose a key just printed)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)
