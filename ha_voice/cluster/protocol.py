"""The cluster's wire messages and their authenticated, replay-safe encoding.

Invariants:
- Every datagram is at most `MAX_DATAGRAM_BYTES` (1200: fits any IPv4/IPv6 path MTU without
  fragmentation, the same bound QUIC uses) and carries an HMAC-SHA256 over all of its bytes,
  keyed per cluster (`derive_key`), so one key file may serve several clusters.
- `Codec.decode` raises `DecodeError` and nothing else, whatever the input; its `reason` is one
  of `DROP_REASONS`, short enough to be a metric label.
- Only members speak: a datagram whose sender is not one of the configured members (`members`)
  is dropped as `not_member` whatever its type, before the replay window learns of it.
- Every integer a message carries (terms, indices, ranks, ports) is below 2**62: SQLite stores
  signed 64-bit integers, and the other half leaves room for every term and index a cluster
  will ever count up from there; larger is `malformed`.
- Key rotation: datagrams are signed with the first key and accepted under any of the keys
  given (at most two during a change).
- The replay window is updated only after the MAC has been verified, so forged packets cannot
  poison it. A sender's boot id orders its incarnations: a lower boot id than one already seen is
  stale; within one boot a 64-packet sliding window (RFC 4303 §3.4.3) accepts reordering and
  refuses duplicates.

Pure: no sockets, no clock. The shell passes the boot id in and moves the bytes.

Layout of a datagram (network byte order):

    magic "HV" | version u8 | type u8 | cluster tag 8B | boot id u64 | seq u64
    | sender len u8 | sender | recipient len u8 | recipient | body | HMAC-SHA256 32B
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import struct
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from ha_voice.errors import RemoteError

__all__ = [
    "APPEND_BUDGET",
    "DROP_REASONS",
    "EMPTY_LOG",
    "MAX_DATAGRAM_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_NODE_ID_BYTES",
    "MAX_WIRE_INT",
    "NOT_A_SUCCESSOR",
    "PROTOCOL_VERSION",
    "Address",
    "Append",
    "AppendAck",
    "Codec",
    "DecodeError",
    "Entry",
    "EntryKind",
    "Heartbeat",
    "HeartbeatAck",
    "LogPosition",
    "Message",
    "NodeId",
    "PreVoteRequest",
    "PreVoteResponse",
    "Resign",
    "Snapshot",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
    "derive_key",
]

NodeId: TypeAlias = str
Address: TypeAlias = tuple[str, int]  # (IPv4 address, UDP port) of a member

PROTOCOL_VERSION: Final = 2
MAX_DATAGRAM_BYTES: Final = 1200
MAX_NODE_ID_BYTES: Final = 64
MIN_KEY_BYTES: Final = 16
REPLAY_WINDOW: Final = 64
# Senders tracked by the replay guard; the least recently heard is forgotten beyond this.
MAX_TRACKED_SENDERS: Final = 1024

DROP_REASONS: Final = (
    "truncated",
    "oversized",
    "malformed",
    "bad_version",
    "wrong_cluster",
    "bad_mac",
    "wrong_recipient",
    "replay",
    "stale_boot",
    "not_member",
)
# SQLite stores signed 64-bit integers; a peer may not hand us anything it cannot hold, nor
# anything so close to it that counting on from there (term + 1, index + 1) could overflow.
MAX_WIRE_INT: Final = 2**62 - 1

_MAGIC: Final = b"HV"
_MAC_BYTES: Final = 32
_PREFIX = struct.Struct("!2sBB8sQQ")
_MIN_DATAGRAM: Final = _PREFIX.size + 1 + 1 + 1 + 1 + _MAC_BYTES
# Room for entries in an `Append` between the longest node ids: 1200 - 28 - 130 - 32 - 34.
APPEND_BUDGET: Final = (
    MAX_DATAGRAM_BYTES - _PREFIX.size - 2 * (1 + MAX_NODE_ID_BYTES) - _MAC_BYTES - 34
)
# An entry's (or a snapshot's) payload: any one of them fits an `Append` on its own.
MAX_ENTRY_BYTES: Final = 900


@dataclass(frozen=True, order=True)
class LogPosition:
    """(term, index) of the last journal entry: compared lexicographically, as Raft does."""

    term: int = 0
    index: int = 0


NOT_A_SUCCESSOR: Final = 255
EMPTY_LOG: Final = LogPosition()


@dataclass(frozen=True)
class Heartbeat:
    """The primary asserts its term; `sent_at` is its own clock, echoed back in the ack.

    `successor_rank` is the recipient's place in the line of succession the primary keeps
    (0 = first to take over), or `NOT_A_SUCCESSOR`; backups wait longer the further back they are.
    `api_port` is the primary's HTTP port (0: none), where backups forward commands.
    `commit` is the primary's commit index, capped at what it knows the recipient holds (so the
    recipient may take it as is: etcd's heartbeat commit).
    """

    sender: NodeId
    term: int
    sent_at: float
    log: LogPosition = EMPTY_LOG
    successor_rank: int = NOT_A_SUCCESSOR
    api_port: int = 0
    commit: int = 0

    TYPE: ClassVar[int] = 1
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QdQQBHQ")

    def _pack(self) -> bytes:
        return self._BODY.pack(
            self.term,
            self.sent_at,
            self.log.term,
            self.log.index,
            self.successor_rank,
            self.api_port,
            self.commit,
        )

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> Heartbeat:
        term, sent_at, log_term, log_index, rank, api_port, commit = cls._BODY.unpack(body)
        log = LogPosition(log_term, log_index)
        return cls(sender, term, _finite(sent_at), log, rank, api_port, commit)


@dataclass(frozen=True)
class HeartbeatAck:
    """A backup's answer: renews the primary's lease when `success`, reports its health."""

    sender: NodeId
    term: int
    sent_at: float
    success: bool
    log: LogPosition = EMPTY_LOG
    priority: int = 0
    eligible: bool = True

    TYPE: ClassVar[int] = 2
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QdBQQBB")

    def _pack(self) -> bytes:
        return self._BODY.pack(
            self.term,
            self.sent_at,
            self.success,
            self.log.term,
            self.log.index,
            self.priority,
            self.eligible,
        )

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> HeartbeatAck:
        term, sent_at, success, log_term, log_index, priority, eligible = cls._BODY.unpack(body)
        return cls(
            sender,
            term,
            _finite(sent_at),
            _flag(success),
            LogPosition(log_term, log_index),
            priority,
            _flag(eligible),
        )


@dataclass(frozen=True)
class PreVoteRequest:
    """Would you vote for me in `term`? Changes nobody's term (Raft thesis §9.6)."""

    sender: NodeId
    term: int
    log: LogPosition = EMPTY_LOG

    TYPE: ClassVar[int] = 3
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QQQ")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term, self.log.term, self.log.index)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> PreVoteRequest:
        term, log_term, log_index = cls._BODY.unpack(body)
        return cls(sender, term, LogPosition(log_term, log_index))


@dataclass(frozen=True)
class PreVoteResponse:
    """Answer to a pre-vote: `term` is the asked term if granted, else the voter's own term."""

    sender: NodeId
    term: int
    granted: bool

    TYPE: ClassVar[int] = 4
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QB")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term, self.granted)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> PreVoteResponse:
        term, granted = cls._BODY.unpack(body)
        return cls(sender, term, _flag(granted))


@dataclass(frozen=True)
class VoteRequest:
    """Vote for me in `term`; `transfer` marks an election the old primary asked for."""

    sender: NodeId
    term: int
    log: LogPosition = EMPTY_LOG
    transfer: bool = False

    TYPE: ClassVar[int] = 5
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QQQB")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term, self.log.term, self.log.index, self.transfer)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> VoteRequest:
        term, log_term, log_index, transfer = cls._BODY.unpack(body)
        return cls(sender, term, LogPosition(log_term, log_index), _flag(transfer))


@dataclass(frozen=True)
class VoteResponse:
    """Answer to a vote request, in the voter's current term."""

    sender: NodeId
    term: int
    granted: bool

    TYPE: ClassVar[int] = 6
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QB")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term, self.granted)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> VoteResponse:
        term, granted = cls._BODY.unpack(body)
        return cls(sender, term, _flag(granted))


@dataclass(frozen=True)
class TimeoutNow:
    """From a primary that has given up its lease: start an election at once (transfer)."""

    sender: NodeId
    term: int

    TYPE: ClassVar[int] = 7
    _BODY: ClassVar[struct.Struct] = struct.Struct("!Q")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> TimeoutNow:
        (term,) = cls._BODY.unpack(body)
        return cls(sender, term)


@dataclass(frozen=True)
class Resign:
    """From a primary that has given up its lease with no successor: elect without waiting."""

    sender: NodeId
    term: int

    TYPE: ClassVar[int] = 8
    _BODY: ClassVar[struct.Struct] = struct.Struct("!Q")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> Resign:
        (term,) = cls._BODY.unpack(body)
        return cls(sender, term)


class EntryKind(enum.IntEnum):
    """What a journal entry holds; the replication core moves all of them alike."""

    NOOP = 0  # a new primary's first entry: commits what earlier terms left (Raft §5.4.2)
    COMMAND = 1
    OUTCOME = 2
    STATE = 3


@dataclass(frozen=True)
class Entry:
    """One journal entry: its place, its term, and an opaque payload (empty on a witness)."""

    index: int
    term: int
    kind: EntryKind
    data: bytes = b""

    @property
    def position(self) -> LogPosition:
        return LogPosition(self.term, self.index)


@dataclass(frozen=True)
class Append:
    """Raft's AppendEntries: `entries` follow `prev`; `commit` is the primary's commit index.

    Entries carry no index on the wire: the first is `prev.index + 1`, and so on.
    """

    sender: NodeId
    term: int
    prev: LogPosition
    commit: int
    entries: tuple[Entry, ...] = ()

    TYPE: ClassVar[int] = 9
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QQQQH")
    _ENTRY: ClassVar[struct.Struct] = struct.Struct("!QBH")

    def _pack(self) -> bytes:
        head = self._BODY.pack(
            self.term, self.prev.term, self.prev.index, self.commit, len(self.entries)
        )
        parts = [head]
        for entry in self.entries:
            parts.append(self._ENTRY.pack(entry.term, entry.kind, len(entry.data)))
            parts.append(entry.data)
        return b"".join(parts)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> Append:
        term, prev_term, prev_index, commit, count = cls._BODY.unpack_from(body)
        offset = cls._BODY.size
        entries = []
        for i in range(count):
            entry_term, kind, length = cls._ENTRY.unpack_from(body, offset)
            offset += cls._ENTRY.size
            data = body[offset : offset + length]
            if len(data) != length:
                raise DecodeError("malformed", "entry runs past the datagram")
            offset += length
            entries.append(Entry(prev_index + 1 + i, entry_term, EntryKind(kind), data))
        if offset != len(body):
            raise DecodeError("malformed", "bytes after the last entry")
        return cls(sender, term, LogPosition(prev_term, prev_index), commit, tuple(entries))


@dataclass(frozen=True)
class AppendAck:
    """Answer to `Append` or `Snapshot`: on success `match` is the last index now known equal to
    the primary's; on failure it is where the primary should look again (our last index)."""

    sender: NodeId
    term: int
    success: bool
    match: int

    TYPE: ClassVar[int] = 10
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QBQ")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.term, self.success, self.match)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> AppendAck:
        term, success, match = cls._BODY.unpack(body)
        return cls(sender, term, _flag(success), match)


@dataclass(frozen=True)
class Snapshot:
    """The state up to `last`, for a node too far behind for entries (one datagram)."""

    sender: NodeId
    term: int
    last: LogPosition
    data: bytes

    TYPE: ClassVar[int] = 11
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QQQH")

    def _pack(self) -> bytes:
        head = self._BODY.pack(self.term, self.last.term, self.last.index, len(self.data))
        return head + self.data

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> Snapshot:
        term, last_term, last_index, length = cls._BODY.unpack_from(body)
        data = body[cls._BODY.size :]
        if len(data) != length:
            raise DecodeError("malformed", "snapshot length does not match")
        return cls(sender, term, LogPosition(last_term, last_index), data)


Message: TypeAlias = (
    Heartbeat
    | HeartbeatAck
    | PreVoteRequest
    | PreVoteResponse
    | VoteRequest
    | VoteResponse
    | TimeoutNow
    | Resign
    | Append
    | AppendAck
    | Snapshot
)

_TYPES: Final[dict[int, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Heartbeat,
        HeartbeatAck,
        PreVoteRequest,
        PreVoteResponse,
        VoteRequest,
        VoteResponse,
        TimeoutNow,
        Resign,
        Append,
        AppendAck,
        Snapshot,
    )
}


class DecodeError(RemoteError):
    """A datagram we drop; `reason` is one of `DROP_REASONS`."""


def derive_key(cluster_key: bytes, cluster: str) -> bytes:
    """The MAC key of one cluster: HMAC(cluster key, label), so clusters never share MACs."""
    if len(cluster_key) < MIN_KEY_BYTES:
        raise ValueError(f"cluster key must be at least {MIN_KEY_BYTES} bytes")
    label = b"ha-voice/v1/" + cluster.encode()
    return hmac.new(cluster_key, label, hashlib.sha256).digest()


def cluster_tag(cluster: str) -> bytes:
    """8 bytes naming the cluster in clear, so a wrong cluster is told apart from a wrong key."""
    return hashlib.sha256(b"ha-voice cluster:" + cluster.encode()).digest()[:8]


class _ReplayGuard:
    """Per sender: the newest boot id seen and a sliding window over its sequence numbers."""

    def __init__(self) -> None:
        self._senders: OrderedDict[NodeId, tuple[int, int, int]] = OrderedDict()

    def check(self, sender: NodeId, boot_id: int, seq: int) -> str | None:
        """The drop reason for this (boot id, seq), or None if it is new."""
        known = self._senders.get(sender)
        if known is None or boot_id > known[0]:
            return None
        known_boot, highest, _window = known
        if boot_id < known_boot:
            return "stale_boot"
        if seq > highest:
            return None
        offset = highest - seq
        if offset >= REPLAY_WINDOW or known[2] >> offset & 1:
            return "replay"
        return None

    def accept(self, sender: NodeId, boot_id: int, seq: int) -> None:
        """Record (boot id, seq) as seen; call only after `check` returned None."""
        known = self._senders.get(sender)
        if known is None or boot_id > known[0]:
            self._senders[sender] = (boot_id, seq, 1)
        else:
            _boot, highest, window = known
            if seq - highest >= REPLAY_WINDOW:
                window, highest = 1, seq  # everything older has slid out of the window
            elif seq > highest:
                window = (window << (seq - highest) | 1) & ((1 << REPLAY_WINDOW) - 1)
                highest = seq
            else:
                window |= 1 << (highest - seq)
            self._senders[sender] = (boot_id, highest, window)
        self._senders.move_to_end(sender)
        while len(self._senders) > MAX_TRACKED_SENDERS:
            self._senders.popitem(last=False)


class Codec:
    """Encodes this node's messages and decodes, authenticates and de-duplicates its peers'."""

    def __init__(
        self,
        *,
        cluster: str,
        cluster_key: bytes,
        node_id: NodeId,
        boot_id: int,
        previous_keys: Sequence[bytes] = (),
        members: Collection[NodeId] | None = None,
    ) -> None:
        """`cluster_key` signs and verifies; `previous_keys` only verify (a key rotation);
        `members`, if given, are the only senders accepted (None: anyone with the key)."""
        _check_node_id(node_id)
        if not 0 <= boot_id < 2**64:
            raise ValueError("boot id must fit in 64 bits")
        self.node_id = node_id
        self.boot_id = boot_id
        self._tag = cluster_tag(cluster)
        self._key = derive_key(cluster_key, cluster)
        self._verify_keys = (self._key, *(derive_key(k, cluster) for k in previous_keys))
        self._members = None if members is None else frozenset(members)
        self._node_id_bytes = node_id.encode()
        self._seq = 0
        self._replay = _ReplayGuard()

    def encode(self, recipient: NodeId, message: Message) -> bytes:
        """The datagram carrying `message` to `recipient`, with the next sequence number."""
        if message.sender != self.node_id:
            raise ValueError(f"message from {message.sender!r} encoded by {self.node_id!r}")
        self._seq += 1
        recipient_bytes = _check_node_id(recipient)
        head = _PREFIX.pack(
            _MAGIC, PROTOCOL_VERSION, message.TYPE, self._tag, self.boot_id, self._seq
        )
        unsigned = b"".join(
            (
                head,
                bytes((len(self._node_id_bytes),)),
                self._node_id_bytes,
                bytes((len(recipient_bytes),)),
                recipient_bytes,
                message._pack(),
            )
        )
        return unsigned + hmac.new(self._key, unsigned, hashlib.sha256).digest()

    def decode(self, data: bytes) -> Message:
        """The message in `data`; raises `DecodeError` (and nothing else) if it must be dropped."""
        try:
            return self._decode(data)
        except DecodeError:
            raise
        except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
            raise DecodeError("malformed", str(exc)) from None

    def _decode(self, data: bytes) -> Message:
        if len(data) > MAX_DATAGRAM_BYTES:
            raise DecodeError("oversized", f"{len(data)} bytes > {MAX_DATAGRAM_BYTES}")
        if len(data) < _MIN_DATAGRAM:
            raise DecodeError("truncated", f"{len(data)} bytes < {_MIN_DATAGRAM}")
        magic, version, kind, tag, boot_id, seq = _PREFIX.unpack_from(data)
        if magic != _MAGIC:
            raise DecodeError("malformed", "not an ha-voice datagram")
        if version != PROTOCOL_VERSION:
            raise DecodeError("bad_version", f"version {version}, we speak {PROTOCOL_VERSION}")
        if tag != self._tag:
            raise DecodeError("wrong_cluster", "cluster tag does not match")
        signed, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
        if not any(
            hmac.compare_digest(mac, hmac.new(key, signed, hashlib.sha256).digest())
            for key in self._verify_keys
        ):
            raise DecodeError("bad_mac", "HMAC does not verify (wrong cluster key?)")
        sender, offset = _read_node_id(signed, _PREFIX.size)
        recipient, offset = _read_node_id(signed, offset)
        if recipient != self.node_id:
            raise DecodeError("wrong_recipient", f"addressed to {recipient!r}")
        if self._members is not None and sender not in self._members:
            raise DecodeError("not_member", f"{sender!r} is not a configured member")
        cls = _TYPES.get(kind)
        if cls is None:
            raise DecodeError("malformed", f"unknown message type {kind}")
        message = cls._unpack(sender, signed[offset:])
        _check_ranges(message)
        reason = self._replay.check(sender, boot_id, seq)
        if reason is not None:
            raise DecodeError(reason, f"{sender} boot {boot_id} seq {seq}")
        self._replay.accept(sender, boot_id, seq)
        return message


def _check_ranges(message: Message) -> None:
    """Refuse integers SQLite cannot store (terms, indices, commit) anywhere in `message`."""
    values: list[int] = []
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        if isinstance(value, LogPosition):
            values += (value.term, value.index)
        elif isinstance(value, int):  # bools too: harmless
            values.append(value)
        elif isinstance(value, tuple):  # Append's entries
            values += [entry.term for entry in value]
    if any(v > MAX_WIRE_INT for v in values):
        raise DecodeError("malformed", f"an integer of {type(message).__name__} exceeds 2**62-1")
    if isinstance(message, Append) and message.prev.index + len(message.entries) > MAX_WIRE_INT:
        raise DecodeError("malformed", "entry indices exceed 2**62-1")


def _check_node_id(node_id: NodeId) -> bytes:
    encoded = node_id.encode()
    if not 1 <= len(encoded) <= MAX_NODE_ID_BYTES:
        raise ValueError(f"node id must be 1..{MAX_NODE_ID_BYTES} bytes of UTF-8: {node_id!r}")
    return encoded


def _read_node_id(data: bytes, offset: int) -> tuple[NodeId, int]:
    length = data[offset]
    if not 1 <= length <= MAX_NODE_ID_BYTES or offset + 1 + length > len(data):
        raise DecodeError("malformed", "bad node id length")
    end = offset + 1 + length
    return data[offset + 1 : end].decode(), end


def _flag(value: int) -> bool:
    if value not in (0, 1):
        raise DecodeError("malformed", f"flag byte {value} is neither 0 nor 1")
    return bool(value)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise DecodeError("malformed", "time is not a finite number")
    return value
