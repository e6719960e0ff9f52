"""The command journal's state machine: what the committed entries mean.

The replication core (cluster/replication.py) moves opaque entries; this module gives them
meaning. Every node applies the same committed entries in the same order, so every node holds the
same `Journal`: the commands with their status and outcome, the idempotency keys seen, the robot's
last known posture and the runtime settings.

Invariants:
- A key names one command: a COMMAND entry whose key is already known is applied as a no-op
  (the primary checks before appending; this makes a bug there harmless, and visible).
- Status only moves forward: committed (no outcome yet) → done / stopped / failed / unknown.
  An OUTCOME for an index that already has one is ignored.
- Payloads are small JSON objects (≤ `MAX_ENTRY_BYTES` once encoded): free text (a transcript,
  a source, an outcome) is cut to `MAX_TEXT` characters and then, at a character boundary,
  until the encoded payload fits, whatever it holds (control characters take 6 bytes escaped,
  emoji 4); a lone surrogate becomes U+FFFD. So a command is never refused for its text.
- Retention: records older than the snapshot are forgotten, keys included; `compaction_point`
  never folds away a command still waiting for its outcome, and folds every other entry
  (settings, outcomes, NOOPs) once nothing kept comes before it, so no client can grow the
  journal without bound by changing settings.

Pure: the caller passes wall-clock times in.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal

from ha_voice.cluster.protocol import MAX_ENTRY_BYTES, Entry, EntryKind
from ha_voice.errors import LocalError

__all__ = [
    "FINAL",
    "MAX_KEY",
    "MAX_TAIL",
    "CommandRecord",
    "Journal",
    "Settings",
    "command_entry",
    "outcome_entry",
    "settings_entry",
]

Status = Literal["committed", "done", "stopped", "failed", "unknown"]
FINAL: Final = frozenset({"done", "stopped", "failed", "unknown"})
MAX_KEY: Final = 64
MAX_TEXT: Final = 200
# The most records one read returns (GET /api/journal's `limit`): each is under 1.2 KB of JSON
# (a payload is at most MAX_ENTRY_BYTES), so an answer stays near a megabyte.
MAX_TAIL: Final = 1000


@dataclass(frozen=True)
class CommandRecord:
    """One command as the journal knows it."""

    index: int
    term: int
    key: str
    action: str
    params: Mapping[str, float]
    duration_s: float | None
    text: str
    source: str
    accepted_at: float
    status: Status = "committed"
    outcome: str = ""
    executed_by: str | None = None
    finished_at: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_json(self) -> dict[str, Any]:
        """The record as JSON types (field by field: `asdict` deep-copies every value)."""
        return {
            "index": self.index,
            "term": self.term,
            "key": self.key,
            "action": self.action,
            "params": dict(self.params),
            "duration_s": self.duration_s,
            "text": self.text,
            "source": self.source,
            "accepted_at": self.accepted_at,
            "status": self.status,
            "outcome": self.outcome,
            "executed_by": self.executed_by,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True)
class Settings:
    """Runtime settings and robot state that a new primary continues with."""

    listening: bool = True
    language: str | None = None  # None: each node's configured language
    posture: str | None = None  # the robot's last known mode name, as its primary saw it


@dataclass
class Journal:
    """The applied state: records by index, keys, settings and counters."""

    records: OrderedDict[int, CommandRecord] = field(default_factory=OrderedDict)
    by_key: dict[str, int] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    command_count: int = 0
    last_command: str | None = None
    applied: int = 0
    duplicates_ignored: int = 0

    # --- applying --------------------------------------------------------------------------

    def apply(self, entry: Entry) -> CommandRecord | None:
        """Apply one committed entry; the record it created or finished, if any."""
        if entry.index <= self.applied:
            raise LocalError(f"entry {entry.index} applied twice (applied {self.applied})")
        self.applied = entry.index
        if entry.kind is EntryKind.NOOP:
            return None
        data = json.loads(entry.data)
        if entry.kind is EntryKind.COMMAND:
            return self._command(entry, data)
        if entry.kind is EntryKind.OUTCOME:
            return self._outcome(data)
        if entry.kind is EntryKind.STATE:
            known = {k: v for k, v in data.items() if k in Settings.__dataclass_fields__}
            self.settings = replace(self.settings, **known)
        return None

    def _command(self, entry: Entry, data: Mapping[str, Any]) -> CommandRecord | None:
        key = str(data["k"])
        if key in self.by_key:
            self.duplicates_ignored += 1
            return None
        record = CommandRecord(
            index=entry.index,
            term=entry.term,
            key=key,
            action=str(data["a"]),
            params={str(k): float(v) for k, v in data.get("p", {}).items()},
            duration_s=data.get("d"),
            text=str(data.get("t", "")),
            source=str(data.get("s", "")),
            accepted_at=float(data.get("at", 0.0)),
        )
        self.records[entry.index] = record
        self.by_key[key] = entry.index
        self.command_count += 1
        self.last_command = record.text or record.action
        return record

    def _outcome(self, data: Mapping[str, Any]) -> CommandRecord | None:
        record = self.records.get(int(data["i"]))
        if record is None or record.final:
            return None
        done = replace(
            record,
            status=data["st"],
            outcome=str(data.get("o", "")),
            executed_by=data.get("by"),
            finished_at=data.get("at"),
        )
        self.records[record.index] = done
        if data.get("posture"):
            self.settings = replace(self.settings, posture=str(data["posture"]))
        return done

    # --- queries ---------------------------------------------------------------------------

    def get(self, key: str) -> CommandRecord | None:
        index = self.by_key.get(key)
        return None if index is None else self.records.get(index)

    def unfinished(self) -> list[CommandRecord]:
        """Committed commands without an outcome, oldest first."""
        return [r for r in self.records.values() if not r.final]

    def tail(self, since: int, limit: int) -> list[CommandRecord]:
        """Records with index > `since`, at most `limit`, in index order. Walks from the end
        of the records nearer to `since`: a follower's poll costs what is new, not the
        whole journal."""
        if not self.records:
            return []
        first, last = next(iter(self.records)), next(reversed(self.records))
        if since - first < last - since:
            out = []
            for index, record in self.records.items():
                if index > since:
                    out.append(record)
                    if len(out) >= limit:
                        break
            return out
        newer = []
        for index in reversed(self.records):
            if index <= since:
                break
            newer.append(self.records[index])
        newer.reverse()
        return newer[:limit]

    # --- retention and snapshots -----------------------------------------------------------

    def compaction_point(self, *, max_entries: int, max_age_s: float, now: float) -> int:
        """The index up to which entries may be folded into a snapshot (0: nothing yet).

        Keeps the newest `max_entries` commands and every command younger than `max_age_s`,
        never passes a command that still waits for its outcome, and otherwise folds all that
        is applied (entries that are not commands live on in the snapshot's settings).
        """
        excess = len(self.records) - max_entries
        for count, (index, record) in enumerate(self.records.items()):
            old = count < excess or now - record.accepted_at > max_age_s
            if not old or not record.final:
                return index - 1
        return self.applied

    def forget_through(self, index: int) -> None:
        """Drop records up to `index` (they went into a snapshot)."""
        while self.records and next(iter(self.records)) <= index:
            _, record = self.records.popitem(last=False)
            self.by_key.pop(record.key, None)

    def snapshot(self, upto: int) -> bytes:
        """The state as of `upto` (≤ applied), for a snapshot that ends there.

        Counters are taken back to `upto`. Settings are the current ones: every entry after
        `upto` sets its fields outright, so replaying them on top gives the same result.
        """
        later = [r for i, r in self.records.items() if i > upto]
        earlier = [r for i, r in self.records.items() if i <= upto]
        last = (earlier[-1].text or earlier[-1].action) if earlier else self.last_command
        if not earlier and later:
            last = None
        data = {
            "settings": asdict(self.settings),
            "command_count": self.command_count - len(later),
            "last_command": last,
        }
        return _encode(data)

    def restore(self, snapshot: bytes, applied: int) -> None:
        """Start over from `snapshot`, which holds everything up to `applied`."""
        self.records.clear()
        self.by_key.clear()
        self.applied = applied
        if not snapshot:
            self.settings, self.command_count, self.last_command = Settings(), 0, None
            return
        data = json.loads(snapshot)
        self.settings = Settings(**data["settings"])
        self.command_count = int(data["command_count"])
        self.last_command = data["last_command"]


# --- payloads ---------------------------------------------------------------------------------


def command_entry(
    *,
    key: str,
    action: str,
    params: Mapping[str, float],
    duration_s: float | None,
    text: str,
    source: str,
    at: float,
) -> bytes:
    """A COMMAND payload; `text` and then `source` are cut until it fits."""
    data = {
        "k": key,
        "a": action,
        "p": dict(params),
        "d": duration_s,
        "t": _clean(text[:MAX_TEXT]),
        "s": _clean(source[:MAX_KEY]),
        "at": round(at, 3),
    }
    return _encode_fitted(data, ("t", "s"))


def outcome_entry(
    index: int, status: Status, outcome: str, by: str, at: float, posture: str | None
) -> bytes:
    """An OUTCOME payload; `outcome` is cut until it fits."""
    data: dict[str, Any] = {
        "i": index,
        "st": status,
        "o": _clean(outcome[:MAX_TEXT]),
        "by": by,
        "at": round(at, 3),
    }
    if posture:
        data["posture"] = posture
    return _encode_fitted(data, ("o",))


def settings_entry(**changes: Any) -> bytes:
    unknown = set(changes) - set(Settings.__dataclass_fields__)
    if unknown:
        raise LocalError(f"unknown settings {sorted(unknown)}")
    return _encode(changes)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """`text` with lone surrogates (which UTF-8 cannot encode) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _encode_fitted(data: dict[str, Any], cuttable: tuple[str, ...]) -> bytes:
    """`data` encoded, its `cuttable` texts shortened in turn until it fits."""
    raw = _dumps(data)
    for name in cuttable:
        excess = len(raw) - MAX_ENTRY_BYTES
        if excess <= 0:
            break
        data[name] = _cut(data[name], _encoded_size(data[name]) - excess)
        raw = _dumps(data)
    return _encode(data)


def _cut(text: str, budget: int) -> str:
    """The longest prefix of `text` whose JSON-escaped UTF-8 form takes at most `budget` bytes."""
    used = 0
    for end, char in enumerate(text):
        used += _encoded_size(char)
        if used > budget:
            return text[:end]
    return text


def _encoded_size(text: str) -> int:
    """Bytes `text` takes inside a JSON string as `_dumps` writes it."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _encode(data: Mapping[str, Any]) -> bytes:
    raw = _dumps(data)
    if len(raw) > MAX_ENTRY_BYTES:
        raise LocalError(f"journal payload of {len(raw)} bytes > {MAX_ENTRY_BYTES}")
    return raw
