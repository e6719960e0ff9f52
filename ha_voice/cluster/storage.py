"""Durable state of a node: the term, the vote and the replicated journal.

Invariants:
- `save`, `write` and `write_batch` return only once their write is durable
  (fsync'd): the shell sends a vote, a message of a new term or a journal acknowledgement only
  after they return (events.py, cluster/durability.py). `write_batch` puts the hard state and
  the journal changes of several steps into one transaction, in order (group commit).
- Boot ids strictly increase across restarts of one state directory, whatever the wall clock does.
- The schema lives in `_MIGRATIONS` and nowhere else; a database of a newer schema than this code
  knows is refused, never written to.
- Runtime storage failures (disk full, I/O error) surface as `OSError`; a file that cannot be a
  state database surfaces at open as `ConfigError` naming the path and the fix.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

from ha_voice.cluster.events import HardState, LogWrite
from ha_voice.cluster.protocol import Entry, EntryKind, LogPosition
from ha_voice.cluster.replication import JournalLog, apply_write
from ha_voice.errors import ConfigError, LocalError

__all__ = [
    "SCHEMA_VERSION",
    "STATE_FILE_NAME",
    "DurableState",
    "HardStateStore",
    "MemoryStore",
    "SQLiteStore",
    "open_store",
]

STATE_FILE_NAME: Final = "ha-voice.sqlite3"

# Entry i takes a database from schema version i to i + 1, in one transaction. Append, never
# edit: a released entry has already run on someone's disk.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # `id = 0` pins each table to a single row.
        "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0),"
        " term INTEGER NOT NULL CHECK (term >= 0), voted_for TEXT)",
        "INSERT INTO hard_state (id, term, voted_for) VALUES (0, 0, NULL)",
        "CREATE TABLE boot (id INTEGER PRIMARY KEY CHECK (id = 0),"
        " last_boot_id INTEGER NOT NULL CHECK (last_boot_id >= 0))",
        "INSERT INTO boot (id, last_boot_id) VALUES (0, 0)",
    ),
    (
        # The replicated journal: entries after the snapshot, and where the snapshot ends.
        "CREATE TABLE journal (idx INTEGER PRIMARY KEY CHECK (idx > 0),"
        " term INTEGER NOT NULL CHECK (term >= 0), kind INTEGER NOT NULL, data BLOB NOT NULL)",
        "CREATE TABLE journal_base (id INTEGER PRIMARY KEY CHECK (id = 0),"
        " idx INTEGER NOT NULL, term INTEGER NOT NULL, snapshot BLOB NOT NULL,"
        " commit_idx INTEGER NOT NULL)",
        "INSERT INTO journal_base (id, idx, term, snapshot, commit_idx) VALUES (0, 0, 0, x'', 0)",
    ),
    # Boot ids are random nonces now (docs/design.md, "Boot ids"): nothing to keep for them.
    ("DROP TABLE boot",),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_RESET_ADVICE: Final = (
    "move it aside to start afresh (the node then starts at term 0 and learns the current term "
    "from its peers)"
)


class HardStateStore(Protocol):
    """Where a node keeps what must survive a crash. Calls may come from any one thread at a time
    or from several (`asyncio.to_thread`); implementations serialise them."""

    def load(self) -> HardState:
        """The last saved state; `HardState()` (term 0, no vote) if nothing was ever saved."""
        ...

    def save(self, state: HardState) -> None:
        """Replace the stored state; durable (fsync'd) when this returns, else raises OSError."""
        ...

    def load_journal(self) -> JournalLog:
        """The journal as last written: snapshot, entries after it, commit index (a hint)."""
        ...

    def write(self, state: HardState | None, log: LogWrite | None) -> None:
        """Store the hard state and apply the journal changes in one durable transaction."""
        ...

    def write_batch(self, writes: Sequence[tuple[HardState | None, LogWrite | None]]) -> None:
        """`write` each of `writes` in order, all in one durable transaction (one fsync)."""
        ...

    def close(self) -> None:
        """Release the store; idempotent. Any other call afterwards raises LocalError."""
        ...


@dataclass(frozen=True)
class DurableState:
    """Everything a store keeps: what a crash leaves behind."""

    hard_state: HardState = field(default_factory=HardState)
    journal: JournalLog = field(default_factory=JournalLog)


class MemoryStore:
    """The in-memory twin of `SQLiteStore`, with the same contract; every write is "durable" at
    once. Simulate a crash with `MemoryStore(old.durable)`."""

    def __init__(self, durable: DurableState | None = None) -> None:
        self._durable = durable if durable is not None else DurableState()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def durable(self) -> DurableState:
        """What a crash would leave behind right now."""
        return self._durable

    def load(self) -> HardState:
        """See `HardStateStore.load`."""
        with self._open():
            return self._durable.hard_state

    def save(self, state: HardState) -> None:
        """See `HardStateStore.save`."""
        self.write(state, None)

    def load_journal(self) -> JournalLog:
        """See `HardStateStore.load_journal`."""
        with self._open():
            return self._durable.journal.copy()

    def write(self, state: HardState | None, log: LogWrite | None) -> None:
        """See `HardStateStore.write`."""
        self.write_batch([(state, log)])

    def write_batch(self, writes: Sequence[tuple[HardState | None, LogWrite | None]]) -> None:
        """See `HardStateStore.write_batch`."""
        with self._open():
            journal = self._durable.journal.copy()
            hard = self._durable.hard_state
            for state, log in writes:
                if log is not None:
                    apply_write(journal, log)
                hard = state if state is not None else hard
            self._durable = replace(self._durable, hard_state=hard, journal=journal)

    def close(self) -> None:
        """See `HardStateStore.close`."""
        with self._lock:
            self._closed = True

    @contextmanager
    def _open(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise LocalError("the hard-state store is closed")
            yield


class SQLiteStore:
    """`HardStateStore` in one SQLite file: WAL journal, synchronous=FULL (fsync on commit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        _make_parent(path)
        self._connection = _connect(path)

    def load(self) -> HardState:
        """See `HardStateStore.load`."""
        with self._guard() as connection:
            sql = "SELECT term, voted_for FROM hard_state WHERE id = 0"
            term, voted_for = _fetch_one(self.path, connection, sql)
            return HardState(int(term), None if voted_for is None else str(voted_for))

    def save(self, state: HardState) -> None:
        """See `HardStateStore.save`."""
        self.write(state, None)

    def load_journal(self) -> JournalLog:
        """See `HardStateStore.load_journal`."""
        with self._guard() as connection:
            sql = "SELECT idx, term, snapshot, commit_idx FROM journal_base WHERE id = 0"
            idx, term, snapshot, commit = _fetch_one(self.path, connection, sql)
            rows = connection.execute(
                "SELECT idx, term, kind, data FROM journal WHERE idx > ? ORDER BY idx", (idx,)
            ).fetchall()
            entries = [Entry(i, t, EntryKind(k), bytes(d)) for i, t, k, d in rows]
            try:
                return JournalLog(LogPosition(term, idx), bytes(snapshot), entries, commit)
            except LocalError as exc:
                raise ConfigError(f"state_dir: {self.path}: {exc}; {_RESET_ADVICE}") from exc

    def write(self, state: HardState | None, log: LogWrite | None) -> None:
        """See `HardStateStore.write`: one transaction, fsync'd on commit (synchronous=FULL)."""
        self.write_batch([(state, log)])

    def write_batch(self, writes: Sequence[tuple[HardState | None, LogWrite | None]]) -> None:
        """See `HardStateStore.write_batch`: one transaction, one fsync on commit."""
        with self._guard() as connection, _transaction(connection):
            for state, log in writes:
                if state is not None:
                    connection.execute(
                        "UPDATE hard_state SET term = ?, voted_for = ? WHERE id = 0",
                        (state.term, state.voted_for),
                    )
                if log is not None:
                    _write_journal(connection, log)

    def pragmas(self) -> dict[str, str | int]:
        """The durability settings in force on this connection, for the startup log and tests."""
        with self._guard() as connection:
            (journal_mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            (synchronous,) = connection.execute("PRAGMA synchronous").fetchone()
            return {"journal_mode": journal_mode, "synchronous": synchronous}

    def close(self) -> None:
        """See `HardStateStore.close`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._connection.close()

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """One caller at a time, never after close, and SQLite's errors as OSError."""
        with self._lock:
            if self._closed:
                raise LocalError("the hard-state store is closed")
            try:
                yield self._connection
            except sqlite3.Error as exc:
                raise OSError(f"{self.path}: {exc}") from exc


def _write_journal(connection: sqlite3.Connection, log: LogWrite) -> None:
    """The SQL twin of `replication.apply_write`, in the same order."""
    if log.compact_to is not None:
        base, snapshot = log.compact_to
        connection.execute(
            "UPDATE journal_base SET idx = ?, term = ?, snapshot = ? WHERE id = 0",
            (base.index, base.term, snapshot),
        )
        connection.execute("DELETE FROM journal WHERE idx <= ?", (base.index,))
    if log.truncate_from is not None:
        connection.execute("DELETE FROM journal WHERE idx >= ?", (log.truncate_from,))
    connection.executemany(
        "INSERT INTO journal (idx, term, kind, data) VALUES (?, ?, ?, ?)",
        [(e.index, e.term, int(e.kind), e.data) for e in log.entries],
    )
    connection.execute("UPDATE journal_base SET commit_idx = ? WHERE id = 0", (log.commit,))


def open_store(state_dir: Path) -> SQLiteStore:
    """The node's store: `STATE_FILE_NAME` in `state_dir`, created if missing."""
    return SQLiteStore(state_dir / STATE_FILE_NAME)


# --- opening ------------------------------------------------------------------------------


def _make_parent(path: Path) -> None:
    # 0o700: nobody else has any business reading or replacing a node's vote.
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"state_dir: cannot create {path.parent} ({exc.strerror}); create it for the "
            "ha-voice user or set state_dir to a writable directory"
        ) from exc


def _connect(path: Path) -> sqlite3.Connection:
    """Open, configure and migrate; a ConfigError naming `path` if that cannot be done."""
    try:
        return _open_and_migrate(path)
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc


def _open_and_migrate(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing commits implicitly.
    # check_same_thread=False: asyncio.to_thread uses a pool; SQLiteStore's lock serialises.
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        _configure(path, connection)
        _migrate(path, connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _open_error(path: Path, exc: sqlite3.Error) -> ConfigError:
    if isinstance(exc, sqlite3.OperationalError):
        # Permissions, a lock held by another process, a read-only file system.
        return ConfigError(
            f"state_dir: cannot open {path} ({exc}); check that no other ha-voice uses it "
            "and that the ha-voice user may write it"
        )
    return ConfigError(
        f"state_dir: {path} is not a usable SQLite database ({exc}); {_RESET_ADVICE}"
    )


def _configure(path: Path, connection: sqlite3.Connection) -> None:
    (journal_mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if journal_mode != "wal":
        # SQLite falls back silently where WAL's shared memory is impossible (some network FS).
        raise ConfigError(
            f"state_dir: {path} cannot use SQLite's WAL journal (got {journal_mode!r}); "
            "put state_dir on a local file system"
        )
    # FULL: in WAL mode only FULL fsyncs the log on every commit (NORMAL may lose the last ones).
    connection.execute("PRAGMA synchronous = FULL")


def _migrate(path: Path, connection: sqlite3.Connection) -> None:
    with _transaction(connection):
        version = _schema_version(path, connection)
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"state_dir: {path} has schema version {version}, newer than this ha-voice "
                f"knows ({SCHEMA_VERSION}); upgrade ha-voice, or {_RESET_ADVICE}"
            )
        if version == 0:
            connection.execute(
                "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 0),"
                " version INTEGER NOT NULL)"
            )
            connection.execute("INSERT INTO schema_version (id, version) VALUES (0, 0)")
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute("UPDATE schema_version SET version = ? WHERE id = 0", (SCHEMA_VERSION,))


def _schema_version(path: Path, connection: sqlite3.Connection) -> int:
    """0 for a new, empty file; refuses an SQLite file that some other program made."""
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    if "schema_version" in tables:
        (version,) = _fetch_one(path, connection, "SELECT version FROM schema_version WHERE id = 0")
        return int(version)
    if tables:
        raise ConfigError(f"state_dir: {path} is not an ha-voice state database; {_RESET_ADVICE}")
    return 0


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-then-write cannot interleave with
    # another process's write to the same file.
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may already have rolled back on its own (SQLITE_FULL); rollback() then no-ops.
        connection.rollback()
        raise
    connection.commit()


def _fetch_one(path: Path, connection: sqlite3.Connection, sql: str) -> tuple[Any, ...]:
    """The one row of a single-row table; a missing row means someone edited the file."""
    row: tuple[Any, ...] | None = connection.execute(sql).fetchone()
    if row is None:
        raise ConfigError(f"state_dir: {path} lost a required row; {_RESET_ADVICE}")
    return row
