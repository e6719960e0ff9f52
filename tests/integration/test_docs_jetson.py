"""docs/jetson-install.md as a test machine can follow it: every shell block is run here or says
why it cannot be; `ha-voice check` (and the unit's `ExecStartPre=` line) as written, against a
running node; and the page's upgrade order on three real processes under a stream of commands.

tests/doc_commands.py says what is replaced: the system directories and the service user; here
also the Jetson's venv, which is this interpreter's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_voice.client import HAVoiceClient
from ha_voice.cluster.protocol import PROTOCOL_VERSION
from ha_voice.keyfiles import write_private
from ha_voice.local_cluster import (
    LocalCluster,
    LocalNode,
    SimRobotProcess,
    free_port,
    toml_text,
)
from tests.doc_commands import ROOT, block, machine_replacements, run

JETSON = ROOT / "docs" / "jetson-install.md"
# Every `tested:` block of the page, and the test file that runs it.
RUN_BY = {
    "jetson-packaged-model": "test_docs_speech.py",
    "jetson-cuda-devices": "test_docs_speech.py",
    "jetson-check": "test_docs_jetson.py",
    "jetson-check-witness": "test_docs_jetson.py",
    "jetson-protocol-version": "test_docs_jetson.py",
}
_FENCE = re.compile(
    r"^([ \t]*)(<!-- (tested: [a-z0-9-]+|not run here: [^>]+) -->\n)?\1```sh$", re.M
)
_LINE = re.compile(r"^(ok {4}|warn {2}|fail {2})[a-z_]+: ", re.M)
_VENV = "/opt/ha-voice/venv/bin/"


def _replacements(root: Path) -> dict[str, str]:
    return {
        **machine_replacements(root),
        _VENV: f"{Path(sys.executable).parent}/",
        "/etc/default/ha-voice": str(root / "etc" / "default" / "ha-voice"),
    }


def test_every_shell_block_is_run_here_or_says_why_not() -> None:
    text = JETSON.read_text(encoding="utf-8")
    marks = [m[3] for m in _FENCE.finditer(text)]
    assert len(marks) == text.count("```sh")
    unmarked = [i for i, mark in enumerate(marks) if mark is None]
    assert unmarked == [], f"shell blocks {unmarked} are neither tested nor say why not"
    tested = {mark.removeprefix("tested: ") for mark in marks if mark.startswith("tested: ")}
    assert tested == set(RUN_BY)
    here = Path(__file__).parent
    for name, test_file in RUN_BY.items():
        assert f'"{name}"' in (here / test_file).read_text(), (name, test_file)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[tuple[Path, LocalCluster]]:
    """A running two-node cluster, and a machine root whose /etc/ha-voice/config.toml is the
    configuration of its node n1 (static peers, no mDNS, no speech, the simulated robot)."""
    with LocalCluster(2, extra_flags=("--robot=sim",)) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        etc = tmp_path / "etc" / "ha-voice"
        etc.mkdir(parents=True)
        _write_config(etc, cluster.config_values("n1", stt_enabled=False, robot="sim"))
        yield tmp_path, cluster


def _write_config(etc: Path, values: dict[str, Any]) -> None:
    (etc / "config.toml").write_text(toml_text(values))


def _report(script: str, root: Path) -> tuple[int, str]:
    """The exit status and output of a `ha-voice check` block (run passes on exit status 0)."""
    out = run(f"{script.strip()} || echo exit=$?", root, _replacements(root)).stdout
    status = re.search(r"^exit=(\d+)$", out, re.M)
    return (int(status[1]) if status else 0), out


def test_the_documented_check_reports_the_running_node(machine: tuple[Path, Any]) -> None:
    root, _ = machine
    code, out = _report(block("jetson-check", JETSON), root)
    lines = [line for line in out.splitlines() if not line.startswith(("exit=", " "))]
    assert all(_LINE.match(line) for line in lines), out
    assert code in (0, 1), out  # the clock is unknown where systemd is not init
    for check in ("config", "cluster_key_file", "api_token_file", "node", "peers", "timers"):
        assert re.search(rf"^ok    {check}: ", out, re.M), (check, out)
    assert re.search(r"^ok    node: n1 answers at ", out, re.M), out


def test_the_documented_check_reads_the_units_environment_file(
    machine: tuple[Path, LocalCluster],
) -> None:
    # The unit's EnvironmentFile= overrides the file's port: a check that did not read it
    # would ask another port and find no node.
    root, cluster = machine
    config = root / "etc" / "ha-voice" / "config.toml"
    config.write_text(config.read_text().replace(f"port = {cluster.nodes['n1'].api_port}\n", ""))
    config.write_text(config.read_text() + f"port = {free_port()}\n")
    (root / "etc" / "default").mkdir()
    (root / "etc" / "default" / "ha-voice").write_text(
        f"# as systemd reads it\nHA_VOICE_PORT={cluster.nodes['n1'].api_port}\n"
    )
    code, out = _report(block("jetson-check", JETSON), root)
    assert re.search(r"^ok    node: n1 answers at ", out, re.M), out
    assert code in (0, 1), out


def test_the_documented_exec_start_pre_runs_and_only_reports(machine: tuple[Path, Any]) -> None:
    root, _ = machine
    text = JETSON.read_text(encoding="utf-8")
    [line] = re.findall(r"^ExecStartPre=-(.+)$", text, re.M)
    code, out = _report(line, root)
    assert code in (0, 1), out
    assert "--offline" in line
    assert not re.search(r"^\w+ +(node|peers|timers|robot): ", out, re.M)  # no network probe


def test_the_documented_witness_check(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "ha-voice"
    etc.mkdir(parents=True)
    write_private(etc / "cluster.key", os.urandom(32))
    values = {
        "node_id": "go2-pc",
        "cluster": f"witness-{os.getpid()}",
        "peers": ["jetson-1", "jetson-2"],
        "cluster_key_file": str(etc / "cluster.key"),
        "state_dir": str(tmp_path / "state"),
        "mdns": False,
    }
    _write_config(etc, values)
    code, out = _report(block("jetson-check-witness", JETSON), tmp_path)
    assert code == 1, out  # jetson-1 and jetson-2 are not running
    assert re.search(r"^ok    config: .* witness go2-pc", out, re.M), out
    assert re.search(r"^warn  peers: .*not heard: jetson-1, jetson-2", out, re.M), out
    assert not re.search(r"^\w+ +(whisper_model|gpu|robot): ", out, re.M), out


def test_the_documented_protocol_version(tmp_path: Path) -> None:
    out = run(block("jetson-protocol-version", JETSON), tmp_path, _replacements(tmp_path)).stdout
    assert out.strip() == str(PROTOCOL_VERSION)


def _restart(node: LocalNode) -> None:
    """Stop as systemd does (SIGTERM), start again, and wait until it follows the primary."""
    node.signal(signal.SIGTERM)
    assert node.wait(15.0) == 0
    node.start()
    for _ in range(300):
        if node.status_code("/cluster/replica", timeout_s=0.5) == 200:
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"{node.node_id} did not follow the primary again")


def _term(node: LocalNode) -> int:
    view = node.cluster()
    assert view is not None
    return int(view["term"])


def test_the_documented_upgrade_order_keeps_the_cluster_commandable() -> None:
    with SimRobotProcess() as sim, LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as c:
        c.start()
        found = c.wait_for_primary(30.0)
        assert found is not None
        primary = c.nodes[found[0]]
        term = _term(primary)
        outcomes: list[str] = []
        stop = threading.Event()
        urls = ",".join(node.url for node in c.nodes.values())

        def stream() -> None:
            with HAVoiceClient(url=urls, token=c.token, deadline_s=20.0) as client:
                while not stop.is_set():
                    try:
                        result = client.command("stand_up")  # from any posture the robot has
                        outcomes.append(f"{result.status} {result.body.get('detail', '')}".strip())
                    except Exception as exc:  # any failure is what the test looks for
                        outcomes.append(f"{type(exc).__name__}: {exc}")

        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        try:
            for backup in [n for n in c.nodes.values() if n is not primary]:
                _restart(backup)
            env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
            env["HA_VOICE_TOKEN"] = c.token or ""
            step_down = subprocess.run(
                [sys.executable, "-m", "ha_voice", "step-down", "--url", primary.url],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert step_down.returncode == 0, step_down.stdout + step_down.stderr
            assert c.wait_for_primary(15.0, exclude=primary.node_id) is not None
            _restart(primary)
        finally:
            stop.set()
            sender.join(30.0)
        assert outcomes, "no command was sent"
        assert set(outcomes) == {"done"}, [o for o in outcomes if o != "done"]
        # Leadership moved once, by the step-down: the restarted backups started no election.
        assert max(_term(node) for node in c.nodes.values()) == term + 1
