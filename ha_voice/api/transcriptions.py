"""`POST /v1/audio/transcriptions`: free transcription, as OpenAI's API takes and answers it.

For tools that speak that API (the openai client with `base_url=http://NODE:8888/v1`): a
multipart form with `file` (any format api/uploads.py decodes), `model` (required by the API;
the node transcribes with the model it has loaded, whatever is named), `language` (ISO 639-1;
detected when absent), `prompt`, `response_format` (json, text or verbose_json; srt and vtt are
not made: 400) and `temperature` (taken, not used: decoding is greedy). Batch priority: every
command queued on a node is served first. Authenticated (the bearer token doubles as the
API key) and rate-limited like the commands: it reads nothing, but it is the most expensive
request a node serves. OpenAI answers bad parameters with 400; so does this route.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED
from ha_voice.api.context import ApiContext, context
from ha_voice.api.limits import rate_limited
from ha_voice.api.problems import ApiError, error_responses, quote
from ha_voice.api.robot import WRITE_ERRORS
from ha_voice.api.uploads import async_decode, async_read_upload, hold_slot
from ha_voice.api.voice import speech_error
from ha_voice.voice.audio import Decoded
from ha_voice.voice.speech import SpeechUnavailable, Transcription

__all__ = ["FORMATS", "TranscriptionAnswer", "router"]

router = APIRouter(prefix="/v1/audio", tags=["speech"])
Ctx = Annotated[ApiContext, Depends(context)]

FORMATS: Final = ("json", "text", "verbose_json")
_FIELDS: Final = ("model", "language", "prompt", "response_format", "temperature")
_LANGUAGE: Final = re.compile(r"[a-z]{2,3}")
_MAX_PROMPT_CHARS: Final = 1000  # Whisper reads at most 224 prompt tokens


class TranscriptionAnswer(BaseModel):
    """json: `text` alone; verbose_json adds the rest (OpenAI's names)."""

    text: str
    task: str | None = Field(default=None, description="verbose_json: transcribe")
    language: str | None = Field(default=None, description="verbose_json: ISO 639-1")
    duration: float | None = Field(default=None, description="verbose_json: seconds of audio")
    segments: list[dict[str, Any]] | None = Field(
        default=None, description="verbose_json: id, seek, start, end (seconds), text"
    )


def _openapi() -> dict[str, Any]:
    form = {
        "type": "object",
        "required": ["file", "model"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "any name; the node's model is used",
            },
            "language": {"type": "string", "pattern": "^[a-z]{2,3}$"},
            "prompt": {"type": "string", "maxLength": _MAX_PROMPT_CHARS},
            "response_format": {"type": "string", "enum": list(FORMATS)},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


@router.post(
    "/transcriptions",
    dependencies=[AUTHENTICATED, rate_limited],
    openapi_extra=_openapi(),
    response_class=JSONResponse,
    responses={
        200: {
            "model": TranscriptionAnswer,
            "description": "the transcript (text/plain for response_format=text)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(400, *WRITE_ERRORS),
        **AUTH_RESPONSES,
    },
)
async def transcriptions(ctx: Ctx, request: Request) -> Response:
    """Free transcription of one recording (OpenAI's audio transcription API)."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise ApiError(
            415,
            "media_type",
            "send multipart/form-data with the recording as `file`, as OpenAI's API takes it",
            accepted=["multipart/form-data"],
        )
    with hold_slot(ctx, request, batch=True):
        upload = await async_read_upload(ctx, request, _FIELDS)
        fields = upload.fields
        response_format, language, prompt = _check(fields)
        decoded = await async_decode(
            ctx,
            upload,
            ctx.config.transcription_max_audio_s,
            "transcription_max_audio_s",
            trimmed=False,
        )
        transcription = await _transcribe(ctx, decoded, language, prompt)
    if response_format == "text":
        return PlainTextResponse(transcription.text)
    if response_format == "json":
        return JSONResponse({"text": transcription.text})
    return JSONResponse(_verbose(transcription, decoded))


def _check(fields: dict[str, str] | Any) -> tuple[str, str | None, str | None]:
    """(response_format, language, prompt), or 400 naming the parameter."""
    if not fields.get("model"):
        raise _bad("model", "model is required (any name: the node's own model is used)")
    response_format = fields.get("response_format", "json")
    if response_format not in FORMATS:
        raise _bad(
            "response_format",
            f"response_format {quote(response_format)} is not made here; one of "
            f"{', '.join(FORMATS)}",
        )
    language = fields.get("language") or None
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise _bad("language", "language: an ISO 639-1 code such as nl or en")
    prompt = fields.get("prompt") or None
    if prompt is not None and len(prompt) > _MAX_PROMPT_CHARS:
        raise _bad("prompt", f"prompt: longer than {_MAX_PROMPT_CHARS} characters")
    temperature = fields.get("temperature")
    if temperature is not None and not _is_unit_number(temperature):
        raise _bad("temperature", "temperature: a number from 0 to 1")
    return response_format, language, prompt


def _is_unit_number(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def _bad(field: str, line: str) -> ApiError:
    return ApiError(400, "bad_parameter", line, field=field)


async def _transcribe(
    ctx: ApiContext, decoded: Decoded, language: str | None, prompt: str | None
) -> Transcription:
    if decoded.silent:  # nothing to hear: no worker's time spent on it
        return Transcription("", language or "", 0.0, (), "", 0.0)
    if ctx.speech is None:
        raise ApiError(
            503,
            "no_speech",
            "this node does no speech work (a witness, or speech is off); send to another node",
            headers={"Retry-After": "1"},
            retry_after_s=1.0,
        )
    try:
        return await ctx.speech.async_transcribe(decoded.audio, language, prompt)
    except SpeechUnavailable as exc:
        raise speech_error(exc) from None


def _verbose(transcription: Transcription, decoded: Decoded) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": transcription.language,
        "duration": round(decoded.duration_s, 3),
        "text": transcription.text,
        "segments": [
            {"id": i, "seek": 0, "start": round(start, 3), "end": round(end, 3), "text": text}
            for i, (start, end, text) in enumerate(transcription.segments)
        ],
    }
