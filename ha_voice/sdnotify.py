"""systemd's sd_notify protocol (sd_notify(3)), written out so that it costs no dependency.

Invariants: nothing here raises or blocks. Every function returns False (or None) when systemd
is not listening, so the daemon calls them unconditionally, under systemd or not. One call is
one datagram, since systemd reads one message per datagram.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = [
    "extend_timeout",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval_s",
]

_log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send `lines` ("READY=1", "STATUS=…") as one datagram to $NOTIFY_SOCKET; True if sent."""
    address = _notify_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: a manager too busy to drain its queue costs one
            # message, which matters less than stalling heartbeats.
            sock.setblocking(False)
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        _log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """Tell systemd that start-up is done (Type=notify), with an optional status line."""
    return notify("READY=1", *_status_lines(status))


def status(text: str) -> bool:
    """Set the one-line status that `systemctl status` shows."""
    return notify(*_status_lines(text))


def extend_timeout(seconds: float, text: str = "") -> bool:
    """Ask systemd for `seconds` more before it calls the start (or stop) timed out
    (EXTEND_TIMEOUT_USEC, systemd 236+), with an optional status line; repeat before they end."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", *_status_lines(text))


def stopping() -> bool:
    """Tell systemd that shutdown has begun, so it does not count the drain as a hang."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Keep the systemd watchdog (WatchdogSec) from killing us; call every interval."""
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """How often to call `watchdog()`: half of $WATCHDOG_USEC, or None if it is not for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not _watchdog_is_ours():
        return None
    try:
        interval_us = int(usec)
    except ValueError:
        _log.debug("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    # Half, as sd_watchdog_enabled(3) advises, so one late ping is not yet fatal.
    return interval_us / 2 / 1_000_000 if interval_us > 0 else None


def _watchdog_is_ours() -> bool:
    # A watchdog variable inherited from a parent service is for that parent (sd_watchdog_enabled).
    pid = os.environ.get("WATCHDOG_PID")
    return pid is None or pid.strip() == str(os.getpid())


def _notify_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte instead of '@'.
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    _log.debug("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract name", address)
    return None


def _status_lines(text: str) -> tuple[str, ...]:
    # A newline would end the STATUS= assignment and start a bogus one.
    return (f"STATUS={' '.join(text.splitlines())}",) if text else ()
