"""docs/operations.md, "From three machines to a running cluster", run as written: three network
namespaces on one bridge are jetson-1, jetson-2 and go2-pc, each with its own /etc/ha-voice and
/var/lib/ha-voice (tests/doc_commands.py says what is replaced, and only that)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.doc_commands import OPERATIONS, block, machine_replacements, run, spawn
from tests.integration.netns import Lan, created

SECTION = "## From three machines to a running cluster"
MACHINES = ("jetson-1", "jetson-2", "go2-pc")
# Each machine's blocks of the walkthrough, step by step.
CONFIG = {
    "jetson-1": "first-config-jetson-1",
    "jetson-2": "first-config-jetson-2",
    "go2-pc": "first-config-go2-pc",
}
CHECK = {"jetson-1": "first-check-jetson", "jetson-2": "first-check-jetson"}
CHECK["go2-pc"] = "first-check-witness"
START = {"jetson-1": "first-run-jetson", "jetson-2": "first-run-jetson"}
START["go2-pc"] = "first-run-witness"
ONCE = ("first-keygen", "first-status", "first-send")
RUN_HERE = {*CONFIG.values(), *CHECK.values(), *START.values(), *ONCE}
Runner = Callable[[str, str], subprocess.CompletedProcess[str]]


@pytest.fixture
def lan() -> Iterator[Lan]:
    with created(Lan(len(MACHINES), subnet="10.219.0.0/24", prefix="hvt")) as network:
        yield network


def test_every_command_of_the_walkthrough_is_run_here() -> None:
    text = OPERATIONS.read_text(encoding="utf-8").split(f"\n{SECTION}\n", 1)[1]
    section = text.split("\n## ", 1)[0]
    fences = re.findall(r"^[ \t]*```sh$", section, re.M)
    names = re.findall(r"^[ \t]*<!-- tested: ([a-z0-9-]+) -->\n[ \t]*```sh$", section, re.M)
    assert len(names) == len(fences)  # every shell block is marked
    assert set(names) == RUN_HERE


def test_three_fresh_machines_become_a_running_cluster(lan: Lan, tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in MACHINES}
    for root in roots.values():
        (root / "etc" / "ha-voice").mkdir(parents=True)
    prefix = {name: lan[i].exec_argv([]) for i, name in enumerate(MACHINES)}

    def on(machine: str, name: str) -> subprocess.CompletedProcess[str]:
        return run(block(name), tmp_path, machine_replacements(roots[machine]), prefix[machine])

    on("jetson-1", ONCE[0])
    for other in ("jetson-2", "go2-pc"):  # the operator's scp -p
        for secret in ("cluster.key", "api.tokens"):
            shutil.copy2(roots["jetson-1"] / "etc/ha-voice" / secret, roots[other] / "etc/ha-voice")
    for machine in MACHINES:
        on(machine, CONFIG[machine])
    for machine in MACHINES:
        assert "valid" in on(machine, CHECK[machine]).stderr

    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for machine in MACHINES:
            nodes[machine] = spawn(
                block(START[machine]),
                tmp_path,
                roots[machine] / "node.log",
                machine_replacements(roots[machine]),
                prefix[machine],
            )
        table = wait_for_status(on, nodes, roots)
        for machine in MACHINES:
            assert machine in table
        sent = on("jetson-2", ONCE[2])
        assert "done" in sent.stdout, sent.stdout
    finally:
        for process in nodes.values():
            process.send_signal(signal.SIGTERM)
        codes = {machine: process.wait(30) for machine, process in nodes.items()}
    assert codes == dict.fromkeys(MACHINES, 0), logs(roots)


def wait_for_status(
    on: Runner, nodes: dict[str, subprocess.Popen[bytes]], roots: dict[str, Path]
) -> str:
    """`ha-voice status` on go2-pc once it shows a primary and every machine."""
    deadline = time.monotonic() + 60
    while True:
        for machine, process in nodes.items():
            assert process.poll() is None, f"{machine} exited\n{logs(roots)}"
        try:
            table = on("go2-pc", ONCE[1]).stdout
        except AssertionError:
            table = ""
        if "primary" in table and all(machine in table for machine in MACHINES):
            return table
        assert time.monotonic() < deadline, f"{table}\n{logs(roots)}"
        time.sleep(0.5)


def logs(roots: dict[str, Path]) -> str:
    return "\n".join(
        f"--- {name}\n{(root / 'node.log').read_text()[-3000:]}"
        for name, root in roots.items()
        if (root / "node.log").exists()
    )
