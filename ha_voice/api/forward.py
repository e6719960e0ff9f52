"""A backup's answer to a command: the primary's, fetched for the client.

Invariants:
- One hop at most: a request that arrives forwarded by a member (`FORWARDED_BY` with a valid
  seal, auth.py) is never forwarded again, so two nodes that each think the other leads cannot
  bounce a request forever. A marker without a valid seal is a client's and is ignored.
- The client's credentials travel with the request (the primary checks the token again), and
  the forward is sealed with the cluster key: which node forwards, for which client address and
  principal, with which body, when.
- The client's idempotency key travels with the request, so a forwarded command that the client
  also retries elsewhere still runs once. A verified forward is not rate-limited again at the
  primary (limits.py: the node the client reached counted it).
- A forward waits only while the primary it went to still leads and is heard: as soon as the
  leader or the term changes, or the leader has been silent for an election timeout, it is
  abandoned (a frozen primary cannot hold a client for longer than that). A primary that is
  heard and answers slowly (a 60 s move) is waited for.
- With no primary known, or the primary unreachable or lost, the answer is 503 with
  `Retry-After: 1`, `retry_after_s` (two heartbeat intervals: the header cannot say less than a
  second, a failover takes about half of one), the leader hint (`leader`, `leader_url`) and
  this node's view of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import httpx
from fastapi import Request
from fastapi.responses import Response

from ha_voice.api.auth import FORWARDED_BY, seal_headers, sealing_member
from ha_voice.api.context import ApiContext
from ha_voice.api.problems import problem, quote
from ha_voice.api.tls import client_context
from ha_voice.api.view import cluster_view

__all__ = ["FORWARDED_BY", "forward", "forwarded_by", "unavailable"]

# The headers of the client's request that the primary needs.
_PASSED_ON = ("content-type", "idempotency-key", "authorization")
# The headers of the primary's answer that the client needs: when to retry, how to log in.
_PASSED_BACK = ("retry-after", "www-authenticate")
# A backstop for a primary that is heard but never answers: past a move's longest duration
# (60 s) plus a failover. A primary that stops leading or goes silent is left much sooner.
_FORWARD_TIMEOUT_S = 75.0


def forwarded_by(request: Request) -> str | None:
    """The member that forwarded `request` to us (its seal verified, but for a boot this node
    may not have heard: `auth.sealing_member`), or None if a client sent it directly: a marker
    without a valid seal is a client's, ignored and counted."""
    return sealing_member(request)


def unavailable(ctx: ApiContext, reason: str, *, hint_leader: bool = True) -> Response:
    """503 + Retry-After: what to retry, where, and what this node sees of the cluster."""
    view = cluster_view(ctx)
    return problem(
        503,
        reason,
        headers={"Retry-After": "1"},  # the header's least; `retry_after_s` says it finer
        node=view.node,
        role=view.role,
        term=view.term,
        leader=view.leader,
        leader_url=view.leader_url if hint_leader else None,
        retry_after_s=view.retry_after_s,
    )


async def forward(
    ctx: ApiContext, request: Request, body: bytes, why: str, *, content_type: str | None = None
) -> Response:
    """Send the client's request to the primary and return its answer, or say why not; `body`
    (of `content_type`, else the client's) in place of the client's (a transcript of its audio)."""
    via = forwarded_by(request)
    if via is not None:
        return unavailable(ctx, f"{why} (forwarded by {quote(via)}; one hop only)")
    view = cluster_view(ctx)
    if view.leader is None or view.leader_url is None:
        return unavailable(ctx, f"{why}; no primary is known")
    call = asyncio.ensure_future(
        _send(ctx, request, view.leader, view.leader_url, body, content_type)
    )
    watch = asyncio.ensure_future(_until_lost(ctx, view.leader, view.term))
    try:
        await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (call, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
    if not call.cancelled():
        return _answer(ctx, call.result(), why, view.leader_url)
    lost = watch.result()
    # Hint at the new leader only: a client sent to the silent one would meet the same silence.
    moved = cluster_view(ctx).leader not in (None, view.leader)
    return unavailable(ctx, f"{why}; gave up on {view.leader_url}: {lost}", hint_leader=moved)


async def _send(
    ctx: ApiContext, request: Request, leader: str, url: str, body: bytes, content_type: str | None
) -> httpx.Response | httpx.HTTPError:
    headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED_ON}
    if content_type is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["content-type"] = content_type
    headers.update(seal_headers(request, body, leader))
    try:
        return await _client(ctx).request(
            request.method,
            url + request.url.path,
            params=request.query_params,
            content=body,
            headers=headers,
            timeout=_FORWARD_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return exc


async def _until_lost(ctx: ApiContext, leader: str, term: int) -> str:
    """Wait while `leader` leads `term` and is heard; then say what happened."""
    while True:
        view = cluster_view(ctx)
        if (view.leader, view.term) != (leader, term):
            return f"the primary changed to {view.leader or 'nobody yet'} in term {view.term}"
        silent_s = view.leader_silent_s
        if silent_s is None or silent_s >= view.election_timeout_s:
            return f"{leader} has not been heard for an election timeout"
        # Wake when it would have been silent too long, unless heard again by then.
        await asyncio.sleep(max(view.election_timeout_s - silent_s, view.heartbeat_interval_s))


def _answer(
    ctx: ApiContext, answer: httpx.Response | httpx.HTTPError, why: str, url: str
) -> Response:
    if isinstance(answer, httpx.HTTPError):
        # Not `leader_url` then: a client sent there would only meet the same silence.
        return unavailable(
            ctx, f"{why}; the primary at {url} did not answer ({answer!r})", hint_leader=False
        )
    ctx.metrics.forwarded.inc()
    passed = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_BACK}
    passed[FORWARDED_BY] = cluster_view(ctx).node
    return Response(
        answer.content,
        status_code=answer.status_code,
        headers=passed,
        media_type=answer.headers.get("content-type"),
    )


def _client(ctx: ApiContext) -> httpx.AsyncClient:
    client = ctx.state.get("forward_client")
    if client is None:
        # httpx logs every request at info: under a flood of forwards that is a log write per
        # request on the event loop. Its warnings and errors still show.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # TCP_NODELAY, as on the server side (server.listen): no Nagle stall on keep-alive.
        # With TLS, the primary's certificate is verified against tls_ca_file before the
        # client's token goes to it.
        transport = httpx.AsyncHTTPTransport(
            verify=client_context(ctx.config) or True,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client = httpx.AsyncClient(transport=transport)
        ctx.state["forward_client"] = client
    assert isinstance(client, httpx.AsyncClient)
    return client
