"""Secret files: who may read them, and writing new ones without a moment of exposure.

Invariants:
- A secret (the cluster key, a second accepted key, the API tokens, the TLS private key) is
  refused when its mode lets group or others read or write it, as OpenSSH refuses a private
  key: one readable copy is enough to forge every heartbeat or drive the robot. The mode is read
  from the opened file (`fstat`), so what is checked is what is read.
- A new secret is created with `O_CREAT | O_EXCL` and mode 0600 in one system call, owned as
  asked before a byte is written: there is no moment at which it exists with a wider mode or
  another owner. It is written beside its target and put in place whole: linked to a new name
  (which never clobbers a file that appeared meanwhile), or renamed over the one it replaces
  (atomic on POSIX), so readers see the old secret or the new, never half of one.
- Several secrets are written all or nothing (`PrivateBatch`): all are staged before any is put
  in place, and a failure while putting them in place takes back those already placed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ha_voice.errors import ConfigError

__all__ = [
    "CLUSTER_KEY_BYTES",
    "PRIVATE_MODE",
    "ExposedSecret",
    "PrivateBatch",
    "owner_ids",
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


class ExposedSecret(ConfigError):
    """A secret whose permission bits (`mode`) let group or others read or write it."""

    def __init__(self, message: str, mode: int) -> None:
        super().__init__(message)
        self.mode = mode


def read_private(path: Path, key: str) -> bytes:
    """The bytes of secret `path`; ExposedSecret if its mode exposes it, OSError if unreadable."""
    with path.open("rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        problem = private_problem(key, path, mode)
        if problem is not None:
            raise ExposedSecret(problem, mode)
        return handle.read()


def owner_ids(owner: str) -> tuple[int, int]:
    """The uid and gid of user `owner`; ConfigError naming the fix if there is no such user."""
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise ConfigError(
            f"--owner {owner!r}: no such user; fix: create it (useradd --system {owner}) or "
            "name the user ha-voice runs as"
        ) from None
    return entry.pw_uid, entry.pw_gid


def write_private(
    path: Path, data: bytes, *, force: bool = False, owner: str | None = None
) -> None:
    """Create `path` holding `data`, mode 0600, owned by user `owner` if given.

    FileExistsError if it exists and not `force`; with `force` it is replaced atomically.
    """
    ids = None if owner is None else owner_ids(owner)
    with PrivateBatch() as batch:
        batch.stage(path, data, replace=force, ids=ids)
        batch.commit()


@dataclass(frozen=True)
class _Staged:
    path: Path
    temporary: Path
    replace: bool


class PrivateBatch:
    """Secret files written all or nothing: each is staged complete beside its target (0600,
    owned as asked, synced), and only when every one is staged are they put in place; if one
    cannot be, those already put in place are taken back. Leaving the `with` block removes
    whatever is still staged, so an error before `commit` leaves nothing behind."""

    def __init__(self) -> None:
        self._staged: list[_Staged] = []

    def __enter__(self) -> PrivateBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        for staged in self._staged:
            staged.temporary.unlink(missing_ok=True)
        self._staged.clear()

    def stage(
        self, path: Path, data: bytes, *, replace: bool, ids: tuple[int, int] | None = None
    ) -> None:
        """Write `data` to take `path`'s place at `commit`, owned by `ids` (uid, gid) if given.

        FileExistsError if `path` exists and not `replace`; OSError if it cannot be written.
        """
        if not replace and os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path))
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_MODE)
        self._staged.append(_Staged(path, temporary, replace))
        try:
            _own(fd, ids)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Put every staged file in place, or (on an error, raised) none of them."""
        placed: list[tuple[_Staged, Path | None]] = []
        try:
            for staged in self._staged:
                placed.append((staged, _place(staged)))
        except BaseException:
            for staged, previous in reversed(placed):
                _take_back(staged, previous)
            raise
        for _, previous in placed:
            if previous is not None:
                previous.unlink()
        for directory in {staged.path.parent for staged in self._staged}:
            _sync_directory(directory)
        self._staged.clear()


def _place(staged: _Staged) -> Path | None:
    """Put `staged` in place; the hard link that keeps what it replaced, if anything."""
    if not staged.replace:
        os.link(staged.temporary, staged.path)  # EEXIST if it appeared since: never clobbered
        staged.temporary.unlink()
        return None
    kept = staged.path.with_name(f".{staged.path.name}.{secrets.token_hex(8)}.old")
    try:
        os.link(staged.path, kept)
    except FileNotFoundError:  # nothing to replace
        os.replace(staged.temporary, staged.path)
        return None
    os.replace(staged.temporary, staged.path)  # atomic: readers see the old or the new
    return kept


def _take_back(staged: _Staged, previous: Path | None) -> None:
    if previous is not None:
        os.replace(previous, staged.path)
    else:
        staged.path.unlink(missing_ok=True)


def _own(fd: int, ids: tuple[int, int] | None) -> None:
    # umask may have taken bits off 0600 (never added any): set the mode we mean.
    os.fchmod(fd, PRIVATE_MODE)
    if ids is not None:
        os.fchown(fd, *ids)


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
