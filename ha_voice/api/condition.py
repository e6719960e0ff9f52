"""Whether this node can do its job right now, and if not why: one answer for `/health`,
`/cluster`, `/cluster/primary` and `ha-voice status`.

Invariants:
- "ok" only while nothing below holds; otherwise "degraded" with the first reason that does, or
  "failing" when the cluster core has stopped stepping (its view is then stale).
- Speech is no condition for leading or serving: a node whose speech is configured but not
  ready (loading, load failed, restarting its only worker) is "degraded" with that reason, and
  still leads and drives the robot while others transcribe. Nor is listening: a primary that
  listens but cannot hear a source (it does not open, it stopped) is "degraded", after speech;
  so is a node whose Wyoming server no longer accepts connections.
- Being primary follows the lease, not only the role: a node reports "primary" and serves
  (`/cluster/primary` 200) only while it holds a valid lease at the moment of the answer, and
  serving also needs its takeover done (the robot made safe, the journal settled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request

from ha_voice.api.auth import authenticator
from ha_voice.api.context import ApiContext
from ha_voice.cluster.events import Role
from ha_voice.cluster.runner import MAX_IDLE_S
from ha_voice.voice.speech import SpeechStatus

__all__ = ["Condition", "node_condition", "speech_status", "wyoming_state"]

# The core steps at least every MAX_IDLE_S; three of them without a step means it is stuck.
CORE_STUCK_S = 3 * MAX_IDLE_S


@dataclass(frozen=True)
class Condition:
    """This node at one instant: `status` with its `reason`, the role to report, and whether
    it serves as primary (the primary with a valid lease whose takeover is done)."""

    status: Literal["ok", "degraded", "failing"]
    reason: str | None
    role: str
    serving: bool
    token_problem: str | None  # why api_token_file is refused, if it is


def node_condition(ctx: ApiContext, request: Request, now: float) -> Condition:
    """The node's condition at `now` (monotonic seconds)."""
    view = ctx.node.view
    timeout_s = ctx.node.timers.election_timeout_s
    lease = view.lease_valid(now)
    not_ready = ctx.commands.not_ready_reason() if ctx.commands is not None else None
    token_problem = authenticator(request).token_file_problem()
    reasons = (
        view.fault_reason or None,
        view.identity_reason(),
        _lease_reason(ctx, now) if view.role is Role.PRIMARY and not lease else None,
        not_ready,
        view.no_primary_reason(now, timeout_s, ctx.config.mdns),
        view.unheard_reason(now, timeout_s),
        None if token_problem is None else f"api_token_file refused: {token_problem}",
        _speech_reason(ctx),
        _listening_reason(ctx),
        _wyoming_reason(ctx),
    )
    reason = next((r for r in reasons if r is not None), None)
    status: Literal["ok", "degraded", "failing"] = "ok" if reason is None else "degraded"
    stuck_s = now - view.published_at
    if stuck_s > CORE_STUCK_S:
        status, reason = "failing", f"the cluster core has not stepped for {stuck_s:.1f} s"
    serving = lease and not_ready is None and status != "failing"
    return Condition(status, reason, view.shown_role(now), serving, token_problem)


def speech_status(ctx: ApiContext) -> SpeechStatus:
    """This node's own speech, or why it has none (a witness, stt_enabled = false)."""
    why = _no_speech_reason(ctx)
    if why is None and ctx.speech is not None:
        return ctx.speech.status()
    return SpeechStatus(configured=ctx.config.whisper_model, ready=False, reason=why or "")


def _no_speech_reason(ctx: ApiContext) -> str | None:
    """Why this node has no speech service of its own; None when it has one."""
    witness = ctx.config.witness_spec
    if witness is not None and witness.node_id == ctx.config.node_id:
        return "disabled: a witness has no speech"
    if not ctx.config.stt_enabled:
        return "disabled: stt_enabled = false"
    return None


def _speech_reason(ctx: ApiContext) -> str | None:
    if _no_speech_reason(ctx) is not None:
        return None
    status = speech_status(ctx)
    return None if status.ready else f"speech not ready: {status.reason}"


def _listening_reason(ctx: ApiContext) -> str | None:
    """Why this node, listening, does not hear a source it should (voice/listening.py)."""
    listener = ctx.state.get("listener")
    return None if listener is None else listener.problem()


def wyoming_state(ctx: ApiContext) -> dict[str, Any] | None:
    """The Wyoming server's state (api/wyoming.py), None on a node without one."""
    server = ctx.state.get("wyoming")
    if server is None:
        return None
    state: dict[str, Any] = server.state()
    return state


def _wyoming_reason(ctx: ApiContext) -> str | None:
    state = wyoming_state(ctx)
    if state is None or state["serving"]:
        return None
    return f"wyoming: not serving on {state['address']}"


def _lease_reason(ctx: ApiContext, now: float) -> str:
    view = ctx.node.view
    if view.lease_expiry == float("-inf"):
        return f"elected in term {view.term}, no lease yet: waiting for a quorum's acknowledgement"
    return (
        f"primary of term {view.term} without a valid lease: it ran out "
        f"{now - view.lease_expiry:.1f} s ago (no quorum's acknowledgement since)"
    )
