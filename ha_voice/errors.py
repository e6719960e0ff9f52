"""One exception hierarchy: our own faults apart from the peer's and the operator's.

`LocalError` is a fault of this node (a bug or a broken invariant), `RemoteError` is a fault of
whoever sent us something (a packet, an upload), `ConfigError` is a fault of the configuration.
The receive paths catch `RemoteError` only; anything else is a bug and must surface.
"""

from __future__ import annotations

__all__ = ["ConfigError", "HAVoiceError", "LocalError", "RemoteError", "UnreachableError"]


class HAVoiceError(Exception):
    """Base of every error ha-voice raises on purpose."""


class LocalError(HAVoiceError):
    """This node broke one of its own rules; never the peer's fault."""


class RemoteError(HAVoiceError):
    """A peer or a client sent something we refuse; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ConfigError(HAVoiceError):
    """The configuration is invalid; the message names the key and the fix."""


class UnreachableError(HAVoiceError):
    """No node answered at the given address."""
