"""What a backup's own microphone heard (`local_audio_sources`), handed to the primary.

`POST /internal/listen/hearing` with `{"text": PHRASE, "key": KEY, "source": "n2/alsa:hw:1,0",
"start_s": EPOCH_S, "confidence": C}`: the phrase a member recognised (in the primary's
vocabulary it matches the same intent), the idempotency key of that utterance
(`voice.listening.utterance_key`), the source and the utterance's start in stream time (seconds
since the epoch) and the recogniser's confidence in [0, 1]. The answer:
`{"outcome": "ran" | "duplicate", "key": KEY or null}`. Not in the OpenAPI document: it is the
cluster's.

Invariants:
- Only a member's request, sealed with the cluster key for this node in this boot (as forwards,
  speech hand-offs and Wyoming relays are, forward_seal.py), is taken: anything else is 403. The
  body is read up to `MAX_RELAY_BYTES` and must be the one sealed.
- The primary decides a member's hearing as its own (voice/listening.py `Hearings`): the same
  command heard by several sources within `listen_dedup_s` is one command; the key makes a
  retry of the same hearing run once.
- Listening off here (a hearing made just before `POST /api/voice/stop`) → 409, nothing runs.
  Not the primary → 503, never forwarded further; the sender retries within
  `HAND_OVER_DEADLINE_S` (a failover takes 0.5-2 s), so a microphone on a backup is heard
  through a failover.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from ha_voice.api.context import ApiContext, context
from ha_voice.api.problems import ApiError
from ha_voice.api.wyoming_relay import Relay, RelayError, command_errors, read_sealed
from ha_voice.journal import MAX_KEY

if TYPE_CHECKING:
    from ha_voice.voice.listening import Listener

__all__ = ["HAND_OVER_DEADLINE_S", "HEARING_PATH", "HearingRelay", "Offer", "RelayRefused"]

HEARING_PATH: Final = "/internal/listen/hearing"
# How long a backup keeps offering a hearing while no primary takes it: past a failover (0.5-2
# s), short enough that a command is not run long after it was said.
HAND_OVER_DEADLINE_S: Final = 5.0
_TRY_TIMEOUT_S: Final = 2.0  # one try; a primary answers a hearing in milliseconds, a stop too

router = APIRouter(include_in_schema=False)
Ctx = Annotated[ApiContext, Depends(context)]


@dataclass(frozen=True)
class Offer:
    """One hearing a member hands to the primary (see the module's wire format)."""

    text: str
    key: str
    source: str
    start_s: float
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "key": self.key,
            "source": self.source,
            "start_s": self.start_s,
            "confidence": self.confidence,
        }

    @classmethod
    def from_json(cls, body: bytes) -> Offer:
        """The offer in `body`; ApiError 422 naming what is wrong."""
        try:
            data = json.loads(body)
            fields = [data[name] for name in ("text", "key", "source", "start_s", "confidence")]
        except (ValueError, TypeError, KeyError):
            raise ApiError(
                422, "invalid", "send {text, key, source, start_s, confidence}"
            ) from None
        text, key, source, start_s, confidence = fields
        if not all(isinstance(v, str) and 0 < len(v) <= 500 for v in (text, key, source)):
            raise ApiError(
                422, "invalid", "text, key and source are strings of 1 to 500 characters"
            )
        if len(key) > MAX_KEY or not key.isascii() or not key.isprintable() or " " in key:
            raise ApiError(422, "invalid", "key: printable ASCII without spaces")
        numbers = (start_s, confidence)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            raise ApiError(422, "invalid", "start_s and confidence are numbers")
        if not (math.isfinite(start_s) and start_s >= 0 and 0.0 <= confidence <= 1.0):
            raise ApiError(422, "invalid", "start_s: seconds since the epoch; confidence: 0 to 1")
        return cls(text, key, source, float(start_s), float(confidence))


class RelayRefused(Exception):
    """The primary did not take a hearing, or none did within HAND_OVER_DEADLINE_S."""


class HearingRelay:
    """Offers this node's hearings to the primary, retrying while none takes them."""

    def __init__(self, ctx: ApiContext) -> None:
        self._relay = Relay(ctx.config, ctx)

    async def aclose(self) -> None:
        await self._relay.aclose()

    async def async_offer(self, offer: Offer) -> tuple[str, str | None]:
        """(outcome "ran" or "duplicate", the key that ran or None); RelayRefused saying why
        not, at once for a refusal, after HAND_OVER_DEADLINE_S while no primary answers."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, RelayError) and e.retry),
                stop=stop_after_delay(HAND_OVER_DEADLINE_S),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                reraise=True,
            ):
                with attempt:
                    answer = await self._relay.post(HEARING_PATH, offer.to_json(), _TRY_TIMEOUT_S)
        except RelayError as exc:
            raise RelayRefused(str(exc)) from None
        outcome, key = answer.get("outcome"), answer.get("key")
        if outcome not in ("ran", "duplicate") or not (key is None or isinstance(key, str)):
            raise RelayRefused(f"the primary answered {str(answer)[:100]}")
        return outcome, key


@router.post(HEARING_PATH)
async def take_hearing(request: Request, ctx: Ctx) -> Response:
    """Decide and run a hearing of a member's microphone (members only)."""
    _, body = await read_sealed(request, "hearings of another member")
    offer = Offer.from_json(body)
    listener: Listener | None = ctx.state.get("listener")
    if listener is None or not ctx.node.journal.settings.listening:
        raise ApiError(409, "not_listening", "listening is off: POST /api/voice/start")
    with command_errors():
        outcome, key = await listener.async_take(offer)
    return JSONResponse({"outcome": outcome, "key": key})
