"""The FastAPI application of one daemon; OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI

from ha_voice.api import cluster, health, journal, problems, robot
from ha_voice.api.context import ApiContext
from ha_voice.api.limits import TokenBuckets
from ha_voice.api.members import MemberHeaders

__all__ = ["create_app"]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="ha-voice",
        version=ctx.version,
        description="High-availability voice commands for a Unitree Go2. Read-only endpoints "
        "answer on every node; the cluster endpoints say who leads. Request bodies are JSON "
        "(curl -d's form type is taken if the body is a JSON object); every error is an "
        "ErrorBody.",
    )
    app.state.ctx = ctx
    app.state.rate_limits = TokenBuckets(ctx.config.api_rate_per_s, ctx.config.api_rate_burst)
    routers = (health.router, cluster.router, robot.router, journal.router)
    problems.install(app, ctx.metrics.registry, routers)
    for router in routers:
        app.include_router(router)
    app.add_middleware(MemberHeaders, ctx=ctx)
    return app
