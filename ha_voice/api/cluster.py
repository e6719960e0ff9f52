"""`/cluster` and the health-check endpoints for HAProxy and nginx, as Patroni has them.

`/cluster/primary` answers 200 only on the primary with a valid lease, `/cluster/replica` only on
a backup that follows a live primary; everything else gets 503, so a load balancer's health
check picks the right node without knowing anything about ha-voice.
"""

from __future__ import annotations

import datetime
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ha_voice import clock
from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED
from ha_voice.api.body import JsonBody
from ha_voice.api.condition import node_condition
from ha_voice.api.context import ApiContext, context
from ha_voice.api.limits import rate_limited
from ha_voice.api.members import member_api_urls
from ha_voice.api.probe import add_probe_methods, health_check_response
from ha_voice.api.problems import ApiError, error_responses
from ha_voice.api.tls import leader_url
from ha_voice.cluster.events import Role
from ha_voice.cluster.node import ClusterNode
from ha_voice.cluster.view import PeerInfo
from ha_voice.voice.placement import PlacedSpeech

__all__ = ["router"]

router = APIRouter(prefix="/cluster", tags=["cluster"])
Ctx = Annotated[ApiContext, Depends(context)]


class StepDownBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    target: str | None = Field(
        default=None, max_length=63, description="node to hand over to; default: best"
    )


class PrimaryCheck(BaseModel):
    """Who answered a health check, in which role and term; why it is not the primary."""

    node: str
    role: str
    term: int
    reason: str | None


class ReplicaCheck(BaseModel):
    """Who answered a health check, in which role, following whom."""

    node: str
    role: str
    leader: str | None


class Handover(BaseModel):
    """A step-down under way."""

    status: str = Field(description="handing over")
    leader: str | None


_STEP_DOWN_BODY = JsonBody(StepDownBody, '{"target": "n2"} or no body', optional=True)


@router.get("")
async def cluster(ctx: Ctx, request: Request) -> dict[str, Any]:
    """This node's view of the cluster; the primary's view is the complete one. `role` is
    "primary" only while the lease is valid; `status` and `reason` are `/health`'s."""
    node = ctx.node
    election = node.view
    now = clock.monotonic()
    condition = node_condition(ctx, request, now)
    failover = election.last_failover
    return {
        "cluster": ctx.config.cluster,
        "node": election.node_id,
        "boot": f"{election.boot_id:016x}",  # in clear in every datagram too
        "role": condition.role,
        "status": condition.status,
        "reason": condition.reason,
        "term": election.term,
        "leader": election.leader,
        "leader_api": _leader_api(ctx),
        "lease_remaining_s": round(max(0.0, election.lease_expiry - now), 3),
        "members": _members(ctx, now),
        "identity_conflicts": list(election.identity_conflicts),
        "refused_by": list(election.refused_by),
        "last_failover": None
        if failover is None
        else {
            "old": failover.old,
            "new": failover.new,
            "term": failover.term,
            "cause": failover.cause,
            "duration_s": None if failover.duration_s is None else round(failover.duration_s, 4),
            "at": datetime.datetime.fromtimestamp(failover.at_unix_s, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        },
    }


@router.get(
    "/primary",
    responses={
        200: {"model": PrimaryCheck, "description": "the primary, holding a valid lease"},
        503: {"model": PrimaryCheck, "description": "not the primary with a valid lease"},
    },
)
async def primary(ctx: Ctx, request: Request) -> Response:
    """200 on the primary holding a valid lease whose takeover is done (the robot made safe,
    the journal settled), else 503 with the reason; HEAD and OPTIONS alike (`probe.py`)."""
    election = ctx.node.view
    condition = node_condition(ctx, request, clock.monotonic())
    body = {
        "node": election.node_id,
        "role": condition.role,
        "term": election.term,
        "reason": None if condition.serving else condition.reason or "not the primary",
    }
    return health_check_response(request, body, 200 if condition.serving else 503)


add_probe_methods(router, "/primary", primary)


@router.get(
    "/replica",
    responses={
        200: {"model": ReplicaCheck, "description": "a backup following a live primary"},
        503: {"model": ReplicaCheck, "description": "not a backup following a live primary"},
    },
)
async def replica(ctx: Ctx, request: Request) -> Response:
    """200 on a backup that heard a live primary within an election timeout and is heard by
    it, else 503; HEAD and OPTIONS alike (`probe.py`)."""
    election = ctx.node.view
    leader = election.leader_info()
    heard = leader.last_heard_at if leader else None
    now, timeout_s = clock.monotonic(), ctx.node.timers.election_timeout_s
    fresh = heard is not None and now - heard < timeout_s
    counted = election.unheard_reason(now, timeout_s) is None
    ok = election.role is Role.BACKUP and fresh and counted
    body = {"node": election.node_id, "role": election.role.value, "leader": election.leader}
    return health_check_response(request, body, 200 if ok else 503)


add_probe_methods(router, "/replica", replica)


@router.post(
    "/step-down",
    status_code=202,
    dependencies=[AUTHENTICATED, rate_limited],
    openapi_extra=_STEP_DOWN_BODY.openapi(),
    response_class=JSONResponse,
    responses={
        202: {"model": Handover, "description": "handing over"},
        **error_responses(400, 409, 413, 415, 422, 429),
        **AUTH_RESPONSES,
    },
)
async def step_down(ctx: Ctx, request: Request) -> JSONResponse:
    """Hand leadership to `target` or the best backup; 409 with the reason if refused."""
    _, body = await _STEP_DOWN_BODY.read(request, ctx.config.api_max_body_bytes)
    refused = await ctx.node.step_down(body.target if body else None)
    if refused is not None:
        raise ApiError(409, "step_down_refused", f"step-down refused: {refused}", reason=refused)
    return JSONResponse({"status": "handing over", "leader": ctx.node.view.leader}, 202)


def _members(ctx: ApiContext, now: float) -> list[dict[str, Any]]:
    node = ctx.node
    election = node.view
    membership = election.membership
    views = {view.node: view for view in election.followers}
    names = sorted(membership.voters)  # members only: strangers are dropped at decode
    api_urls = member_api_urls(ctx)
    members = []
    for name in names:
        peer = election.peers.get(name)
        is_self = name == election.node_id
        view = views.get(name)
        role = _role_of(node, name, now)
        members.append(
            {
                "node": name,
                "self": is_self,
                "role": role,
                # Known to be in our term: ourselves, the leader, and whoever acks our heartbeats.
                "term": None if role in ("unknown", "unreachable") else election.term,
                "voter": name in membership.voters,
                "witness": name in membership.witnesses,
                "priority": ctx.config.priority if is_self else _priority(peer, view),
                "last_heard_s": None if is_self else _since(peer, now),
                "address": _address(peer),
                "api": api_urls.get(name),
                "load": round(os.getloadavg()[0], 2) if is_self else None,
                "speech": _speech_load(ctx, peer, is_self, now),
            }
        )
    return members


def _speech_load(
    ctx: ApiContext, peer: PeerInfo | None, is_self: bool, now: float
) -> dict[str, Any] | None:
    """What a member can take of speech work, as it last reported (voice/placement.py)."""
    speech = ctx.speech
    if is_self:
        load = speech.own_load() if isinstance(speech, PlacedSpeech) else None
        age_s: float | None = 0.0
    else:
        load = None if peer is None else peer.load
        heard = None if peer is None else peer.load_heard_at
        age_s = None if heard is None else round(now - heard, 3)
    if load is None:
        return None
    return {
        "ready": load.ready,
        "workers": load.workers,
        "running": load.running,
        "queued": load.queued,
        "cpu": round(load.cpu, 3),
        "gpu": load.gpu,
        "gpu_memory_mb": load.gpu_memory_mb,
        "reported_s": age_s,
    }


def _role_of(node: ClusterNode, name: str, now: float) -> str:
    election = node.view
    if name == election.node_id:
        return election.shown_role(now)
    if name == election.leader:
        return Role.PRIMARY.value
    if name in election.membership.witnesses:
        return Role.WITNESS.value
    views = {view.node: view for view in election.followers}
    view = views.get(name)
    if view is not None and now - view.last_ack_at < node.timers.election_timeout_s:
        return Role.BACKUP.value if view.eligible else Role.FAULT.value
    peer = election.peers.get(name)
    if view is not None or (peer is not None and peer.last_heard_at is not None):
        return "unreachable" if election.role is Role.PRIMARY else "unknown"
    return "unknown"


def _priority(peer: PeerInfo | None, view: Any) -> int | None:
    if view is not None:
        return int(view.priority)
    return peer.priority if peer else None


def _since(peer: PeerInfo | None, now: float) -> float | None:
    if peer is None or peer.last_heard_at is None:
        return None
    return round(now - peer.last_heard_at, 3)


def _address(peer: PeerInfo | None) -> str | None:
    if peer is None or peer.address is None:
        return None
    return f"{peer.address[0]}:{peer.address[1]}"


def _leader_api(ctx: ApiContext) -> str | None:
    """Where the leader's API is: from its heartbeats or mDNS, else our own API port."""
    return leader_url(ctx)
