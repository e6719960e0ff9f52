"""What `ha-voice send` exits with: one table of outcomes.

Every way a command can end maps to one row of `OUTCOMES`: its exit status and what it means.
The table is printed by `ha-voice send --help` and documented in docs/operations.md (a test
keeps the two equal). Pure and light: `--help` builds it without importing a network library.
When no primary answered, `ha_voice.diagnose` tells which row it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DONE",
    "FAILED",
    "NO_ANSWER",
    "NO_PRIMARY",
    "NO_QUORUM",
    "OUTCOMES",
    "REFUSED",
    "REJECTED",
    "UNAUTHORIZED",
    "UNKNOWN",
    "USAGE",
    "Outcome",
    "help_table",
    "of_answer",
    "of_refusal",
]


@dataclass(frozen=True)
class Outcome:
    """One row of the table: a name, the exit status, what it means for the operator."""

    name: str
    exit_code: int
    meaning: str


DONE: Final = Outcome("done", 0, "the robot did it (or the phrase needs no action)")
FAILED: Final = Outcome("failed", 1, "the robot refused or failed it; recorded, not retried")
USAGE: Final = Outcome("usage", 2, "bad flags or configuration; nothing was sent")
UNKNOWN: Final = Outcome(
    "unknown", 3, "a failover cut it off: it may have run, and it is never repeated"
)
NO_ANSWER: Final = Outcome(
    "no answer", 4, "no final answer before --deadline; retry with the printed --key"
)
REJECTED: Final = Outcome("rejected", 5, "not understood, or not listening; nothing ran")
NO_PRIMARY: Final = Outcome(
    "no primary", 6, "no node was found, or the nodes found elect no one (election, FAULT)"
)
NO_QUORUM: Final = Outcome(
    "no quorum", 7, "nodes answer, but too few voters hear each other to elect a primary"
)
UNAUTHORIZED: Final = Outcome(
    "unauthorized", 8, "no token, or one the cluster does not accept (HTTP 401)"
)
REFUSED: Final = Outcome(
    "refused", 9, "the request as sent is refused (HTTP 4xx, e.g. a --key reused)"
)
OUTCOMES: Final = (
    DONE,
    FAILED,
    USAGE,
    UNKNOWN,
    NO_ANSWER,
    REJECTED,
    NO_PRIMARY,
    NO_QUORUM,
    UNAUTHORIZED,
    REFUSED,
)

_BY_STATUS: Final = {
    "done": DONE,
    "stopped": DONE,
    "success": DONE,
    "failed": FAILED,
    "error": FAILED,
    "unknown": UNKNOWN,
    "rejected": REJECTED,
}
_UNAUTHORIZED_STATUSES: Final = frozenset({401, 403})


def help_table() -> str:
    """The table as `--help` prints it: `exit  outcome  meaning`, one row a line."""
    width = max(len(outcome.name) for outcome in OUTCOMES)
    rows = [f"  {o.exit_code}  {o.name:<{width}}  {o.meaning}" for o in OUTCOMES]
    return "exit status:\n" + "\n".join(rows)


def of_answer(body: Mapping[str, Any]) -> Outcome:
    """The outcome a final answer's JSON reports (`outcome`, else `status`); FAILED for one
    this table does not know."""
    status = str(body.get("outcome") or body.get("status") or "")
    if body.get("status") == "rejected":
        return REJECTED
    return _BY_STATUS.get(status, FAILED)


def of_refusal(http_status: int) -> Outcome:
    """The outcome of an HTTP refusal that asking again would not change."""
    return UNAUTHORIZED if http_status in _UNAUTHORIZED_STATUSES else REFUSED
