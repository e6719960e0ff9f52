"""Every error answer of the API, built in one place that can always serialise it.

Invariants:
- Every 4xx and 5xx body is an `ErrorBody`: `status` "error", a one-line `error` in our own
  words that names the field and the problem, and typed optional details. Nothing the client
  sent is echoed beyond `ECHO_CHARS` characters, and that only quoted and escaped (`quote`),
  so an answer never grows with the request and always encodes as UTF-8 JSON.
- Routes raise `ApiError`; FastAPI's validation errors, Starlette's HTTP exceptions (404, 405),
  a client gone mid-body (499) and any other exception (500, logged with its traceback) leave
  through `problem` as well.
- Each refusal, of a route or of the connection layer (connections.py, gate.py), is counted in
  `ha_voice_api_refusals_total{status,reason}` and logged at warning the first time for its
  reason, then at debug with a summary at most once a minute (STYLE.md 7).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ha_voice.api.log_throttle import LogThrottle
from ha_voice.errors import RemoteError

__all__ = [
    "CLIENT_GONE",
    "CLOSED_UNANSWERED",
    "ECHO_CHARS",
    "ApiError",
    "ErrorBody",
    "HeldCommand",
    "Refusals",
    "error_responses",
    "field_name",
    "install",
    "problem",
    "problem_bytes",
    "quote",
    "validation_message",
]

log = logging.getLogger(__name__)

# Enough to recognise what was sent; a prefix this short never makes an answer large.
ECHO_CHARS: Final = 64
# nginx's "client closed request": nobody reads it, the log line says what happened.
CLIENT_GONE: Final = 499
# nginx's 444: the connection was closed without an answer (a TLS client refused before its
# handshake, a handshake that failed or took too long, a connection the kernel could not hand us).
CLOSED_UNANSWERED: Final = 444
# An error line stays a line: our words plus a few quoted prefixes fit easily.
_MAX_ERROR_CHARS: Final = 400
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


class HeldCommand(BaseModel):
    """The command an idempotency key already holds."""

    command: str = Field(description="the action name, e.g. stand_up")
    params: dict[str, float]
    duration_s: float | None


class ErrorBody(BaseModel):
    """Every error answer: what went wrong in one line, and details where they help."""

    status: Literal["error"] = "error"
    error: str = Field(description="one line naming the field and the problem")
    field: str | None = Field(default=None, description="the request field at fault")
    known: list[str] | None = Field(default=None, description="the commands that exist")
    accepted: list[str] | None = Field(default=None, description="content types accepted")
    limit_bytes: int | None = Field(default=None, description="this route's body limit")
    retry_after_s: float | None = Field(
        default=None, description="when to try again, finer than the Retry-After header"
    )
    node: str | None = Field(default=None, description="the node that answered")
    role: str | None = None
    term: int | None = None
    leader: str | None = Field(default=None, description="the primary, as this node knows it")
    leader_url: str | None = Field(default=None, description="where to send the request")
    key: str | None = Field(default=None, description="the idempotency key at issue")
    held: HeldCommand | None = Field(default=None, description="what the key already holds")
    reason: str | None = Field(default=None, description="why a step-down was refused")


class ApiError(RemoteError):
    """A request refused: `status`, a metric `label`, a one-line `error` and details."""

    def __init__(
        self,
        status: int,
        label: str,
        error: str,
        *,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(label, error)
        self.status = status
        self.error = error
        self.headers = dict(headers or {})
        self.details = details


def quote(value: str | bytes) -> str:
    """At most ECHO_CHARS characters of what a client sent, quoted, escaped and sized."""
    text = value[: ECHO_CHARS * 4].decode("utf-8", "replace") if isinstance(value, bytes) else value
    shown = repr(text[:ECHO_CHARS])  # escapes controls, format characters and lone surrogates
    if len(text) <= ECHO_CHARS:
        return shown
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{shown}… ({len(value)} {unit})"


def problem(
    status: int, error: str, *, headers: Mapping[str, str] | None = None, **details: Any
) -> Response:
    """The error answer: an `ErrorBody` as JSON, with `headers`."""
    return Response(
        problem_bytes(status, error, **details),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def problem_bytes(status: int, error: str, **details: Any) -> bytes:
    """The JSON of an error answer (also written by the HTTP protocol before any route runs)."""
    body = ErrorBody(status="error", error=_one_line(error), **details)
    data = body.model_dump(mode="json", exclude_unset=True)
    # ASCII with escapes: any Python string encodes so, even a lone surrogate.
    return json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _one_line(text: str) -> str:
    """`text` with anything that is not printable escaped, cut to one short line."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def validation_message(errors: Sequence[Mapping[str, Any]], skip: int = 0) -> tuple[str, str]:
    """(field, one line) for pydantic's `errors`, from the names in `loc` after the first
    `skip` parts (FastAPI's "query", "body"), never from the input. An unknown field is named
    first: it is most often a misspelling of the one reported missing."""
    unknown = [error for error in errors if error.get("type") == "extra_forbidden"]
    first = (unknown or errors)[0]
    names = [field_name(part) for part in tuple(first.get("loc", ()))[skip:]]
    field = ".".join(names) or "body"
    kind = str(first.get("type", ""))
    if kind == "extra_forbidden":
        line = f"unknown field {field}"
    elif kind == "missing":
        line = f"{field} is required"
    else:
        message = str(first.get("msg", "is invalid"))
        line = f"{field}: {message[:1].lower()}{message[1:]}"
    more = len(errors) - 1
    return field, line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def field_name(part: object) -> str:
    """One part of a field's path as an answer names it: `[3]` for an index, the name if it
    is one, else a quoted prefix."""
    if isinstance(part, int):
        return f"[{part}]"
    text = str(part)
    return text if _FIELD_NAME.fullmatch(text) else quote(text)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for `statuses`, each with the shared error model."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS.get(status, "error")}
        for status in statuses
    }


_DESCRIPTIONS: Final = {
    400: "the request is malformed: not JSON, empty, a bad key, an unknown command, or a header "
    "that must be sent once sent twice",
    401: "no valid bearer token",
    404: "no such route",
    405: "the route takes another method",
    408: "the request was not received within the read timeouts",
    409: "the idempotency key already holds another command, or the step-down was refused",
    413: "the body is larger than this route's limit",
    415: "the content type is not accepted",
    431: "the request line and headers are larger than 16 KiB",
    422: "the JSON does not match the schema: the field and the problem are named",
    429: "too many requests from this client, or too many commands waiting: see Retry-After",
    500: "a bug: the traceback is in the node's log",
    503: "no primary can take it now: see Retry-After and leader_url",
}


# --- wiring -----------------------------------------------------------------------------------


class Refusals:
    """Counts refusals by status and reason; logs the first of each reason at warning, then
    at debug with a summary at most once a minute (`LogThrottle`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.counter = Counter(
            "ha_voice_api_refusals",
            "HTTP requests and connections refused, by status (444: closed without an answer) "
            "and reason",
            ["status", "reason"],
            registry=registry,
        )
        self._log = LogThrottle(log, "refusals")

    def note(self, request: Request | None, status: int, reason: str, error: str) -> None:
        """Count and log a request refused with `status`."""
        where = f"{request.method} {request.url.path}" if request is not None else "HTTP"
        self.note_connection(status, reason, error, where)

    def note_connection(self, status: int, reason: str, error: str, where: str = "HTTP") -> None:
        """Count and log a refusal of the connection layer (no request object, or none yet)."""
        self.counter.labels(str(status), reason).inc()
        self._log.note(reason, "%s refused %d %s: %s", where, status, reason, _one_line(error))


def install(app: FastAPI, registry: CollectorRegistry, routers: Sequence[APIRouter] = ()) -> None:
    """Route every error `app` can produce through `problem`, and count it in `registry`;
    `routers` are the app's routers, whose methods a 405 lists."""
    refusals = Refusals(registry)
    app.state.refusals = refusals
    methods: dict[str, set[str]] = {}
    for route in [*app.routes, *(r for router in routers for r in router.routes)]:
        taken = getattr(route, "methods", None)
        if taken:
            methods.setdefault(getattr(route, "path", ""), set()).update(taken)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        refusals.note(request, exc.status, exc.reason, exc.error)
        return problem(exc.status, exc.error, headers=exc.headers, **exc.details)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        field, line = validation_message(list(exc.errors()), skip=1)
        refusals.note(request, 422, "invalid", line)
        return problem(422, line, field=field)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(sorted(methods.get(request.url.path, ())))
        line = _http_line(request, exc.status_code, headers.get("Allow", ""), str(exc.detail))
        refusals.note(request, exc.status_code, f"http_{exc.status_code}", line)
        return problem(exc.status_code, line, headers=headers)

    async def on_gone(request: Request, exc: Exception) -> Response:
        refusals.note(request, CLIENT_GONE, "client_gone", "the client went away mid-request")
        return Response(status_code=CLIENT_GONE)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_gone)
    app.add_middleware(_LastResort, refusals=refusals)


def _http_line(request: Request, status: int, allowed: str, detail: str) -> str:
    path = quote(request.url.path)
    if status == 404:
        return f"no route {path}; the routes are listed at /docs"
    if status == 405:
        return f"{request.method} is not allowed on {path}; allowed: {allowed}"
    return detail


class _LastResort:
    """Inside every other layer: an exception nobody handled is a bug, logged, answered 500."""

    def __init__(self, app: ASGIApp, refusals: Refusals) -> None:
        self.app = app
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            log.exception("bug answering %s %s", scope.get("method"), scope.get("path"))
            self.refusals.counter.labels("500", "bug").inc()
            if not started:  # else the connection is closed mid-answer by the server
                response = problem(500, "internal error; the traceback is in this node's log")
                await response(scope, receive, send)
