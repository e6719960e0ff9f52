"""The outcome a final answer or a refusal maps to (`ha-voice send`'s exit status)."""

from __future__ import annotations

from typing import Any

import pytest

from ha_voice.send_outcomes import (
    DONE,
    FAILED,
    REFUSED,
    REJECTED,
    UNAUTHORIZED,
    UNKNOWN,
    Outcome,
    of_answer,
    of_refusal,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "done"}, DONE),
        ({"status": "stopped"}, DONE),
        ({"status": "failed"}, FAILED),
        ({"status": "unknown"}, UNKNOWN),
        # /api/voice/listen: the seed's status beside the journal's outcome
        ({"status": "success", "outcome": "done"}, DONE),
        ({"status": "error", "outcome": "failed"}, FAILED),
        ({"status": "success", "outcome": "unknown"}, UNKNOWN),
        ({"status": "success", "processed": False}, DONE),  # "help": no robot action
        ({"status": "rejected", "reason": "no command matches"}, REJECTED),
        ({"status": "something new"}, FAILED),
        ({}, FAILED),
    ],
)
def test_an_answer_maps_to_one_outcome(body: dict[str, Any], expected: Outcome) -> None:
    assert of_answer(body) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, UNAUTHORIZED), (403, UNAUTHORIZED), (400, REFUSED), (409, REFUSED), (413, REFUSED)],
)
def test_a_refusal_maps_to_one_outcome(status: int, expected: Outcome) -> None:
    assert of_refusal(status) is expected
