"""`ha-voice run --help` groups its options and gives each one line; `witness --help` offers
only what a witness uses (the rationale of each key stays in docs/configuration.md); `send
--help` and docs/operations.md list the same table of outcomes and exit statuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ha_voice.cli import main
from ha_voice.config import FIELDS, flag_name
from ha_voice.config_render import group_of, short_help, witness_keys
from ha_voice.send_outcomes import OUTCOMES, help_table

ROOT = Path(__file__).resolve().parents[2]

GROUPS = (
    "node and cluster",
    "cluster network",
    "timers",
    "keys, tokens and TLS",
    "HTTP API",
    "robot",
    "speech",
    "endpoint",
    "journal",
    "live listening",
)
NEVER_A_WITNESS = ("robot", "robot_ip", "whisper_model", "language", "vip", "priority", "witness")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _sections(text: str) -> dict[str, str]:
    """The help text's sections by title (a line ending in ':' that starts a block)."""
    parts = re.split(r"^(\S[^\n]*):\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _lists(text: str, key: str) -> bool:
    return re.search(rf"^  {flag_name(key)}(?=[ ,\n])", text, flags=re.M) is not None


def test_every_key_has_a_group() -> None:
    assert [key for key in FIELDS if group_of(key) == "other"] == []


def test_run_help_lists_each_flag_under_its_group(capsys: pytest.CaptureFixture[str]) -> None:
    sections = _sections(_help(capsys, "run"))
    titles = [title for title in sections if title not in ("options", "usage")]
    assert [next(g for g in GROUPS if t.startswith(g)) for t in titles] == list(GROUPS)
    for key in FIELDS:
        holding = [title for title, body in sections.items() if _lists(body, key)]
        assert holding == [group_of(key)], key


def test_a_flag_has_one_short_line_and_its_default() -> None:
    for key in FIELDS:
        line = short_help(key)
        assert len(line) <= 140, key
        assert "because" not in line, key  # the why is in docs/configuration.md
        assert "; default " in line, key


def test_run_help_points_at_the_rationale(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "run")
    assert "docs/configuration.md" in text
    assert text.startswith("usage: ha-voice run [-h] [--config FILE] [--KEY VALUE ...]\n")


def test_witness_help_offers_only_what_a_witness_uses(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "witness")
    for key in NEVER_A_WITNESS:
        assert not _lists(text, key), key
        assert key not in witness_keys()
    for key in ("node_id", "peers", "cluster_key_file", "port", "heartbeat_interval_s", "mdns"):
        assert _lists(text, key), key


def test_a_witness_refuses_a_robot_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["witness", "--robot", "sim"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --robot" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["witness", "--priority", "9"],  # would be --priority-skew-s
        ["run", "--heartbeat", "0.1"],  # would be --heartbeat-interval-s
        ["send", "--act", "stop"],  # would be --action
    ],
)
def test_a_flag_is_taken_whole_or_not_at_all(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err


def test_the_send_outcomes_in_the_docs_are_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = docs.split("<!-- send-outcomes:start -->\n")[1].split("<!-- send-outcomes:end -->")[0]
    rows = [line.split(" | ") for line in block.splitlines()[2:]]
    documented = [(int(r[0].strip("| ")), r[1], r[2].rstrip(" |")) for r in rows]
    assert documented == [(o.exit_code, o.name, o.meaning) for o in OUTCOMES]
    exit_codes = [o.exit_code for o in OUTCOMES]
    assert len(set(exit_codes)) == len(exit_codes)
    assert help_table() in _help(capsys, "send")
