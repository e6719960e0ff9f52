"""What goes into the election core and what comes out of it.

Inputs are frozen dataclasses, each carrying `now`: the node's monotonic clock in seconds, read by
the shell (only `clock.py` reads it). The core returns one `Effects` per input. The shell applies
an `Effects` in this order, and only in this order:

1. `persist` and `log`: hand `HardState` and the journal changes to the disk (fsync). Writes
   are made in the order asked, and several may share one fsync (group commit).
2. `send`: hand every `Outgoing` to the transport, in order — each only once what it depends on
   is durable (`durability.py`): every message waits for a pending `HardState` (a vote or a
   message of a new term that leaves before its term is on disk can be contradicted after a
   crash), and an `AppendAck` also waits for the journal writes before it (an entry
   acknowledged before it is on disk may count towards a commit it does not back). Other
   messages leave at once: heartbeats never wait for a disk.
3. `actions`: carry out each `Action` in order. The core orders them so that the robot is
   stopped before the endpoint is withdrawn when stepping down, and the robot is made safe
   (`BecomePrimary`) before the endpoint is published when taking over.
4. `restore`, then `committed`: rebuild the journal's state from a snapshot, then apply the
   newly committed entries in order. They may be applied before this node's own copy is on
   disk: committed means a quorum holds them durably, and a primary counts itself only for
   what its disk holds (`LogPersisted`).
5. When a write with journal entries is durable, the shell feeds `LogPersisted` back in.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from ha_voice.cluster.protocol import Entry, EntryKind, LogPosition, Message, NodeId

__all__ = [
    "TAKEOVER_CAUSES",
    "Action",
    "BecomePrimary",
    "Compact",
    "Effects",
    "Event",
    "HardState",
    "LeaderProbed",
    "LogPersisted",
    "LogWrite",
    "MessageReceived",
    "Outgoing",
    "ProbeLeader",
    "ProposalRefused",
    "Propose",
    "PublishEndpoint",
    "Readiness",
    "RobotReachability",
    "RobotTermSeen",
    "Role",
    "RoleChanged",
    "Serviceability",
    "ShutdownRequested",
    "StepDownRefused",
    "StepDownRequested",
    "StopRobot",
    "Tick",
    "WithdrawEndpoint",
]


# Why a node stood for election and won (`BecomePrimary.cause`): its own probe found the old
# primary's process gone, no heartbeat for the election timeout, a transfer, a resignation.
TAKEOVER_CAUSES = ("evidence", "timeout", "transfer", "resignation")


class Role(enum.Enum):
    """What a node is doing in the election."""

    BACKUP = "backup"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    PRIMARY = "primary"
    FAULT = "fault"
    WITNESS = "witness"


@dataclass(frozen=True)
class HardState:
    """What must survive a crash: the term and whom we voted for in it (Raft §5.1, §5.2)."""

    term: int = 0
    voted_for: NodeId | None = None


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time has passed; the shell calls this no later than `Election.next_deadline`."""

    now: float


@dataclass(frozen=True)
class MessageReceived:
    """A message that the codec has authenticated arrived from a peer."""

    message: Message
    now: float


@dataclass(frozen=True)
class RobotReachability:
    """Whether this node can reach the robot; a node that cannot does not lead."""

    reachable: bool
    now: float
    reason: str = ""  # why not, in the backend's words (its connect error), when unreachable


@dataclass(frozen=True)
class RobotTermSeen:
    """The robot refused a command because it has already accepted one of `term` (a fencing
    token newer than ours): a term this node must move past, as if a peer had sent it."""

    term: int
    now: float


@dataclass(frozen=True)
class Serviceability:
    """Whether this node can serve at all (model loaded, disk writable); `reason` if not."""

    serviceable: bool
    now: float
    reason: str = ""


@dataclass(frozen=True)
class Readiness:
    """Whether this node has finished starting and its loop keeps time. Until it has, with
    preempt on, its acks do not offer it as a successor: no primary preempts (or hands over) to
    it, though it still stands for election when no primary is heard."""

    ready: bool
    now: float


@dataclass(frozen=True)
class StepDownRequested:
    """An operator asks the primary to hand over, to `target` or to the best backup."""

    now: float
    target: NodeId | None = None


@dataclass(frozen=True)
class ShutdownRequested:
    """The node is stopping: hand over if primary, then never stand for election again."""

    now: float


@dataclass(frozen=True)
class Propose:
    """The primary's shell asks for `data` to be appended to the journal and replicated."""

    kind: EntryKind
    data: bytes
    now: float


@dataclass(frozen=True)
class Compact:
    """Fold the applied entries up to `upto` into the snapshot `data` (retention)."""

    upto: int
    data: bytes
    now: float


@dataclass(frozen=True)
class LogPersisted:
    """The journal is durable up to the entry (`index`, `term`) and everything before it."""

    index: int
    term: int
    now: float


@dataclass(frozen=True)
class LeaderProbed:
    """What this node's own probe of `leader` found (`ProbeLeader`).

    `gone`: its cluster UDP port answered ICMP port unreachable and (when its API port is
    known) its API port refused a TCP connection, so no process holds them. A timeout, an
    accepted connection or anything else is not evidence (`gone` False). `started` is the
    local time the probe began: evidence counts only if nothing was heard from `leader` since.
    """

    leader: NodeId
    gone: bool
    started: float
    now: float


Event: TypeAlias = (
    Tick
    | MessageReceived
    | RobotReachability
    | RobotTermSeen
    | Serviceability
    | Readiness
    | StepDownRequested
    | ShutdownRequested
    | Propose
    | Compact
    | LogPersisted
    | LeaderProbed
)


# --- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """Send `message` to node `to`."""

    to: NodeId
    message: Message


@dataclass(frozen=True)
class StopRobot:
    """Stop commanding the robot now: end every motion stream, send nothing more."""

    reason: str


@dataclass(frozen=True)
class WithdrawEndpoint:
    """Remove the virtual endpoint (mDNS goodbye, floating IP) this node held in `term`."""

    term: int


@dataclass(frozen=True)
class BecomePrimary:
    """This node leads `term`: bring the robot to its safe state before accepting commands.

    `index` is the term's first journal entry (its NOOP): commands are accepted once it is
    committed, and the takeover's robot calls carry it in their fencing token."""

    term: int
    index: int = 0
    cause: str = "timeout"  # why this node stood: one of `TAKEOVER_CAUSES`


@dataclass(frozen=True)
class ProbeLeader:
    """Look for evidence that `leader`'s process is gone, then feed back `LeaderProbed`.

    Bounded below one heartbeat interval and never blocking the core's loop; the shell answers
    every probe it starts (a timeout is "not gone") and may answer at once "not gone" when it
    cannot probe (no address known)."""

    leader: NodeId


@dataclass(frozen=True)
class PublishEndpoint:
    """Advertise the virtual endpoint for `term` (after the robot is safe)."""

    term: int


@dataclass(frozen=True)
class RoleChanged:
    """The role moved from `old` to `new`: for logs, metrics and the notify hook."""

    old: Role
    new: Role
    term: int
    reason: str


@dataclass(frozen=True)
class StepDownRefused:
    """A step-down request was not carried out, and why (no eligible backup, not primary)."""

    reason: str


@dataclass(frozen=True)
class ProposalRefused:
    """A `Propose` was not appended: this node cannot accept commands now."""

    reason: str


Action: TypeAlias = (
    StopRobot
    | WithdrawEndpoint
    | BecomePrimary
    | PublishEndpoint
    | ProbeLeader
    | RoleChanged
    | StepDownRefused
    | ProposalRefused
)


@dataclass(frozen=True)
class LogWrite:
    """Journal changes to make durable, in this order: replace everything up to `compact_to`
    by its snapshot; drop entries from `truncate_from` on; append `entries`; note `commit`."""

    compact_to: tuple[LogPosition, bytes] | None = None
    truncate_from: int | None = None
    entries: tuple[Entry, ...] = ()
    commit: int = 0


@dataclass(frozen=True)
class Effects:
    """The outcome of one input; apply `persist`, then `send`, then `actions` (module docstring)."""

    persist: HardState | None = None
    log: LogWrite | None = None
    send: tuple[Outgoing, ...] = ()
    actions: tuple[Action, ...] = ()
    restore: bytes | None = None
    committed: tuple[Entry, ...] = ()
    proposed: Entry | None = None

    def __bool__(self) -> bool:
        return (
            self.persist is not None
            or self.log is not None
            or bool(self.send)
            or bool(self.actions)
            or self.restore is not None
            or bool(self.committed)
        )
