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
- Load (`Load`, this node's speech queue, CPU and GPU) rides at the end of every `Heartbeat` and
  `HeartbeatAck`, and alone in a `LoadReport` that every member sends every other (backups do
  not otherwise hear each other). Its fields are bounded (counts below 2**16, utilisation in
  permille); a malformed load is dropped and counted (`Codec.loads_dropped`) while the message
  that carried it is kept: load never costs a heartbeat. A heartbeat or ack without one (load
  unknown) is understood.
- Key rotation: datagrams are signed with the first key and accepted under any of the keys
  given (at most two during a change).
- Sessions (`sessions.py`) learn of a datagram only after its MAC has been verified, so forged
  packets cannot poison them. Boot ids are random nonces: a new boot of a peer is admitted after
  it answered a `BootChallenge` and its old boot fell silent, never because a number is larger;
  within one boot a 64-packet sliding window accepts reordering and refuses duplicates.
- `BootChallenge` and `BootAnswer` are the codec's own: `decode` answers the one and consumes the
  other, and neither reaches the election core. Their freshness is their nonce (an answer) or
  the recipient's boot id (a challenge), not the replay window.

Pure: no sockets, no clock. The shell passes the boot id, the source address and `now` in, and
moves the bytes (`take_outgoing`).

Layout of a datagram (network byte order):

    magic "HV" | version u8 | type u8 | cluster tag 8B | boot id u64 | seq u64
    | sender len u8 | sender | recipient len u8 | recipient | body | HMAC-SHA256 32B

A load (the optional tail of a heartbeat's or ack's body, the body of a `LoadReport` after its
send time): format u8 (1) | flags u8 (1 ready, 2 GPU known) | workers u8 | running u16
| queued u16 | CPU permille u16 | GPU permille u16 | GPU memory MB u32.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import math
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from ha_voice.cluster.sessions import (
    ANY_BOOT,
    CONFLICT_HOLD_S,
    Challenge,
    IdentityConflict,
    Sessions,
)
from ha_voice.errors import RemoteError

__all__ = [
    "APPEND_BUDGET",
    "DROP_REASONS",
    "EMPTY_LOG",
    "LOAD_DROP_REASONS",
    "MAX_DATAGRAM_BYTES",
    "MAX_ENTRY_BYTES",
    "MAX_NODE_ID_BYTES",
    "MAX_WIRE_INT",
    "NOT_A_SUCCESSOR",
    "PROTOCOL_VERSION",
    "Address",
    "Append",
    "AppendAck",
    "BootAnswer",
    "BootChallenge",
    "Codec",
    "DecodeError",
    "Entry",
    "EntryKind",
    "Heartbeat",
    "HeartbeatAck",
    "Load",
    "LoadReport",
    "LogPosition",
    "Message",
    "NodeId",
    "PreVoteRequest",
    "PreVoteResponse",
    "Refusal",
    "Resign",
    "Snapshot",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
    "derive_key",
]

NodeId: TypeAlias = str
Address: TypeAlias = tuple[str, int]  # (IPv4 address, UDP port) of a member

PROTOCOL_VERSION: Final = 4  # 4: load on heartbeats and acks, LoadReport
MAX_DATAGRAM_BYTES: Final = 1200
MAX_NODE_ID_BYTES: Final = 64
MIN_KEY_BYTES: Final = 16

DROP_REASONS: Final = (
    "truncated",
    "oversized",
    "malformed",
    "bad_version",
    "wrong_cluster",
    "bad_mac",
    "wrong_recipient",
    "replay",
    "unverified_boot",
    "identity_conflict",
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


# Why a load was dropped from a message that was kept (`Codec.loads_dropped`).
LOAD_DROP_REASONS: Final = ("bad_format", "truncated", "out_of_range")
_LOAD_FORMAT: Final = 1
_LOAD: Final = struct.Struct("!BBBHHHHI")
_FLAG_READY: Final = 1
_FLAG_GPU: Final = 2
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFF_FFFF
_PERMILLE: Final = 1000


@dataclass(frozen=True)
class Load:
    """What a node can take of speech work now: the placement's input (voice/placement.py).

    `running` and `queued` count speech jobs (0..65535), `workers` the node's speech workers
    (0..255); `cpu` and `gpu` are utilisation in [0, 1] (GPU None: unknown here), `gpu_memory_mb`
    the memory the GPU uses in MiB (None: unknown). Encoding clamps each into its range.
    """

    ready: bool = False
    workers: int = 0
    running: int = 0
    queued: int = 0
    cpu: float = 0.0
    gpu: float | None = None
    gpu_memory_mb: int | None = None

    def encode(self) -> bytes:
        """The load's wire bytes (see the module docstring), values clamped to their fields."""
        gpu_known = self.gpu is not None
        flags = (_FLAG_READY if self.ready else 0) | (_FLAG_GPU if gpu_known else 0)
        return _LOAD.pack(
            _LOAD_FORMAT,
            flags,
            _clamp(self.workers, 0xFF),
            _clamp(self.running, _U16_MAX),
            _clamp(self.queued, _U16_MAX),
            _permille(self.cpu),
            0 if self.gpu is None else _permille(self.gpu),
            _clamp(self.gpu_memory_mb, _U32_MAX - 1)
            if self.gpu_memory_mb is not None
            else _U32_MAX,
        )

    @classmethod
    def decode(cls, data: bytes) -> Load:
        """The load in `data` (exactly one); DecodeError(reason in LOAD_DROP_REASONS) if not."""
        if not data or data[0] != _LOAD_FORMAT:
            raise DecodeError("bad_format", "load format is not 1")
        if len(data) != _LOAD.size:
            raise DecodeError("truncated", f"a load of {len(data)} bytes, not {_LOAD.size}")
        _, flags, workers, running, queued, cpu, gpu, memory = _LOAD.unpack(data)
        if flags & ~(_FLAG_READY | _FLAG_GPU) or cpu > _PERMILLE or gpu > _PERMILLE:
            raise DecodeError("out_of_range", f"flags {flags}, cpu {cpu}, gpu {gpu} permille")
        gpu_known = bool(flags & _FLAG_GPU)
        return cls(
            ready=bool(flags & _FLAG_READY),
            workers=workers,
            running=running,
            queued=queued,
            cpu=cpu / _PERMILLE,
            gpu=gpu / _PERMILLE if gpu_known else None,
            gpu_memory_mb=None if memory == _U32_MAX else memory,
        )


def _clamp(value: int, top: int) -> int:
    return max(0, min(int(value), top))


def _permille(fraction: float) -> int:
    if not math.isfinite(fraction):
        return 0
    return _clamp(round(fraction * _PERMILLE), _PERMILLE)


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
    recipient may take it as is: etcd's heartbeat commit). `load` is the primary's (None: not
    known); the core leaves it None and the shell fills it in as the heartbeat leaves.
    """

    sender: NodeId
    term: int
    sent_at: float
    log: LogPosition = EMPTY_LOG
    successor_rank: int = NOT_A_SUCCESSOR
    api_port: int = 0
    commit: int = 0
    load: Load | None = None

    TYPE: ClassVar[int] = 1
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QdQQBHQ")

    def _pack(self) -> bytes:
        body = self._BODY.pack(
            self.term,
            self.sent_at,
            self.log.term,
            self.log.index,
            self.successor_rank,
            self.api_port,
            self.commit,
        )
        return body + (b"" if self.load is None else self.load.encode())

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> Heartbeat:
        term, sent_at, log_term, log_index, rank, api_port, commit = cls._BODY.unpack(body)
        log = LogPosition(log_term, log_index)
        return cls(sender, term, _finite(sent_at), log, rank, api_port, commit)


@dataclass(frozen=True)
class HeartbeatAck:
    """A backup's answer: renews the primary's lease when `success`, reports its health and
    its `load` (filled in by the shell as the ack leaves, like a heartbeat's)."""

    sender: NodeId
    term: int
    sent_at: float
    success: bool
    log: LogPosition = EMPTY_LOG
    priority: int = 0
    eligible: bool = True
    load: Load | None = None

    TYPE: ClassVar[int] = 2
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QdBQQBB")

    def _pack(self) -> bytes:
        body = self._BODY.pack(
            self.term,
            self.sent_at,
            self.success,
            self.log.term,
            self.log.index,
            self.priority,
            self.eligible,
        )
        return body + (b"" if self.load is None else self.load.encode())

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


_NO_ADDRESS: Final = ("0.0.0.0", 0)


@dataclass(frozen=True)
class BootChallenge:
    """Prove that you are boot `boot`: answer `nonce`. Never reaches the election core.

    `holder` and `claimant` are set (not 0.0.0.0:0) when two live processes claim the
    recipient's node id; `refused` tells the recipient that it is the claimant kept out.
    """

    sender: NodeId
    nonce: int
    boot: int
    refused: bool = False
    holder: Address = _NO_ADDRESS
    claimant: Address = _NO_ADDRESS

    TYPE: ClassVar[int] = 12
    _BODY: ClassVar[struct.Struct] = struct.Struct("!QQB4sH4sH")

    def _pack(self) -> bytes:
        return self._BODY.pack(
            self.nonce,
            self.boot,
            self.refused,
            ipaddress.IPv4Address(self.holder[0]).packed,
            self.holder[1],
            ipaddress.IPv4Address(self.claimant[0]).packed,
            self.claimant[1],
        )

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> BootChallenge:
        nonce, boot, refused, holder, holder_port, claimant, claimant_port = cls._BODY.unpack(body)
        return cls(
            sender,
            nonce,
            boot,
            _flag(refused),
            (str(ipaddress.IPv4Address(holder)), holder_port),
            (str(ipaddress.IPv4Address(claimant)), claimant_port),
        )


@dataclass(frozen=True)
class BootAnswer:
    """The answer to a `BootChallenge`: its `nonce`, under the answering boot's id."""

    sender: NodeId
    nonce: int

    TYPE: ClassVar[int] = 13
    _BODY: ClassVar[struct.Struct] = struct.Struct("!Q")

    def _pack(self) -> bytes:
        return self._BODY.pack(self.nonce)

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> BootAnswer:
        (nonce,) = cls._BODY.unpack(body)
        return cls(sender, nonce)


@dataclass(frozen=True)
class LoadReport:
    """A member's load, sent to every other member: `sent_at` is its monotonic clock (seconds),
    `api_port` its HTTP port (0: none), where speech work is handed to it.

    Never reaches the election core: the shell keeps it as what the sender can take now, and
    learns the sender's clock and boot from it as from a heartbeat (backups hear no heartbeats
    of each other, and a hand-off's seal needs both: api/forward_seal.py)."""

    sender: NodeId
    sent_at: float
    api_port: int = 0
    load: Load | None = None

    TYPE: ClassVar[int] = 14
    _BODY: ClassVar[struct.Struct] = struct.Struct("!dH")

    def _pack(self) -> bytes:
        body = self._BODY.pack(self.sent_at, self.api_port)
        return body + (b"" if self.load is None else self.load.encode())

    @classmethod
    def _unpack(cls, sender: NodeId, body: bytes) -> LoadReport:
        sent_at, api_port = cls._BODY.unpack(body)
        return cls(sender, _finite(sent_at), api_port)


Control: TypeAlias = BootChallenge | BootAnswer

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

_MESSAGE_TYPES: Final = (
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
_TYPES: Final[dict[int, type[Message | LoadReport | Control]]] = {
    cls.TYPE: cls for cls in (BootChallenge, BootAnswer, LoadReport, *_MESSAGE_TYPES)
}
# The messages whose body may end with a load (after their fixed part, `_BODY`).
_CARRY_LOAD: Final = (Heartbeat, HeartbeatAck, LoadReport)


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


@dataclass(frozen=True)
class Refusal:
    """A peer keeps this process out: another live process holds our node id (`conflict`)."""

    by: NodeId
    conflict: IdentityConflict


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
        takeover_s: float,
        nonce: Callable[[], int],
    ) -> None:
        """`cluster_key` signs and verifies; `previous_keys` only verify (a key rotation);
        `members`, if given, are the only senders accepted (None: anyone with the key);
        `boot_id` is this process's random 64-bit nonce, `nonce` draws challenge nonces;
        `takeover_s` is how long a peer's old boot must stay silent before its new boot is
        admitted (`Sessions`), seconds."""
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
        self._sessions = Sessions(takeover_s=takeover_s, retry_s=takeover_s / 2, nonce=nonce)
        self._outgoing: list[tuple[bytes, Address]] = []
        self._about_us: dict[NodeId, Refusal | IdentityConflict] = {}
        # Loads dropped from messages that were kept, by reason (LOAD_DROP_REASONS).
        self.loads_dropped: dict[str, int] = dict.fromkeys(LOAD_DROP_REASONS, 0)

    def encode(self, recipient: NodeId, message: Message | LoadReport | Control) -> bytes:
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

    def decode(self, data: bytes, *, source: Address, now: float) -> Message | LoadReport | None:
        """The message in `data`, from `source` at `now` (monotonic seconds); None for a
        datagram the codec consumed itself (a challenge or its answer). Raises `DecodeError`,
        and nothing else, if it must be dropped. Either way, see `take_outgoing`. A malformed
        load is left out of the message and counted in `loads_dropped`."""
        try:
            return self._decode(data, source, now)
        except DecodeError:
            raise
        except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
            raise DecodeError("malformed", str(exc)) from None
        finally:
            self._queue_challenges()

    def expect(self, sender: NodeId, address: Address) -> None:
        """Where `sender` should be (configured or found by mDNS): see `Sessions.expect`."""
        self._sessions.expect(sender, address)

    def admitted(self, sender: NodeId) -> int | None:
        """The boot of `sender` admitted by challenge-response (`Sessions.admitted`), or None."""
        return self._sessions.admitted(sender)

    def take_outgoing(self) -> list[tuple[bytes, Address]]:
        """Datagrams the codec itself wants sent (challenges, answers); the list is emptied."""
        out, self._outgoing = self._outgoing, []
        return out

    def conflicts(self, now: float) -> tuple[IdentityConflict, ...]:
        """Node ids that two live processes claim, as seen here or told by peers."""
        told = (
            item.conflict if isinstance(item, Refusal) else item for item in self._about_us.values()
        )
        fresh = [c for c in told if now - c.seen_at < CONFLICT_HOLD_S]
        return (*self._sessions.conflicts(now), *fresh[:1])

    def refusals(self, now: float) -> tuple[Refusal, ...]:
        """Peers that keep this process out, because another holds our node id."""
        found = (r for r in self._about_us.values() if isinstance(r, Refusal))
        return tuple(r for r in found if now - r.conflict.seen_at < CONFLICT_HOLD_S)

    def _decode(self, data: bytes, source: Address, now: float) -> Message | LoadReport | None:
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
        message, load = _unpack_body(cls, sender, signed[offset:])
        if isinstance(message, BootChallenge):
            self._challenged(message, source, now)
            return None
        if isinstance(message, BootAnswer):
            self._answered(message, boot_id, seq, source, now)
            return None
        _check_ranges(message)
        reason = self._sessions.check(sender, boot_id, seq, source, now)
        if reason is not None:
            raise DecodeError(reason, f"{sender} boot {boot_id:#x} seq {seq}")
        return self._with_load(message, load) if load else message

    def _with_load(self, message: Message | LoadReport, data: bytes) -> Message | LoadReport:
        """`message` with the load `data` holds, or without it (counted) if it is malformed."""
        assert isinstance(message, _CARRY_LOAD)
        try:
            return dataclasses.replace(message, load=Load.decode(data))
        except DecodeError as exc:
            self.loads_dropped[exc.reason] += 1
            return message

    def _challenged(self, challenge: BootChallenge, source: Address, now: float) -> None:
        if challenge.boot not in (ANY_BOOT, self.boot_id):
            raise DecodeError("replay", f"challenge for boot {challenge.boot:#x}, not ours")
        if challenge.holder != _NO_ADDRESS or challenge.claimant != _NO_ADDRESS:
            conflict = IdentityConflict(
                self.node_id, _known(challenge.holder), _known(challenge.claimant), now
            )
            told = Refusal(challenge.sender, conflict) if challenge.refused else conflict
            self._about_us[challenge.sender] = told
        answer = BootAnswer(self.node_id, challenge.nonce)
        self._outgoing.append((self.encode(challenge.sender, answer), source))

    def _answered(
        self, answer: BootAnswer, boot_id: int, seq: int, source: Address, now: float
    ) -> None:
        if not self._sessions.answered(answer.sender, boot_id, seq, answer.nonce, source, now):
            raise DecodeError("replay", f"answer from {answer.sender} to no challenge of ours")

    def _queue_challenges(self) -> None:
        for challenge in self._sessions.take_challenges():
            self._outgoing.append(
                (self.encode(challenge.recipient, _wire(self, challenge)), challenge.to)
            )


def _unpack_body(
    cls: type[Message | LoadReport | Control], sender: NodeId, body: bytes
) -> tuple[Message | LoadReport | Control, bytes]:
    """The message of type `cls` in `body`, and the load bytes after it (if it may carry one)."""
    if cls not in _CARRY_LOAD:
        return cls._unpack(sender, body), b""
    fixed = cls._BODY.size
    return cls._unpack(sender, body[:fixed]), body[fixed:]


def _wire(codec: Codec, challenge: Challenge) -> BootChallenge:
    conflict = challenge.conflict
    if conflict is None:
        return BootChallenge(codec.node_id, challenge.nonce, challenge.boot)
    return BootChallenge(
        codec.node_id,
        challenge.nonce,
        challenge.boot,
        challenge.refused,
        _on_wire(conflict.holder),
        _on_wire(conflict.claimant),
    )


def _on_wire(address: Address | None) -> Address:
    """`address` if the wire can carry it (IPv4), else 0.0.0.0:0 (unknown)."""
    try:
        ipaddress.IPv4Address(address[0] if address else "")
    except ValueError:
        return _NO_ADDRESS
    assert address is not None
    return address


def _known(address: Address) -> Address | None:
    return None if address == _NO_ADDRESS else address


def _check_ranges(message: Message | LoadReport) -> None:
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
