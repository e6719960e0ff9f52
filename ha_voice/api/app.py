"""The FastAPI application of one daemon; OpenAPI at /docs."""

from __future__ import annotations

from fastapi import FastAPI

from ha_voice.api import cluster, health, journal, robot
from ha_voice.api.context import ApiContext

__all__ = ["create_app"]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="ha-voice",
        version=ctx.version,
        description="High-availability voice commands for a Unitree Go2. Read-only endpoints "
        "answer on every node; the cluster endpoints say who leads.",
    )
    app.state.ctx = ctx
    app.include_router(health.router)
    app.include_router(cluster.router)
    app.include_router(robot.router)
    app.include_router(journal.router)
    return app
