"""What the routes read: the configuration, the cluster node and the metrics of this daemon."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ha_voice.cluster.node import ClusterNode
from ha_voice.config import Config
from ha_voice.metrics import Metrics
from ha_voice.robot.guard import Guard
from ha_voice.voice.intents import Vocabulary

__all__ = ["ApiContext", "context"]


@dataclass(frozen=True)
class ApiContext:
    config: Config
    node: ClusterNode
    metrics: Metrics
    version: str
    vocabulary: Vocabulary
    guard: Guard | None = None


def context(request: Request) -> ApiContext:
    """FastAPI dependency: the daemon's context, stored on the app at creation."""
    ctx: ApiContext = request.app.state.ctx
    return ctx
