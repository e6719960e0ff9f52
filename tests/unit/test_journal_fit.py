"""Journal payloads always fit: texts are cut by their encoded size, never refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_voice.cluster.protocol import MAX_ENTRY_BYTES
from ha_voice.journal import MAX_TEXT, command_entry, outcome_entry

# Each takes more bytes encoded than it has characters: JSON escapes (6 bytes), 4-byte UTF-8,
# combining marks, right-to-left text and its override, NUL, a quote, a lone surrogate.
NASTY = ["\x01", "\x00", "\x1f", "😀", "e\u0301", "\u202eא", "\u05d0", '"', "\\", "\ud800"]


def _command(text: str, source: str = "127.0.0.1", key: str = "k" * 64) -> bytes:
    return command_entry(
        key=key,
        action="move",
        params={"vx": -0.123456789, "vy": 1e-300, "vyaw": 3.0},
        duration_s=59.999999,
        text=text,
        source=source,
        at=1_700_000_000.123,
    )


@pytest.mark.parametrize("nasty", NASTY)
def test_stop_followed_by_300_nasty_characters_fits_and_keeps_its_start(nasty: str) -> None:
    raw = _command("stop " + nasty * 300)
    assert len(raw) <= MAX_ENTRY_BYTES
    text = json.loads(raw)["t"]
    assert text.startswith("stop ")
    assert len(text) <= MAX_TEXT


def test_a_source_full_of_escapes_is_cut_too() -> None:
    raw = _command("\x01" * 300, source="127.0.0.1 via " + "\x01" * 300)
    assert len(raw) <= MAX_ENTRY_BYTES
    assert json.loads(raw)["s"].startswith("127.0.0.1 via ")


def test_text_that_fits_is_kept_whole() -> None:
    assert json.loads(_command("sta op"))["t"] == "sta op"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.text(max_size=120))
def test_any_text_and_source_fit_as_a_prefix_as_long_as_possible(text: str, source: str) -> None:
    raw = _command(text, source)
    assert len(raw) <= MAX_ENTRY_BYTES
    data = json.loads(raw)
    cleaned = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text[:MAX_TEXT])
    assert cleaned.startswith(data["t"])
    if data["t"] != cleaned:  # cut: one more character would not have fitted
        longer = dict(data, t=cleaned[: len(data["t"]) + 1])
        assert len(json.dumps(longer, separators=(",", ":"), ensure_ascii=False).encode()) > (
            MAX_ENTRY_BYTES
        )


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_any_outcome_fits(outcome: str) -> None:
    raw = outcome_entry(7, "failed", outcome, "n1", 1.0, "balance_stand")
    assert len(raw) <= MAX_ENTRY_BYTES
    assert json.loads(raw)["posture"] == "balance_stand"
