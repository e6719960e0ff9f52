"""A command a backup's Wyoming server heard, handed to the primary to run; no client can.

`POST /internal/wyoming/command` with `{"text": PHRASE, "key": KEY, "source": SOURCE}`: the
phrase a member's Wyoming server recognised (in the primary's vocabulary it matches the same
intent), the idempotency key of that utterance, and who said it (`wyoming@ADDRESS via NODE`).
The answer is the journal's record as JSON. Not in the OpenAPI document: it is the cluster's.

Invariants:
- Only a member's request, sealed with the cluster key for this node in this boot (as forwards
  and speech hand-offs are, forward_seal.py), is taken: anything else is 403. The body is read
  up to `MAX_RELAY_BYTES` and must be the one sealed.
- Wyoming carries no credentials, so the consent is the operators': the sending member runs
  with `wyoming_commands = "command"`, and the primary runs the command only if it does too
  (403 otherwise).
- The command runs here or not at all: a node that is not the primary answers 503, never
  forwards (one hop, as forwards). The key makes a retry of the same utterance run once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Iterator
from typing import Annotated, Any, Final

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from ha_voice.api.auth import FORWARD_SEAL, FORWARDED_BY, verified_claim
from ha_voice.api.body import read_limited
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward_seal import Claim, ForwardSeal, Recipient, body_digest
from ha_voice.api.problems import ApiError
from ha_voice.api.tls import api_scheme, client_context
from ha_voice.cluster.node import NotPrimary
from ha_voice.commands import Answer, Busy, CommandRequest, KeyConflict
from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.journal import MAX_KEY
from ha_voice.voice.intents import Match

__all__ = [
    "COMMAND_DEADLINE_S",
    "MAX_RELAY_BYTES",
    "RELAY_PATH",
    "Relay",
    "RelayError",
    "router",
    "run_here",
    "run_on_primary",
]

RELAY_PATH: Final = "/internal/wyoming/command"
MAX_RELAY_BYTES: Final = 4096  # a phrase, a key and a source
# As a forward's backstop: past a move's longest duration (60 s) plus a failover.
_RELAY_TIMEOUT_S: Final = 75.0
# How long a command heard over Wyoming is offered again while no primary can take it: past a
# failover (0.5-2 s), short enough that it does not run long after it was said (as a hearing
# of a member's microphone, listen_relay.HAND_OVER_DEADLINE_S).
COMMAND_DEADLINE_S: Final = 5.0

router = APIRouter(include_in_schema=False)
Ctx = Annotated[ApiContext, Depends(context)]


async def run_here(ctx: ApiContext, text: str, key: str, source: str) -> Answer:
    """Run the intent `text` names as this primary's command under `key`; NotPrimary, Busy,
    KeyConflict as CommandService.submit; LookupError if `text` names no runnable intent."""
    found = ctx.active_vocabulary().match(text)
    intent = found.intent if isinstance(found, Match) else None
    if intent is None or intent.action is None:
        raise LookupError(f"{text[:40]!r} names no command")
    service = ctx.commands
    if service is None or not service.ready():
        raise NotPrimary("this node is not the primary")
    command = CommandRequest(
        key, intent.action, intent.action_params, intent.duration_s, text, source
    )
    answer = await service.submit(command, max_pending=ctx.config.max_pending_commands)
    if answer.duplicate:
        ctx.metrics.command_duplicates.inc()
    else:
        ctx.metrics.commands.labels(answer.record.status).inc()
    return answer


async def run_on_primary(ctx: ApiContext, relay: Relay, text: str, key: str, source: str) -> None:
    """Run the command `text` names under `key` on the primary: here while this node serves,
    else handed to it by `relay`; tried again while no primary can take it (mid-failover:
    NotPrimary, RelayError with `retry`) until COMMAND_DEADLINE_S, then the last error.
    Busy, KeyConflict, LookupError and refusals are raised at once. The key makes every try
    after one that ran a duplicate, not a second command."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_mid_failover),
        stop=stop_after_delay(COMMAND_DEADLINE_S),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        reraise=True,
    ):
        with attempt:
            service = ctx.commands
            if service is not None and service.ready():
                await run_here(ctx, text, key, source)
            else:
                await relay.send(text, key, source)


def _mid_failover(exc: BaseException) -> bool:
    return isinstance(exc, NotPrimary) or (isinstance(exc, RelayError) and exc.retry)


@router.post(RELAY_PATH)
async def relay_command(request: Request, ctx: Ctx) -> Response:
    """Run a command a member's Wyoming server heard (members only)."""
    claim, body = await read_sealed(request, "Wyoming commands of another member")
    if ctx.config.wyoming_commands != "command":
        raise ApiError(403, "wyoming_commands", 'this node has wyoming_commands = "transcript"')
    text, key, source = _fields(body)
    with command_errors():
        answer = await run_here(ctx, text, key, f"{source} via {claim.node}")
    return JSONResponse(answer.record.to_json())


async def read_sealed(request: Request, what: str) -> tuple[Claim, bytes]:
    """A member's request: its verified claim and the body it sealed, read up to
    MAX_RELAY_BYTES; ApiError 403 for anything else (no member's seal, another body)."""
    claim = verified_claim(request)
    if claim is None:
        raise ApiError(403, "not_member", f"members only: {what}")
    body = await read_limited(request, MAX_RELAY_BYTES)
    if not hmac.compare_digest(body_digest(body), claim.body_sha256):
        raise ApiError(403, "body_mismatch", f"the body is not the one {claim.node} sealed")
    return claim, body


@contextlib.contextmanager
def command_errors() -> Iterator[None]:
    """A command the primary could not take, as the relay's answer: 503 not the primary
    (the sender may try again), 429 queue full, 409 refused (its key, no such intent)."""
    try:
        yield
    except NotPrimary as exc:
        raise ApiError(503, "not_primary", str(exc), headers={"Retry-After": "1"}) from None
    except Busy:
        raise ApiError(429, "queue_full", "max_pending_commands reached") from None
    except (KeyConflict, LookupError) as exc:
        raise ApiError(409, "refused", str(exc)) from None


def _fields(body: bytes) -> tuple[str, str, str]:
    try:
        data = json.loads(body)
        text, key, source = (data[name] for name in ("text", "key", "source"))
    except (ValueError, TypeError, KeyError):
        raise ApiError(422, "invalid", "send {text, key, source}") from None
    if not all(isinstance(v, str) and 0 < len(v) <= 500 for v in (text, key, source)):
        raise ApiError(422, "invalid", "text, key and source are strings of 1 to 500 characters")
    if len(key) > MAX_KEY or not key.isascii() or not key.isprintable() or " " in key:
        raise ApiError(422, "invalid", "key: printable ASCII without spaces")
    return text, key, source


class RelayError(RuntimeError):
    """A sealed post the primary did not take: `retry` says whether another try may (no
    primary known, 503, no answer) or may not (403, 409, 422: the same would be refused)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Relay:
    """Sends what this node heard to the primary, sealed: a Wyoming command (`send`) or any
    members-only post (`post`)."""

    def __init__(self, config: Config, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._seal = ForwardSeal(
            cluster=config.cluster,
            keys=(read_cluster_key(config), *read_accepted_keys(config)),
            node_id=config.node_id,
            members=[spec.node_id for spec in config.peer_specs],
        )
        self._scheme = api_scheme(config)
        self._client = httpx.AsyncClient(verify=client_context(config) or True)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, text: str, key: str, source: str) -> dict[str, Any]:
        """The primary's journal record of the command; RelayError saying why not."""
        return await self.post(RELAY_PATH, {"text": text, "key": key, "source": source})

    async def post(
        self, path: str, payload: dict[str, Any], timeout_s: float = _RELAY_TIMEOUT_S
    ) -> dict[str, Any]:
        """The primary's JSON answer to `payload` posted to `path`, sealed for it; RelayError
        saying why not (one try: the caller decides whether to retry)."""
        view = self._ctx.node.view
        leader = view.leader
        peer = None if leader is None else view.peers.get(leader)
        if peer is None or peer.address is None or not peer.api_port or peer.boot is None:
            raise RelayError("no primary is known (or its address, port or boot)", retry=True)
        body = json.dumps(payload).encode()
        assert leader is not None
        to = Recipient(leader, peer.boot, peer.clock_offset_s or 0.0)
        seal = self._seal.seal("POST", path, "?", "network", body, to, boot=view.boot_id)
        host = peer.address[0]
        url = f"{self._scheme}://{host}:{peer.api_port}{path}"
        headers = {FORWARDED_BY: view.node_id, FORWARD_SEAL: seal}
        try:
            answer = await self._client.post(url, content=body, headers=headers, timeout=timeout_s)
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            raise RelayError(f"{leader} did not answer ({type(exc).__name__})", True) from None
        if answer.status_code != 200:
            retry = answer.status_code in (429, 503)
            raise RelayError(f"{leader} answered {answer.status_code}: {answer.text[:200]}", retry)
        try:
            record: dict[str, Any] = answer.json()
        except ValueError:
            raise RelayError(f"{leader} answered no JSON", retry=False) from None
        return record
