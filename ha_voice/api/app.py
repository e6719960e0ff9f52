"""The FastAPI application of one daemon; OpenAPI at /docs (Swagger UI) and /redoc.

Both pages load their scripts, styles and icon from this node (fastapi-offline ships them):
a robot's network has no internet, and a page that fetched them from a CDN stayed blank there.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ha_voice.api import (
    cluster,
    health,
    journal,
    listen_relay,
    problems,
    robot,
    speech_handoff,
    transcriptions,
    voice,
    wyoming_relay,
)
from ha_voice.api.context import ApiContext
from ha_voice.api.limits import TokenBuckets
from ha_voice.api.members import MemberHeaders

__all__ = ["DOCS_ASSETS", "create_app"]

DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files, served by this node


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        # Swagger UI would show a badge from validator.swagger.io, on the internet.
        swagger_ui_parameters={"validatorUrl": None},
        title="ha-voice",
        version=ctx.version,
        description="High-availability voice commands for a Unitree Go2. Read-only endpoints "
        "answer on every node; the cluster endpoints say who leads. Request bodies are JSON "
        "(curl -d's form type is taken if the body is a JSON object), and audio where the "
        "speech routes take it; every error is an ErrorBody.",
    )
    app.state.ctx = ctx
    app.state.rate_limits = TokenBuckets(ctx.config.api_rate_per_s, ctx.config.api_rate_burst)
    routers = (
        health.router,
        cluster.router,
        robot.router,
        voice.router,
        transcriptions.router,
        journal.router,
        speech_handoff.router,
        wyoming_relay.router,
        listen_relay.router,
    )
    problems.install(app, ctx.metrics.registry, routers)
    for router in routers:
        app.include_router(router)
    app.add_middleware(MemberHeaders, ctx=ctx)
    return app
