"""Audio uploads of the speech routes: read bounded, a few at a time, parsed and decoded off the
event loop.

An upload comes as a raw body (`audio/wav`, `audio/flac`, … `application/octet-stream`), as a
multipart form (the file in field `audio` or `file`, beside named text fields), or as base64
in a JSON member (a data: URL too). Decoding is voice/audio.py's.

Invariants:
- An upload is read only while it holds one of `MAX_UPLOADS` slots, at most
  `MAX_UPLOADS_PER_CLIENT` of them per client address; one more is 503 + Retry-After before a
  byte of its body is read. Uploads hold at most `MAX_UPLOADS` × `audio_max_bytes` of bodies.
- Bodies are read by `body.read_limited` under `audio_max_bytes` (413 from Content-Length, or
  while streaming, never read past the limit).
- Multipart and base64 parsing and decoding run in a pool of `DECODE_THREADS` threads; the
  event loop only awaits them. Every refusal is an `ApiError` in our own words, counted by
  `problems`; nothing of the upload is echoed but a short quoted field name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, TypeVar

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ha_voice.api.body import read_limited
from ha_voice.api.context import ApiContext
from ha_voice.api.problems import ApiError, quote
from ha_voice.voice.audio import ACCEPTED_TYPES, AudioRefused, Decoded, decode_upload

__all__ = [
    "DECODE_THREADS",
    "FILE_FIELDS",
    "MAX_UPLOADS",
    "MAX_UPLOADS_PER_CLIENT",
    "Upload",
    "async_decode",
    "async_read_upload",
    "base64_limit",
    "from_base64",
    "hold_slot",
    "is_upload",
    "parse_multipart",
]

_T = TypeVar("_T")

# Speech work is one or two utterances at a time per node; 8 uploads in flight is already a
# queue, and bounds their memory to 8 × audio_max_bytes.
MAX_UPLOADS: Final = 8
MAX_UPLOADS_PER_CLIENT: Final = 2  # one client cannot take every slot
# Transcriptions (batch work) may hold at most half the slots: however many are under way, a
# spoken command always finds a slot, as it finds the front of every speech queue.
MAX_BATCH_UPLOADS: Final = MAX_UPLOADS // 2
# Decoding 30 s of audio takes at most ~50 ms of one core (docs/benchmarks.md, "Decoding
# uploads"); two threads keep the Jetson's other cores for speech and the cluster.
DECODE_THREADS: Final = 2
FILE_FIELDS: Final = ("audio", "file")
_MAX_PARTS: Final = 16
_MAX_FIELD_CHARS: Final = 4096
_MULTIPART: Final = "multipart/form-data"


@dataclass(frozen=True)
class Upload:
    """Audio bytes as sent, their content type (the part's or data: URL's, if it said one),
    and the other fields of the form (name → text)."""

    data: bytes
    content_type: str | None
    fields: Mapping[str, str] = field(default_factory=dict)


def is_upload(content_type: str | None) -> bool:
    """Whether a request of `content_type` carries audio itself (raw or multipart), not JSON."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media.startswith(("audio/", "video/")) or media in (
        "application/octet-stream",
        _MULTIPART,
    )


def base64_limit(audio_max_bytes: int) -> int:
    """Bytes of a JSON body that carries `audio_max_bytes` of audio in base64, with room for a
    data: URL prefix and the other members."""
    return 4 * math.ceil(audio_max_bytes / 3) + 1024


# --- slots ------------------------------------------------------------------------------------


class _Slots:
    """Uploads in flight, in total and by client; single-threaded (the event loop's)."""

    def __init__(self) -> None:
        self.by_client: Counter[str] = Counter()
        self.batch = 0

    def take(self, client: str, batch: bool = False) -> str | None:
        """None if `client` may upload now (a slot taken), else why not; `batch` (a
        transcription) may take only MAX_BATCH_UPLOADS of the slots."""
        if sum(self.by_client.values()) >= MAX_UPLOADS:
            return f"{MAX_UPLOADS} uploads are being received or decoded on this node"
        if self.by_client[client] >= MAX_UPLOADS_PER_CLIENT:
            return f"{client} already has {MAX_UPLOADS_PER_CLIENT} uploads under way"
        if batch and self.batch >= MAX_BATCH_UPLOADS:
            return (
                f"{MAX_BATCH_UPLOADS} transcriptions are under way on this node (the other "
                "slots are kept for spoken commands)"
            )
        self.by_client[client] += 1
        self.batch += batch
        return None

    def give_back(self, client: str, batch: bool = False) -> None:
        self.batch -= batch
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


@contextlib.contextmanager
def hold_slot(ctx: ApiContext, request: Request, *, batch: bool = False) -> Iterator[None]:
    """One upload slot for the duration; 503 + Retry-After at once if none is free (for
    `batch` work, a transcription, if it would hold more than MAX_BATCH_UPLOADS)."""
    slots = ctx.state.setdefault("upload_slots", _Slots())
    assert isinstance(slots, _Slots)
    client = request.client.host if request.client else "?"
    busy = slots.take(client, batch)
    if busy is not None:
        raise ApiError(
            503,
            "uploads_busy",
            f"{busy}; try again shortly",
            headers={"Retry-After": "1"},
            retry_after_s=1.0,
        )
    try:
        yield
    finally:
        slots.give_back(client, batch)


# --- reading and decoding ---------------------------------------------------------------------


async def async_read_upload(ctx: ApiContext, request: Request, fields: Collection[str]) -> Upload:
    """The request's audio (raw body or multipart, `fields` its other allowed form fields),
    read under `audio_max_bytes`; hold a slot (`hold_slot`) around it."""
    content_type = request.headers.get("content-type")
    raw = await read_limited(request, ctx.config.audio_max_bytes)
    if (content_type or "").split(";", 1)[0].strip().lower() != _MULTIPART:
        return Upload(raw, content_type)
    assert content_type is not None
    return await _in_thread(ctx, parse_multipart, raw, content_type, fields)


async def async_decode(
    ctx: ApiContext, upload: Upload, max_s: float, limit_key: str, *, trimmed: bool = True
) -> Decoded:
    """`upload` decoded in the pool (voice/audio.py `decode_upload`); its refusals as ApiError,
    a seconds limit named by its config key `limit_key`."""
    try:
        return await _in_thread(
            ctx, lambda: decode_upload(upload.data, upload.content_type, max_s, trimmed=trimmed)
        )
    except AudioRefused as exc:
        if exc.status == 415:
            raise ApiError(415, exc.reason, exc.detail, accepted=list(ACCEPTED_TYPES)) from None
        if exc.reason == "audio_too_long":
            raise ApiError(413, exc.reason, f"{exc.detail} ({limit_key})") from None
        raise ApiError(exc.status, exc.reason, exc.detail) from None


async def _in_thread(ctx: ApiContext, work: Callable[..., _T], *args: object) -> _T:
    pool = ctx.state.get("decode_pool")
    if pool is None:
        pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="audio-decode")
        ctx.state["decode_pool"] = pool
    assert isinstance(pool, ThreadPoolExecutor)
    return await asyncio.get_running_loop().run_in_executor(pool, lambda: work(*args))


def from_base64(text: str, field_name: str = "audio") -> Upload:
    """Base64 audio, or a data: URL (`data:audio/wav;base64,…`, whose type it keeps); 422
    naming `field_name` if it is neither."""
    content_type = None
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ApiError(
                422,
                "invalid",
                f"{field_name}: a data: URL must be data:<type>;base64,<data>",
                field=field_name,
            )
        content_type = head[len("data:") : -len(";base64")] or None
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            422,
            "invalid",
            f"{field_name}: not base64 (RFC 4648 with padding, no line breaks within)",
            field=field_name,
        ) from None
    return Upload(data, content_type)


# --- multipart --------------------------------------------------------------------------------


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, content_type: str, fields: Collection[str]) -> Upload:
    """A multipart/form-data `body`: the file of field `audio` or `file` and the text of
    `fields`; 400 for a body that is not multipart, 422 naming a missing, repeated or unknown
    field. CPU-bound: the decode pool runs it."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary parameter")
    parts = _split(body, boundary)
    audio: _Part | None = None
    texts: dict[str, str] = {}
    for part in parts:
        name, filename = _disposition(part)
        if name in FILE_FIELDS:
            if audio is not None:
                raise _field_error(name, "send one file, in field audio or file")
            audio = part
        elif name in fields and filename is None:
            texts[name] = _text(name, part)
        else:
            allowed = ", ".join([*FILE_FIELDS, *fields])
            raise _field_error(None, f"unknown field {quote(name)}; the fields are {allowed}")
    if audio is None:
        raise _field_error("audio", "audio (or file) is required: the recording as a file")
    part_type = audio.headers.get(b"content-type", b"").decode("latin-1").strip() or None
    return Upload(bytes(audio.data), part_type, texts)


def _split(body: bytes, boundary: bytes) -> list[_Part]:
    parts: list[_Part] = []
    name = bytearray()
    value = bytearray()

    def begin() -> None:
        if len(parts) >= _MAX_PARTS:
            raise _field_error(None, f"more than {_MAX_PARTS} parts in the form")
        parts.append(_Part())

    def header_end() -> None:
        parts[-1].headers[bytes(name).strip().lower()] = bytes(value).strip()
        name.clear()
        value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": lambda data, start, end: name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: value.extend(data[start:end]),
            "on_header_end": header_end,
            "on_part_data": lambda data, start, end: parts[-1].data.extend(data[start:end]),
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(
            400, "bad_multipart", f"not a valid multipart/form-data body ({exc})"
        ) from None
    return parts


def _disposition(part: _Part) -> tuple[str, str | None]:
    """The part's field name and file name (None if it names none)."""
    kind, params = parse_options_header(part.headers.get(b"content-disposition", b""))
    if kind != b"form-data" or b"name" not in params:
        raise _field_error(None, "every part needs Content-Disposition: form-data; name=…")
    filename = params.get(b"filename")
    return (
        params[b"name"].decode("utf-8", "replace"),
        None if filename is None else filename.decode("utf-8", "replace"),
    )


def _text(name: str, part: _Part) -> str:
    if len(part.data) > _MAX_FIELD_CHARS:
        raise _field_error(name, f"{name}: longer than {_MAX_FIELD_CHARS} bytes")
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise _field_error(name, f"{name}: not UTF-8 text") from None


def _field_error(name: str | None, line: str) -> ApiError:
    return (
        ApiError(422, "invalid", line)
        if name is None
        else ApiError(422, "invalid", line, field=name)
    )
