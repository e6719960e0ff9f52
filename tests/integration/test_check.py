"""`ha-voice check` as an operator runs it: a real process against real files, a real cluster
(static peers, and mDNS), a real simulated Go2, and the packaged Whisper models.

Each test reads the JSON report (`--json`) and, where the words matter, the text lines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ha_voice.check import EXIT_CODES
from ha_voice.interfaces import local_ipv4
from ha_voice.keyfiles import write_private
from ha_voice.local_cluster import (
    LocalCluster,
    LocalNode,
    SimRobotProcess,
    free_port,
    toml_text,
)
from ha_voice.robot.go2 import INSTALL_HINT
from ha_voice.voice.models import packaged_model

FINDING_KEYS = {"check", "level", "detail", "fix"}


def _check(*argv: str) -> tuple[int, dict[str, Any]]:
    """The exit status and the JSON report of `ha-voice check --json ARGV`."""
    done = _run("--json", *argv)
    return done.returncode, json.loads(done.stdout)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    return subprocess.run(
        [sys.executable, "-m", "ha_voice", "check", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _by_check(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in report["checks"]:
        found.setdefault(finding["check"], []).append(finding)
    return found


def _only(report: dict[str, Any], check: str) -> dict[str, Any]:
    [finding] = _by_check(report)[check]
    return finding


def _assert_shape(code: int, report: dict[str, Any]) -> None:
    assert set(report) == {"status", "exit", "checks"}
    assert all(set(finding) == FINDING_KEYS for finding in report["checks"])
    assert all(finding["level"] in EXIT_CODES for finding in report["checks"])
    assert all(finding["fix"] for finding in report["checks"] if finding["level"] != "ok")
    worst = max(EXIT_CODES[finding["level"]] for finding in report["checks"])
    assert code == report["exit"] == worst == EXIT_CODES[report["status"]]


def _toml(values: dict[str, Any]) -> str:
    return toml_text(values)


def _node_values(cluster: LocalCluster, node: LocalNode, **extra: Any) -> dict[str, Any]:
    """The configuration `node` of `cluster` runs with, as a file would give it."""
    return cluster.config_values(node.node_id, stt_enabled=False, **extra)


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Any]:
    """A cluster key, a token file and a state directory a node would start with."""
    key, tokens = tmp_path / "cluster.key", tmp_path / "api.tokens"
    write_private(key, os.urandom(32))
    write_private(tokens, b"ops:" + b"t" * 43 + b"\n")
    return {
        "cluster": f"check-{os.getpid()}",
        "cluster_key_file": str(key),
        "api_token_file": str(tokens),
        "state_dir": str(tmp_path / "state"),
        "port": free_port(),
        "stt_enabled": False,
    }


def _config(tmp_path: Path, values: dict[str, Any], name: str = "config.toml") -> str:
    path = tmp_path / name
    path.write_text(_toml(values))
    return str(path)


@pytest.fixture
def sim() -> Iterator[SimRobotProcess]:
    with SimRobotProcess() as robot:
        yield robot


def test_a_running_cluster_is_all_ok(tmp_path: Path, sim: SimRobotProcess) -> None:
    with LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        node = cluster.nodes["n1"]
        config = _config(tmp_path, _node_values(cluster, node, robot=sim.spec))
        code, report = _check("--config", config)
        _assert_shape(code, report)
        assert _only(report, "config")["level"] == "ok"
        for key in ("cluster_key_file", "api_token_file", "state_dir"):
            assert _only(report, key)["level"] == "ok"
        assert "mode 0600" in _only(report, "cluster_key_file")["detail"]
        assert _only(report, "node")["level"] == "ok"
        assert _only(report, "node")["detail"].startswith(f"n1 answers at {node.url}")
        assert _only(report, "peers") == {
            "check": "peers",
            "level": "ok",
            "detail": "heard n2, n3 (by the nodes that answered)",
            "fix": "",
        }
        timers = _only(report, "timers")
        assert timers["level"] == "ok"
        assert "heartbeat round trip measured by the primary" in timers["detail"]
        assert _only(report, "robot")["level"] == "ok"
        assert "the running node reaches it" in _only(report, "robot")["detail"]

        # The node gone: nothing answers on its port, and no peer is heard without mDNS; the
        # robot is then probed from here.
        cluster.kill("n1", signal.SIGKILL)
        code, report = _check("--config", config)
        _assert_shape(code, report)
        assert _only(report, "node")["level"] == "warn"
        assert "no ha-voice node answers" in _only(report, "node")["detail"]
        assert _only(report, "peers")["level"] == "warn"
        assert "not heard: n2, n3" in _only(report, "peers")["detail"]
        assert _only(report, "robot")["level"] == "ok"
        assert "reachable from here" in _only(report, "robot")["detail"]


def test_peers_heard_by_mdns_and_an_unreachable_robot(tmp_path: Path) -> None:
    # Two nodes run; the configuration is that of a third, n3, not started: its peers are heard
    # by mDNS alone, and the round trip comes from the primary mDNS leads to.
    with LocalCluster(3, mdns=True, static_peers=False) as cluster:
        for node_id in ("n1", "n2"):
            cluster.nodes[node_id].start()
        assert cluster.wait_for_primary(30.0) is not None
        closed = f"sim://127.0.0.1:{free_port()}"
        values = _node_values(cluster, cluster.nodes["n3"], robot=closed)
        code, report = _check("--config", _config(tmp_path, values))
        _assert_shape(code, report)
        assert code == 2
        peers = _only(report, "peers")
        assert peers["level"] == "ok"
        assert peers["detail"] == "heard n1, n2 (by mDNS or the nodes that answered)"
        assert _only(report, "timers")["level"] == "ok"
        assert "measured by the primary" in _only(report, "timers")["detail"]
        robot = _only(report, "robot")
        assert robot["level"] == "fail"
        assert robot["detail"].startswith(f"{closed}: unreachable")
        assert "ha-voice sim-robot" in robot["fix"]


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_secret_files_that_group_or_others_may_read_fail(
    tmp_path: Path, secrets: dict[str, Any], mode: int
) -> None:
    Path(secrets["cluster_key_file"]).chmod(mode)
    Path(secrets["api_token_file"]).chmod(mode)
    config = _config(tmp_path, secrets)
    code, report = _check("--offline", "--config", config)
    _assert_shape(code, report)
    assert code == 2
    for key in ("cluster_key_file", "api_token_file"):
        finding = _only(report, key)
        assert finding["level"] == "fail"
        assert f"has mode {mode:04o}" in finding["detail"]
        assert finding["fix"].startswith(f"chmod 600 {secrets[key]}")
    assert _only(report, "state_dir")["level"] == "ok"
    lines = _run("--offline", "--config", config).stdout.splitlines()
    assert any(line.startswith("fail  cluster_key_file: ") for line in lines)


def test_missing_and_short_secrets_fail_with_their_fix(
    tmp_path: Path, secrets: dict[str, Any]
) -> None:
    write_private(tmp_path / "short.key", b"x" * 8)
    values = {
        **secrets,
        "cluster_key_file": str(tmp_path / "short.key"),
        "api_token_file": str(tmp_path / "absent.tokens"),
    }
    code, report = _check("--offline", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    key, tokens = _only(report, "cluster_key_file"), _only(report, "api_token_file")
    assert "only 8 bytes" in key["detail"]
    assert key["fix"].startswith("create one with: ha-voice keygen --no-token")
    assert "no such file" in tokens["detail"]
    assert tokens["fix"].startswith("ha-voice keygen --no-key --token-file")


def test_a_config_with_bad_keys_fails_and_the_host_is_still_checked(
    tmp_path: Path, secrets: dict[str, Any]
) -> None:
    values = {**secrets, "port": 70000, "heartbeat_interval": 1}
    config = _config(tmp_path, values)
    code, report = _check("--offline", "--config", config)
    _assert_shape(code, report)
    assert code == 2
    # One finding per problem, each with its own fix.
    port, unknown = sorted(_by_check(report)["config"], key=lambda f: "heartbeat" in f["detail"])
    assert all(f["level"] == "fail" for f in (port, unknown))
    assert "port = 70000" in port["detail"]
    assert port["fix"].startswith("edit port in ")
    assert "unknown key 'heartbeat_interval'" in unknown["detail"]
    assert unknown["fix"] == "rename it to heartbeat_interval_s (the closest key) or remove it"
    # What needs a valid configuration is left out; the host's own checks are not.
    assert set(_by_check(report)) == {"config", "gpu", "clock"}
    assert _run("--offline", "--config", config).stdout.startswith("fail  config: ")


def test_no_peers_is_a_warning_not_a_failure(tmp_path: Path, secrets: dict[str, Any]) -> None:
    # mDNS on, a cluster name nobody uses: the browse hears nothing within its bound.
    values = {**secrets, "mdns": True, "robot": "sim"}
    code, report = _check("--mdns-wait", "0.5", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    assert code == 1
    peers = _only(report, "peers")
    assert peers["level"] == "warn"
    assert peers["detail"].startswith("no peers configured")
    assert _only(report, "node")["level"] == "warn"
    assert _only(report, "timers")["level"] == "warn"


def test_configured_peers_not_heard_and_a_witness_host(
    tmp_path: Path, secrets: dict[str, Any]
) -> None:
    values = {**secrets, "node_id": "w", "peers": ["n1", "n2"], "robot": "none"}
    code, report = _check("--witness", "--mdns-wait", "0.5", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    peers = _only(report, "peers")
    assert peers["level"] == "warn"
    assert "not heard: n1, n2" in peers["detail"]
    # A witness loads no model and drives no robot: neither is checked.
    assert not {"whisper_model", "gpu", "speech", "robot"} & set(_by_check(report))


def _speech_values(secrets: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**secrets, "stt_enabled": True, "stt_device": "cpu", **extra}


def test_the_model_is_found_without_loading_it(tmp_path: Path, secrets: dict[str, Any]) -> None:
    model = str(packaged_model("tiny.en"))
    values = _speech_values(secrets, whisper_model=model, language="en")
    code, report = _check("--offline", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    finding = _only(report, "whisper_model")
    assert finding["level"] == "ok"
    assert finding["detail"] == f"{model}: a CTranslate2 model, on cpu, int8; not loaded"


def test_load_model_loads_it_in_a_worker(tmp_path: Path, secrets: dict[str, Any]) -> None:
    model = str(packaged_model("tiny.en"))
    values = _speech_values(secrets, whisper_model=model, language="en", stt_cpu_threads=1)
    code, report = _check("--offline", "--load-model", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    finding = _only(report, "whisper_model")
    assert finding["level"] == "ok"
    assert finding["detail"].startswith(f"{model}: loaded in ")
    assert finding["detail"].endswith(" on cpu, int8")


@pytest.mark.parametrize(
    ("extra", "level", "words"),
    [
        ({"whisper_model": "/nonexistent/model"}, "fail", "no CTranslate2 model there"),
        ({"whisper_model": "tiny", "whisper_local_files_only": True}, "fail", "forbids"),
        ({"whisper_model": "tiny"}, "warn", "the first start downloads it"),
        ({"stt_compute_type": "float16"}, "fail", "not supported on cpu"),
    ],
    ids=["no-directory", "not-cached-offline", "not-cached", "compute-type"],
)
def test_a_model_that_would_not_load_is_named(
    tmp_path: Path,
    secrets: dict[str, Any],
    extra: dict[str, Any],
    level: str,
    words: str,
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    values = _speech_values(secrets, whisper_download_root=str(root), **extra)
    code, report = _check("--offline", "--config", _config(tmp_path, values))
    _assert_shape(code, report)
    finding = _only(report, "whisper_model")
    assert finding["level"] == level
    assert words in finding["detail"]
    assert list(root.iterdir()) == []  # nothing was downloaded


def test_check_loads_no_server_library(tmp_path: Path, secrets: dict[str, Any]) -> None:
    probe = (
        "import json, sys\nfrom ha_voice.cli import main\ncode = main(sys.argv[1:])\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))"
    )
    argv: Sequence[str] = ("check", "--offline", "--config", _config(tmp_path, secrets))
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = json.loads(done.stdout.strip().splitlines()[-1])["modules"]
    heavy = ("fastapi", "uvicorn", "starlette", "faster_whisper", "ha_voice.daemon", "ha_voice.api")
    assert [m for m in modules if m.split(".")[0] in heavy or m.startswith(heavy)] == []


def test_the_go2_probe_names_the_interface_and_the_sdk(
    tmp_path: Path, secrets: dict[str, Any]
) -> None:
    values = {**secrets, "robot": "go2", "network_interface": "nosuch0", "mdns": False}
    code, report = _check("--config", _config(tmp_path, values))
    _assert_shape(code, report)
    robot = _only(report, "robot")
    assert robot["level"] == "fail"
    assert "no interface 'nosuch0' on this host" in robot["detail"]
    assert robot["fix"].startswith("set network_interface")
    interfaces = local_ipv4()
    if not interfaces or importlib.util.find_spec("unitree_sdk2py") is not None:
        return  # the SDK's own tests are in test_go2_sdk.py
    # A real interface, no SDK: the probe, in its child process, says how to install it.
    values["network_interface"] = interfaces[0][0]
    code, report = _check("--config", _config(tmp_path, values))
    robot = _only(report, "robot")
    assert robot["level"] == "fail"
    assert INSTALL_HINT in robot["detail"]
    assert robot["fix"].startswith("install the SDK")


def test_a_running_witness_checked_as_a_witness(tmp_path: Path) -> None:
    with LocalCluster(2, witness=True) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        values = _node_values(cluster, cluster.nodes["w"])
        del values["stt_enabled"], values["api_token_file"]  # a witness takes neither
        code, report = _check("--witness", "--config", _config(tmp_path, values))
        _assert_shape(code, report)
        assert _only(report, "node")["detail"].startswith("w answers at ")
        assert _only(report, "node")["level"] == "ok"
        assert _only(report, "peers")["detail"] == "heard n1, n2 (by the nodes that answered)"
        checks = set(_by_check(report))
        assert not {"whisper_model", "gpu", "speech", "robot", "api_token_file"} & checks


def test_a_missing_config_file_is_named_with_the_flag_that_named_it(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.toml"
    code, report = _check("--offline", "--config", str(missing))
    _assert_shape(code, report)
    finding = _only(report, "config")
    assert finding["detail"] == f"config file {missing}: no such file"
    assert finding["fix"].endswith("give --config one")


def test_no_config_file_at_all_is_a_warning(tmp_path: Path) -> None:
    if Path("/etc/ha-voice/config.toml").exists():
        pytest.skip("this host has /etc/ha-voice/config.toml")
    done = subprocess.run(
        [sys.executable, "-m", "ha_voice", "check", "--json", "--offline"],
        env={k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    finding = _only(json.loads(done.stdout), "config")
    assert finding["level"] == "warn"
    assert finding["detail"].startswith("no configuration file (no --config, no $HA_VOICE_CONFIG")
    assert "--config" in finding["fix"]


def test_a_model_that_fails_to_load_names_its_fix(tmp_path: Path, secrets: dict[str, Any]) -> None:
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "model.bin").write_bytes(b"not a model" * 100)
    (model / "config.json").write_text("{}")
    values = _speech_values(secrets, whisper_model=str(model))
    code, report = _check("--offline", "--load-model", "--config", _config(tmp_path, values))
    _assert_shape(code, report)  # every finding that is not ok has a fix
    finding = _only(report, "whisper_model")
    assert finding["level"] == "fail"
    assert finding["detail"].startswith("load failed")


def test_a_witness_checked_as_a_node_is_told_to_use_witness(tmp_path: Path) -> None:
    with LocalCluster(2, witness=True) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        values = _node_values(cluster, cluster.nodes["w"])
        del values["api_token_file"]
        code, report = _check("--config", _config(tmp_path, values))
        _assert_shape(code, report)
        node = _only(report, "node")
        assert node["level"] == "warn"
        assert node["detail"].startswith("w answers at ")
        assert node["detail"].endswith("but it was checked as a node")
        assert "--witness" in node["fix"]
