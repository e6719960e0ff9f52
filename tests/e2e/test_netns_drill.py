"""docs/operations.md, "Failover drills", run as written on three nodes in network namespaces on
a bridge, with real mDNS (no static peers) and a floating IP: `ha-voice drill` on a node times
the hand-overs by robot-command availability, the floating IP and the mDNS endpoint, and
`--crash` on the primary's node SIGKILLs its daemon.

The changes are tests/doc_commands.py's for a whole machine (/etc/ha-voice is a temporary
directory, `sudo` goes: the test runs as root); its config.toml, which a node's host has and a
test machine does not, is given by HA_VOICE_CONFIG.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_voice.local_cluster import LocalCluster, LocalNode, toml_text
from tests.doc_commands import block, machine_replacements, run
from tests.integration.netns import Lan, created

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

VIP = "10.223.0.200"
RUN_HERE = ("drill", "drill-crash")
RESTART_S = 1.0


@pytest.fixture
def lan() -> Iterator[Lan]:
    with created(Lan(3, subnet="10.223.0.0/24", prefix="hvx")) as network:
        yield network


@pytest.fixture
def cluster(lan: Lan) -> Iterator[LocalCluster]:
    with LocalCluster(
        3,
        hosts=[lan.address(i) for i in range(3)],
        prefixes=[lan[i].exec_argv([]) for i in range(3)],
        mdns=True,
        static_peers=False,
        extra_flags=(f"--vip={VIP}/24", "--vip-interface=eth0", "--robot=sim"),
    ) as running:
        running.start()
        yield running


def _etc(tmp_path: Path, cluster: LocalCluster) -> Path:
    """/etc/ha-voice of a node's host: its config.toml, as the nodes run (mDNS, the VIP)."""
    etc = tmp_path / "etc" / "ha-voice"
    etc.mkdir(parents=True)
    values = {
        "cluster": cluster.cluster,
        "cluster_key_file": str(cluster.key_file),
        "api_token_file": str(cluster.token_file),
        "vip": f"{VIP}/24",
        "vip_interface": "eth0",
    }
    (etc / "config.toml").write_text(toml_text(values))
    return etc


def _on(lan: Lan, index: int, etc: Path, name: str, cwd: Path) -> str:
    """Block `name` of the docs, run as written in node `index`'s namespace; its stdout."""
    prefix = lan[index].exec_argv(["env", f"HA_VOICE_CONFIG={etc / 'config.toml'}"])
    result = run(block(name), cwd, machine_replacements(etc.parent.parent), prefix)
    return result.stdout


def _status(lan: Lan, index: int) -> dict[str, Any] | None:
    argv = [sys.executable, "-m", "ha_voice", "status", "--json"]
    result = lan[index].run(argv, timeout_s=30, check=False)
    try:
        view: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        return None
    return view


def _settled(lan: Lan, cluster: LocalCluster) -> dict[str, Any]:
    """The primary's view once it leads and hears both backups (found by mDNS alone)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        view = _status(lan, 0)
        roles = sorted(m["role"] for m in (view or {}).get("members", []))
        if (
            view is not None
            and view.get("role") == "primary"
            and roles
            == [
                "backup",
                "backup",
                "primary",
            ]
        ):
            return view
        time.sleep(0.5)
    raise AssertionError(f"the cluster did not settle\n{_logs(cluster)}")


def _logs(cluster: LocalCluster) -> str:
    return "\n".join(
        f"--- {n.node_id}\n{n.log_path.read_text()[-2500:]}"
        for n in cluster.nodes.values()
        if n.log_path.exists()
    )


def test_the_documented_drills_time_every_view_and_crash_the_primary(
    lan: Lan, cluster: LocalCluster, tmp_path: Path
) -> None:
    etc = _etc(tmp_path, cluster)
    first = _settled(lan, cluster)["node"]
    backup = next(i for i in range(3) if f"n{i + 1}" != first)
    try:
        out = _on(lan, backup, etc, "drill", tmp_path)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_logs(cluster)}") from None
    print(out)  # the report, for `pytest -s`
    for number in (1, 2, 3):
        assert f"drill {number}/3: transfer " in out, out
    assert out.count("floating IP answers from ") == 3, out
    assert out.count("mDNS endpoint names ") == 3, out
    assert "3 failover(s): " in out, out
    assert "EXCEEDED" not in out, out

    primary = _settled(lan, cluster)["node"]
    index = int(primary[1:]) - 1
    node = cluster.nodes[primary]
    process = node.process
    assert process is not None
    started: list[int] = []
    restarted = threading.Thread(target=_restart_on_death, args=(node, started), daemon=True)
    restarted.start()
    out = _on(lan, index, etc, "drill-crash", tmp_path)
    restarted.join(30)
    print(out)
    assert process.returncode == -9  # `ip netns exec` execs: its pid is the daemon's
    assert f"drill 1/2: crash {primary} -> " in out, out
    assert f"drill 2/2: crash {primary} -> " in out, out  # handed back to it, killed again
    assert f"pid {process.pid}" in out, out
    assert f"pid {started[0]}" in out, out  # the daemon restarted after the first
    # From the crashed primary's host the floating IP stays its own until the daemon is back.
    assert out.count("floating IP answers from ") == 2, out
    assert "until its daemon restarts" in out, out
    assert out.count("mDNS endpoint names ") == 2, out
    assert "2 failover(s): " in out, out


def _restart_on_death(node: LocalNode, started: list[int]) -> None:
    """What systemd's Restart=on-failure does (sooner than its RestartSec=5): start the node
    again each time its process dies, twice; the new pids in `started`."""
    for _ in range(2):
        assert node.process is not None
        node.process.wait(120)
        time.sleep(RESTART_S)
        node.start()
        started.append(node.process.pid)
