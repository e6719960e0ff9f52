"""`/health` (the seed's fields plus the cluster's) and `/metrics` (Prometheus text format)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ha_voice import clock
from ha_voice.api.condition import node_condition, speech_status, wyoming_state
from ha_voice.api.context import ApiContext, context
from ha_voice.api.probe import add_probe_methods, health_check_response

__all__ = ["router"]

router = APIRouter(tags=["health"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.get("/health", responses={503: {"description": "the cluster core is not running"}})
async def health(ctx: Ctx, request: Request) -> Response:
    """200 while the core runs (`status` says whether the node is useful: ok or degraded, with
    `fault_reason`); 503 with `status` failing when the core has stopped stepping. HEAD and
    OPTIONS get the same status without a body (HAProxy's `option httpchk` sends OPTIONS).

    `token_file` is null without api_token_file, "ok" while its tokens are in force, and
    "refused: <why>" while every token is refused (the node is then degraded: it cannot take
    an authenticated command). `whisper_model` is the speech model loaded and ready, or
    "not loaded: <why>"; `whisper_model_configured` the one configured; `speech` this node's
    speech service: ready, reason ("" when ready), model, device, compute_type, workers
    (ready ones), running and queued jobs, restarts and last_restart. `listening`: whether
    this node listens now (`here`), its sources open of those configured, and `problem` (a
    source that does not open or stopped; null when it hears them all or does not listen).
    `wyoming`: null without a Wyoming server, else `serving`, `address`, `connections` now,
    `accepted` and `refused` by reason since the start."""
    view = ctx.node.view
    now = clock.monotonic()
    condition = node_condition(ctx, request, now)
    pending = view.write_pending_since
    speech = speech_status(ctx)
    body: dict[str, Any] = {
        "status": condition.status,
        "robot_connected": ctx.guard is not None and view.robot_reachable,
        "robot": ctx.config.robot,
        "whisper_model": speech.model if speech.ready else f"not loaded: {speech.reason}",
        "whisper_model_configured": ctx.config.whisper_model,
        "language": ctx.config.language,
        "speech": asdict(speech),
        "listening": _listening(ctx),
        "wyoming": wyoming_state(ctx),
        "node": view.node_id,
        "cluster": ctx.config.cluster,
        "role": condition.role,
        "term": view.term,
        "leader": view.leader,
        "fault_reason": condition.reason,
        "identity_conflicts": list(view.identity_conflicts),
        "token_file": _token_file_text(ctx, condition.token_problem),
        "storage_write_pending_s": None if pending is None else round(now - pending, 3),
        "version": ctx.version,
    }
    return health_check_response(request, body, 503 if condition.status == "failing" else 200)


add_probe_methods(router, "/health", health)


def _listening(ctx: ApiContext) -> dict[str, Any] | None:
    listener = ctx.state.get("listener")
    if listener is None or not ctx.config.audio_sources:
        return None
    sources = listener.source_stats()
    return {
        "here": listener.listening,
        "sources": len(sources),
        "open": sum(stats.open for stats in sources),
        "problem": listener.problem(),
    }


def _token_file_text(ctx: ApiContext, problem: str | None) -> str | None:
    if ctx.config.api_token_file is None:
        return None
    return "ok" if problem is None else f"refused: {problem}"


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(ctx: Ctx, request: Request) -> Response:
    """Every metric of this node, for Prometheus; `ha_voice_healthy`, `ha_voice_serving` and
    `ha_voice_robot_reachable` are `/health`'s, `/cluster/primary`'s and `/health`'s
    `robot_connected` answers at the moment of the scrape."""
    condition = node_condition(ctx, request, clock.monotonic())
    ctx.metrics.healthy.set(1 if condition.status == "ok" else 0)
    ctx.metrics.serving.set(1 if condition.serving else 0)
    reachable = ctx.guard is not None and ctx.node.view.robot_reachable
    ctx.metrics.robot_reachable.set(1 if reachable else 0)
    return Response(content=ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
