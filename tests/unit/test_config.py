"""The configuration model, its sources, its error messages and its generated docs."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from annotated_types import Ge, Le, MaxLen
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from ha_voice import config as config_module
from ha_voice.cluster.timers import PROFILES, max_safe_lease_s
from ha_voice.config import (
    FIELDS,
    REGENERATE_DOCS,
    Config,
    PeerSpec,
    Rule,
    default_node_id,
    flag_name,
    load_config,
    read_cluster_key,
    type_text,
    unit_of,
)
from ha_voice.config_render import (
    add_arguments,
    flags_from_namespace,
    main,
    render_markdown,
    render_toml,
)
from ha_voice.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
OPERATIONS = DOCS.parent / "operations.md"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees this machine's /etc/ha-voice/config.toml or HA_VOICE_* variables."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    for var in [var for var in os.environ if var.startswith("HA_VOICE_")]:
        monkeypatch.delenv(var)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(**kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as caught:
        load_config(**kwargs)
    return str(caught.value)


# --- defaults and sources ------------------------------------------------------------------


def test_defaults_load_with_an_empty_environment() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.node_id == default_node_id()
    assert (config.priority, config.port, config.cluster_port) == (100, 8888, 7405)
    assert (config.language, config.whisper_model, config.timer_profile) == (
        "nl",
        "medium",
        "wired",
    )
    assert (config.peers, config.witness, config.two_node) == ([], None, False)
    assert config.election_timers() == PROFILES["wired"]


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("jetson-1", "jetson-1"),
        ("jetson 1/lab", "jetson-1-lab"),
        ("_x.local", "x-local"),
        ("é" * 100, "node"),
        ("a" * 100, "a" * 63),
    ],
)
def test_default_node_id_is_the_sanitised_hostname(
    monkeypatch: pytest.MonkeyPatch, hostname: str, expected: str
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    assert default_node_id() == expected
    assert Config().node_id == expected


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'priority = 10\nport = 9000\nrobot_ip = "10.0.0.1"\nlog_level = "debug"\n'
    )
    env = {"HA_VOICE_PRIORITY": "20", "HA_VOICE_PORT": "9001"}
    flags = {"priority": 30, "log_level": None}
    config = load_config(path, env=env, flags=flags)
    assert config.priority == 30  # flag beats environment beats file
    assert config.port == 9001  # environment beats file
    assert config.robot_ip == "10.0.0.1"  # file beats default
    assert config.log_level == "debug"  # a None flag means "not given"


def test_environment_conventions() -> None:
    env = {
        "HA_VOICE_PEERS": " b , c@10.0.0.3:7405,",
        "HA_VOICE_PREEMPT": "yes",
        "HA_VOICE_TWO_NODE": "off",
        "HA_VOICE_HEARTBEAT_INTERVAL_S": "",
        "HA_VOICE_WITNESS": "w",
    }
    config = load_config(env=env)
    assert config.peers == ["b", "c@10.0.0.3:7405"]
    assert (config.preempt, config.two_node) == (True, False)
    assert config.heartbeat_interval_s is None
    assert config.witness_spec == PeerSpec("w")


@pytest.mark.parametrize("word", ["true", "1", "yes", "on", "TRUE"])
def test_environment_booleans(word: str) -> None:
    assert load_config(env={"HA_VOICE_PREEMPT": word}).preempt is True


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "priority = 42\n")
    assert load_config(env={"HA_VOICE_CONFIG": str(path)}).priority == 42
    missing = load_error(env={"HA_VOICE_CONFIG": str(tmp_path / "nope.toml")})
    assert "nope.toml: no such file" in missing


def test_default_config_path_is_read_only_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "priority = 7\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(env={}).priority == 7


def test_peer_specs_are_parsed() -> None:
    config = Config(node_id="a", peers=["b", "c@10.0.0.3:7405", "d@jetson-d.local:1"])
    assert config.peer_specs == (
        PeerSpec("b"),
        PeerSpec("c", "10.0.0.3", 7405),
        PeerSpec("d", "jetson-d.local", 1),
    )
    assert [str(spec) for spec in config.peer_specs] == config.peers


@pytest.mark.parametrize("tag", ["nl-NL", "nl_NL", "NL", " nl ", "nl"])
def test_language_tags_are_cut_to_the_language_code(tag: str) -> None:
    assert load_config(env={"HA_VOICE_LANGUAGE": tag}).language == "nl"
    assert Config.model_validate({"language": tag}).language == "nl"


def test_election_timers_follow_profile_and_overrides() -> None:
    config = Config(timer_profile="wifi", election_timeout_s=3.0, clock_drift_ppm=1000)
    timers = config.election_timers()
    assert timers.heartbeat_interval_s == PROFILES["wifi"].heartbeat_interval_s
    assert (timers.election_timeout_s, timers.clock_drift) == (3.0, 0.001)
    assert timers.lease_timeout_s < max_safe_lease_s(3.0, 0.001)
    assert timers.preempt_delay_s == config.preempt_delay_s


def test_the_issues_example_heartbeat_alone_loads_with_timers_that_follow(tmp_path: Path) -> None:
    path = write(tmp_path, 'timer_profile = "wired"\nheartbeat_interval_s = 1.0\n')
    timers = load_config(path, env={}).election_timers()
    assert (timers.heartbeat_interval_s, timers.election_timeout_s) == (1.0, 10.0)
    assert (timers.priority_skew_s, timers.election_jitter_s) == (1.0, 0.4)


@pytest.mark.parametrize("profile", ["wired", "fast", "wifi"])
@settings(max_examples=100, deadline=None)
@given(heartbeat=st.floats(min_value=0.01, max_value=5.0, allow_nan=False))
def test_any_heartbeat_the_config_allows_is_a_valid_configuration_alone(
    profile: str, heartbeat: float
) -> None:
    flags = {"timer_profile": profile, "heartbeat_interval_s": heartbeat}
    timers = load_config(env={}, flags=flags).election_timers()
    assert timers.heartbeat_interval_s == heartbeat
    assert timers.problems() == []


_ALLOWED = re.compile(
    r"election timeout\): (?P<key>[a-z_]+) = [^;]*; allowed: "
    r"(?:(?P<lo>[0-9.]+) to (?P<hi>[0-9.]+) s|(?P<floor>[0-9.]+) s or more)"
)


@pytest.mark.parametrize(
    "flags",
    [
        {"heartbeat_interval_s": 1.0, "election_timeout_s": 0.5},
        {"heartbeat_interval_s": 0.1, "election_timeout_s": 0.2},
        {"election_timeout_s": 0.1},
        {"lease_timeout_s": 0.6},
        {"timer_profile": "wifi", "lease_timeout_s": 2.5},
        {"heartbeat_interval_s": 0.2, "lease_timeout_s": 0.3},
        {"election_jitter_s": 0.3},
        {"election_timeout_s": 0.3, "lease_timeout_s": 0.29, "clock_drift_ppm": 100000},
    ],
    ids=str,
)
def test_a_timer_error_names_the_key_and_a_range_whose_values_load(flags: dict[str, Any]) -> None:
    message = load_error(flags=flags)
    problems = [line for line in message.splitlines()[1:] if "unsafe election timers" in line]
    assert len(problems) == 1, message
    found = _ALLOWED.search(problems[0])
    assert found is not None, message
    key = found["key"]
    assert "fix:" in problems[0]
    if found["floor"] is not None:
        inside = float(found["floor"]) * 1.01
    else:
        lo, hi = float(found["lo"]), float(found["hi"])
        assert lo <= hi, message
        inside = (lo + hi) / 2
    load_config(env={}, flags={**flags, key: inside})


def test_no_lease_works_then_the_error_says_which_other_keys_to_change() -> None:
    flags = {"heartbeat_interval_s": 0.5, "election_timeout_s": 1.0, "lease_timeout_s": 0.9}
    message = load_error(flags=flags)
    assert "lease_timeout_s = 0.9" in message
    assert "allowed: none with election_timeout_s = 1 and heartbeat_interval_s = 0.5" in message
    fix = re.search(r"fix: election_timeout_s ([0-9.]+) s or more", message)
    assert fix is not None, message
    # Following the fix, lease_timeout_s has a range again, and a value inside it loads.
    flags["election_timeout_s"] = float(fix[1]) * 1.01
    found = _ALLOWED.search(load_error(flags=flags))
    assert found is not None
    assert found["key"] == "lease_timeout_s"
    assert float(found["lo"]) <= float(found["hi"])
    load_config(env={}, flags={**flags, "lease_timeout_s": float(found["lo"])})


# --- errors --------------------------------------------------------------------------------

WIRED_LIMIT = f"{max_safe_lease_s(PROFILES['wired'].election_timeout_s, 0.01):.4f}"

BAD: dict[str, tuple[Mapping[str, Any], tuple[str, ...]]] = {
    "out of range in file": (
        {"file": "priority = 300\n"},
        ("priority = 300", "config file", "1 to 254", "fix: edit priority"),
    ),
    "wrong type in env": (
        {"env": {"HA_VOICE_CLUSTER_PORT": "abc"}},
        ("cluster_port", "HA_VOICE_CLUSTER_PORT", "1 to 65535", "change or unset"),
    ),
    "bool for a number": ({"file": "priority = true\n"}, ("priority", "config file", "1 to 254")),
    "nan": ({"env": {"HA_VOICE_PREEMPT_DELAY_S": "nan"}}, ("preempt_delay_s", "0 to 3600")),
    "bad peer syntax": (
        {"flags": {"peers": ["b@jetson-b"]}},
        ("peers", "flag --peers", "NODE_ID or NODE_ID@HOST:PORT", "'b@jetson-b'"),
    ),
    "peer port out of range": (
        {"env": {"HA_VOICE_PEERS": "b@10.0.0.2:70000"}},
        ("peers", "HA_VOICE_PEERS", "outside 1 to 65535"),
    ),
    "duplicate peer": (
        {"file": 'peers = ["b", "b@10.0.0.2:7405"]\n'},
        ("peers", "config file", "listed twice", "no node id twice"),
    ),
    "two_node with two peers": (
        {"file": 'two_node = true\npeers = ["b", "c"]\n'},
        ("two_node", "config file", "exactly one peer and no witness", "add a witness"),
    ),
    "two_node with a witness": (
        {"env": {"HA_VOICE_TWO_NODE": "1", "HA_VOICE_PEERS": "b", "HA_VOICE_WITNESS": "w"}},
        ("two_node", "HA_VOICE_TWO_NODE", "HA_VOICE_WITNESS", "no witness"),
    ),
    "peers holds node_id": (
        {"env": {"HA_VOICE_NODE_ID": "a", "HA_VOICE_PEERS": "a,b"}},
        ("peers", "node_id", "HA_VOICE_PEERS", "other nodes only", "remove 'a'"),
    ),
    "witness is a peer": (
        {"flags": {"peers": "b", "witness": "b", "node_id": "a"}},
        ("witness", "flag --witness", "listed once", "remove it from peers"),
    ),
    "unknown file key": (
        {"file": "heartbeat_interval = 0.1\n"},
        ("config file", "'heartbeat_interval'", "rename it to heartbeat_interval_s"),
    ),
    "unknown env var": (
        {"env": {"HA_VOICE_PRIORTY": "3"}},
        ("environment variable HA_VOICE_PRIORTY", "rename it to HA_VOICE_PRIORITY"),
    ),
    "unknown flag": ({"flags": {"robotip": "1.2.3.4"}}, ("flag --robotip", "--robot-ip")),
    "toml syntax error": (
        {"file": "priority = 10\nnode_id = jetson\n"},
        ("config file", "TOML syntax error", "line 2", "quotes"),
    ),
    "unsafe lease": (
        {"env": {"HA_VOICE_LEASE_TIMEOUT_S": "0.6"}},
        (
            "HA_VOICE_LEASE_TIMEOUT_S",
            "lease_timeout_s",
            "election_timeout_s",
            "clock_drift_ppm",
            f"= {WIRED_LIMIT} s",
            "unset it so that it follows election_timeout_s",
        ),
    ),
    "election timeout under three heartbeats": (
        {"flags": {"heartbeat_interval_s": 0.5, "election_timeout_s": 1.0}},
        ("flag --heartbeat-interval-s", "heartbeat_interval_s", "3 heartbeat intervals"),
    ),
    "bad language": (
        {"flags": {"language": "fr-FR"}},
        ('language = "fr-FR"', "flag --language", "one of nl, en"),
    ),
    "relative path": (
        {"file": 'state_dir = "var/lib"\n'},
        ("state_dir", "config file", "an absolute path"),
    ),
    "bad node id": (
        {"env": {"HA_VOICE_NODE_ID": "-jetson"}},
        ("node_id", "HA_VOICE_NODE_ID", "[A-Za-z0-9_-]{0,62}"),
    ),
    "cluster name too long": ({"env": {"HA_VOICE_CLUSTER": "c" * 33}}, ("cluster", "{0,31}")),
    "bad ip": ({"flags": {"robot_ip": "192.168.123.300"}}, ("robot_ip", "an IPv4 address")),
    "unknown whisper size": (
        {"env": {"HA_VOICE_WHISPER_MODEL": "huge"}},
        ("whisper_model", "'huge'", "large-v3", "'/'"),
    ),
    "bad profile": (
        {"env": {"HA_VOICE_TIMER_PROFILE": "lte"}},
        ("timer_profile", "wired, fast, wifi"),
    ),
    "too many peers": (
        {"env": {"HA_VOICE_PEERS": ",".join(f"n{i}" for i in range(16))}},
        ("peers", "at most 15 entries"),
    ),
    "trusting everyone": (
        {"file": 'trusted_networks = ["192.168.123.0/24", "0.0.0.0/0"]\n'},
        ("trusted_networks", "config file", "'0.0.0.0/0' trusts every address", "token"),
    ),
}


@pytest.mark.parametrize(
    ("network", "says"),
    [
        ("0.0.0.0/0", "'0.0.0.0/0' trusts every address (IPv4 allows /8 or longer)"),
        ("::/0", "'::/0' trusts every address (IPv6 allows /7 or longer)"),
        ("0.0.0.0/1", "trusts 2^31 addresses"),
        ("8.0.0.0/7", "trusts 2^25 addresses"),
        ("2000::/3", "trusts 2^125 addresses"),
        ("::ffff:0:0/96", "'::ffff:0:0/96' trusts every address (IPv4"),
        ("::ffff:10.0.0.0/104", "compared as IPv4): write it as 10.0.0.0/8"),
    ],
)
def test_trusted_networks_that_trust_far_too_many_are_refused(network: str, says: str) -> None:
    message = load_error(flags={"trusted_networks": [network]})
    assert "flag --trusted-networks: trusted_networks" in message
    assert says in message
    assert "fix:" in message


@pytest.mark.parametrize(
    "network", ["10.0.0.0/8", "192.168.123.0/24", "127.0.0.0/8", "fc00::/7", "fd12:3456::/64"]
)
def test_trusted_networks_of_one_site_or_smaller_are_taken(network: str) -> None:
    assert load_config(env={}, flags={"trusted_networks": [network]}).trusted_networks == [network]


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_value_names_source_key_value_bounds_and_fix(tmp_path: Path, case: str) -> None:
    given, expected = BAD[case]
    kwargs = {key: value for key, value in given.items() if key != "file"}
    if "file" in given:
        kwargs["path"] = write(tmp_path, given["file"])
    message = load_error(**kwargs)
    assert message.startswith("invalid configuration (1 problem):\n")
    assert "fix:" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"
    assert "pydantic" not in message


def test_every_problem_is_listed_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'priority = 0\nlangauge = "nl"\n')
    env = {"HA_VOICE_PORT": "70000", "HA_VOICE_TWO_NODE": "maybe"}
    lines = load_error(path=path, env=env).splitlines()
    assert lines[0] == "invalid configuration (4 problems):"
    problems = lines[1:]
    assert len(problems) == 4
    for key in ("priority", "langauge", "port", "two_node"):
        assert sum(key in line for line in problems) >= 1
    assert any("rename it to language" in line for line in problems)


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    message = load_error(path=tmp_path / "missing.toml")
    assert "missing.toml: no such file; fix: create it" in message


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"priority = \xff\n")
    assert "unreadable" in load_error(path=path)


# --- command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="ha-voice run")
    add_arguments(result)
    return result


def test_seed_flags_round_trip() -> None:
    argv = "--robot-ip 192.168.123.161 --network-interface eth0 --port 8888 "
    argv += "--whisper-model medium --language nl-NL"
    flags = flags_from_namespace(parser().parse_args(argv.split()))
    assert flags == {
        "robot_ip": "192.168.123.161",
        "network_interface": "eth0",
        "port": "8888",
        "whisper_model": "medium",
        "language": "nl-NL",
    }
    config = load_config(env={}, flags=flags)
    assert (config.robot_ip, config.network_interface, config.port) == (
        "192.168.123.161",
        "eth0",
        8888,
    )
    assert (config.whisper_model, config.language) == ("medium", "nl")


def test_unset_flags_do_not_override(tmp_path: Path) -> None:
    flags = flags_from_namespace(parser().parse_args([]))
    assert flags == {}
    assert load_config(write(tmp_path, "priority = 5\n"), env={}, flags=flags).priority == 5


def test_boolean_and_list_flags() -> None:
    argv = ["--two-node", "--peers", "b", "--no-preempt", "--node-id", "a"]
    flags = flags_from_namespace(parser().parse_args(argv))
    assert (flags["two_node"], flags["preempt"]) == (True, False)
    argv = ["--peers", "b,c", "--peers", "d@10.0.0.4:7405", "--lease-timeout-s", "0.3"]
    config = load_config(env={}, flags=flags_from_namespace(parser().parse_args(argv)))
    assert config.peers == ["b", "c", "d@10.0.0.4:7405"]
    assert config.lease_timeout_s == 0.3


def test_every_field_has_one_flag_with_its_description() -> None:
    text = parser().format_help()  # also proves "%" in a description does not break argparse
    options = {option for action in parser()._actions for option in action.option_strings}
    for key in FIELDS:
        assert "--" + key.replace("_", "-") in options
    assert "--no-two-node" in options
    assert "default 7405" in text


# A rank, not a quantity: the only number without a unit.
UNITLESS = {"priority"}


@pytest.mark.parametrize("key", FIELDS)
def test_every_number_states_its_unit_in_the_docs_and_in_help(key: str) -> None:
    core = config_module.core_type(Config.model_fields[key])
    if core not in (int, float) or key in UNITLESS:
        return
    unit = unit_of(key)
    assert unit is not None, f"{key}: a number whose name ends in no unit"
    assert type_text(key) == f"{'integer' if core is int else 'number'}, {unit.text}"
    (action,) = [a for a in parser()._actions if a.dest == key]
    assert action.metavar == unit.metavar
    assert f"| `{key}` | {type_text(key)} |" in render_markdown()


@pytest.mark.parametrize(
    ("key", "text", "metavar"),
    [
        ("api_rate_per_s", "number, per second", "PER_SECOND"),  # a rate, though it ends in _s
        ("election_timeout_s", "number, seconds", "SECONDS"),
        ("api_max_body_bytes", "integer, bytes", "BYTES"),
        ("clock_drift_ppm", "integer, parts per million", "PPM"),
        ("cluster_port", "integer, port number", "PORT"),
    ],
)
def test_a_unit_is_read_from_the_end_of_the_name(key: str, text: str, metavar: str) -> None:
    assert type_text(key) == text
    assert f"{flag_name(key)} {metavar}" in parser().format_help()


# --- cluster key ---------------------------------------------------------------------------


def test_read_cluster_key(tmp_path: Path) -> None:
    key_file = tmp_path / "cluster.key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    assert read_cluster_key(Config(cluster_key_file=key_file)) == b"k" * 32


@pytest.mark.parametrize("kind", ["missing", "short", "directory"])
def test_read_cluster_key_errors_name_the_key_and_the_fix(tmp_path: Path, kind: str) -> None:
    key_file = tmp_path / "cluster.key"
    if kind == "short":
        key_file.write_bytes(b"k" * 15)
        key_file.chmod(0o600)
    elif kind == "directory":
        key_file.mkdir()
    with pytest.raises(ConfigError) as caught:
        read_cluster_key(Config(cluster_key_file=key_file))
    message = str(caught.value)
    assert f"cluster_key_file = '{key_file}'" in message
    assert f"ha-voice keygen --no-token --key-file {key_file}" in message
    assert "at least 16 bytes" in message


# --- the model itself and its docs ---------------------------------------------------------


def has_bound(info: FieldInfo) -> bool:
    args = get_args(info.annotation)
    core = args[0] if type(None) in args else info.annotation
    if core is bool or get_origin(core) is Literal:
        return True
    bounded = (Ge, Le, MaxLen, Rule)
    return any(isinstance(m, bounded) or getattr(m, "pattern", None) for m in info.metadata)


@pytest.mark.parametrize("key", FIELDS)
def test_every_field_has_description_default_bound_and_unit(key: str) -> None:
    info = Config.model_fields[key]
    assert info.description, key
    assert info.description.endswith("."), key
    assert not info.is_required(), key
    assert has_bound(info), key


def test_model_is_frozen_and_forbids_extra_keys() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.priority = 1
    with pytest.raises(ValueError, match="extra"):
        Config.model_validate({"prioriti": 1})


def test_render_toml_round_trips(tmp_path: Path) -> None:
    config = Config(
        node_id="jetson-a",
        peers=["b", "c@10.0.0.3:7405"],
        witness="w@10.0.0.9:7405",
        priority=150,
        election_timeout_s=1.0,
        language="en",
        state_dir=Path('/srv/ha "voice"'),
    )
    text = render_toml(config)
    assert "# lease_timeout_s = " in text  # an unset timer shows the value in use
    assert load_config(write(tmp_path, text), env={}) == config


def test_docs_match_the_model() -> None:
    expected = render_markdown()
    actual = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    assert actual == expected, f"docs/configuration.md is out of date; run: {REGENERATE_DOCS}"


def test_the_documented_jetson_configurations_load_and_drive_the_go2(tmp_path: Path) -> None:
    section = OPERATIONS.read_text(encoding="utf-8").split("\n## Configure\n", 1)[1]
    examples = re.findall(r"^```toml\n(.*?)^```$", section.split("\n## ", 1)[0], re.M | re.S)
    jetsons = [text for text in examples if 'node_id = "jetson-' in text]
    assert len(jetsons) == 2
    for text in jetsons:
        config = load_config(write(tmp_path, text), env={})
        assert config.robot == "go2", text  # "none" would fail every command


def test_markdown_lists_every_key_with_its_sources() -> None:
    text = render_markdown()
    for key in FIELDS:
        assert f"| `{key}` |" in text
        assert f"`HA_VOICE_{key.upper()}`" in text
    for profile in PROFILES:
        assert f"| `{profile}` |" in text


def test_main_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()


def test_a_witness_configures_itself_as_the_witness() -> None:
    config = load_config(env={}, flags={"node_id": "w", "peers": "n1,n2", "witness": "w"})
    assert config.witness_spec is not None
    assert config.witness_spec.node_id == config.node_id


# --- the seed's robot flags ----------------------------------------------------------------------


def test_the_seeds_command_line_drives_the_go2() -> None:
    argv = "--robot-ip 192.168.123.161 --network-interface eth0 --port 8888 "
    argv += "--whisper-model medium --language nl-NL"
    flags = flags_from_namespace(parser().parse_args(argv.split()))
    assert load_config(env={}, flags=flags).robot == "go2"


@pytest.mark.parametrize(
    "given",
    [{"robot_ip": "192.168.123.20"}, {"network_interface": "eth1"}],
    ids=["robot_ip", "network_interface"],
)
def test_either_robot_key_alone_means_go2_and_nothing_means_none(
    tmp_path: Path, given: dict[str, str]
) -> None:
    assert load_config(env={}, flags=given).robot == "go2"
    key, value = next(iter(given.items()))
    assert load_config(write(tmp_path, f'{key} = "{value}"\n'), env={}).robot == "go2"
    assert load_config(env={}, flags={}).robot == "none"


def test_a_robot_key_with_robot_none_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, 'robot = "none"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={}, flags={"robot_ip": "192.168.123.20"})
    message = str(caught.value)
    assert "flag --robot-ip" in message
    assert "robot = 'none', which drives no robot" in message
    assert 'fix: set robot = "go2"' in message


@pytest.mark.parametrize("backend", ["go2", "sim", "sim://127.0.0.1:9000"])
def test_a_robot_key_with_a_backend_is_kept(backend: str) -> None:
    flags = {"robot": backend, "network_interface": "eth1"}
    assert load_config(env={}, flags=flags).robot == backend


def test_robot_none_with_the_robot_keys_at_their_defaults_is_a_config_without_a_robot(
    tmp_path: Path,
) -> None:
    text = 'robot = "none"\nrobot_ip = "192.168.123.161"\nnetwork_interface = "eth0"\n'
    assert load_config(write(tmp_path, text), env={}).robot == "none"


def test_an_early_stop_at_or_past_the_end_of_speech_wait_is_refused() -> None:
    error = load_error(
        env={"HA_VOICE_LISTEN_EARLY_STOP_S": "0.3", "HA_VOICE_VAD_MIN_SILENCE_S": "0.3"}
    )
    assert "listen_early_stop_s" in error
    assert "vad_min_silence_s" in error
    assert load_config(env={}, flags={"listen_early_stop_s": 0}).listen_early_stop_s == 0
