"""`/health` (the seed's fields plus the cluster's) and `/metrics` (Prometheus text format)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ha_voice.api.context import ApiContext, context
from ha_voice.cluster.events import Role

__all__ = ["router"]

router = APIRouter(tags=["health"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.get("/health")
def health(ctx: Ctx) -> dict[str, Any]:
    """Always 200 while the process serves; `status` says whether it is useful."""
    election = ctx.node.election
    healthy = election.role is not Role.FAULT and (
        election.leader is not None or election.role is Role.WITNESS
    )
    return {
        "status": "ok" if healthy else "degraded",
        "robot_connected": ctx.guard is not None and election.eligible,
        "robot": ctx.config.robot,
        "whisper_model": ctx.config.whisper_model,
        "language": ctx.config.language,
        "node": election.node_id,
        "cluster": ctx.config.cluster,
        "role": election.role.value,
        "term": election.term,
        "leader": election.leader,
        "fault_reason": election.fault_reason or None,
        "version": ctx.version,
    }


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
def metrics(ctx: Ctx) -> Response:
    """Every metric of this node, for Prometheus."""
    return Response(content=ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
