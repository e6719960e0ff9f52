"""Hearings: what live listening heard, and how several hearings of one moment become one command.

`utterance_key` names an utterance's command in the journal; `Hearings` decides, among the
hearings of several sources within a window, which one runs (voice/listening.py's invariants);
`Heard` is one utterance as /api/voice/status shows it, with its outcome (`UTTERANCE_OUTCOMES`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ha_voice.voice.intents import Intent, fold
from ha_voice.voice.speech import Recognition

__all__ = ["UTTERANCE_OUTCOMES", "Heard", "Hearing", "Hearings", "utterance_key"]

# How long a hearing waits for the other sources' hearings of the same moment: recognition of
# a command takes 0.1-0.4 s on two cores (docs/benchmarks.md); past this it decides alone.
_GROUP_WAIT_S: Final = 5.0
# ran: a command ran (whatever its robot outcome); duplicate: another source's hearing ran;
# rejected/no_speech: not a command; no_wake_word: require_wake_word and none said; unavailable:
# no speech service could take it; refused: the primary could not take the command (busy, no
# longer primary, its key held another command); lost: cut off by a gap or by closing;
# listening_off: recognised after listening was switched off (`POST /api/voice/stop`), not run.
UTTERANCE_OUTCOMES: Final = (
    "ran",
    "duplicate",
    "rejected",
    "no_speech",
    "no_wake_word",
    "unavailable",
    "refused",
    "lost",
    "listening_off",
)


def utterance_key(source: str, start_s: float, phrase: str) -> str:
    """The idempotency key of an utterance: its source, its stream start rounded to 100 ms and
    the phrase, hashed into printable ASCII (a journal key has no spaces)."""
    tenths = round(start_s * 10)
    digest = hashlib.sha256(f"{source}\n{tenths}\n{fold(phrase)}".encode()).hexdigest()
    return f"listen-{digest[:32]}"


@dataclass
class Hearing:
    """One recognised utterance of one source, waiting to be run or dropped as a duplicate."""

    source: str
    start_s: float
    intent: Intent
    recognition: Recognition
    verdict: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Hearings:
    """Several sources' hearings of one moment become one command (see the module's
    invariants); bounded: the last 64 commands are remembered for the window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._pending: dict[int, tuple[str, float]] = {}  # token -> (source, start_s)
        self._waiting: list[Hearing] = []
        self._ran: collections.deque[tuple[str, float]] = collections.deque(maxlen=64)
        self._changed = asyncio.Condition()
        self._tokens = 0
        self._notifying: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def expecting(self, source: str, start_s: float) -> Iterator[None]:
        """While inside, a hearing of `source` at `start_s` may come: others wait for it."""
        self._tokens += 1
        token = self._tokens
        self._pending[token] = (source, start_s)
        try:
            yield
        finally:
            del self._pending[token]
            task = asyncio.get_running_loop().create_task(self._notify())
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def async_decide(self, hearing: Hearing, *, wait: bool) -> bool:
        """Whether `hearing` runs (True) or is a duplicate of one that does."""
        self._waiting.append(hearing)
        if wait:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: not self._others_pending(hearing)),
                        _GROUP_WAIT_S,
                    )
        if not hearing.verdict.done():
            self._settle(hearing)
        return hearing.verdict.result()

    def _near(self, a_s: float, b_s: float) -> bool:
        return abs(a_s - b_s) <= self.window_s

    def _others_pending(self, hearing: Hearing) -> bool:
        return any(
            source != hearing.source and self._near(start_s, hearing.start_s)
            for source, start_s in self._pending.values()
        )

    def _settle(self, hearing: Hearing) -> None:
        name = hearing.intent.name
        group = [
            h
            for h in self._waiting
            if h.intent.name == name and self._near(h.start_s, hearing.start_s)
        ]
        self._waiting = [h for h in self._waiting if h not in group]
        ran = any(n == name and self._near(s, hearing.start_s) for n, s in self._ran)
        best = max(group, key=lambda h: h.recognition.confidence)
        for member in group:
            member.verdict.set_result(member is best and not ran)
        if not ran:
            self._ran.append((name, best.start_s))


@dataclass(frozen=True)
class Heard:
    """One utterance as /api/voice/status shows it."""

    source: str
    start_s: float
    duration_s: float
    heard: str
    intent: str | None
    outcome: str
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "start": round(self.start_s, 3),
            "duration_s": round(self.duration_s, 3),
            "heard": self.heard,
            "intent": self.intent,
            "outcome": self.outcome,
            "key": self.key,
        }
