"""One exception hierarchy: our own faults apart from the peer's and the operator's.

`LocalError` is a fault of this node (a bug or a broken invariant), `RemoteError` is a fault of
whoever sent us something (a packet, an upload), `ConfigError` is a fault of the configuration.
The receive paths catch `RemoteError` only; anything else is a bug and must surface.
"""

from __future__ import annotations

import errno

__all__ = [
    "BindError",
    "ConfigError",
    "HAVoiceError",
    "LocalError",
    "RemoteError",
    "UnreachableError",
]


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


class BindError(ConfigError):
    """A socket this node binds at start could not be bound; the message names the socket, the
    keys that choose its address and port, the cause and a fix."""

    def __init__(
        self, socket_name: str, host: tuple[str, str], port: tuple[str, int], cause: OSError
    ) -> None:
        (host_key, host_value), (port_key, port_value) = host, port
        where = f"{socket_name} port {port_value} (`{port_key}`) on {host_value} (`{host_key}`)"
        if cause.errno == errno.EADDRINUSE:
            text = (
                f"{socket_name} port {port_value} (`{port_key}`) is in use by another process "
                f"on {host_value}; fix: stop that process (`ss -lnptu 'sport = :{port_value}'` "
                f"names it) or set `{port_key}` to a free port"
            )
        elif cause.errno == errno.EADDRNOTAVAIL:
            text = (
                f"cannot bind the {socket_name} socket to {host_value} (`{host_key}`): no "
                f"interface of this host has that address; fix: set `{host_key}` to one of this "
                "host's addresses, or 0.0.0.0"
            )
        elif cause.errno == errno.EACCES:
            text = (
                f"{where}: permission denied (ports below 1024 need root or "
                f"CAP_NET_BIND_SERVICE); fix: set `{port_key}` to 1024 or above"
            )
        else:
            text = f"cannot bind {where}: {cause.strerror or cause}"
        super().__init__(text)
        self.socket_name = socket_name
        self.cause = cause
