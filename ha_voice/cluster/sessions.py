"""Which incarnation (boot) of each peer we listen to, and who else claims its node id.

A boot id is a random 64-bit nonce a process draws when it starts; boot ids order nothing, so no
calendar (a Jetson without an RTC battery before NTP, a reset state directory) can make a live
node look older than a dead one.

Invariants:
- Pure: no socket, no clock. `now` is the shell's monotonic time, in seconds.
- A sender's packets are accepted from one boot at a time, its admitted boot, within a 64-packet
  sliding window over its sequence numbers (RFC 4303 §3.4.3): reordering is accepted,
  duplicates are not. The first boot heard from a sender is admitted as is: the election copes
  with old and duplicated messages by design (Raft), the window only keeps duplicates out.
- Any other boot is a claim: its packets are dropped (`unverified_boot`) and it is challenged
  with a fresh nonce at the address it spoke from, while the admitted boot is probed at its own
  (at most once per `retry_s`). The claim is admitted only once it has answered its nonce (so a
  recorded packet of a dead boot can never get in) and the admitted boot, probed, stayed silent
  for `takeover_s` (so a second live process with the same node id never displaces the first).
- Both alive (the claim answered, and so did the admitted boot to a probe sent after the claim
  appeared): an identity conflict, named
  with both addresses for `CONFLICT_HOLD_S` after it was last seen; the claimant is told it is
  refused and by whom, the holder is told who else claims it.
- Bounded: at most `MAX_TRACKED_SENDERS` senders, one claim each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "CONFLICT_HOLD_S",
    "MAX_TRACKED_SENDERS",
    "REPLAY_WINDOW",
    "Challenge",
    "IdentityConflict",
    "Sessions",
]

Address = tuple[str, int]

REPLAY_WINDOW: Final = 64
# A challenge for boot 0 asks "whoever you are": any boot answers it (boot ids are never 0).
ANY_BOOT: Final = 0
# Senders tracked; the least recently heard is forgotten beyond this.
MAX_TRACKED_SENDERS: Final = 1024
# A conflict is reported this long after its last sign: long enough that a conflict seen once a
# retry interval never flickers in /cluster, short enough that a settled one clears soon.
CONFLICT_HOLD_S: Final = 30.0


def _format(address: Address | None) -> str:
    return "an unknown address" if address is None else f"{address[0]}:{address[1]}"


@dataclass(frozen=True)
class IdentityConflict:
    """Two live processes claim `node_id`: `holder` is admitted here, `claimant` is refused."""

    node_id: str
    holder: Address | None
    claimant: Address | None
    seen_at: float  # monotonic seconds, last sign of both

    def describe(self) -> str:
        """The one sentence that names it, the same in the log, /cluster and /health."""
        return (
            f"two processes claim node_id {self.node_id}: {_format(self.holder)} "
            f"and {_format(self.claimant)}"
        )


@dataclass(frozen=True)
class Challenge:
    """To send: "prove that you are boot `boot` of `recipient`, by answering `nonce`".

    With `conflict`, it also tells the recipient that two processes claim its node id;
    `refused` says the recipient is the claimant kept out.
    """

    to: Address
    recipient: str
    nonce: int
    boot: int
    conflict: IdentityConflict | None = None
    refused: bool = False


@dataclass
class _Claim:
    boot: int
    address: Address
    nonce: int
    first_seen_at: float
    challenged_at: float
    proven: bool = False


@dataclass
class _Session:
    boot: int  # ANY_BOOT: none admitted yet, probing the address the sender should be at
    highest: int
    window: int
    heard_at: float
    address: Address | None
    probe_nonce: int | None = None  # outstanding, unanswered
    probe_sent_at: float = -float("inf")
    probe_answered_at: float = -float("inf")
    claim: _Claim | None = None
    conflict: IdentityConflict | None = field(default=None)


class Sessions:
    """Per sender: the admitted boot and its replay window, a pending claim, a conflict."""

    def __init__(self, *, takeover_s: float, retry_s: float, nonce: Callable[[], int]) -> None:
        """`takeover_s`: how long an admitted boot must stay silent, once probed, before a new
        boot of the same sender replaces it; `retry_s`: at most one challenge per sender this
        often; `nonce`: fresh unpredictable 64-bit integers."""
        self._takeover_s = takeover_s
        self._retry_s = retry_s
        self._nonce = nonce
        self._senders: OrderedDict[str, _Session] = OrderedDict()
        self._outbox: list[Challenge] = []
        self._expected: dict[str, Address] = {}

    def expect(self, sender: str, address: Address) -> None:
        """`sender` should speak from `address` (configured, or found by mDNS): a first packet
        from anywhere else is admitted only once the process there has been asked too."""
        self._expected[sender] = address

    def check(self, sender: str, boot: int, seq: int, source: Address, now: float) -> str | None:
        """The drop reason for this packet, or None to accept it (then it is recorded)."""
        session = self._senders.get(sender)
        expected = self._expected.get(sender)
        if session is None and expected in (None, source):
            self._admit(sender, boot, seq, source, now)
            return None
        if session is None:
            session = _Session(ANY_BOOT, 0, 0, -float("inf"), expected)
            self._senders[sender] = session
        if boot == session.boot:
            reason = _window_check(session, seq)
            if reason is None:
                _window_accept(session, seq)
                session.heard_at, session.address = now, source
                self._maybe_conflict(sender, session, now)
            return reason
        return self._claim(sender, session, boot, seq, source, now)

    def answered(
        self, sender: str, boot: int, seq: int, nonce: int, source: Address, now: float
    ) -> bool:
        """Whether this is the answer to one of our challenges (then it is recorded)."""
        session = self._senders.get(sender)
        if session is None:
            return False
        if nonce == session.probe_nonce and session.boot in (ANY_BOOT, boot):
            if session.boot == ANY_BOOT:  # the process at the expected address is this boot
                session.boot, session.highest, session.window = boot, seq, 1
                if session.claim is not None and session.claim.boot == boot:
                    session.claim = None  # one process, seen from two addresses
            session.probe_nonce = None
            session.probe_answered_at = now
            session.heard_at, session.address = now, source
            self._maybe_conflict(sender, session, now)
            return True
        claim = session.claim
        if claim is None or claim.boot != boot or claim.nonce != nonce:
            return False
        claim.proven, claim.address = True, source
        self._maybe_admit(sender, session, seq, now)
        return True

    def admitted(self, sender: str) -> int | None:
        """The boot of `sender` whose packets are accepted now, None if none is admitted."""
        session = self._senders.get(sender)
        return None if session is None or session.boot == ANY_BOOT else session.boot

    def take_challenges(self) -> list[Challenge]:
        """The challenges to send now, oldest first; the list is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def conflicts(self, now: float) -> tuple[IdentityConflict, ...]:
        """Identity conflicts seen in the last `CONFLICT_HOLD_S`, by node id."""
        found = (s.conflict for s in self._senders.values() if s.conflict is not None)
        live = (c for c in found if now - c.seen_at < CONFLICT_HOLD_S)
        return tuple(sorted(live, key=lambda c: c.node_id))

    # --- claims ----------------------------------------------------------------------------

    def _claim(
        self,
        sender: str,
        session: _Session,
        boot: int,
        seq: int,
        source: Address,
        now: float,
    ) -> str | None:
        claim = session.claim
        if claim is None or claim.boot != boot:
            claim = _Claim(boot, source, self._nonce(), now, -float("inf"))
            session.claim = claim
        if claim.proven and self._maybe_admit(sender, session, seq, now):
            return None
        if now - claim.challenged_at >= self._retry_s:
            claim.challenged_at = now
            claim.address = source
            self._challenge_both(sender, session, claim)
        return "identity_conflict" if session.conflict is not None else "unverified_boot"

    def _challenge_both(self, sender: str, session: _Session, claim: _Claim) -> None:
        conflict = session.conflict
        self._outbox.append(
            Challenge(
                claim.address, sender, claim.nonce, claim.boot, conflict, conflict is not None
            )
        )
        if session.address is not None and not _probe_pending(session, claim):
            session.probe_nonce, session.probe_sent_at = self._nonce(), claim.challenged_at
            self._outbox.append(
                Challenge(session.address, sender, session.probe_nonce, session.boot, conflict)
            )

    def _maybe_admit(self, sender: str, session: _Session, seq: int, now: float) -> bool:
        """Admit the proven claim if the admitted boot stayed silent; True if it was."""
        claim = session.claim
        assert claim is not None
        self._maybe_conflict(sender, session, now)
        if session.address is not None and (
            not _probe_pending(session, claim) or now - session.probe_sent_at < self._takeover_s
        ):
            return False  # asked too recently, or it answered: the holder lives
        if now - claim.first_seen_at < self._takeover_s:
            return False
        self._admit(sender, claim.boot, seq, claim.address, now)
        return True

    def _maybe_conflict(self, sender: str, session: _Session, now: float) -> None:
        """Both alive: a proven claim, and the admitted boot answered a probe drawn after the
        claim appeared (a packet of a dead boot still in flight proves nothing)."""
        claim = session.claim
        if claim is None or not claim.proven or session.probe_answered_at < claim.first_seen_at:
            return
        session.conflict = IdentityConflict(sender, session.address, claim.address, now)

    def _admit(self, sender: str, boot: int, seq: int, source: Address, now: float) -> None:
        self._senders[sender] = _Session(boot, seq, 1, now, source)
        self._senders.move_to_end(sender)
        while len(self._senders) > MAX_TRACKED_SENDERS:
            self._senders.popitem(last=False)


def _probe_pending(session: _Session, claim: _Claim) -> bool:
    """Whether the admitted boot was probed since `claim` appeared and has been silent since.

    A probe is sent only when none is pending, so that silence can last `takeover_s`."""
    return (
        session.probe_nonce is not None
        and session.probe_sent_at >= claim.first_seen_at
        and session.heard_at < session.probe_sent_at
    )


def _window_check(session: _Session, seq: int) -> str | None:
    if seq > session.highest:
        return None
    offset = session.highest - seq
    if offset >= REPLAY_WINDOW or session.window >> offset & 1:
        return "replay"
    return None


def _window_accept(session: _Session, seq: int) -> None:
    if seq - session.highest >= REPLAY_WINDOW:
        session.window, session.highest = 1, seq  # everything older has slid out of the window
    elif seq > session.highest:
        shifted = session.window << (seq - session.highest) | 1
        session.window = shifted & ((1 << REPLAY_WINDOW) - 1)
        session.highest = seq
    else:
        session.window |= 1 << (session.highest - seq)
