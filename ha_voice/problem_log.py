"""A problem that lasts, in the log: one warning when it starts, a reminder while it lasts, one
line when it ends — never a line per check.

Invariants:
- A problem is logged once it has lasted `grace_s` (a node that starts hears nobody for a
  heartbeat or two; that is no problem yet), then again every `repeat_s` while it lasts, with
  how long it has lasted, and once at info when it ends (only if it was logged).
- `now` is given (monotonic seconds); nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["REPEAT_S", "ProblemLog"]

# Twice a minute: often enough that a log excerpt around any moment shows it, rare enough to read.
REPEAT_S: Final = 30.0


class ProblemLog:
    """The log lines of one kind of lasting problem (`what`: "quorum", "robot takeover")."""

    def __init__(
        self, logger: logging.Logger, what: str, *, repeat_s: float = REPEAT_S, grace_s: float = 0.0
    ) -> None:
        self._log = logger
        self._what = what
        self._repeat_s = repeat_s
        self._grace_s = grace_s
        self._since: float | None = None
        self._logged_at: float | None = None

    def check(self, reason: str | None, now: float) -> None:
        """The problem now: `reason`, or None if there is none."""
        if reason is None:
            if self._since is not None and self._logged_at is not None:
                self._log.info("%s: resolved after %.1f s", self._what, now - self._since)
            self._since = self._logged_at = None
            return
        if self._since is None:
            self._since = now
        if self._logged_at is None:
            if now - self._since >= self._grace_s:
                self._log.warning("%s", reason)
                self._logged_at = now
        elif now - self._logged_at >= self._repeat_s:
            self._log.warning("%s (for %.0f s)", reason, now - self._since)
            self._logged_at = now
