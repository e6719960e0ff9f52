"""Log lines that a client can cause, throttled: a flood must not become a flood of the log.

Invariants:
- The first occurrence of each kind is logged at warning, with its traceback if it has one.
- Later ones are logged at debug only, and counted; at most once every `summary_interval_s` a
  warning summarises how many of each kind came since the last summary (one line, whatever
  the rate). The caller counts each occurrence in its metric as well.
- `now` comes from `ha_voice.clock`; nothing here sleeps or schedules.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

from ha_voice import clock

__all__ = ["SUMMARY_INTERVAL_S", "LogThrottle"]

# Once a minute: a line an operator reads, not one per event.
SUMMARY_INTERVAL_S: Final = 60.0


class LogThrottle:
    """One logger's throttled lines: the first of each kind at warning, then a summary."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        summary_interval_s: float = SUMMARY_INTERVAL_S,
        now: Callable[[], float] = clock.monotonic,
    ) -> None:
        self._log = logger
        self._what = what  # "refusals", "connection errors": the summary's noun
        self._interval_s = summary_interval_s
        self._now = now
        self._seen: set[str] = set()
        self._since: Counter[str] = Counter()
        self._summarised_at = now()

    def note(
        self, kind: str, message: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """Log one occurrence of `kind` (a warning the first time, then debug and a summary)."""
        if kind not in self._seen:
            self._seen.add(kind)
            more = f" (further {self._what} of this kind: debug, and a summary every minute)"
            self._log.warning(message + more, *args, exc_info=exc_info)
            return
        self._since[kind] += 1
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(message, *args)
        now = self._now()
        if now - self._summarised_at >= self._interval_s:
            self._summarise(now)

    def _summarise(self, now: float) -> None:
        counts = ", ".join(f"{kind} {count}" for kind, count in self._since.most_common())
        self._log.warning(
            "%d more %s in the last %.0f s: %s",
            sum(self._since.values()),
            self._what,
            now - self._summarised_at,
            counts,
        )
        self._since.clear()
        self._summarised_at = now
