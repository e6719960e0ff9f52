"""`/health` (the seed's fields plus the cluster's) and `/metrics` (Prometheus text format)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from ha_voice import clock
from ha_voice.api.auth import authenticator
from ha_voice.api.context import ApiContext, context
from ha_voice.cluster.events import Role
from ha_voice.cluster.runner import MAX_IDLE_S

__all__ = ["router"]

router = APIRouter(tags=["health"])
Ctx = Annotated[ApiContext, Depends(context)]

# The core steps at least every MAX_IDLE_S; three of them without a step means it is stuck.
_CORE_STUCK_S = 3 * MAX_IDLE_S


@router.get("/health", responses={503: {"description": "the cluster core is not running"}})
async def health(ctx: Ctx, request: Request) -> JSONResponse:
    """200 while the core runs (`status` says whether the node is useful: ok or degraded, with
    `fault_reason`); 503 with `status` failing when the core has stopped stepping.

    `token_file` is null without api_token_file, "ok" while its tokens are in force, and
    "refused: <why>" while every token is refused (the node is then degraded: it cannot take
    an authenticated command)."""
    view = ctx.node.view
    now = clock.monotonic()
    stuck_s = now - view.published_at
    healthy = view.role is not Role.FAULT and (view.leader is not None or view.role is Role.WITNESS)
    unheard = view.unheard_reason(now, ctx.node.timers.election_timeout_s)
    token_problem = authenticator(request).token_file_problem()
    token_reason = None if token_problem is None else f"api_token_file refused: {token_problem}"
    identity = view.identity_reason()
    reason = view.fault_reason or identity or unheard or token_reason
    useful = healthy and identity is None and unheard is None
    status = "ok" if useful and token_problem is None else "degraded"
    if stuck_s > _CORE_STUCK_S:
        status, reason = "failing", f"the cluster core has not stepped for {stuck_s:.1f} s"
    pending = view.write_pending_since
    body: dict[str, Any] = {
        "status": status,
        "robot_connected": ctx.guard is not None and view.eligible,
        "robot": ctx.config.robot,
        "whisper_model": ctx.config.whisper_model,
        "language": ctx.config.language,
        "node": view.node_id,
        "cluster": ctx.config.cluster,
        "role": view.role.value,
        "term": view.term,
        "leader": view.leader,
        "fault_reason": reason,
        "identity_conflicts": list(view.identity_conflicts),
        "token_file": _token_file_text(ctx, token_problem),
        "storage_write_pending_s": None if pending is None else round(now - pending, 3),
        "version": ctx.version,
    }
    return JSONResponse(body, status_code=503 if status == "failing" else 200)


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
async def metrics(ctx: Ctx) -> Response:
    """Every metric of this node, for Prometheus."""
    return Response(content=ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
