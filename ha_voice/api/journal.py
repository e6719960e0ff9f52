"""The replicated journal over HTTP: `/api/journal`, `/api/voice/status`, listening, settings.

Reads answer on every node from its own copy of the journal, which holds every committed entry
up to its commit index, so they agree across nodes up to replication lag (`commit_index` says
how far this node is). Writes (start/stop listening, settings) go through the primary like
commands: a backup forwards them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED
from ha_voice.api.body import JsonBody
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward import forward, unavailable
from ha_voice.api.limits import rate_limited, read_rate_limited
from ha_voice.api.problems import ApiError, error_responses, quote
from ha_voice.cluster.node import NotPrimary
from ha_voice.journal import MAX_TAIL, CommandRecord
from ha_voice.voice.intents import LANGUAGES

__all__ = ["JournalPage", "router"]

router = APIRouter(prefix="/api", tags=["journal"])
Ctx = Annotated[ApiContext, Depends(context)]


def _settings_schema(schema: dict[str, Any]) -> None:
    """What the route takes, said in the schema: a known language or null, a boolean, and at
    least one of them."""
    properties = schema["properties"]
    properties["language"] = {
        "enum": [*LANGUAGES, None],
        "description": f"one of {', '.join(LANGUAGES)}; null: each node's configured language",
    }
    properties["listening"] = {
        "type": "boolean",
        "description": "whether the microphone loop listens; posted text and audio run either way",
    }
    schema["minProperties"] = 1


class SettingsBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_settings_schema)

    language: str | None = Field(default=None, max_length=16)
    listening: bool | None = None

    @field_validator("listening")
    @classmethod
    def _a_boolean(cls, value: bool | None) -> bool:
        if value is None:  # an explicit null; leaving the field out is how to keep it
            raise ValueError("must be true or false")
        return value


class SettingsAnswer(BaseModel):
    """The replicated runtime settings after a change, and the node that answered."""

    listening: bool
    language: str | None
    posture: str | None
    node: str


_SETTINGS_BODY = JsonBody(SettingsBody, '{"language": "en"} or {"listening": false}')
_WRITE_ERRORS = (413, 415, 422, 429, 503)
_WRITTEN: dict[int | str, dict[str, Any]] = {
    200: {"model": SettingsAnswer, "description": "the settings, replicated"}
}


class JournalPage(BaseModel):
    """Up to `limit` commands of this node's journal after `since`, oldest first."""

    node: str
    term: int
    commit_index: int = Field(description="how far this node's copy is committed")
    last_index: int
    first_index: int = Field(description="older entries are folded into the snapshot")
    entries: list[dict[str, Any]] = Field(
        description="each command's record (key, action, params, status, outcome, …) and "
        "whether it is committed"
    )


@router.get(
    "/journal",
    dependencies=[read_rate_limited],
    response_class=JSONResponse,
    responses={200: {"model": JournalPage}, **error_responses(422, 429)},
)
async def journal(
    ctx: Ctx,
    since: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="only entries after this index")
    ] = 0,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_TAIL,
            description=f"at most this many entries (at most {MAX_TAIL}: page with `since`)",
        ),
    ] = 100,
) -> Response:
    """The commands this node's journal holds, oldest first, with status and outcome.

    The records are picked on the event loop (references to immutable records: cheap), and
    turned into JSON on one reader thread: a page of 1000 entries is about 1 MB and 10 ms of
    encoding, and 200 of them encoded in one turn of the loop kept it (robot commands, the
    core's main-loop check-in) waiting 2 s."""
    node = ctx.node
    view = node.view
    head = {
        "node": view.node_id,
        "term": view.term,
        "commit_index": view.commit_index,
        "last_index": view.last_index,
        "first_index": view.first_index,
    }
    records = node.journal.tail(since, limit)
    loop = asyncio.get_running_loop()
    content = await loop.run_in_executor(_reader(ctx), _page_bytes, head, records)
    return Response(content, media_type="application/json")


def _reader(ctx: ApiContext) -> ThreadPoolExecutor:
    """The one thread that encodes journal pages (made on first use): reads wait their turn
    there, never on the event loop, and use one core at most."""
    reader = ctx.state.get("journal_reader")
    if reader is None:
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-reader")
        ctx.state["journal_reader"] = reader
    assert isinstance(reader, ThreadPoolExecutor)
    return reader


def _page_bytes(head: dict[str, Any], records: Sequence[CommandRecord]) -> bytes:
    """The page as JSON, encoded as JSONResponse would (compact, UTF-8, no NaN)."""
    commit = head["commit_index"]
    entries = [{**record.to_json(), "committed": record.index <= commit} for record in records]
    return json.dumps(
        {**head, "entries": entries}, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


@router.get("/voice/status")
async def voice_status(ctx: Ctx) -> dict[str, Any]:
    """The seed's fields, from the replicated journal (the same on every node), and live
    listening: `listener` (the node listening, or null), `sources` (this node's: id, open,
    level_dbfs, packets received/dropped/malformed) and `utterances` (the last ones this node
    heard, newest first: start, duration_s, heard, intent, outcome, key)."""
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
        **_listener_status(ctx),
    }


def _listener_status(ctx: ApiContext) -> dict[str, Any]:
    """Live listening (voice/listening.py): who listens to which source, the last utterances."""
    listener = ctx.state.get("listener")
    if listener is None:  # no daemon listener (an app made for a test)
        return {"listener": None, "listening_here": False, "sources": [], "utterances": []}
    status: dict[str, Any] = listener.status()
    return status


@router.post(
    "/voice/start",
    dependencies=[AUTHENTICATED, rate_limited],
    responses={**_WRITTEN, **error_responses(429, 503), **AUTH_RESPONSES},
)
async def start_listening(ctx: Ctx, request: Request) -> Response:
    """Listen to the microphone again (replicated: every node's status says so)."""
    return await _change(ctx, request, {"listening": True})


@router.post(
    "/voice/stop",
    dependencies=[AUTHENTICATED, rate_limited],
    responses={**_WRITTEN, **error_responses(429, 503), **AUTH_RESPONSES},
)
async def stop_listening(ctx: Ctx, request: Request) -> Response:
    """Stop the microphone loop only, as the seed does: posted text, audio and robot commands
    still run."""
    return await _change(ctx, request, {"listening": False})


@router.get("/settings")
async def get_settings(ctx: Ctx) -> dict[str, Any]:
    """The replicated runtime settings."""
    return asdict(ctx.node.journal.settings)


@router.post(
    "/settings",
    dependencies=[AUTHENTICATED, rate_limited],
    openapi_extra=_SETTINGS_BODY.openapi(),
    responses={**_WRITTEN, **error_responses(400, *_WRITE_ERRORS), **AUTH_RESPONSES},
)
async def post_settings(ctx: Ctx, request: Request) -> Response:
    """Change runtime settings for the whole cluster (language, listening)."""
    raw, body = await _SETTINGS_BODY.read(request, ctx.config.api_max_body_bytes)
    assert body is not None
    changes = body.model_dump(exclude_unset=True)  # language null: back to each node's own
    if not changes:
        raise ApiError(
            400, "nothing_to_change", "nothing to change: send language and/or listening"
        )
    language = changes.get("language")
    if language is not None and language not in LANGUAGES:
        raise ApiError(
            400,
            "unknown_language",
            f"language: {quote(language)} is unknown; known: {', '.join(LANGUAGES)}",
            field="language",
        )
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
