"""The journal's state machine: what committed entries mean, retention and snapshots."""

from __future__ import annotations

import pytest

from ha_voice.cluster.protocol import MAX_ENTRY_BYTES, Entry, EntryKind
from ha_voice.errors import LocalError
from ha_voice.journal import Journal, command_entry, outcome_entry, settings_entry


def command(index: int, key: str, action: str = "sit", at: float = 100.0) -> Entry:
    data = command_entry(
        key=key, action=action, params={}, duration_s=None, text=f"say {key}", source="t", at=at
    )
    return Entry(index, 1, EntryKind.COMMAND, data)


def outcome(index: int, of: int, status: str = "done", posture: str | None = None) -> Entry:
    data = outcome_entry(of, status, "ok", "n1", 101.0, posture)  # type: ignore[arg-type]
    return Entry(index, 1, EntryKind.OUTCOME, data)


def test_a_command_is_committed_then_finished_and_counted() -> None:
    journal = Journal()
    journal.apply(Entry(1, 1, EntryKind.NOOP))
    record = journal.apply(command(2, "a"))
    assert record is not None
    assert (record.status, record.final) == ("committed", False)
    assert [r.key for r in journal.unfinished()] == ["a"]
    done = journal.apply(outcome(3, 2, posture="sit"))
    assert done is not None
    assert (done.status, done.executed_by, done.final) == ("done", "n1", True)
    assert journal.get("a") == done
    assert (journal.command_count, journal.last_command) == (1, "say a")
    assert journal.settings.posture == "sit"
    assert journal.unfinished() == []


def test_a_known_key_is_applied_as_a_no_op_and_counted() -> None:
    journal = Journal()
    journal.apply(command(1, "a"))
    assert journal.apply(command(2, "a")) is None
    assert journal.duplicates_ignored == 1
    assert journal.get("a") is not None
    assert journal.get("a").index == 1  # type: ignore[union-attr]


def test_status_only_moves_forward() -> None:
    journal = Journal()
    journal.apply(command(1, "a"))
    journal.apply(outcome(2, 1, "unknown"))
    assert journal.apply(outcome(3, 1, "done")) is None
    assert journal.get("a").status == "unknown"  # type: ignore[union-attr]


def test_entries_apply_once_and_in_order() -> None:
    journal = Journal()
    journal.apply(command(5, "a"))
    with pytest.raises(LocalError):
        journal.apply(command(5, "b"))


def test_settings_are_replicated_state() -> None:
    journal = Journal()
    journal.apply(Entry(1, 1, EntryKind.STATE, settings_entry(listening=False, language="en")))
    assert (journal.settings.listening, journal.settings.language) == (False, "en")
    with pytest.raises(LocalError):
        settings_entry(volume=3)


def test_retention_never_folds_away_a_command_waiting_for_its_outcome() -> None:
    journal = Journal()
    for i in range(1, 11):
        journal.apply(command(i, f"k{i}", at=float(i)))
    for i in range(11, 15):  # outcomes for 1..4; 5 is unfinished
        journal.apply(outcome(i, i - 10))
    assert journal.compaction_point(max_entries=2, max_age_s=1e9, now=20.0) == 4
    # By age: everything older than 10 s at t=13 is old; still not past the unfinished 5.
    assert journal.compaction_point(max_entries=1000, max_age_s=10.0, now=13.0) == 2


def test_retention_folds_settings_so_that_changing_them_cannot_grow_the_journal() -> None:
    journal = Journal()
    for i in range(1, 101):
        journal.apply(Entry(i, 1, EntryKind.STATE, settings_entry(listening=i % 2 == 0)))
    assert journal.compaction_point(max_entries=10, max_age_s=1e9, now=0.0) == 100
    # Behind the newest kept command, settings wait with it.
    journal.apply(command(101, "k", at=50.0))
    journal.apply(Entry(102, 1, EntryKind.STATE, settings_entry(language="en")))
    assert journal.compaction_point(max_entries=10, max_age_s=1e9, now=60.0) == 100
    journal.apply(outcome(103, 101))
    assert journal.compaction_point(max_entries=10, max_age_s=5.0, now=60.0) == 103


def test_a_snapshot_carries_the_state_as_of_its_index() -> None:
    journal = Journal()
    for i in range(1, 5):
        journal.apply(command(i, f"k{i}"))
    snapshot = journal.snapshot(2)
    journal.forget_through(2)
    assert journal.get("k1") is None
    assert journal.get("k3") is not None
    follower = Journal()
    follower.restore(snapshot, applied=2)
    follower.apply(command(3, "k3"))
    follower.apply(command(4, "k4"))
    assert (follower.command_count, follower.last_command) == (4, "say k4")
    assert len(snapshot) <= MAX_ENTRY_BYTES


def test_payloads_stay_under_the_entry_bound() -> None:
    data = command_entry(
        key="k" * 64,
        action="move",
        params={"vx": 1.0},
        duration_s=1.0,
        text="é" * 5000,
        source="s" * 500,
        at=1.0,
    )
    assert len(data) <= MAX_ENTRY_BYTES
