"""The seed's command endpoints, exactly once: `/api/robot/command`, `/api/voice/listen`.

Any node accepts a command. The primary runs it through the journal (commands.py); a backup
forwards it to the primary and returns the primary's answer (forward.py); with no primary, 503 +
Retry-After. Each command carries an idempotency key — the `Idempotency-Key` header or the
body's `idempotency_key`; the server makes one if there is none — and a retry with the same key
gets the stored answer, on any node, also after a failover.

Answers: 200 with the journal's record (`status` done, stopped or unknown); 502 when the robot
failed the command (final: retrying returns the same); 400 for a bad command or key (the list of
known commands included); 503 while no primary can take it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED, source_of
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward import forward, read_model, unavailable
from ha_voice.cluster.node import NotPrimary
from ha_voice.commands import Answer, CommandRequest
from ha_voice.journal import MAX_KEY
from ha_voice.robot.base import Action, Command, RobotError
from ha_voice.voice.intents import Match

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["commands"])
Ctx = Annotated[ApiContext, Depends(context)]

# The seed's command names, kept working beside every action name.
_SEED_ALIASES = {"stand": Action.STAND_UP, "sit": Action.SIT, "stop": Action.STOP_MOVE}
_KEY = re.compile(rf"[!-~]{{1,{MAX_KEY}}}")  # printable ASCII, no spaces


class RobotCommandBody(BaseModel):
    command: str = Field(description="stand, sit, stop (the seed's) or any action name")
    params: dict[str, float] = Field(default_factory=dict, description="e.g. vx, vy, vyaw")
    duration_s: float | None = Field(default=None, ge=0, le=60, description="for move")
    idempotency_key: str | None = Field(default=None, description="or the Idempotency-Key header")


class ListenBody(BaseModel):
    text: str = Field(min_length=1, max_length=500, description="a transcript, e.g. 'sta op'")
    idempotency_key: str | None = Field(default=None, description="or the Idempotency-Key header")


def known_commands() -> list[str]:
    return sorted([*(a.value for a in Action), *_SEED_ALIASES])


@router.get("/commands")
def commands(ctx: Ctx) -> dict[str, Any]:
    """The vocabulary of the active language, and every robot action."""
    vocabulary = ctx.active_vocabulary()
    return {
        "language": vocabulary.language,
        "commands": vocabulary.commands(),
        "actions": known_commands(),
    }


@router.post(
    "/robot/command",
    dependencies=[AUTHENTICATED],
    responses={
        **AUTH_RESPONSES,
        400: {"description": "unknown command or bad key"},
        502: {},
        503: {},
    },
)
async def robot_command(ctx: Ctx, request: Request) -> Response:
    """Run one action on the robot, exactly once per idempotency key (the seed's API)."""
    parsed = await read_model(request, RobotCommandBody, "request body")
    if isinstance(parsed, Response):
        return parsed
    raw, body = parsed
    action = _SEED_ALIASES.get(body.command) or _action(body.command)
    if action is None:
        return JSONResponse(
            {"error": f"unknown command {body.command!r}", "known": known_commands()}, 400
        )
    try:
        Command(action, body.params)  # checks parameter names and bounds
    except RobotError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    key = _key(request, body.idempotency_key)
    if isinstance(key, JSONResponse):
        return key
    command = CommandRequest(
        key, action, body.params, body.duration_s, body.command, _source(request)
    )
    started = time.perf_counter()
    answer = await _submit(ctx, request, raw, command)
    if not isinstance(answer, Answer):
        return answer
    return _answer(ctx, answer, started, {"command": action.value})


@router.post(
    "/voice/listen",
    dependencies=[AUTHENTICATED],
    responses={**AUTH_RESPONSES, 400: {}, 502: {}, 503: {}},
)
async def listen(ctx: Ctx, request: Request) -> Response:
    """A transcript in, the seed's answer out: status, recognized, processed, response."""
    parsed = await read_model(request, ListenBody, "request body")
    if isinstance(parsed, Response):
        return parsed
    raw, body = parsed
    if not ctx.node.journal.settings.listening:
        return _rejected(ctx, body.text, "not listening (POST /api/voice/start to listen again)")
    started = time.perf_counter()
    found = ctx.active_vocabulary().match(body.text)
    match_ms = round((time.perf_counter() - started) * 1000, 2)
    if not isinstance(found, Match):
        return _rejected(
            ctx,
            body.text,
            found.reason,
            intent=found.candidate.name if found.candidate else None,
            timings={"match_ms": match_ms},
        )
    intent = found.intent
    seed = {"recognized": body.text, "response": intent.response, "intent": intent.name}
    if intent.action is None:
        return JSONResponse({"status": "success", "processed": False, **seed, **_who(ctx)})
    key = _key(request, body.idempotency_key)
    if isinstance(key, JSONResponse):
        return key
    command = CommandRequest(
        key, intent.action, intent.action_params, intent.duration_s, body.text, _source(request)
    )
    answer = await _submit(ctx, request, raw, command)
    if not isinstance(answer, Answer):
        return answer
    record = answer.record
    ok = record.status != "failed"
    extra = {
        "status": "success" if ok else "error",
        "processed": record.status == "done",
        **seed,
        "score": round(found.score, 3),
        "outcome": record.status,
    }
    response = _answer(ctx, answer, started, extra)
    return response


# --- the pieces -------------------------------------------------------------------------------


async def _submit(
    ctx: ApiContext, request: Request, raw: bytes, command: CommandRequest
) -> Answer | Response:
    """The journal's answer on the primary; the primary's answer (forwarded) elsewhere."""
    service = ctx.commands
    if service is None or not service.ready():
        known = ctx.node.journal.get(command.key)
        if known is not None and known.final:  # answered before: any node can say so
            return Answer(known, duplicate=True)
        why = "this node is not the primary" if service is None else _why(ctx)
        return await forward(ctx, request, raw, why)
    try:
        answer = await service.submit(command)
    except NotPrimary as exc:
        return unavailable(ctx, exc.reason)
    if answer.duplicate:
        ctx.metrics.command_duplicates.inc()
    else:
        ctx.metrics.commands.labels(answer.record.status).inc()
    return answer


def _answer(ctx: ApiContext, answer: Answer, started: float, extra: dict[str, Any]) -> Response:
    record = answer.record
    body = {
        "status": record.status,
        "detail": record.outcome,
        "key": record.key,
        "index": record.index,
        "executed_by": record.executed_by,
        "duplicate": answer.duplicate,
        **extra,
        **_who(ctx),
        "journal_term": record.term,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if record.status == "unknown":
        body["detail"] = record.outcome or "outcome unknown; not repeated"
    return JSONResponse(body, 502 if record.status == "failed" else 200)


def _key(request: Request, in_body: str | None) -> str | JSONResponse:
    header = request.headers.get("idempotency-key")
    if header and in_body and header != in_body:
        return JSONResponse(
            {"error": "Idempotency-Key header and body idempotency_key differ; send one"}, 400
        )
    key = header or in_body or str(uuid.uuid4())
    if not _KEY.fullmatch(key):
        return JSONResponse(
            {
                "error": f"idempotency key must be 1 to {MAX_KEY} printable ASCII characters "
                "without spaces (a UUID is ideal)"
            },
            400,
        )
    return key


def _source(request: Request) -> str:
    """Who really sent it: the token's name or the trusted address, and the forwarding member
    (only when its seal verified, auth.py)."""
    return source_of(request)


def _rejected(ctx: ApiContext, text: str, reason: str, **extra: Any) -> JSONResponse:
    """The seed's answer to a transcript that runs nothing."""
    body = {"status": "rejected", "recognized": text, "processed": False, "response": None}
    return JSONResponse({**body, "reason": reason, **extra, **_who(ctx)})


def _action(name: str) -> Action | None:
    try:
        return Action(name)
    except ValueError:
        return None


def _why(ctx: ApiContext) -> str:
    election = ctx.node.view
    if election.role.value != "primary":
        return f"{election.node_id} is {election.role.value}, not primary"
    return "taking over: settling the journal"


def _who(ctx: ApiContext) -> dict[str, Any]:
    election = ctx.node.view
    return {"node": election.node_id, "term": election.term, "leader": election.leader}
