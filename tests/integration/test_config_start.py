"""Real processes started as the operator starts them: the shipped unit files' command lines, and
the API reachable at every address of the node whatever the cluster's UDP binds to."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ha_voice import cli
from ha_voice.config import Config
from ha_voice.keyfiles import write_private
from ha_voice.local_cluster import LocalCluster, free_port

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
INSTALLED = "/opt/ha-voice/venv/bin/ha-voice"
CONFIG = "/etc/ha-voice/config.toml"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path)
    return parser


def exec_start(path: Path) -> list[str]:
    argv = shlex.split(unit(path)["Service"]["ExecStart"])
    assert argv[0] == INSTALLED, path
    return argv[1:]


def wait_healthy(url: str, process: subprocess.Popen[str], timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate(timeout=5)
        try:
            return dict(httpx.get(f"{url}/health", timeout=0.5).json())
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url}")


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    write_private(tmp_path / "cluster.key", os.urandom(32))
    return tmp_path


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_every_unit_file_starts_a_command_the_cli_takes(path: Path) -> None:
    args = cli._parser().parse_args(exec_start(path))
    assert args.config == Path(CONFIG)
    service = unit(path)["Service"]
    # A start that fails is tried again for ever, a configuration error (exit 2) never.
    assert unit(path)["Unit"]["StartLimitIntervalSec"] == "0"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    # The secrets are the service user's, mode 0600 (docs: keygen --owner ha-voice).
    assert (service["User"], service.get("DynamicUser")) == ("ha-voice", None)


def test_the_witness_unit_starts_from_the_documented_file(node_dir: Path) -> None:
    port = free_port()
    config = node_dir / "config.toml"
    config.write_text(
        'node_id = "go2-pc"\n'
        f'cluster = "w{os.getpid()}"\n'
        'peers = ["jetson-1", "jetson-2"]\n'
        f'cluster_key_file = "{node_dir / "cluster.key"}"\n'
        f'state_dir = "{node_dir / "state"}"\n'
        f"port = {port}\ncluster_port = {free_port()}\n",
        encoding="utf-8",
    )
    argv = [
        arg.replace(CONFIG, str(config))
        for arg in exec_start(ROOT / "systemd" / "ha-voice-witness.service")
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "ha_voice", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}", process)
        assert (health["node"], health["role"]) == ("go2-pc", "witness")
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out


def test_the_api_answers_at_every_address_while_the_cluster_binds_one() -> None:
    # 127.0.0.2 stands for the floating IP: an address of this host that is not listen_address.
    # LocalCluster pins each node's API to its own address; this node has the default back.
    default = Config.model_fields["api_listen_address"].default
    assert default == "0.0.0.0"
    flags = (f"--api-listen-address={default}",)
    with LocalCluster(1, api_token=False, extra_flags=flags) as cluster:
        node = cluster.nodes["n1"]
        assert f"--listen-address={node.host}" in node.argv
        cluster.start()
        assert cluster.wait_for_primary(timeout_s=30) is not None
        answer = httpx.get(f"http://127.0.0.2:{node.api_port}/health", timeout=5)
        assert answer.status_code == 200
        assert answer.json()["node"] == "n1"


def test_a_node_starts_with_only_its_heartbeat_changed(tmp_path: Path) -> None:
    # The example: heartbeat_interval_s = 1.0 alone with the wired profile was refused
    # (the election timeout stayed 0.5 s); now the profile's timers follow the heartbeat.
    config = tmp_path / "timers.toml"
    config.write_text('timer_profile = "wired"\nheartbeat_interval_s = 1.0\n', encoding="utf-8")
    with LocalCluster(1, api_token=False, extra_flags=(f"--config={config}",)) as cluster:
        node = cluster.nodes["n1"]
        cluster.start()
        deadline = time.monotonic() + 30
        metrics = node.get("/metrics")
        while metrics is None and time.monotonic() < deadline:
            assert node.running, node.log_path.read_text()
            time.sleep(0.1)
            metrics = node.get("/metrics")
        assert metrics is not None, node.log_path.read_text()
        timers = dict(re.findall(r'ha_voice_timer_seconds\{timer="(\w+)"\} (\S+)', metrics.text))
        assert float(timers["heartbeat_interval"]) == 1.0
        assert float(timers["election_timeout"]) == 10.0
        assert 2.0 <= float(timers["lease"]) < 10.0
