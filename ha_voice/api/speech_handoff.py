"""Where members hand speech work to each other (voice/placement.py); no client can.

`POST /internal/speech/recognise?language=nl&priority=command&format=f32` and
`POST /internal/speech/transcribe?language=nl&prompt=...&format=s16`: the body is raw mono PCM at
16 kHz, float32 (`f32`) or int16 (`s16`) little-endian; the answer is the `Recognition` (or
`Transcription`) as JSON. Not in the OpenAPI document: it is the cluster's, not a client's.

Invariants:
- Only a member's request, sealed with the cluster key for this node in this boot
  (forward_seal.py, as forwards are), is taken: anything else is 403 before the body is read.
  The body is read up to `MAX_HANDOFF_BYTES` (413 past it), only once this node is known to be
  ready for it, and must be the one sealed.
- The work runs on this node's own service (`PlacedSpeech.local`) and is never placed again,
  so two nodes cannot pass a job back and forth.
- 503 with Retry-After while this node's speech is not ready or its queue is full: the placing
  node then tries another.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Final, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from ha_voice.api.auth import verified_claim
from ha_voice.api.body import read_limited
from ha_voice.api.context import ApiContext, context
from ha_voice.api.forward_seal import body_digest
from ha_voice.api.problems import ApiError, problem
from ha_voice.voice.placement import HANDOFF_PATH, PlacedSpeech, transcription_to_json
from ha_voice.voice.speech import SAMPLE_RATE, Audio, Priority, Speech, SpeechUnavailable

__all__ = ["MAX_HANDOFF_BYTES", "router"]

router = APIRouter(prefix=HANDOFF_PATH, include_in_schema=False)
Ctx = Annotated[ApiContext, Depends(context)]
PcmFormat = Literal["f32", "s16"]

# 60 s of float32 audio: past any clip the listen routes take (a command is a few seconds).
MAX_HANDOFF_BYTES: Final = 60 * SAMPLE_RATE * 4
_LANGUAGE = Query(pattern=r"^[a-z]{2,3}$")
_SAMPLE_BYTES: Final = {"f32": 4, "s16": 2}


@router.post("/recognise")
async def handoff_recognise(
    request: Request,
    ctx: Ctx,
    language: Annotated[str, _LANGUAGE],
    priority: Priority = "command",
    format: PcmFormat = "f32",
) -> Response:
    """Recognise a member's audio on this node's own speech service."""
    local = await _checked(request, ctx)
    audio = await _audio(request, format)
    try:
        recognition = await local.async_recognise(audio, language, priority=priority)
    except SpeechUnavailable as exc:
        return _unavailable(exc)
    return JSONResponse(recognition.to_json())


@router.post("/transcribe")
async def handoff_transcribe(
    request: Request,
    ctx: Ctx,
    language: Annotated[str | None, _LANGUAGE] = None,
    prompt: Annotated[str | None, Query(max_length=1000)] = None,
    format: PcmFormat = "f32",
) -> Response:
    """Transcribe a member's audio on this node's own speech service, at batch priority."""
    local = await _checked(request, ctx)
    audio = await _audio(request, format)
    try:
        transcription = await local.async_transcribe(audio, language, prompt)
    except SpeechUnavailable as exc:
        return _unavailable(exc)
    return JSONResponse(transcription_to_json(transcription))


async def _checked(request: Request, ctx: ApiContext) -> Speech:
    """This node's own service, if a member sealed `request` and the service is ready."""
    claim = verified_claim(request)
    if claim is None:
        raise ApiError(
            403,
            "not_member",
            "members only: this route takes speech work another member hands over, sealed "
            "with the cluster key; clients send audio to /api/voice/listen",
        )
    speech = ctx.speech
    local = speech.local if isinstance(speech, PlacedSpeech) else speech
    if local is None:
        raise ApiError(503, "no_speech", "this node has no speech service")
    status = local.status()
    if not status.ready:
        raise ApiError(
            503, "not_ready", f"speech not ready: {status.reason}", headers={"Retry-After": "1"}
        )
    body = await read_limited(request, MAX_HANDOFF_BYTES)
    if not hmac.compare_digest(body_digest(body), claim.body_sha256):
        raise ApiError(403, "body_mismatch", f"the body is not the one {claim.node} sealed")
    return local


async def _audio(request: Request, pcm: PcmFormat) -> Audio:
    """The request's body (already read and bounded) as float32 samples in [-1, 1]."""
    body = await request.body()
    if not body or len(body) % _SAMPLE_BYTES[pcm]:
        raise ApiError(
            422, "bad_pcm", f"{len(body)} bytes is no whole number of {pcm} samples", field="body"
        )
    if pcm == "s16":
        return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
    audio = np.frombuffer(body, dtype="<f4").astype(np.float32)
    if not np.isfinite(audio).all():
        raise ApiError(422, "bad_pcm", "samples that are not finite numbers", field="body")
    return np.clip(audio, -1.0, 1.0)


def _unavailable(exc: SpeechUnavailable) -> Response:
    retry = max(1, round(exc.retry_after_s))
    return problem(exc.status, exc.reason, headers={"Retry-After": str(retry)})
