"""A backup's answer to a command: the primary's, fetched for the client.

Invariants:
- One hop at most: a request that arrives forwarded by a member (`FORWARDED_BY` with a valid
  seal, auth.py) is never forwarded again, so two nodes that each think the other leads cannot
  bounce a request forever. A marker without a valid seal is a client's and is ignored.
- The client's credentials travel with the request (the primary checks the token again), and
  the forward is sealed with the cluster key: which node forwards, for which client address and
  principal, with which body, when.
- The client's idempotency key travels with the request, so a forwarded command that the client
  also retries elsewhere still runs once.
- With no primary known, or the primary unreachable, the answer is 503 with `Retry-After: 1`,
  `retry_after_s` (two heartbeat intervals: the header cannot say less than a second, a
  failover takes about half of one), the leader hint (`leader`, `leader_url`) and this node's
  view of the cluster.
"""

from __future__ import annotations

import socket
from typing import Any, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from ha_voice.api.auth import FORWARDED_BY, seal_headers, verified_forwarder
from ha_voice.api.context import ApiContext
from ha_voice.api.tls import client_context, leader_url

__all__ = ["FORWARDED_BY", "forward", "read_model", "unavailable"]

_Model = TypeVar("_Model", bound=BaseModel)

# The headers of the client's request that the primary needs.
_PASSED_ON = ("content-type", "idempotency-key", "authorization")
# The headers of the primary's answer that the client needs: when to retry, how to log in.
_PASSED_BACK = ("retry-after", "www-authenticate")
# Past a move's longest duration (60 s) plus a failover.
_FORWARD_TIMEOUT_S = 75.0


# nginx's "client closed request": nobody reads it, the log line says what happened.
CLIENT_GONE = 499


async def read_model(
    request: Request, model: type[_Model], what: str
) -> tuple[bytes, _Model] | Response:
    """The raw body (to forward as it came) and `model` parsed from it; else the answer:
    422 naming what is wrong, or 499 if the client went away before sending it all."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        return Response(status_code=CLIENT_GONE)
    try:
        return raw, model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        return JSONResponse({"error": f"invalid {what}", "detail": errors}, 422)


def unavailable(
    ctx: ApiContext, reason: str, status: int = 503, *, hint_leader: bool = True
) -> JSONResponse:
    """503 + Retry-After: what to retry, where, and what this node sees of the cluster."""
    election = ctx.node.view
    body: dict[str, Any] = {
        "status": "error",
        "error": reason,
        "node": election.node_id,
        "role": election.role.value,
        "term": election.term,
        "leader": election.leader,
        "leader_url": leader_url(ctx) if hint_leader else None,
        # Retry-After cannot say less than a second; a failover takes about half of one.
        "retry_after_s": round(2 * ctx.node.timers.heartbeat_interval_s, 3),
    }
    return JSONResponse(body, status_code=status, headers={"Retry-After": "1"})


async def forward(ctx: ApiContext, request: Request, body: bytes, why: str) -> Response:
    """Send the client's request to the primary and return its answer, or say why not."""
    forwarder = verified_forwarder(request)
    if forwarder is not None:
        return unavailable(ctx, f"{why} (forwarded by {forwarder})")
    url = leader_url(ctx)
    if url is None:
        return unavailable(ctx, f"{why}; no primary is known")
    headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED_ON}
    headers.update(seal_headers(request, body))
    try:
        answer = await _client(ctx).request(
            request.method,
            url + request.url.path,
            params=request.query_params,
            content=body,
            headers=headers,
            timeout=_FORWARD_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        # Not `leader_url` then: a client sent there would only meet the same silence.
        return unavailable(
            ctx, f"{why}; the primary at {url} did not answer ({exc!r})", hint_leader=False
        )
    ctx.metrics.forwarded.inc()
    passed = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_BACK}
    passed[FORWARDED_BY] = ctx.node.node_id
    return Response(
        answer.content,
        status_code=answer.status_code,
        headers=passed,
        media_type=answer.headers.get("content-type"),
    )


def _client(ctx: ApiContext) -> httpx.AsyncClient:
    client = ctx.state.get("forward_client")
    if client is None:
        # TCP_NODELAY, as on the server side (daemon._listen): no Nagle stall on keep-alive.
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
