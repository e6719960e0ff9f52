"""Every subcommand reads file, environment and flags through the one model, in one order;
problems come all at once; `config check` refuses what `run` would refuse."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ha_voice import cli, status
from ha_voice import client as client_module
from ha_voice import config as config_module
from ha_voice.config import Config, load_config
from ha_voice.errors import ConfigError
from ha_voice.keyfiles import write_private
from ha_voice.preflight import check_startable

PC_TOML = 'node_id = "go2-pc"\ncluster = "go2"\npeers = ["jetson-1", "jetson-2"]\n'


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees this machine's /etc/ha-voice/config.toml or HA_VOICE_* variables."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    for var in [var for var in os.environ if var.startswith("HA_VOICE_")]:
        monkeypatch.delenv(var)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Config]]:
    """`run` and `witness` load and check their config; the daemon is not started."""
    seen: list[Config] = []

    def serve(config: Config) -> int:
        check_startable(config)
        seen.append(config)
        return 0

    monkeypatch.setattr(cli, "_serve", serve)
    return seen


def node_files(tmp_path: Path, extra: str = "") -> Path:
    """A config file whose key file and state directory exist, as `run` needs them."""
    key = tmp_path / "cluster.key"
    if not key.exists():
        write_private(key, os.urandom(32))
    path = tmp_path / "config.toml"
    path.write_text(
        f'{extra}cluster_key_file = "{key}"\nstate_dir = "{tmp_path / "state"}"\n',
        encoding="utf-8",
    )
    return path


# --- the witness reads its file like every other command ---------------------------------


def test_witness_starts_from_the_documented_file(tmp_path: Path, served: list[Config]) -> None:
    path = node_files(tmp_path, PC_TOML)
    assert cli.main(["witness", "--config", str(path)]) == 0
    (config,) = served
    assert (config.node_id, config.witness) == ("go2-pc", "go2-pc")
    assert config.peers == ["jetson-1", "jetson-2"]


@pytest.mark.parametrize(
    ("env", "flags", "node_id"),
    [
        ({}, [], "go2-pc"),
        ({"HA_VOICE_NODE_ID": "pc-env"}, [], "pc-env"),
        ({"HA_VOICE_NODE_ID": "pc-env"}, ["--node-id", "pc-flag"], "pc-flag"),
        ({"HA_VOICE_WITNESS": ""}, [], "go2-pc"),  # empty unsets: as if never given
    ],
)
def test_witness_takes_node_id_from_whichever_source_wins(
    tmp_path: Path,
    served: list[Config],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    flags: list[str],
    node_id: str,
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    path = node_files(tmp_path, PC_TOML)
    monkeypatch.setenv("HA_VOICE_CONFIG", str(path))
    assert cli.main(["witness", *flags]) == 0
    assert (served[0].node_id, served[0].witness) == (node_id, node_id)


@pytest.mark.parametrize(
    ("where", "source"),
    [("file", "config file"), ("env", "HA_VOICE_WITNESS"), ("flag", "flag --witness")],
)
def test_a_witness_key_naming_another_node_is_named_with_its_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: list[Config],
    where: str,
    source: str,
) -> None:
    path = node_files(tmp_path, PC_TOML + ('witness = "other"\n' if where == "file" else ""))
    if where == "env":
        monkeypatch.setenv("HA_VOICE_WITNESS", "other")
    flags = ["--witness", "other"] if where == "flag" else []
    assert cli.main(["witness", "--config", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert source in err
    assert 'witness = "other" but node_id = "go2-pc"' in err
    assert not served


def test_a_witness_may_name_itself_with_an_address(tmp_path: Path, served: list[Config]) -> None:
    path = node_files(tmp_path, PC_TOML + 'witness = "go2-pc@10.0.0.9:7405"\n')
    assert cli.main(["witness", "--config", str(path)]) == 0


def test_config_check_reads_a_witness_file_as_the_witness_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = node_files(tmp_path, PC_TOML)
    assert cli.main(["config", "check", "--witness", str(path)]) == 0
    assert 'witness = "go2-pc"' in capsys.readouterr().out


# --- one order of sources for every command ----------------------------------------------


@pytest.mark.parametrize("command", ["run", "witness", "config show"])
def test_flags_beat_environment_beats_file_in_every_command(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: list[Config],
    command: str,
) -> None:
    path = node_files(tmp_path, 'port = 1111\npriority = 7\ncluster = "from-file"\n')
    monkeypatch.setenv("HA_VOICE_PORT", "2222")
    monkeypatch.setenv("HA_VOICE_PRIORITY", "8")
    argv = [*command.split(), "--config", str(path), "--priority", "9"]
    assert cli.main(argv) == 0
    if command == "config show":
        out = capsys.readouterr().out
        found = {k: out.split(f"\n{k} = ", 1)[1].split("\n", 1)[0] for k in ("port", "priority")}
        assert found == {"port": "2222", "priority": "9"}
        assert 'cluster = "from-file"' in out
    else:
        (config,) = served
        assert (config.port, config.priority, config.cluster) == (2222, 9, "from-file")


def test_config_check_reads_the_environment_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = node_files(tmp_path, "port = 1111\n")
    monkeypatch.setenv("HA_VOICE_PORT", "2222")
    assert cli.main(["config", "check", str(path)]) == 0
    assert "\nport = 2222\n" in capsys.readouterr().out


def test_status_finds_the_port_where_the_daemon_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    urls: list[str] = []

    def fetch(base: str, verify: Any) -> dict[str, Any]:
        urls.append(base)
        return {"members": []}

    monkeypatch.setattr(status, "fetch_cluster", fetch)
    monkeypatch.setattr(status, "render_table", lambda view: "table")
    monkeypatch.setenv("HA_VOICE_CONFIG", str(node_files(tmp_path, "port = 1111\n")))
    assert cli.main(["status"]) == 0
    monkeypatch.setenv("HA_VOICE_PORT", "2222")
    assert cli.main(["status"]) == 0
    assert urls == ["http://127.0.0.1:1111", "http://127.0.0.1:2222"]


class _FakeClient:
    """Stands in for HAVoiceClient: records how `send` made it, answers "done"."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.made.append(kwargs)

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def say(self, text: str, key: str) -> Any:
        return type("Result", (), {"body": {"outcome": "done"}, "attempts": 1})()


@pytest.mark.parametrize(
    ("env", "flags", "cluster"),
    [
        ({}, [], "from-file"),
        ({"HA_VOICE_CLUSTER": "from-env"}, [], "from-env"),
        ({"HA_VOICE_CLUSTER": "from-env"}, ["--cluster", "from-flag"], "from-flag"),
    ],
)
def test_send_finds_cluster_and_token_where_the_daemon_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    flags: list[str],
    cluster: str,
) -> None:
    token = "t" * 30
    write_private(tmp_path / "api.tokens", f"ops:{token}\n".encode())
    extra = f'cluster = "from-file"\napi_token_file = "{tmp_path / "api.tokens"}"\n'
    monkeypatch.setenv("HA_VOICE_CONFIG", str(node_files(tmp_path, extra)))
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(client_module, "HAVoiceClient", _FakeClient)  # imported when used
    monkeypatch.setattr(cli, "HAVoiceClient", _FakeClient, raising=False)  # or at the top
    monkeypatch.setattr(status, "render_outcome", lambda body, attempts: "done")
    _FakeClient.made.clear()
    assert cli.main(["send", "sta op", *flags]) == 0
    (made,) = _FakeClient.made
    assert (made["cluster"], made["token"]) == (cluster, token)


# --- every problem in one round ----------------------------------------------------------


def load_error(path: Path | None = None, **kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return str(caught.value)


def test_bad_values_and_broken_rules_come_in_one_round(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'port = 0\npeers = ["a", "b"]\ntwo_node = true\nvip = "10.0.0.5/24"\nprioity = 3\n'
    )
    text = load_error(path)
    assert "(4 problems)" in text
    assert "port = 0: below the minimum 1" in text
    assert "two_node = true found 2 peers" in text
    assert "vip and vip_interface must be set together" in text
    assert "rename it to priority" in text


def test_a_rule_about_a_bad_value_is_left_to_that_value(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('peers = ["a", "a"]\ntwo_node = true\n')
    text = load_error(path)
    assert "(1 problem)" in text
    assert "listed twice" in text


def test_a_section_is_named_with_the_keys_it_took(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('node_id = "a"\n[cluster_settings]\nport = 9000\npeers = ["b"]\n')
    text = load_error(path)
    assert "[cluster_settings] is a section, and sections are not used" in text
    assert "held port, peers" in text
    assert "top level" in text


def test_an_array_of_tables_is_a_section_too(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[peers]]\nnode_id = "b"\n[[peers]]\nnode_id = "c"\nhost = "h"\n')
    text = load_error(path)
    assert "(1 problem)" in text
    assert "[[peers]] is a section" in text
    assert "held node_id, host" in text


# --- config check refuses what run refuses -----------------------------------------------


def _break_key(tmp_path: Path) -> str:
    (tmp_path / "cluster.key").unlink()
    return "cluster_key_file"


def _expose_key(tmp_path: Path) -> str:
    (tmp_path / "cluster.key").chmod(0o644)
    return "chmod 600"


def _missing_tokens(tmp_path: Path) -> str:
    return f'api_token_file = "{tmp_path / "absent.tokens"}"\n'


def _state_is_a_file(tmp_path: Path) -> str:
    (tmp_path / "state").write_text("")
    return "not a directory"


def _foreign_database(tmp_path: Path) -> str:
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "ha-voice.sqlite3") as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    return "not an ha-voice state database"


def _missing_tls(tmp_path: Path) -> str:
    names = ("tls_cert_file", "tls_key_file", "tls_ca_file")
    return "".join(f'{name} = "{tmp_path / name}"\n' for name in names)


@pytest.mark.parametrize(
    "breakage",
    [_break_key, _expose_key, _missing_tokens, _state_is_a_file, _foreign_database, _missing_tls],
)
def test_config_check_refuses_what_run_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], served: list[Config], breakage: Any
) -> None:
    path = node_files(tmp_path)
    expected = breakage(tmp_path)
    extra = expected if expected.endswith("\n") else ""
    if extra:  # the breakage is a key to add
        path = node_files(tmp_path, extra)
    assert cli.main(["config", "check", str(path)]) == 2
    check_err = capsys.readouterr().err
    assert cli.main(["run", "--config", str(path)]) == 2
    run_err = capsys.readouterr().err
    assert check_err == run_err
    assert check_err.startswith("ha-voice: invalid configuration (")
    assert not served
    if not extra:
        assert expected in check_err


def test_config_check_lists_every_file_problem_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = node_files(tmp_path, _missing_tokens(tmp_path))
    _expose_key(tmp_path)
    _state_is_a_file(tmp_path)
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(3 problems)" in err
    assert "cluster_key_file" in err
    assert "api_token_file" in err
    assert "state_dir" in err


def test_a_state_dir_that_can_be_made_is_fine(tmp_path: Path) -> None:
    path = node_files(tmp_path)
    config = load_config(path, env={})
    assert not config.state_dir.exists()
    check_startable(config)
    assert not config.state_dir.exists()  # checking creates nothing


def test_values_and_files_come_in_one_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    absent = tmp_path / "absent.key"
    path.write_text(f'port = 0\ncluster_key_file = "{absent}"\nstate_dir = "relative"\n')
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(3 problems)" in err
    assert "port = 0" in err
    assert f"cluster_key_file = '{absent}': no such file" in err
    # state_dir's value is wrong: its default directory is not checked in its place.
    assert len([line for line in err.splitlines() if "state_dir" in line]) == 1


class _LockedPath(type(Path())):  # type: ignore[misc]
    """A path in a directory this user may not search, as /etc/ha-voice (0750) is to most."""

    def exists(self, **kwargs: Any) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    def read_text(self, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(self))


def test_a_default_file_this_user_cannot_read_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", _LockedPath("/etc/ha-voice/c.toml"))
    assert cli.main(["status"]) == 2  # not a traceback
    err = capsys.readouterr().err
    assert "config file /etc/ha-voice/c.toml: unreadable" in err
    assert "join group ha-voice" in err
