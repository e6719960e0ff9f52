"""The replicated journal over HTTP: `/api/journal`, `/api/voice/status`, listening, settings.

Reads answer on every node from its own copy of the journal, which holds every committed entry
up to its commit index, so they agree across nodes up to replication lag (`commit_index` says
how far this node is). Writes (start/stop listening, settings) go through the primary like
commands: a backup forwards them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward import forward, read_model, unavailable
from ha_voice.cluster.node import NotPrimary
from ha_voice.voice.intents import LANGUAGES

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["journal"])
Ctx = Annotated[ApiContext, Depends(context)]


class SettingsBody(BaseModel):
    language: str | None = Field(default=None, description=f"one of {', '.join(LANGUAGES)}")
    listening: bool | None = Field(default=None, description="whether voice commands are taken")


@router.get("/journal")
def journal(
    ctx: Ctx,
    since: Annotated[int, Query(ge=0, description="only entries after this index")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """The commands this node's journal holds, oldest first, with status and outcome."""
    node = ctx.node
    view = node.view
    commit = view.commit_index
    entries = [
        {**record.to_json(), "committed": record.index <= commit}
        for record in node.journal.tail(since, limit)
    ]
    return {
        "node": view.node_id,
        "term": view.term,
        "commit_index": commit,
        "last_index": view.last_index,
        "first_index": view.first_index,
        "entries": entries,
    }


@router.get("/voice/status")
def voice_status(ctx: Ctx) -> dict[str, Any]:
    """The seed's fields, from the replicated journal: the same on every node."""
    node = ctx.node
    settings = node.journal.settings
    return {
        "is_listening": settings.listening,
        "robot_connected": ctx.guard is not None and node.view.robot_reachable,
        "last_command": node.journal.last_command,
        "command_count": node.journal.command_count,
        "language": settings.language or ctx.config.language,
        "robot_posture": settings.posture,
        "node": node.view.node_id,
        "leader": node.view.leader,
        "commit_index": node.view.commit_index,
    }


@router.post("/voice/start", dependencies=[AUTHENTICATED], responses=AUTH_RESPONSES)
async def start_listening(ctx: Ctx, request: Request) -> Response:
    """Take voice commands again (replicated: every node's status says so)."""
    return await _change(ctx, request, {"listening": True})


@router.post("/voice/stop", dependencies=[AUTHENTICATED], responses=AUTH_RESPONSES)
async def stop_listening(ctx: Ctx, request: Request) -> Response:
    """Stop taking voice commands (robot commands still work)."""
    return await _change(ctx, request, {"listening": False})


@router.get("/settings")
def get_settings(ctx: Ctx) -> dict[str, Any]:
    """The replicated runtime settings."""
    return asdict(ctx.node.journal.settings)


@router.post(
    "/settings", dependencies=[AUTHENTICATED], responses={**AUTH_RESPONSES, 400: {}, 503: {}}
)
async def post_settings(ctx: Ctx, request: Request) -> Response:
    """Change runtime settings for the whole cluster (language, listening)."""
    parsed = await read_model(request, SettingsBody, "settings")
    if isinstance(parsed, Response):
        return parsed
    raw, body = parsed
    changes = body.model_dump(exclude_none=True)
    if not changes:
        return JSONResponse({"error": "nothing to change: send language and/or listening"}, 400)
    language = changes.get("language")
    if language is not None and language not in LANGUAGES:
        known = ", ".join(LANGUAGES)
        return JSONResponse({"error": f"language {language!r} unknown; known: {known}"}, 400)
    return await _change(ctx, request, changes, raw)


async def _change(
    ctx: ApiContext, request: Request, changes: dict[str, Any], raw: bytes = b""
) -> Response:
    service = ctx.commands
    if service is None or not service.ready():
        return await forward(ctx, request, raw, "this node is not the primary")
    try:
        settings = await service.change_settings(**changes)
    except NotPrimary as exc:
        return unavailable(ctx, exc.reason)
    return JSONResponse({**asdict(settings), "node": ctx.node.node_id})
