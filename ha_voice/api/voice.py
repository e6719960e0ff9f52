"""`POST /api/voice/listen`: a transcript or a recording in, the seed's answer out.

The seed's JSON `{"text": …}` runs as it always did. Audio comes as a raw body (`audio/wav`,
`audio/flac`, `audio/ogg`, `audio/mpeg`, `audio/webm`, `audio/L16;rate=…`,
`application/octet-stream`), a multipart form (field `audio` or `file`) or base64 in JSON
(`{"audio": …}`); it is decoded (api/uploads.py, voice/audio.py), recognised against the active
vocabulary by the node's speech (`ctx.speech`: here or on the least loaded node), and the
intent runs exactly as a transcript's would: through the journal under the client's idempotency
key on the primary; a backup sends the primary the recognised phrase as a transcript (one hop,
sealed, api/forward.py), so the audio crosses the network once and is recognised once.

Answers: the seed's fields (status, recognized, processed, response) and, for audio, `intent`
(null when rejected), `confidence`, `alternatives`, `stt_node`, `timings` and `audio`. Silence
or an empty recording is no error: 200, status rejected, reason no_speech, and the vocabulary's
"not understood" sentence. `?dry_run=true` recognises and answers, and runs nothing (no journal
entry, no robot); it is authenticated and rate-limited as any speech work (it costs CPU).
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ha_voice.api.auth import AUTH_RESPONSES, AUTHENTICATED, source_of
from ha_voice.api.body import ACCEPTED, JsonBody, is_json
from ha_voice.api.context import ApiContext, context
from ha_voice.api.limits import rate_limited
from ha_voice.api.problems import ApiError, error_responses, quote
from ha_voice.api.robot import (
    KEY_FIELD,
    KEY_HEADER,
    KEY_PATTERN,
    STRICT,
    WRITE_ERRORS,
    idempotency_key,
    journal_answer,
    rejected,
    submit,
    who,
)
from ha_voice.api.uploads import (
    Upload,
    async_decode,
    async_read_upload,
    base64_limit,
    from_base64,
    hold_slot,
    is_upload,
)
from ha_voice.commands import Answer, CommandRequest
from ha_voice.voice.audio import ACCEPTED_TYPES, Decoded
from ha_voice.voice.intents import Intent, Match, Vocabulary
from ha_voice.voice.speech import Recognition, SpeechUnavailable

__all__ = ["RAW_AUDIO_TYPES", "ListenAnswer", "recognise", "router", "speech_error"]

router = APIRouter(prefix="/api", tags=["commands"])
Ctx = Annotated[ApiContext, Depends(context)]

# The raw bodies OpenAPI lists (audio/L16 needs its rate: audio/L16;rate=16000).
RAW_AUDIO_TYPES: Final = (
    "audio/wav",
    "audio/x-wav",
    "audio/flac",
    "audio/ogg",
    "audio/mpeg",
    "audio/webm",
    "audio/L16",
    "application/octet-stream",
)


class ListenBody(BaseModel):
    model_config = STRICT

    text: str | None = Field(
        default=None, min_length=1, max_length=500, description="a transcript, e.g. 'sta op'"
    )
    audio: str | None = Field(
        default=None,
        min_length=1,
        description="a recording in base64 (WAV, FLAC, Ogg, MP3 or WebM), or a data: URL",
    )
    idempotency_key: str | None = KEY_FIELD


class Alternative(BaseModel):
    phrase: str
    intent: str
    score: float = Field(description="mean log-probability per token (natural log, ≤ 0)")


class Timings(BaseModel):
    """Milliseconds: for audio decode_ms, stt_ms and total_ms; for a transcript match_ms."""

    decode_ms: float | None = Field(default=None, description="the upload's format to samples")
    stt_ms: float | None = Field(default=None, description="recognition, queueing included")
    total_ms: float | None = Field(default=None, description="from arrival to this answer")
    match_ms: float | None = Field(default=None, description="matching a transcript")


class AudioInfo(BaseModel):
    format: str = Field(description="WAV, FLAC, Ogg, MP3, WebM, L16, or empty")
    duration_s: float = Field(description="seconds of audio received, before trimming")


class ListenAnswer(BaseModel):
    """The seed's answer, with the journal's record if it ran a command and, for audio, what
    was heard and how sure."""

    status: str = Field(description="success, error (with 502) or rejected")
    recognized: str
    processed: bool
    response: str = Field(
        description="what the robot says: the intent's response only when the command ran "
        "(outcome done) or in a dry run; else the language's sentence for failed, stopped, "
        "unknown or rejected"
    )
    intent: str | None = Field(default=None, description="null when rejected")
    candidate: str | None = Field(
        default=None, description="when rejected: the intent the text came closest to"
    )
    reason: str | None = Field(
        default=None,
        description="why rejected: empty, no_match, ambiguous (text); no_speech, "
        "low_confidence, ambiguous, unknown (audio)",
    )
    score: float | None = None
    outcome: str | None = None
    node: str
    term: int
    leader: str | None
    key: str | None = Field(default=None, description="the key the command ran under")
    note: str | None = Field(
        default=None, description="a stop whose key held another command: it ran under `key`"
    )
    confidence: float | None = Field(default=None, description="audio: 0 to 1")
    alternatives: list[Alternative] | None = Field(
        default=None, description="audio: the next best phrases of other intents, best first"
    )
    stt_node: str | None = Field(default=None, description="audio: the node that recognised it")
    timings: Timings | None = None
    audio: AudioInfo | None = None
    transcript: str | None = Field(default=None, description="audio: free transcription, if made")
    dry_run: bool | None = Field(default=None, description="true: recognised, nothing ran")


def _listen_schema() -> dict[str, Any]:
    properties = ListenBody.model_json_schema()["properties"]
    key = properties["idempotency_key"]

    def variant(name: str) -> dict[str, Any]:
        field = {**properties[name], **({"pattern": _BASE64} if name == "audio" else {})}
        return {
            "type": "object",
            "title": name,
            "properties": {name: field, "idempotency_key": key},
            "required": [name],
            "additionalProperties": False,
        }

    return {"title": "ListenBody", "oneOf": [variant("text"), variant("audio")]}


# Base64 with padding (RFC 4648 §4), after an optional data: URL head (RFC 2397).
_BASE64: Final = (
    r"^(data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,)?"
    r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
)
_LISTEN_BODY: Final = JsonBody(
    ListenBody, '{"text": "sta op"} or {"audio": "<base64 WAV>"}', schema=_listen_schema()
)
_BINARY: Final = {"type": "string", "format": "binary"}


def _openapi() -> dict[str, Any]:
    form = {
        "type": "object",
        "properties": {
            "audio": {**_BINARY, "description": "the recording (or send it as `file`)"},
            "file": _BINARY,
            "idempotency_key": {"type": "string", "pattern": KEY_PATTERN},
        },
    }
    content = {
        **_LISTEN_BODY.openapi()["requestBody"]["content"],
        "multipart/form-data": {"schema": form},
        **{media: {"schema": _BINARY} for media in RAW_AUDIO_TYPES},
    }
    return {"requestBody": {"required": True, "content": content}, "parameters": [KEY_HEADER]}


@router.post(
    "/voice/listen",
    dependencies=[AUTHENTICATED, rate_limited],
    openapi_extra=_openapi(),
    response_class=JSONResponse,
    responses={
        200: {"model": ListenAnswer, "description": "what was heard and what became of it"},
        502: {"model": ListenAnswer, "description": "the robot failed the command (final)"},
        **error_responses(400, 409, *WRITE_ERRORS),
        **AUTH_RESPONSES,
    },
)
async def listen(
    ctx: Ctx,
    request: Request,
    dry_run: Annotated[
        bool, Query(description="recognise and answer; run nothing (no journal, no robot)")
    ] = False,
) -> Response:
    """A transcript or a recording in, the seed's answer out: status, recognized, processed,
    response (and for audio: intent, confidence, alternatives, stt_node, timings)."""
    started = time.perf_counter()
    content_type = request.headers.get("content-type")
    if not is_json(content_type) and not is_upload(content_type):
        media = (content_type or "").split(";", 1)[0].strip().lower()
        raise ApiError(
            415,
            "media_type",
            f"content type {quote(media)} is not accepted; send JSON {_LISTEN_BODY.example}, "
            "a recording (audio/wav, audio/flac, …) or a multipart form with it as `audio`",
            accepted=[*ACCEPTED, *ACCEPTED_TYPES, "multipart/form-data (field audio or file)"],
        )
    if is_upload(content_type):
        with hold_slot(ctx, request):
            upload = await async_read_upload(ctx, request, ("idempotency_key",))
            key = idempotency_key(request, upload.fields.get("idempotency_key"))
            return await _listen_audio(ctx, request, upload, key, dry_run, started)
    if _small(request, ctx.config.api_max_body_bytes):
        return await _listen_json(ctx, request, ctx.config.api_max_body_bytes, dry_run, started)
    with hold_slot(ctx, request):  # base64 audio: an upload as any other
        limit = base64_limit(ctx.config.audio_max_bytes)
        return await _listen_json(ctx, request, limit, dry_run, started)


async def _listen_json(
    ctx: ApiContext, request: Request, limit_bytes: int, dry_run: bool, started: float
) -> Response:
    raw, body = await _LISTEN_BODY.read(request, limit_bytes)
    assert body is not None
    if (body.text is None) == (body.audio is None):
        raise ApiError(422, "invalid", "send text or audio, one of them", field="text")
    key = idempotency_key(request, body.idempotency_key)  # refused up front, even if nothing runs
    if body.audio is not None:
        return await _listen_audio(ctx, request, from_base64(body.audio), key, dry_run, started)
    assert body.text is not None
    return await _listen_text(ctx, request, raw, body.text, key, dry_run, started)


async def _listen_text(
    ctx: ApiContext,
    request: Request,
    raw: bytes,
    text: str,
    key: str,
    dry_run: bool,
    started: float,
) -> Response:
    vocabulary = ctx.active_vocabulary()
    found = vocabulary.match(text)
    match_ms = round((time.perf_counter() - started) * 1000, 2)
    dry = {"dry_run": True} if dry_run else {}
    if not isinstance(found, Match):
        return rejected(
            ctx,
            text,
            found.reason,
            vocabulary.response(None, "rejected"),
            candidate=found.candidate.name if found.candidate else None,
            timings={"match_ms": match_ms},
            **dry,
        )
    extra = {"score": round(found.score, 3), **dry}
    return await _run(ctx, request, vocabulary, found.intent, text, key, raw, extra, started)


async def _listen_audio(
    ctx: ApiContext, request: Request, upload: Upload, key: str, dry_run: bool, started: float
) -> Response:
    vocabulary = ctx.active_vocabulary()
    known = None if dry_run else ctx.node.journal.get(key)
    if known is not None and known.final:  # a retry: the journal answers, nothing is heard again
        return _answered(ctx, vocabulary, Answer(known, duplicate=True), started)
    decoded = await async_decode(ctx, upload, ctx.config.listen_max_audio_s, "listen_max_audio_s")
    decoded_at = time.perf_counter()
    recognition = None if decoded.silent else await recognise(ctx, decoded, vocabulary.language)
    stt_ms = (time.perf_counter() - decoded_at) * 1000
    heard = _heard(recognition, decoded, (decoded_at - started) * 1000, stt_ms, started)
    if dry_run:
        heard["dry_run"] = True
    intent = _intent(vocabulary, recognition)
    if recognition is None or intent is None:
        reason = "no_speech" if recognition is None else recognition.rejection or "unknown"
        text = "" if recognition is None else recognition.heard
        return rejected(ctx, text, reason, vocabulary.response(None, "rejected"), **heard)
    transcript = json.dumps(
        {"text": _phrase_for(vocabulary, intent, recognition), "idempotency_key": key}
    )
    response = await _run(
        ctx,
        request,
        vocabulary,
        intent,
        recognition.heard,
        key,
        transcript.encode(),
        heard,
        started,
    )
    if isinstance(response, JSONResponse) or response.status_code not in (200, 502):
        return response
    return _overlay(response, {"recognized": recognition.heard, **heard}, started)


async def _run(
    ctx: ApiContext,
    request: Request,
    vocabulary: Vocabulary,
    intent: Intent,
    heard: str,
    key: str,
    forward_body: bytes,
    extra: dict[str, Any],
    started: float,
) -> Response:
    """Run `intent` as the text path always has (journal, key, forward from a backup), or in
    a dry run only say what it would do; the seed's fields and `extra` in the answer."""
    seed = {"recognized": heard, "intent": intent.name}
    if intent.action is None or extra.get("dry_run"):
        said = {"response": intent.response, **seed, **extra}
        return JSONResponse({"status": "success", "processed": False, **said, **who(ctx)})
    command = CommandRequest(
        key, intent.action, intent.action_params, intent.duration_s, heard, source_of(request)
    )
    answer = await submit(ctx, request, forward_body, command, content_type="application/json")
    if not isinstance(answer, Answer):
        return answer
    record = answer.record
    fields = {
        "status": "error" if record.status == "failed" else "success",
        "processed": record.status == "done",
        "response": vocabulary.response(intent, record.status),
        **seed,
        **extra,
        "outcome": record.status,
    }
    if "timings" in fields:
        fields["timings"] = {**fields["timings"], "total_ms": _since(started)}
    return journal_answer(ctx, answer, started, fields)


def _answered(ctx: ApiContext, vocabulary: Vocabulary, answer: Answer, started: float) -> Response:
    """The journal's answer to a recording whose key already holds a finished command: the
    same answer the first upload got (what was heard is the journal's text), without decoding
    or recognising it again, so a retry can never be heard differently (409)."""
    record = answer.record
    found = vocabulary.match(record.text)
    intent = found.intent if isinstance(found, Match) else None
    fields = {
        "status": "error" if record.status == "failed" else "success",
        "processed": record.status == "done",
        "response": vocabulary.response(intent, record.status),
        "recognized": record.text,
        "intent": intent.name if intent is not None else None,
        "outcome": record.status,
    }
    return journal_answer(ctx, answer, started, fields)


async def recognise(ctx: ApiContext, decoded: Decoded, language: str) -> Recognition:
    """The node's speech (here or placed elsewhere) on `decoded`; 503 without one."""
    if ctx.speech is None:
        raise ApiError(
            503,
            "no_speech",
            "this node does no speech work (a witness, or speech is off); send audio to "
            'another node, or send the transcript as {"text": …}',
            headers={"Retry-After": "1"},
            retry_after_s=1.0,
        )
    try:
        return await ctx.speech.async_recognise(decoded.audio, language, priority="command")
    except SpeechUnavailable as exc:
        raise speech_error(exc) from None


def speech_error(exc: SpeechUnavailable) -> ApiError:
    """SpeechUnavailable as an answer: its status, its reason, and Retry-After on a 503."""
    if exc.status != 503:
        return ApiError(exc.status, "speech_refused", f"speech: {exc.reason}")
    return ApiError(
        503,
        "speech_unavailable",
        f"speech: {exc.reason}",
        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        retry_after_s=exc.retry_after_s,
    )


# --- the pieces -------------------------------------------------------------------------------


def _small(request: Request, limit_bytes: int) -> bool:
    """Whether a JSON body is read under the JSON routes' limit: it declares no more (base64
    audio over it must declare its Content-Length, as every HTTP client does for a body it
    holds), or declares nothing (chunked: counted as it streams, 413 past the limit)."""
    declared = request.headers.get("content-length")
    return declared is None or not declared.isdigit() or int(declared) <= limit_bytes


def _intent(vocabulary: Vocabulary, recognition: Recognition | None) -> Intent | None:
    if recognition is None or recognition.intent is None:
        return None
    return next((i for i in vocabulary.intents if i.name == recognition.intent), None)


def _phrase_for(vocabulary: Vocabulary, intent: Intent, recognition: Recognition) -> str:
    """A transcript that the text path matches to `intent`: the recognised phrase, else the
    intent's first phrase that does (for the primary, when a backup forwards it)."""
    for phrase in (recognition.phrase or "", *intent.phrases):
        found = vocabulary.match(phrase)
        if isinstance(found, Match) and found.intent.name == intent.name:
            return phrase
    return intent.phrases[0]


def _heard(
    recognition: Recognition | None,
    decoded: Decoded,
    decode_ms: float,
    stt_ms: float,
    started: float,
) -> dict[str, Any]:
    """What an answer to audio adds to the seed's fields."""
    alternatives = [] if recognition is None else recognition.to_json()["alternatives"]
    fields: dict[str, Any] = {
        "confidence": 0.0 if recognition is None else round(recognition.confidence, 4),
        "alternatives": alternatives,
        "stt_node": None if recognition is None else recognition.node or None,
        "timings": {
            "decode_ms": round(decode_ms, 2),
            "stt_ms": round(stt_ms, 2),
            "total_ms": _since(started),
        },
        "audio": {"format": decoded.format, "duration_s": round(decoded.duration_s, 3)},
    }
    if recognition is not None and recognition.transcript is not None:
        fields["transcript"] = recognition.transcript
    return fields


def _overlay(response: Response, fields: dict[str, Any], started: float) -> Response:
    """The primary's answer to the transcript a backup sent, with what this node heard."""
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        return response
    if not isinstance(body, dict):
        return response
    body.update(fields)
    body["timings"] = {**fields["timings"], "total_ms": _since(started)}
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _REWRITTEN}
    return JSONResponse(body, response.status_code, headers=headers)


_REWRITTEN: Final = ("content-length", "content-type")


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
