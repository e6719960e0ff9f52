"""The pure pieces of the API: rate buckets, quoting, error bodies, validation messages, keys,
repeated JSON keys, the list of known commands."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ha_voice.api.body import repeated_key
from ha_voice.api.limits import TokenBuckets
from ha_voice.api.problems import ECHO_CHARS, problem_bytes, quote, validation_message
from ha_voice.api.robot import RobotCommandBody, known_commands
from ha_voice.commands import CommandRequest, conflict
from ha_voice.robot.base import Action


def test_a_bucket_allows_its_burst_then_paces_at_its_rate() -> None:
    buckets = TokenBuckets(rate_per_s=2.0, burst=3)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(0.5)
    assert buckets.take("a", 0.5) == 0.0  # one token came back
    assert buckets.take("b", 0.5) == 0.0  # another client has its own bucket


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    buckets = TokenBuckets(rate_per_s=100.0, burst=2)
    buckets.take("a", 0.0)
    assert [buckets.take("a", 1000.0) for _ in range(3)][-1] > 0


def test_the_table_of_clients_is_bounded_and_forgets_the_least_recent() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_clients=3)
    for client in ("a", "b", "c"):
        buckets.take(client, 0.0)
    buckets.take("a", 0.0)  # a is recent again; b is now the least recent
    buckets.take("d", 0.0)
    assert len(buckets) == 3
    assert buckets.take("a", 0.0) > 0  # still remembered: its bucket is empty
    assert buckets.take("b", 0.0) == 0.0  # forgotten: a full bucket again


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.binary()))
def test_a_quote_is_short_printable_and_says_how_long_the_input_was(value: str | bytes) -> None:
    shown = quote(value)
    assert len(shown) <= 4 * ECHO_CHARS + 40  # escapes take up to 10 characters each
    assert shown.isprintable()
    if len(value) > ECHO_CHARS:
        assert shown.endswith(("characters)", "bytes)"))


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(max_size=200))
def test_an_error_body_always_serialises_to_one_line_of_json(error: str, field: str) -> None:
    raw = problem_bytes(422, error, field=field, retry_after_s=0.1)
    assert raw.isascii()
    body = json.loads(raw)
    assert body["status"] == "error"
    assert "\n" not in body["error"]
    assert len(body["error"]) <= 400


def _errors(raw: bytes) -> list[dict[str, object]]:
    with pytest.raises(ValidationError) as caught:
        RobotCommandBody.model_validate_json(raw)
    return list(caught.value.errors(include_input=False))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b'{"command": "move", "duration_s": NaN}', "duration_s", "finite"),
        (b'{"command": "move", "params": {"vx": Infinity}}', "params.vx", "finite"),
        (b'{"command": 5}', "command", "string"),
        (b'{"command": "stand", "duration": 1}', "duration", "unknown field"),
        (b"{}", "command", "required"),
        (b'{"command": "move", "duration_s": "1"}', "duration_s", "number"),
    ],
)
def test_a_validation_message_names_the_field_and_the_problem(
    raw: bytes, field: str, words: str
) -> None:
    named, line = validation_message(_errors(raw))
    assert named == field
    assert words in line


def test_a_hostile_field_name_is_quoted_and_cut() -> None:
    raw = json.dumps({"command": "move", "params": {"\x01" * 500: 1.0}}).encode()
    raw = raw.replace(b"1.0", b"NaN")
    named, line = validation_message(_errors(raw))
    assert named.startswith("params.'\\x01")
    assert len(line) < 4 * ECHO_CHARS + 100


def _request(action: Action, **params: float) -> CommandRequest:
    return CommandRequest("K", action, params)


def test_a_key_names_one_command() -> None:
    assert conflict("K", "stand_up", {}, None, _request(Action.STAND_UP)) is None
    clash = conflict("K", "stand_up", {}, None, _request(Action.MOVE, vx=0.5))
    assert clash is not None
    assert clash.action == "stand_up"
    assert conflict("K", "move", {"vx": 0.5}, None, _request(Action.MOVE, vx=0.4)) is not None
    longer = CommandRequest("K", Action.MOVE, {"vx": 0.5}, 2.0)
    assert conflict("K", "move", {"vx": 0.5}, 1.0, longer) is not None


# --- repeated JSON keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"command": "stand", "command": "sit"}', ("command",)),
        (b'{"command": "move", "params": {"vx": 0.1, "vx": 0.5}}', ("params", "vx")),
        (b'[{"a": 1}, {"b": 1, "b": 2}]', (1, "b")),
        (b'{"a": {"b": 1}, "a": 2}', ("a",)),
        (b'{"command": "stand"}', None),
        (b'{"command": "stand", "Command": "sit"}', None),  # JSON keys are case-sensitive
        (b"{", None),  # not JSON: the parser's own message says what is wrong
        (b"[" * 5000 + b"]" * 5000, None),  # too deep for the standard parser
        (b'{"a": "\xff"}', None),
    ],
)
def test_a_key_named_twice_in_one_object_is_found_with_its_path(
    raw: bytes, where: tuple[str | int, ...] | None
) -> None:
    assert repeated_key(raw) == where


def test_the_known_commands_are_each_named_once() -> None:
    known = known_commands()
    assert len(known) == len(set(known))
    assert {"sit", "stand", "stop", "stand_up", "stop_move"} <= set(known)
