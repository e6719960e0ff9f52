"""Per-client rate limits, answered at once with 429 + Retry-After: on the mutating routes, and
on the reads whose answers grow with the journal.

Invariants:
- A token bucket per client address (rate `api_rate_per_s`, size `api_rate_burst`), applied
  at the node the client reached. A request another node forwarded was limited there, so it is
  not limited again here (else every client behind one backup would share its bucket).
- Reads (`read_rate_limited`: /api/journal, up to a megabyte an answer) have buckets of their
  own, so a client that reads never spends the tokens of its commands (measured: 200
  connections reading the whole journal in a loop cost a primary its lease).
- The table of clients is bounded (`MAX_CLIENTS`): the client seen least recently is forgotten
  first, and a forgotten client starts again with a full bucket.
- Pure arithmetic on the `now` it is given; the route dependency reads the clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam

from ha_voice import clock
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward import forwarded_by
from ha_voice.api.problems import ApiError

__all__ = ["MAX_CLIENTS", "TokenBuckets", "rate_limited", "read_rate_limited"]

# Clients on a robot's LAN number in the tens; 4096 buckets take well under a megabyte.
MAX_CLIENTS: Final = 4096


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """Token buckets by client: `take` spends one token or says how long until there is one."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, now: float) -> float:
        """0 if `client` may go ahead now (a token spent), else the seconds until it may."""
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            while len(self._buckets) >= self._max_clients:
                self._buckets.popitem(last=False)
        self._buckets[client] = bucket  # now the most recently seen
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


def _limited(buckets_of: Callable[[Request], TokenBuckets], what: str, reason: str) -> DependsParam:
    """A FastAPI dependency: 429 with Retry-After if this client is over its rate for `what`
    (`reason`: the refusal's metric label)."""

    async def limited(request: Request, ctx: Annotated[ApiContext, Depends(context)]) -> None:
        if forwarded_by(request) is not None:
            return
        client = request.client.host if request.client else "?"
        wait_s = buckets_of(request).take(client, clock.monotonic())
        if wait_s > 0:
            rate = ctx.config.api_rate_per_s
            raise ApiError(
                429,
                reason,
                f"more than {rate:g} {what} per second from {client} (api_rate_per_s); "
                f"try again in {wait_s:.3f} s",
                headers={"Retry-After": str(math.ceil(wait_s))},
                retry_after_s=round(wait_s, 3),
            )

    dependency: DependsParam = Depends(limited)
    return dependency


def _command_buckets(request: Request) -> TokenBuckets:
    buckets: TokenBuckets = request.app.state.rate_limits  # made by create_app
    return buckets


def _read_buckets(request: Request) -> TokenBuckets:
    state = request.app.state
    buckets: TokenBuckets | None = getattr(state, "read_limits", None)
    if buckets is None:  # one table per app, made on its first read
        limits: TokenBuckets = state.rate_limits
        buckets = state.read_limits = TokenBuckets(limits.rate_per_s, limits.burst)
    return buckets


rate_limited = _limited(_command_buckets, "requests", "rate_limited")
read_rate_limited = _limited(_read_buckets, "reads of the journal", "read_rate_limited")
