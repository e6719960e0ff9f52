"""The configuration model rendered for people: CLI flags, TOML and docs/configuration.md.

Everything here is derived from `ha_voice.config.Config`; nothing is declared twice.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Final, Literal, get_args, get_origin

from ha_voice.cluster.timers import PROFILES, ElectionTimers
from ha_voice.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    FIELDS,
    REGENERATE_DOCS,
    TIMER_FIELDS,
    Config,
    bounds_text,
    core_type,
    default_text,
    env_var_name,
    flag_name,
    toml_value,
    type_text,
    unit_of,
)
from ha_voice.markdown import table

__all__ = [
    "add_arguments",
    "flags_from_namespace",
    "group_of",
    "main",
    "render_markdown",
    "render_toml",
    "short_help",
    "witness_keys",
]


# The groups of `run --help`, in this order; a key belongs to the first group that names it,
# else to the first whose prefix it has, else to "other". The rationale of each key stays in
# docs/configuration.md: a flag's help is one line.
_GROUPS: Final[tuple[tuple[str, frozenset[str], tuple[str, ...]], ...]] = (
    (
        "node and cluster",
        frozenset(
            {"node_id", "cluster", "priority", "peers", "witness", "two_node", "preempt"}
            | {"preempt_delay_s", "state_dir", "stall_timeout_s", "log_level"}
            | {"shutdown_timeout_s"}
        ),
        (),
    ),
    ("cluster network", frozenset({"listen_address", "cluster_port", "mdns"}), ()),
    (
        "timers (seconds; unset: the timer_profile's)",
        frozenset({"timer_profile", "clock_drift_ppm"}),
        ("heartbeat_", "election_", "lease_", "priority_skew"),
    ),
    (
        "keys, tokens and TLS",
        frozenset({"cluster_key_file", "cluster_key_accepted_file", "trusted_networks"}),
        ("tls_", "api_token"),
    ),
    ("HTTP API", frozenset({"port", "max_pending_commands"}), ("api_",)),
    ("robot", frozenset({"robot", "robot_ip", "network_interface", "on_takeover"}), ("robot_",)),
    (
        "speech",
        frozenset({"whisper_model", "language"})
        | {"audio_max_bytes", "listen_max_audio_s", "transcription_max_audio_s"},
        ("stt_", "whisper_", "wyoming_"),
    ),
    (
        "endpoint: floating IP and notify hook",
        frozenset({"vip", "vip_interface", "notify", "notify_timeout_s"}),
        ("vip_",),
    ),
    ("journal", frozenset({"reexecute_window_s"}), ("journal_",)),
    (
        "live listening",
        frozenset(
            {"audio_sources", "local_audio_sources", "audio_queue_blocks", "require_wake_word"}
            | {"listen_dedup_s", "listen_early_stop_s"}
        ),
        ("audio_udp_", "vad_"),
    ),
)
_OTHER: Final = "other"
# What a witness never uses: it never leads (robot, speech, floating IP, priority, preemption,
# the primary's queue) and is the witness itself.
_NOT_FOR_WITNESS: Final = frozenset(
    {"robot", "robot_ip", "network_interface", "on_takeover", "whisper_model", "language"}
    | {"whisper_download_root", "whisper_local_files_only", "stt_enabled", "stt_device"}
    | {"stt_compute_type", "stt_cpu_threads", "stt_workers", "stt_max_queue", "stt_job_timeout_s"}
    | {"vip", "vip_interface", "priority", "preempt", "preempt_delay_s", "two_node"}
    | {"max_pending_commands", "reexecute_window_s", "witness"}
    | {"audio_max_bytes", "listen_max_audio_s", "transcription_max_audio_s"}
    | {"audio_sources", "audio_queue_blocks", "require_wake_word", "listen_dedup_s"}
    | {"local_audio_sources", "listen_early_stop_s"}
    | {"audio_udp_rate_hz", "audio_udp_width", "audio_udp_channels"}
    | {"vad_speech_probability", "vad_min_silence_s", "vad_pad_s", "vad_max_utterance_s"}
    | {"wyoming_port", "wyoming_commands", "wyoming_max_connections", "wyoming_idle_timeout_s"}
)
# Where a description's first clause ends: a sentence or clause mark, or a comma before bounds
# or a reason ("…, 1 to 65535", "…, because …").
_CLAUSE_END = re.compile(
    r"[.;:](?:\s|$)"
    r"|,\s(?=\d|the same|higher|absolute|because|so |or |one at|at most|by default|held|from)"
)


def group_of(key: str) -> str:
    """The title of the `--help` group that lists `key`'s flag ("other" for none)."""
    for title, keys, _ in _GROUPS:
        if key in keys:
            return title
    for title, _, prefixes in _GROUPS:
        if prefixes and key.startswith(prefixes):
            return title
    return _OTHER


def witness_keys() -> list[str]:
    """The keys `ha-voice witness` takes as flags: those a vote-only member uses."""
    return [key for key in FIELDS if key not in _NOT_FOR_WITNESS]


def short_help(key: str) -> str:
    """One line for `--help`: the description's first clause, without asides, and the default."""
    text = Config.model_fields[key].description or key
    while (plain := re.sub(r"\s*\([^()]*\)", "", text)) != text:
        text = plain
    first = _CLAUSE_END.split(text, maxsplit=1)[0].strip()
    # argparse expands "%" in help text.
    return f"{first}; default {default_text(key)}".replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, keys: Sequence[str] | None = None) -> None:
    """One `--kebab-case` flag per key (every field by default), in groups, all defaulting to
    None so unset flags never override the file or HA_VOICE_*."""
    chosen = list(FIELDS) if keys is None else list(keys)
    titles = [title for title, _, _ in _GROUPS] + [_OTHER]
    groups = {
        title: parser.add_argument_group(title)
        for title in titles
        if any(group_of(key) == title for key in chosen)
    }
    for key in chosen:
        _add_flag(groups[group_of(key)], key)


def _add_flag(group: argparse._ArgumentGroup, key: str) -> None:
    info = Config.model_fields[key]
    help_text = short_help(key)
    if info.annotation is bool:
        action = argparse.BooleanOptionalAction
        group.add_argument(flag_name(key), dest=key, action=action, help=help_text)
    elif get_origin(info.annotation) is list:
        group.add_argument(
            flag_name(key), dest=key, action="append", metavar="ITEM[,ITEM]", help=help_text
        )
    else:
        group.add_argument(flag_name(key), dest=key, metavar=_metavar(key), help=help_text)


def _metavar(key: str) -> str:
    core = core_type(Config.model_fields[key])
    if get_origin(core) is Literal:
        return "{" + ",".join(map(str, get_args(core))) + "}"
    unit = unit_of(key)
    return unit.metavar if unit else key.upper()


def flags_from_namespace(namespace: argparse.Namespace) -> dict[str, object]:
    """The config flags given on the command line, keyed by field name, for `load_config`."""
    given = {key: getattr(namespace, key, None) for key in FIELDS}
    return {key: value for key, value in given.items() if value is not None}


def render_toml(config: Config) -> str:
    """The effective configuration as TOML; an unset key shows as a comment with what is used."""
    timers = config.election_timers()
    lines = ["# ha-voice effective configuration"]
    for key in FIELDS:
        value = getattr(config, key)
        if value is not None:
            lines.append(f"{key} = {toml_value(value)}")
        elif key in TIMER_FIELDS:
            used = toml_value(getattr(timers, key))
            lines.append(f"# {key} = {used}  (from timer_profile {config.timer_profile})")
        else:
            lines.append(f"# {key} is unset")
    return "\n".join(lines) + "\n"


_INTRO: Final = f"""# Configuration

<!-- Generated from ha_voice/config.py; edit that file, then run: {REGENERATE_DOCS} -->

ha-voice has one flat set of keys. Each key can come from four sources; a later one wins:

1. the default in the table below;
2. a TOML file with top-level keys (no sections): the file named by `{CONFIG_ENV}`, else
   `{DEFAULT_CONFIG_PATH}` if it exists; to unset an optional key, leave it out;
3. environment variables `{ENV_PREFIX}<KEY>` in upper case; lists are comma-separated, booleans
   `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`, and an empty value unsets an optional key;
4. command-line flags `--<key-with-dashes>` (booleans also `--no-<key>`; list flags repeat or
   take commas).

Everything is checked at start. `ha-voice config check FILE` checks what `ha-voice run` checks
before it binds a socket: every value, the rules between keys, and the files the keys name (the
cluster keys, the token file and the TLS files: present, readable, private, well-formed) and the
state directory (exists or can be made, writable, an ha-voice database if one is there). It
prints the effective configuration as TOML, or every problem at once, one per line, each naming
its source, the key, the value, what is allowed and a fix (exit status 2); `--witness` checks
the file as `ha-voice witness` reads it. Unknown keys are errors, with the closest valid key
suggested; so is a `[section]`, whose keys would otherwise be lost.

`ha-voice witness` reads the same sources in the same order, then, if no source set `witness`,
sets it to the node's own `node_id` (a witness is its own witness).

## Timer profiles

`timer_profile` picks the election timers (seconds); each timer key overrides one of them, and an
unset `lease_timeout_s` follows a changed `election_timeout_s`, `heartbeat_interval_s` or
`clock_drift_ppm`. Every combination must keep
`lease_timeout_s / (1 - drift) < election_timeout_s / (1 + drift)` and
`election_timeout_s >= 3 x heartbeat_interval_s` (ha_voice/cluster/timers.py), or loading fails.
"""


def render_markdown() -> str:
    """The text of docs/configuration.md, generated from `Config` and the timer profiles."""
    return "\n".join([_INTRO, *_profile_table(), "", "## Keys", "", *_key_table()]) + "\n"


def _profile_table() -> list[str]:
    rows = [_profile_row(name, timers) for name, timers in PROFILES.items()]
    return table(["timer_profile", *TIMER_FIELDS, "clock_drift_ppm"], rows)


def _profile_row(name: str, timers: ElectionTimers) -> list[str]:
    durations = [f"{getattr(timers, key):g}" for key in TIMER_FIELDS]
    return [f"`{name}`", *durations, f"{timers.clock_drift * 1e6:g}"]


def _key_table() -> list[str]:
    rows = []
    for key, info in Config.model_fields.items():
        flag = f"`{flag_name(key)}`"
        if info.annotation is bool:
            flag += f", `--no-{flag_name(key)[2:]}`"
        rows.append(
            [
                f"`{key}`",
                type_text(key),
                f"`{default_text(key)}`",
                bounds_text(key),
                f"`{env_var_name(key)}`",
                flag,
                info.description or "",
            ]
        )
    header = ["key", "type, unit", "default", "bounds", "env var", "flag", "description"]
    return table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """`--markdown` prints the docs page (checking a file is `ha-voice config check`, which
    also checks the files it names)."""
    parser = argparse.ArgumentParser(
        prog="python -m ha_voice.config_render", description="Document the configuration."
    )
    parser.add_argument("--markdown", action="store_true", required=True, help="print the page")
    parser.parse_args(argv)
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
