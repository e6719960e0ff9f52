"""The seed's command endpoints: `/api/commands`, `/api/robot/command`, `/api/voice/listen`.

Only the primary, through the guard, moves the robot. On any other node these answer 503 with
the leader's id and a Retry-After, so a client can find the primary (forwarding comes with the
replicated journal). Unknown commands get 400 with the list of known ones.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ha_voice.api.context import ApiContext, context
from ha_voice.robot.base import Action, Command, RobotError
from ha_voice.robot.guard import NotLeading, Outcome
from ha_voice.voice.intents import Match

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["commands"])
Ctx = Annotated[ApiContext, Depends(context)]

# The seed's command names, kept working beside every action name.
_SEED_ALIASES = {"stand": Action.STAND_UP, "sit": Action.SIT, "stop": Action.STOP_MOVE}


class RobotCommandBody(BaseModel):
    command: str = Field(description="stand, sit, stop (the seed's) or any action name")
    params: dict[str, float] = Field(default_factory=dict, description="e.g. vx, vy, vyaw")
    duration_s: float | None = Field(default=None, ge=0, le=60, description="for move")


class ListenBody(BaseModel):
    text: str = Field(min_length=1, max_length=500, description="a transcript, e.g. 'sta op'")


@router.get("/commands")
def commands(ctx: Ctx) -> dict[str, Any]:
    """The vocabulary of this node's language, and every robot action."""
    return {
        "language": ctx.config.language,
        "commands": ctx.vocabulary.commands(),
        "actions": sorted([*(a.value for a in Action), *_SEED_ALIASES]),
    }


@router.post("/robot/command")
async def robot_command(ctx: Ctx, body: RobotCommandBody) -> JSONResponse:
    """Run one action on the robot (the seed's API)."""
    action = _SEED_ALIASES.get(body.command) or _action(body.command)
    if action is None:
        known = sorted([*(a.value for a in Action), *_SEED_ALIASES])
        return JSONResponse({"error": f"unknown command {body.command!r}", "known": known}, 400)
    try:
        command = Command(action, body.params)
    except RobotError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    started = time.perf_counter()
    result = await _run(ctx, command, body.duration_s)
    if isinstance(result, JSONResponse):
        return result
    return JSONResponse(
        {
            "status": result.status,
            "command": action.value,
            "detail": result.detail,
            **_who(ctx),
            "robot_ms": round((time.perf_counter() - started) * 1000, 1),
        },
        200 if result.status != "failed" else 503,
    )


@router.post("/voice/listen")
async def listen(ctx: Ctx, body: ListenBody) -> JSONResponse:
    """A transcript in, the seed's answer out: status, recognized, processed, response."""
    started = time.perf_counter()
    found = ctx.vocabulary.match(body.text)
    match_ms = round((time.perf_counter() - started) * 1000, 2)
    if not isinstance(found, Match):
        return JSONResponse(
            {
                "status": "rejected",
                "recognized": body.text,
                "processed": False,
                "response": None,
                "reason": found.reason,
                "intent": found.candidate.name if found.candidate else None,
                **_who(ctx),
                "timings": {"match_ms": match_ms},
            }
        )
    intent = found.intent
    outcome: Outcome | None = None
    if intent.action is not None:
        result = await _run(ctx, Command(intent.action, intent.action_params), intent.duration_s)
        if isinstance(result, JSONResponse):
            return result
        outcome = result
    robot_ms = round((time.perf_counter() - started) * 1000 - match_ms, 1)
    ok = outcome is None or outcome.status != "failed"
    return JSONResponse(
        {
            "status": "success" if ok else "error",
            "recognized": body.text,
            "processed": outcome is not None and outcome.status == "done",
            "response": intent.response,
            "intent": intent.name,
            "score": round(found.score, 3),
            "outcome": None if outcome is None else outcome.status,
            **_who(ctx),
            "timings": {"match_ms": match_ms, "robot_ms": robot_ms},
        },
        200 if ok else 503,
    )


def _action(name: str) -> Action | None:
    try:
        return Action(name)
    except ValueError:
        return None


async def _run(
    ctx: ApiContext, command: Command, duration_s: float | None
) -> Outcome | JSONResponse:
    """The guard's outcome, or the 503 that says why this node cannot command the robot."""
    if ctx.guard is None:
        return _unavailable(ctx, 'this node has no robot (robot = "none")')
    try:
        return await ctx.guard.execute(command, duration_s=duration_s)
    except NotLeading as exc:
        return _unavailable(ctx, exc.reason)
    except RobotError as exc:
        return _unavailable(ctx, f"robot not reachable: {exc}")


def _unavailable(ctx: ApiContext, reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "error": reason, **_who(ctx)},
        status_code=503,
        headers={"Retry-After": "1"},
    )


def _who(ctx: ApiContext) -> dict[str, Any]:
    election = ctx.node.election
    return {"node": election.node_id, "term": election.term, "leader": election.leader}
