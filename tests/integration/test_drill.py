"""`ha-voice drill` against three real `ha-voice run` processes on loopback and a `sim-robot`
process: transfers that it times, a limit it reports exceeded, refusals (no token, --crash off
the primary's host, an unhealthy cluster), and a --crash that SIGKILLs the primary.

The tests share one cluster but for the --crash one, which kills a node of a cluster of its own.
mDNS is off here (HA_VOICE_MDNS=false, the nodes' --no-mdns): no multicast leaves this machine;
tests/e2e/test_netns_drill.py drills with mDNS and a floating IP in namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with (
        SimRobotProcess() as robot,
        LocalCluster(3, extra_flags=(f"--robot={robot.spec}",)) as running,
    ):
        running.start()
        assert running.wait_for_primary(60.0) is not None, _logs(running)
        yield running


def _logs(cluster: LocalCluster) -> str:
    return "\n".join(
        f"--- {node.node_id}\n{node.log_path.read_text()[-2000:]}"
        for node in cluster.nodes.values()
        if node.log_path.exists()
    )


def drill(
    *argv: str, url: str = "", token_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`ha-voice drill ARGV` as an operator runs it, with this machine's configuration empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["HA_VOICE_CONFIG"] = os.devnull
    env["HA_VOICE_MDNS"] = "false"
    flags = [
        *(["--url", url] if url else []),
        *(["--token-file", str(token_file)] if token_file else []),
    ]
    return subprocess.run(
        [sys.executable, "-m", "ha_voice", "drill", *flags, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def _primary(cluster: LocalCluster) -> str:
    found = cluster.wait_for_primary(30.0)
    assert found is not None, _logs(cluster)
    return found[0]


def _url(cluster: LocalCluster, node_id: str) -> str:
    return cluster.nodes[node_id].url


def _term(cluster: LocalCluster, node_id: str) -> int:
    view = cluster.nodes[node_id].cluster()
    assert view is not None
    return int(view["term"])


def test_two_repetitions_report_two_transitions(cluster: LocalCluster) -> None:
    first = _primary(cluster)
    backup = next(n for n in cluster.nodes if n != first)
    result = drill(
        "-n", "2", "--json", "--interval", "0.2",
        url=_url(cluster, backup), token_file=cluster.token_file,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr + _logs(cluster)
    *reps, summary = _lines(result)
    assert [r["repetition"] for r in reps] == [1, 2]
    assert reps[0]["old"] == first
    assert reps[1]["old"] == reps[0]["new"]  # the second hands over from the first's winner
    assert (reps[0]["old"], reps[0]["new"]) != (reps[1]["old"], reps[1]["new"])
    for rep in reps:
        assert rep["trigger"] == "transfer"
        assert rep["new"] != rep["old"]
        assert rep["term"] > rep["old_term"]
        assert 0 < rep["ready"]["ms"] == rep["failover_ms"]
        assert not rep["exceeded"]
    assert reps[1]["old_term"] >= reps[0]["term"]
    assert summary["summary"]["repetitions"] == 2
    assert summary["summary"]["exceeded"] == 0
    # What the drill says is what the cluster did: the last winner leads now.
    assert _primary(cluster) == reps[1]["new"]


def test_the_text_report_names_the_transition_and_the_times(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    target = sorted(n for n in cluster.nodes if n != old)[0]
    result = drill("--to", target, url=_url(cluster, old), token_file=cluster.token_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"drill 1/1: transfer {old} -> {target}, term " in result.stdout
    assert "robot commands accepted again after " in result.stdout
    assert "1 failover(s): " in result.stdout
    assert _primary(cluster) == target


def test_a_failover_over_max_ms_exits_1(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    result = drill("--max-ms", "1", "--json", url=_url(cluster, old), token_file=cluster.token_file)
    assert result.returncode == 1, result.stdout + result.stderr
    rep, summary = _lines(result)
    assert rep["exceeded"]
    assert rep["failover_ms"] > 1
    assert rep["new"] != old  # the failover happened; it was only slower than asked
    assert summary["summary"]["exceeded"] == 1


def test_a_drill_without_a_token_is_refused_by_the_cluster(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    term = _term(cluster, old)
    result = drill(url=_url(cluster, old))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not authenticated" in result.stderr
    assert "--token-file" in result.stderr
    assert _primary(cluster) == old
    assert _term(cluster, old) == term


def test_crash_on_a_backup_refuses_and_kills_nothing(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    backup = next(n for n in cluster.nodes if n != old)
    result = drill("--crash", url=_url(cluster, backup), token_file=cluster.token_file)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"not the primary {old}" in result.stderr
    assert len(cluster.running()) == 3
    assert _primary(cluster) == old


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-n", "0"], "from 1 to 1000"),
        (["--max-ms", "fast"], "milliseconds"),
        (["--interval", "-1"], "seconds"),
        (["--crash", "--to", "n2"], "--crash does not transfer"),
        (["--vip", "jetson-vip"], "an IPv4 address"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv: list[str], says: str) -> None:
    result = drill(*argv, url="http://127.0.0.1:9")  # nothing is contacted
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr


def test_ctrl_c_stops_the_drill_and_says_where_the_cluster_was_left(
    cluster: LocalCluster,
) -> None:
    old = _primary(cluster)
    term = _term(cluster, old)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env.update(HA_VOICE_CONFIG=os.devnull, HA_VOICE_MDNS="false")
    argv = ["-n", "2", "--interval", "60", "--url", _url(cluster, old)]
    # Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a shell without
    # job control) has SIGINT ignored, which a child inherits (and Python then leaves ignored);
    # a handler of ours is reset to the default in the child instead.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        drilling = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ha_voice",
                "drill",
                *argv,
                "--token-file",
                str(cluster.token_file),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, ignored)
    try:
        assert drilling.stdout is not None
        first = drilling.stdout.readline()
        assert first.startswith("drill 1/2: transfer "), first
        while not (line := drilling.stdout.readline()).startswith("  failover "):
            assert line, first  # the first repetition's report ends with its verdict
        time.sleep(1.0)  # into the 60 s interval
        drilling.send_signal(signal.SIGINT)
        try:
            out, err = drilling.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            drilling.kill()
            out, err = drilling.communicate()
            pytest.fail(f"the drill did not end within 30 s of Ctrl-C:\n{first}{out}\n{err}")
    finally:
        drilling.kill()
        drilling.wait()
    assert drilling.returncode == 130, first + out + err
    new = _primary(cluster)
    assert "interrupted while waiting 60 s before repetition 2" in err
    assert f"the cluster is left with primary {new} in term {_term(cluster, new)}" in err
    assert _term(cluster, new) > term
    assert "1 failover(s): " in out  # the summary of what was done


def test_a_target_that_is_no_member_exits_2(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    result = drill("--to", "n9", url=_url(cluster, old), token_file=cluster.token_file)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--to n9: not a member" in result.stderr


def test_crash_on_the_primary_kills_it_and_then_refuses_the_cluster_missing_it() -> None:
    with (
        SimRobotProcess() as robot,
        LocalCluster(3, extra_flags=(f"--robot={robot.spec}",)) as cluster,
    ):
        cluster.start()
        old = _primary(cluster)
        process = cluster.nodes[old].process
        assert process is not None
        result = drill("--crash", "--json", url=_url(cluster, old), token_file=cluster.token_file)
        assert result.returncode == 0, result.stdout + result.stderr + _logs(cluster)
        rep, _ = _lines(result)
        assert process.wait(10) == -9  # SIGKILL, by the drill
        assert rep["trigger"] == "crash"
        assert f"pid {process.pid}" in rep["cause"]
        assert rep["old"] == old
        assert rep["new"] not in (None, old)
        assert rep["ready"]["failed"] >= 1  # the dead node's reads fail until the new one serves
        new = _primary(cluster)
        assert new == rep["new"]

        # Nothing restarts the killed node here: the next drill refuses, and changes nothing.
        term = _term(cluster, new)
        result = drill(url=_url(cluster, new), token_file=cluster.token_file)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "not healthy enough to drill" in result.stderr
        assert f"{old} is unreachable: not heard" in result.stderr
        assert _term(cluster, new) == term
