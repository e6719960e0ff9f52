"""What the routes read: the configuration, the cluster node and the metrics of this daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ha_voice.cluster.node import ClusterNode
from ha_voice.commands import CommandService
from ha_voice.config import Config
from ha_voice.metrics import Metrics
from ha_voice.robot.guard import Guard
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.speech import Speech

__all__ = ["ApiContext", "context"]


@dataclass(frozen=True)
class ApiContext:
    config: Config
    node: ClusterNode
    metrics: Metrics
    version: str
    vocabulary: Vocabulary
    guard: Guard | None = None
    commands: CommandService | None = None
    # Speech work: on this node or the least loaded ready one (voice/placement.py); None when
    # this node has no speech at all (a witness).
    speech: Speech | None = None
    # Things made on first use (the forwarding client) and vocabularies by language.
    state: dict[str, Any] = field(default_factory=dict)

    def active_vocabulary(self) -> Vocabulary:
        """The vocabulary of the replicated language setting, or of the configured one."""
        language = self.node.journal.settings.language
        if language is None or language == self.vocabulary.language:
            return self.vocabulary
        cached = self.state.get(f"vocabulary:{language}")
        if cached is None:
            cached = Vocabulary.load(language)
            self.state[f"vocabulary:{language}"] = cached
        assert isinstance(cached, Vocabulary)
        return cached


async def context(request: Request) -> ApiContext:
    """FastAPI dependency: the daemon's context, stored on the app at creation."""
    ctx: ApiContext = request.app.state.ctx
    return ctx
