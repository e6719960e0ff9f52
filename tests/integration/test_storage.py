"""The hard-state store on real SQLite, and its in-memory twin held to the same contract."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from ha_voice.cluster.events import HardState, LogWrite
from ha_voice.cluster.protocol import Entry, EntryKind, LogPosition
from ha_voice.cluster.replication import JournalLog
from ha_voice.cluster.storage import (
    SCHEMA_VERSION,
    STATE_FILE_NAME,
    HardStateStore,
    MemoryStore,
    SQLiteStore,
    open_store,
)
from ha_voice.errors import ConfigError, LocalError

ROOT = Path(__file__).resolve().parents[2]


class Disk(Protocol):
    """What survives a crash; `open` is a process start."""

    def open(self) -> HardStateStore: ...


class SQLiteDisk:
    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> HardStateStore:
        return SQLiteStore(self.path)


class MemoryDisk:
    def __init__(self) -> None:
        self.last: MemoryStore | None = None

    def open(self) -> HardStateStore:
        self.last = MemoryStore(self.last.durable if self.last else None)
        return self.last


@pytest.fixture(params=["sqlite", "memory"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Disk:
    if request.param == "sqlite":
        return SQLiteDisk(tmp_path / "state" / STATE_FILE_NAME)
    return MemoryDisk()


@pytest.fixture
def store(disk: Disk) -> Iterator[HardStateStore]:
    opened = disk.open()
    yield opened
    opened.close()


def reopen(disk: Disk, store: HardStateStore) -> HardStateStore:
    store.close()
    return disk.open()


# --- the contract, against both implementations ---------------------------------------------


def test_nothing_stored_loads_term_zero_and_no_vote(store: HardStateStore) -> None:
    assert store.load() == HardState(term=0, voted_for=None)


def test_round_trip(store: HardStateStore) -> None:
    store.save(HardState(term=3, voted_for="jetson-b"))
    assert store.load() == HardState(term=3, voted_for="jetson-b")
    store.save(HardState(term=4, voted_for=None))
    assert store.load() == HardState(term=4, voted_for=None)


def test_state_persists_across_close_and_reopen(disk: Disk, store: HardStateStore) -> None:
    store.save(HardState(term=7, voted_for="jetson-a"))
    again = reopen(disk, store)
    assert again.load() == HardState(term=7, voted_for="jetson-a")
    again.close()


def test_concurrent_callers_are_serialised(disk: Disk, store: HardStateStore) -> None:
    # asyncio.to_thread may call from several pool threads at once.
    saved = [HardState(term=term, voted_for=f"n{term}") for term in range(1, 101)]
    failures: list[BaseException] = []

    def take(states: list[HardState]) -> None:
        try:
            for state in states:
                store.save(state)
                assert store.load() in saved
        except BaseException as exc:  # a thread's failure is the test's
            failures.append(exc)

    threads = [threading.Thread(target=take, args=(saved[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    again = reopen(disk, store)
    assert again.load() in saved
    again.close()


def test_a_closed_store_refuses_calls_and_closes_twice(store: HardStateStore) -> None:
    store.close()
    store.close()
    with pytest.raises(LocalError):
        store.load()
    with pytest.raises(LocalError):
        store.save(HardState(term=1))
    with pytest.raises(LocalError):
        store.load_journal()


# --- SQLite only -------------------------------------------------------------------------------


def run_python(source: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


LOAD = """
import json, sys
from pathlib import Path
from ha_voice.cluster.storage import SQLiteStore
state = SQLiteStore(Path(sys.argv[1])).load()
print(json.dumps([state.term, state.voted_for]))
"""

SAVE_AND_DIE = """
import os, sys
from pathlib import Path
from ha_voice.cluster.events import HardState, LogWrite
from ha_voice.cluster.protocol import Entry, EntryKind, LogPosition
from ha_voice.cluster.replication import JournalLog
from ha_voice.cluster.storage import SQLiteStore
SQLiteStore(Path(sys.argv[1])).save(HardState(term=11, voted_for="jetson-b"))
os._exit(0)  # no close, no atexit: as if killed right after save returned
"""


def test_another_process_sees_the_saved_state_without_a_close(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    store = SQLiteStore(path)
    store.save(HardState(term=9, voted_for="jetson-a"))
    assert json.loads(run_python(LOAD, str(path))) == [9, "jetson-a"]
    store.close()


def test_a_save_survives_the_process_dying_at_once(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    run_python(SAVE_AND_DIE, str(path))
    store = SQLiteStore(path)
    assert store.load() == HardState(term=11, voted_for="jetson-b")
    store.close()


def test_wal_and_synchronous_full_are_in_force(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    store = SQLiteStore(path)
    # synchronous is per connection, so it can only be read through the store's own.
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2}
    store.close()
    # journal_mode=WAL is recorded in the file itself.
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_schema_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    SQLiteStore(path).close()
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT version FROM schema_version").fetchall() == [
        (SCHEMA_VERSION,)
    ]
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    assert {"schema_version", "hard_state", "journal"} <= tables
    assert "boot" not in tables  # boot ids are nonces: nothing to keep
    connection.close()


def test_open_store_creates_a_private_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "var" / "lib" / "ha-voice"
    store = open_store(state_dir)
    assert store.path == state_dir / "ha-voice.sqlite3"
    assert store.path.is_file()
    assert stat.S_IMODE(state_dir.stat().st_mode) & 0o077 == 0
    store.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    store = SQLiteStore(path)
    store.save(HardState(term=5))
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    connection.close()
    with pytest.raises(ConfigError, match="newer") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)
    assert "upgrade ha-voice" in str(caught.value)
    # Refused, not touched: the version is still the newer one.
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM schema_version").fetchone() == (
            SCHEMA_VERSION + 1,
        )
    connection.close()


def test_a_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(ConfigError, match="move it aside") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)


def test_another_programs_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE_NAME
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (name TEXT)")
    connection.close()
    with pytest.raises(ConfigError, match="not an ha-voice state database"):
        SQLiteStore(path)


def test_an_uncreatable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="state_dir"):
        open_store(blocker / "state")


# --- the journal ------------------------------------------------------------------------------


def _entries(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(
        Entry(i, term, EntryKind.COMMAND, f"cmd {i} t{term}".encode())
        for i in range(first, last + 1)
    )


def test_journal_survives_a_restart_with_its_truncations_and_snapshot(
    disk: Disk, store: HardStateStore
) -> None:
    assert store.load_journal() == JournalLog()
    store.write(HardState(1, "n1"), LogWrite(entries=_entries(1, 5, 1), commit=3))
    # A new primary of term 2 replaces the uncommitted tail 4..5.
    store.write(HardState(2, None), LogWrite(truncate_from=4, entries=_entries(4, 6, 2), commit=4))
    store.write(None, LogWrite(compact_to=(LogPosition(1, 3), b"state up to 3"), commit=5))
    store = reopen(disk, store)
    journal = store.load_journal()
    assert store.load() == HardState(2, None)
    assert journal.base == LogPosition(1, 3)
    assert journal.snapshot == b"state up to 3"
    assert journal.entries == list(_entries(4, 6, 2))
    assert journal.commit == 5
    store.close()


def test_sqlite_and_memory_agree_on_any_sequence_of_writes(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    sql, memory = SQLiteStore(tmp_path / "s.sqlite3"), MemoryStore()
    for step in range(200):
        journal = memory.load_journal()
        last = journal.last.index
        write: LogWrite
        if rng.random() < 0.15 and journal.commit > journal.base.index:
            upto = rng.randint(journal.base.index + 1, journal.commit)
            term = journal.term_at(upto)
            assert term is not None
            write = LogWrite(
                compact_to=(LogPosition(term, upto), f"s{step}".encode()), commit=journal.commit
            )
        elif rng.random() < 0.2 and last > journal.commit:
            cut = rng.randint(journal.commit + 1, last)
            write = LogWrite(
                truncate_from=cut, entries=_entries(cut, cut + 2, step), commit=journal.commit
            )
        else:
            new = _entries(last + 1, last + rng.randint(1, 3), step)
            write = LogWrite(entries=new, commit=rng.randint(journal.commit, new[-1].index))
        sql.write(None, write)
        memory.write(None, write)
        assert sql.load_journal() == memory.load_journal(), f"step {step}: {write}"
    sql.close()


def test_a_batch_is_the_writes_in_order_in_one_transaction(
    disk: Disk, store: HardStateStore
) -> None:
    """Group commit: several steps' writes, one fsync, the same result as one by one."""
    batch = [
        (HardState(1, "n1"), LogWrite(entries=_entries(1, 5, 1), commit=2)),
        (None, LogWrite(truncate_from=4, entries=_entries(4, 6, 2), commit=4)),
        (HardState(2, None), None),
        (None, LogWrite(compact_to=(LogPosition(1, 3), b"up to 3"), commit=5)),
    ]
    store.write_batch(batch)
    one_by_one = MemoryStore()
    for state, log in batch:
        one_by_one.write(state, log)
    store = reopen(disk, store)
    assert store.load() == one_by_one.load() == HardState(2, None)
    assert store.load_journal() == one_by_one.load_journal()
    # A batch that breaks half-way leaves nothing of itself behind.
    broken = Entry(0, 3, EntryKind.COMMAND, b"index 0 exists nowhere")
    with pytest.raises((LocalError, OSError)):
        store.write_batch(
            [
                (HardState(3, "n2"), LogWrite(entries=_entries(7, 7, 3), commit=5)),
                (None, LogWrite(entries=(broken,), commit=5)),
            ]
        )
    store = reopen(disk, store)
    assert store.load() == HardState(2, None)
    assert store.load_journal().last == LogPosition(2, 6)
    store.close()
