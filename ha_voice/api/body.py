"""The one body reader of the JSON routes: bounded while it reads, parsed only once complete.

Invariants:
- The content type is judged before a byte of the body is read: JSON (`application/json`,
  `application/*+json`), none, or curl -d's `application/x-www-form-urlencoded` whose body is
  a JSON object; anything else is 415 with what is accepted.
- The size is judged before parsing: a `Content-Length` over the route's limit is 413 at once,
  and a body without one (chunked) is counted as it streams and never read past the limit.
- The raw bytes are kept, so a backup forwards the body exactly as it came.
- Parsing and validation errors are 400 (not JSON, empty) or 422 (naming the field), built by
  `problems`; no input is echoed beyond a short quoted prefix.
- An object that names a key twice is 422 naming the key, at any depth: the parser keeps the
  last (`{"command": "stand", "command": "sit"}` is a sit), a reader of the first would see
  another command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from ha_voice.api.problems import ApiError, field_name, quote, validation_message

__all__ = ["ACCEPTED", "JsonBody", "is_json", "read_limited", "repeated_key"]

_Model = TypeVar("_Model", bound=BaseModel)

_FORM: Final = "application/x-www-form-urlencoded"
ACCEPTED: Final = (
    "application/json",
    f"{_FORM} holding a JSON object (what curl -d sends)",
)


@dataclass(frozen=True)
class JsonBody(Generic[_Model]):
    """A route's JSON body: its model, an example for messages, and what else to say."""

    model: type[_Model]
    example: str
    optional: bool = False  # an empty body means "no body" (step-down)
    # The documented schema, where it can say more than the model's (which values go together).
    schema: Mapping[str, Any] | None = None

    def openapi(self) -> dict[str, Any]:
        """`openapi_extra` for the route: the model (or `schema`) as its request body."""
        schema = dict(self.schema) if self.schema else self.model.model_json_schema()
        return {
            "requestBody": {
                "required": not self.optional,
                "content": {"application/json": {"schema": schema}},
            }
        }

    async def read(self, request: Request, limit_bytes: int) -> tuple[bytes, _Model | None]:
        """(raw body, parsed model), the model None only for an optional empty body."""
        form = self._judge_media_type(request.headers.get("content-type"))
        raw = await read_limited(request, limit_bytes)
        if not raw.strip():
            if self.optional:
                return raw, None
            raise ApiError(
                400, "empty_body", f"empty body; send a JSON object such as {self.example}"
            )
        if form and not raw.lstrip().startswith(b"{"):
            raise ApiError(
                415,
                "form_fields",
                f"form fields are not accepted; send the JSON object itself, e.g. {self.example}",
                accepted=list(ACCEPTED),
            )
        return raw, self._parse(raw)

    def _judge_media_type(self, content_type: str | None) -> bool:
        """True for a form body that must hold JSON; 415 for a type we do not take."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if is_json(content_type):
            return media == _FORM
        raise ApiError(
            415,
            "media_type",
            f"content type {quote(media)} is not accepted; send application/json, e.g. "
            f"{self.example}",
            accepted=list(ACCEPTED),
        )

    def _parse(self, raw: bytes) -> _Model:
        repeated = repeated_key(raw)
        if repeated is not None:
            field = ".".join(field_name(part) for part in repeated)
            raise ApiError(
                422,
                "repeated_key",
                f"{field}: the key appears twice in one object; send it once",
                field=field,
            )
        try:
            return self.model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
        kind = errors[0]["type"]
        if kind == "json_invalid":
            # pydantic says where (line, column) and what, never the text itself.
            raise ApiError(400, "bad_json", f"body is not valid JSON: {errors[0]['msg']}")
        if kind == "model_type":
            raise ApiError(422, "invalid", f"body must be a JSON object such as {self.example}")
        field, line = validation_message(errors)
        raise ApiError(422, "invalid", line, field=field)


def is_json(content_type: str | None) -> bool:
    """Whether a body of `content_type` is one `JsonBody.read` takes (JSON, none, curl -d's)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    json_type = media.startswith("application/") and media.endswith("+json")
    return json_type or media in ("", "application/json", _FORM)


def repeated_key(raw: bytes) -> tuple[str | int, ...] | None:
    """Where the JSON `raw` first names a key twice in one object (the path to that key, e.g.
    ("params", "vx")); None if no object does, or if `raw` is not JSON the standard parser
    reads (pydantic's parser then says what is wrong)."""
    try:
        tree = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), tree)]
    while stack:  # depth first, in document order, without recursion
        path, node = stack.pop()
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, _ in node:
                if key in seen:
                    return (*path, key)
                seen.add(key)
            stack.extend(((*path, key), value) for key, value in reversed(node))
        elif isinstance(node, list):
            stack.extend(((*path, i), value) for i, value in reversed(list(enumerate(node))))
    return None


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as the parser saw it: its (key, value) pairs, repeats kept."""


async def read_limited(request: Request, limit_bytes: int) -> bytes:
    """The request's body, or 413 as soon as it is known to exceed `limit_bytes`.

    The bytes are kept on the request (Starlette's `stream()` yields a body already read), so a
    second reader of the same request (auth checking a forward seal, then the route) reads the
    same bytes and the stream is consumed once."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise _too_large(request, f"{int(declared)} bytes", limit_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:  # stop here: the rest is never read
            raise _too_large(request, f"more than {limit_bytes} bytes", limit_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache of the read body
    return body


def _too_large(request: Request, size: str, limit_bytes: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"body of {size} is over the limit of {limit_bytes} bytes for {request.url.path}",
        limit_bytes=limit_bytes,
    )
