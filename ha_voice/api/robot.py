"""The seed's command endpoint, exactly once: `/api/robot/command` (and the pieces that
`/api/voice/listen`, api/voice.py, shares with it).

Any node accepts a command. The primary runs it through the journal (commands.py); a backup
forwards it to the primary and returns the primary's answer (forward.py); with no primary, 503 +
Retry-After. Each command carries an idempotency key — the `Idempotency-Key` header or the
body's `idempotency_key`; the server makes one if there is none — and a retry with the same key
gets the stored answer, on any node, also after a failover; the same key with another command
gets 409 naming the command it holds. A stop is always taken: a stop whose key holds another
command runs under a new key, and the answer's `key` and `note` say so.

Answers: 200 with the journal's record (`status` done, stopped or unknown); 502 when the robot
failed the command (final: retrying returns the same); 400 for a bad command or key (the list of
known commands included); 409 for a key that holds another command; 413/415/422 for a body that
is too large, not JSON or not the schema (a duration on anything but a move, a key twice in
one object); 429 for a client over its rate or a full queue; 503 while no primary can take it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED, source_of
from ha_voice.api.body import JsonBody
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward import forward, unavailable
from ha_voice.api.limits import rate_limited
from ha_voice.api.problems import ApiError, HeldCommand, error_responses, quote
from ha_voice.api.view import cluster_view
from ha_voice.cluster.node import NotPrimary
from ha_voice.commands import Answer, Busy, CommandRequest, KeyConflict, conflict
from ha_voice.journal import MAX_KEY
from ha_voice.robot.base import ACTIONS, Action, Command, RobotError

__all__ = [
    "KEY_FIELD",
    "KEY_HEADER",
    "KEY_PATTERN",
    "STRICT",
    "WRITE_ERRORS",
    "CommandAnswer",
    "idempotency_key",
    "journal_answer",
    "rejected",
    "router",
    "run_here",
    "submit",
    "who",
]

router = APIRouter(prefix="/api", tags=["commands"])
Ctx = Annotated[ApiContext, Depends(context)]

# The seed's command names, kept working beside every action name.
_SEED_ALIASES = {"stand": Action.STAND_UP, "sit": Action.SIT, "stop": Action.STOP_MOVE}
KEY_PATTERN: Final = rf"^[!-~]{{1,{MAX_KEY}}}$"  # printable ASCII, no spaces
# Strict JSON types (no "1" for a number), finite numbers only, and no unknown fields: a
# misspelt `duration` must not silently become a move of no duration.
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
KEY_FIELD = Field(
    default=None,
    pattern=KEY_PATTERN,
    description="or the Idempotency-Key header (both: the same key, else 400); printable ASCII, "
    "no spaces, a UUID is ideal",
)
WRITE_ERRORS = (413, 415, 422, 429, 503)


def known_commands() -> list[str]:
    """Every name the command route takes, once each (a seed alias may be an action's name)."""
    return sorted({*(a.value for a in Action), *_SEED_ALIASES})


class RobotCommandBody(BaseModel):
    model_config = STRICT

    command: str = Field(
        max_length=64, description="stand, sit, stop (the seed's) or any action name"
    )
    params: dict[str, float] = Field(default_factory=dict, description="e.g. vx, vy, vyaw")
    duration_s: float | None = Field(
        default=None, ge=0, le=60, description="seconds to walk; for move only"
    )
    idempotency_key: str | None = KEY_FIELD


class CommandAnswer(BaseModel):
    """The journal's record of a command, as any node answers it."""

    status: str = Field(description="done, stopped, failed (with 502) or unknown")
    detail: str
    key: str
    index: int
    executed_by: str | None
    duplicate: bool = Field(description="answered from the journal: the key was known")
    command: str = Field(description="the action the key holds")
    node: str
    term: int
    leader: str | None
    journal_term: int
    elapsed_ms: float
    note: str | None = Field(
        default=None, description="a stop whose key held another command: it ran under `key`"
    )


def _robot_command_schema() -> dict[str, Any]:
    """RobotCommandBody as JSON Schema, one variant per action: its names and its parameters
    with their bounds, so that every body the schema allows is one the route takes."""
    base = RobotCommandBody.model_json_schema()["properties"]
    variants = []
    for action, spec in ACTIONS.items():
        names = [action.value, *(seed for seed, a in _SEED_ALIASES.items() if a is action)]
        params = {
            name: {"type": "number", "minimum": low, "maximum": high}
            for name, (low, high) in spec.params.items()
        }
        properties = {
            **{name: field for name, field in base.items() if name != "duration_s"},
            "command": {**base["command"], "enum": names},
            "params": {"type": "object", "properties": params, "additionalProperties": False},
        }
        if action is Action.MOVE:
            properties["duration_s"] = base["duration_s"]
        variants.append(
            {
                "type": "object",
                "title": action.value,
                "properties": properties,
                "required": ["command"],
                "additionalProperties": False,
            }
        )
    return {"title": "RobotCommandBody", "oneOf": variants}


_ROBOT_BODY: Final = JsonBody(
    RobotCommandBody,
    '{"command": "stand"} or {"command": "move", "params": {"vx": 0.3}}',
    schema=_robot_command_schema(),
)
KEY_HEADER: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": KEY_PATTERN},
    "description": "the same key on every retry runs the command once",
}


def command_openapi(body: JsonBody[Any]) -> dict[str, Any]:
    return {**body.openapi(), "parameters": [KEY_HEADER]}


@router.get("/commands")
async def commands(ctx: Ctx) -> dict[str, Any]:
    """The active language's phrases as the seed lists them (`commands`: strings), each intent
    with its action, parameters, phrases and response (`intents`), and every robot action."""
    vocabulary = ctx.active_vocabulary()
    intents = vocabulary.commands()
    return {
        "language": vocabulary.language,
        "commands": [phrase for intent in intents for phrase in intent["phrases"]],
        "intents": intents,
        "actions": known_commands(),
    }


_Route = TypeVar("_Route", bound=Callable[..., Awaitable[Response]])


def _command_route(
    path: str, body: JsonBody[Any], answer: type[BaseModel], ok: str
) -> Callable[[_Route], _Route]:
    """POST `path`: authenticated, rate-limited, its body and every status it returns in the
    schema (502: the robot failed the command, recorded and final)."""
    return router.post(
        path,
        dependencies=[AUTHENTICATED, rate_limited],
        openapi_extra=command_openapi(body),
        response_class=JSONResponse,
        responses={
            200: {"model": answer, "description": ok},
            502: {"model": answer, "description": "the robot failed the command (final)"},
            **error_responses(400, 409, *WRITE_ERRORS),
            **AUTH_RESPONSES,
        },
    )


@_command_route("/robot/command", _ROBOT_BODY, CommandAnswer, "the command's outcome")
async def robot_command(ctx: Ctx, request: Request) -> Response:
    """Run one action on the robot, exactly once per idempotency key (the seed's API)."""
    raw, body = await _ROBOT_BODY.read(request, ctx.config.api_max_body_bytes)
    assert body is not None
    action = _SEED_ALIASES.get(body.command) or _action(body.command)
    if action is None:
        raise ApiError(
            400,
            "unknown_command",
            f"command: unknown command {quote(body.command)}",
            field="command",
            known=known_commands(),
        )
    if body.duration_s is not None and action is not Action.MOVE:
        raise ApiError(
            422,
            "invalid",
            f"duration_s: only move takes a duration; {action.value} takes none",
            field="duration_s",
        )
    _check_params(action, body.params)
    key = idempotency_key(request, body.idempotency_key)
    command = CommandRequest(
        key, action, body.params, body.duration_s, body.command, source_of(request)
    )
    started = time.perf_counter()
    answer = await submit(ctx, request, raw, command)
    if not isinstance(answer, Answer):
        return answer
    return journal_answer(ctx, answer, started, {"command": answer.record.action})


# --- the pieces -------------------------------------------------------------------------------


async def submit(
    ctx: ApiContext,
    request: Request,
    raw: bytes,
    command: CommandRequest,
    *,
    content_type: str | None = None,
) -> Answer | Response:
    """The journal's answer on the primary; elsewhere the primary's answer to `raw` sent to the
    same route (as `content_type`, else as the client's request said)."""
    service = ctx.commands
    try:
        if service is None or not service.ready():
            known = ctx.node.journal.get(command.key)
            if known is not None:  # answered before, or held: any node can say so
                clash = conflict(command.key, known.action, known.params, known.duration_s, command)
                if clash is None and known.final:
                    return Answer(known, duplicate=True)
                if clash is not None and command.action is not Action.STOP_MOVE:
                    raise clash  # a stop goes on: the primary runs it under a new key
            why = "this node is not the primary" if service is None else _why(ctx)
            return await forward(ctx, request, raw, why, content_type=content_type)
        return await run_here(ctx, command)
    except NotPrimary as exc:
        return unavailable(ctx, exc.reason)
    except KeyConflict as exc:
        raise _conflict(exc) from None
    except Busy as exc:
        raise ApiError(
            429,
            "queue_full",
            f"{exc.pending} commands already wait for the robot (max_pending_commands); "
            "try again shortly",
            headers={"Retry-After": "1"},
            retry_after_s=1.0,
        ) from None


async def run_here(ctx: ApiContext, command: CommandRequest) -> Answer:
    """The journal's answer to `command` on this primary, counted in the metrics; NotPrimary,
    KeyConflict or Busy (CommandService.submit) when it cannot run it here."""
    assert ctx.commands is not None
    answer = await ctx.commands.submit(command, max_pending=ctx.config.max_pending_commands)
    if answer.duplicate:
        ctx.metrics.command_duplicates.inc()
    else:
        ctx.metrics.commands.labels(answer.record.status).inc()
    return answer


def _conflict(exc: KeyConflict) -> ApiError:
    held = exc.action + (f" with params {json.dumps(exc.params)}" if exc.params else "")
    held += f" for {exc.duration_s:g} s" if exc.duration_s is not None else ""
    return ApiError(
        409,
        "key_reused",
        f"idempotency key {exc.key} already holds {held}; a different command needs a new key",
        key=exc.key,
        held=HeldCommand(command=exc.action, params=exc.params, duration_s=exc.duration_s),
    )


def _check_params(action: Action, params: dict[str, float]) -> None:
    """400 naming the first parameter `action` does not take, or one out of its bounds."""
    takes = ACTIONS[action].params
    for name in params:
        if name not in takes:
            accepted = ", ".join(takes) or "no parameters"
            raise ApiError(
                400,
                "bad_params",
                f"params: {action.value} takes no {quote(name)}; it takes {accepted}",
                field="params",
            )
    try:
        Command(action, params)  # checks the bounds
    except RobotError as exc:
        raise ApiError(400, "bad_params", f"params: {exc}", field="params") from None


def journal_answer(
    ctx: ApiContext, answer: Answer, started: float, extra: dict[str, Any]
) -> Response:
    record = answer.record
    body = {
        "status": record.status,
        "detail": record.outcome,
        "key": record.key,
        "index": record.index,
        "executed_by": record.executed_by,
        "duplicate": answer.duplicate,
        **extra,
        **who(ctx),
        "journal_term": record.term,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if answer.note is not None:
        body["note"] = answer.note
    if record.status == "unknown":
        body["detail"] = record.outcome or "outcome unknown; not repeated"
    return JSONResponse(body, 502 if record.status == "failed" else 200)


def idempotency_key(request: Request, in_body: str | None) -> str:
    """The request's idempotency key (header or body, not two different ones), or a new one."""
    header = request.headers.get("idempotency-key")
    if header is not None and in_body is not None and header != in_body:
        raise ApiError(
            400,
            "bad_key",
            "Idempotency-Key header and body idempotency_key differ; send one",
            field="idempotency_key",
        )
    key = header if header is not None else in_body or str(uuid.uuid4())
    if not (1 <= len(key) <= MAX_KEY and key.isascii() and key.isprintable() and " " not in key):
        raise ApiError(
            400,
            "bad_key",
            f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters without "
            "spaces (a UUID is ideal)",
            field="idempotency_key",
        )
    return key


def rejected(ctx: ApiContext, text: str, reason: str, response: str, **extra: Any) -> JSONResponse:
    """The seed's answer to a transcript that is no command: no intent, and says so."""
    body = {"status": "rejected", "recognized": text, "processed": False, "response": response}
    return JSONResponse({**body, "intent": None, "reason": reason, **extra, **who(ctx)})


def _action(name: str) -> Action | None:
    try:
        return Action(name)
    except ValueError:
        return None


def _why(ctx: ApiContext) -> str:
    view = cluster_view(ctx)
    if view.role != "primary":
        return f"{view.node} is {view.role}, not primary"
    return "taking over: settling the journal"


def who(ctx: ApiContext) -> dict[str, Any]:
    view = cluster_view(ctx)
    return {"node": view.node, "term": view.term, "leader": view.leader}
