"""Health checks answer the methods load balancers probe with, as Patroni's endpoints do.

HAProxy's `option httpchk` sends OPTIONS unless told otherwise, and some checks send HEAD: both
get the status GET would get — HEAD with GET's headers and no body, OPTIONS with no body at all
(Patroni answers OPTIONS with the status code only). They are left out of the OpenAPI schema,
which documents the GET.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

__all__ = ["PROBE_METHODS", "add_probe_methods", "health_check_response"]

PROBE_METHODS = ("HEAD", "OPTIONS")
_ALLOW = "GET, HEAD, OPTIONS"


def add_probe_methods(router: APIRouter, path: str, endpoint: Callable[..., Any]) -> None:
    """Answer HEAD and OPTIONS on `path` with `endpoint`, the GET route's own function."""
    router.add_api_route(path, endpoint, methods=list(PROBE_METHODS), include_in_schema=False)


def health_check_response(request: Request, body: dict[str, Any], status_code: int) -> Response:
    """`body` as JSON with `status_code` for GET (uvicorn sends no body for HEAD); for OPTIONS
    the status alone."""
    if request.method == "OPTIONS":
        return Response(status_code=status_code, headers={"Allow": _ALLOW})
    return JSONResponse(body, status_code=status_code, headers={"Allow": _ALLOW})
