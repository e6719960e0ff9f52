"""Exactly-once commands on the primary: journal first, then the robot, then the outcome.

For one command with idempotency key K the primary:
1. answers with the stored outcome if K is in the journal, or waits for the one in flight;
2. appends a COMMAND entry and waits until a quorum holds it (committed);
3. sends it to the robot through the guard, under the fencing token (term, its index);
4. appends the OUTCOME (with the robot's posture) and waits until that is committed;
5. answers.

Invariants:
- Nothing reaches the robot before its entry is committed, so a command a new primary does not
  know was never executed, and a client's retry of it runs it once.
- A new primary accepts commands only once its first entry is committed (so its journal holds
  every earlier committed command and its keys) and every command left without an outcome is
  settled: re-run if idempotent and younger than `reexecute_window_s`, else marked `unknown` —
  it may or may not have run, and is never repeated.
- A key is in flight at most once per primary: a second request for it waits for the first.
- A key names one command (action, parameters, duration): the same key with another command is
  refused (`KeyConflict`, naming the command the key holds), in flight or answered, never
  answered with the other command's outcome. Except a stop: a stop is always taken, so a stop
  whose key holds another command runs under a new key, and its answer says so (`note`).
- At most `max_pending` commands are in flight; one more is refused at once (`Busy`) and never
  enters the journal. STOP_MOVE is never refused for that: it preempts what waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ha_voice.cluster.events import Role
from ha_voice.cluster.node import ClusterNode, NotPrimary
from ha_voice.cluster.protocol import Entry, EntryKind
from ha_voice.errors import HAVoiceError
from ha_voice.journal import (
    CommandRecord,
    Settings,
    Status,
    command_entry,
    outcome_entry,
    settings_entry,
)
from ha_voice.robot.base import ACTIONS, Action, Command, RobotError
from ha_voice.robot.guard import Guard, NotLeading, Outcome

__all__ = [
    "Answer",
    "Busy",
    "CommandRequest",
    "CommandService",
    "KeyConflict",
    "conflict",
    "held_note",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandRequest:
    key: str
    action: Action
    params: Mapping[str, float]
    duration_s: float | None = None
    text: str = ""
    source: str = ""


class KeyConflict(HAVoiceError):
    """The idempotency key already holds another command: its action, params and duration."""

    def __init__(
        self, key: str, action: str, params: Mapping[str, float], duration_s: float | None
    ) -> None:
        super().__init__(f"idempotency key {key} already holds {action}")
        self.key = key
        self.action = action
        self.params = dict(params)
        self.duration_s = duration_s


class Busy(HAVoiceError):
    """Too many commands are in flight on this primary to take one more now."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"{pending} commands are waiting for the journal or the robot")
        self.pending = pending


def conflict(
    key: str,
    action: str,
    params: Mapping[str, float],
    duration_s: float | None,
    new: CommandRequest,
) -> KeyConflict | None:
    """None if `new` is the command that `key` holds (action, params, duration); else the
    KeyConflict naming the held one."""
    same = (
        action == new.action.value
        and dict(params) == dict(new.params)
        and duration_s == new.duration_s
    )
    return None if same else KeyConflict(key, action, params, duration_s)


def held_note(clash: KeyConflict, new_key: str) -> str:
    """What a stop's answer says when its key held another command."""
    return (
        f"idempotency key {clash.key} holds {clash.action}; a stop is always taken, so this "
        f"one ran under the new key {new_key}"
    )


@dataclass(frozen=True)
class Answer:
    """The journal's record of a finished command; `duplicate` if it was answered before;
    `note` if it ran otherwise than asked (a stop under a new key)."""

    record: CommandRecord
    duplicate: bool
    note: str | None = None


class CommandService:
    """The primary's side of the journal: one instance per node, active while it leads."""

    def __init__(self, node: ClusterNode, guard: Guard | None, *, reexecute_window_s: float):
        self._node = node
        self._guard = guard
        self._reexecute_window_s = reexecute_window_s
        self._ready_term: int | None = None
        self._takeover_problem: tuple[int, str] | None = None  # (term, why not ready yet)
        self._inflight: dict[str, tuple[CommandRequest, asyncio.Future[Answer]]] = {}

    @property
    def node_id(self) -> str:
        return self._node.node_id

    def leading(self, term: int) -> bool:
        """Whether this node still leads `term`."""
        view = self._node.view
        return view.term == term and view.role is Role.PRIMARY

    def ready(self) -> bool:
        view = self._node.view
        return self._ready_term == view.term and view.role is Role.PRIMARY

    def not_ready_reason(self) -> str | None:
        """Why this primary cannot serve (its takeover is not done, or the robot follows a
        newer term), or None: ready, or not primary at all."""
        view = self._node.view
        if view.role is not Role.PRIMARY:
            return None
        if self.ready():
            robot_term = None if self._guard is None else self._guard.robot_term
            if robot_term is None or robot_term <= view.term:
                return None
            return (
                f"term {view.term}: the robot follows term {robot_term}: another primary "
                "commands it (a two_node partition, or another cluster on this robot); every "
                f"command here fails while this node stays in term {view.term}"
            )
        problem = self._takeover_problem
        if problem is not None and problem[0] == view.term:
            return f"term {view.term}: robot not made safe yet ({problem[1]})"
        return f"term {view.term}: taking over (robot to its safe state, journal settling)"

    def takeover_failed(self, term: int, why: str) -> None:
        """Note why the takeover of `term` has not succeeded yet (`not_ready_reason`)."""
        self._takeover_problem = (term, why)

    # --- takeover --------------------------------------------------------------------------

    async def take_over(self, term: int, index: int, on_takeover: str) -> None:
        """Make the robot safe, wait for our first entry (`index`, a NOOP) to commit, settle the
        unfinished; NotPrimary if we stop leading first."""
        noop = Entry(index, term, EntryKind.NOOP)
        if self._guard is not None:
            await self._guard.take_over("stop" if on_takeover == "stop" else "none", noop.index)
        if not await self._node.committed(noop):
            raise NotPrimary(f"term {term}: our first entry did not commit")
        for record in self._node.journal.unfinished():
            await self._settle(record)
        if self._node.view.term == term:
            self._ready_term = term
            log.info("term %d: journal settled at %d, accepting commands", term, noop.index)

    async def _settle(self, record: CommandRecord) -> None:
        action = Action(record.action)
        young = time.time() - record.accepted_at <= self._reexecute_window_s
        if ACTIONS[action].idempotent and young:
            log.info(
                "re-running %s (index %d): its outcome was never recorded",
                action.value,
                record.index,
            )
            await self._run_and_record(record)
            return
        why = (
            "idempotent but too old to repeat" if ACTIONS[action].idempotent else ("not idempotent")
        )
        detail = (
            "the primary that ran it failed before recording its outcome; it may or may not "
            f"have run, and is not repeated ({why})"
        )
        await self._record(record, "unknown", detail)

    # --- commands --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Commands in flight: accepted and not answered yet."""
        return len(self._inflight)

    async def submit(self, request: CommandRequest, *, max_pending: int | None = None) -> Answer:
        """Run `request` exactly once, or answer what became of it; NotPrimary if we cannot,
        KeyConflict if its key holds another command (a stop then runs under a new key), Busy
        past `max_pending` in flight."""
        clash = self._conflict(request)
        if clash is not None:
            if request.action is not Action.STOP_MOVE:
                raise clash
            fresh = replace(request, key=str(uuid.uuid4()))
            answer = await self.submit(fresh, max_pending=max_pending)
            return replace(answer, note=held_note(clash, fresh.key))
        key = request.key
        known = self._node.journal.get(key)
        if known is not None and known.final:
            return Answer(known, duplicate=True)
        waiting = self._inflight.get(key)
        if waiting is not None:
            answer = await asyncio.shield(waiting[1])
            return Answer(answer.record, duplicate=True)
        if not self.ready():
            raise NotPrimary(self._why_not())
        if known is not None:  # committed, unfinished, not ours: settled at takeover
            raise NotPrimary("the command is being settled after a takeover")
        full = max_pending is not None and self.pending >= max_pending
        if full and request.action is not Action.STOP_MOVE:
            raise Busy(self.pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (request, future)
        try:
            answer = await self._append_and_run(request)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else NotPrimary("cancelled"))
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(request.key, None)
        future.set_result(answer)
        return answer

    def _conflict(self, request: CommandRequest) -> KeyConflict | None:
        """The conflict if `request`'s key holds another command, answered or in flight."""
        known = self._node.journal.get(request.key)
        if known is not None:
            return conflict(request.key, known.action, known.params, known.duration_s, request)
        waiting = self._inflight.get(request.key)
        if waiting is not None:
            first = waiting[0]
            return conflict(
                request.key, first.action.value, first.params, first.duration_s, request
            )
        return None

    async def _append_and_run(self, request: CommandRequest) -> Answer:
        data = command_entry(
            key=request.key,
            action=request.action.value,
            params=request.params,
            duration_s=request.duration_s,
            text=request.text,
            source=request.source,
            at=time.time(),
        )
        entry = await self._node.propose(EntryKind.COMMAND, data)
        if not await self._node.committed(entry):
            raise NotPrimary("another primary's entry took our command's place")
        record = self._node.journal.records.get(entry.index)
        if record is None or record.key != request.key:
            raise NotPrimary("our command was not applied where it was appended")
        return Answer(await self._run_and_record(record), duplicate=False)

    async def _run_and_record(self, record: CommandRecord) -> CommandRecord:
        outcome = await self._execute(record)
        status: Status = outcome.status
        return await self._record(record, status, outcome.detail)

    async def _execute(self, record: CommandRecord) -> Outcome:
        if self._guard is None:
            return Outcome("failed", None, 'this node has no robot (robot = "none")')
        command = Command(Action(record.action), record.params)
        try:
            return await self._guard.execute(
                command, duration_s=record.duration_s, index=record.index
            )
        except NotLeading as exc:
            raise NotPrimary(exc.reason) from exc
        except RobotError as exc:
            return Outcome("failed", None, str(exc))

    async def _record(self, record: CommandRecord, status: Status, detail: str) -> CommandRecord:
        posture = await self._posture()
        data = outcome_entry(record.index, status, detail, self.node_id, time.time(), posture)
        entry = await self._node.propose(EntryKind.OUTCOME, data)
        if not await self._node.committed(entry):
            raise NotPrimary("the outcome was not committed")
        done = self._node.journal.records.get(record.index)
        assert done is not None
        assert done.final
        return done

    async def _posture(self) -> str | None:
        if self._guard is None:
            return None
        try:
            return (await self._guard.robot_state()).mode.name.lower()
        except RobotError:
            return None

    # --- settings --------------------------------------------------------------------------

    async def change_settings(self, **changes: object) -> Settings:
        """Replicate a runtime setting (listening, language); the journal's settings after."""
        if not self.ready():
            raise NotPrimary(self._why_not())
        entry = await self._node.propose(EntryKind.STATE, settings_entry(**changes))
        if not await self._node.committed(entry):
            raise NotPrimary("the setting was not committed")
        return self._node.journal.settings

    def _why_not(self) -> str:
        view = self._node.view
        if view.role is not Role.PRIMARY:
            return f"{view.node_id} is {view.role.value}, not primary"
        return "taking over: settling the journal"
