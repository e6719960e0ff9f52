"""schemathesis against the running nodes' OpenAPI: no server errors, no schema violations.

Three real nodes without a robot (every command is answered at once: 502, the robot failed it).
Against a backup every route is tested, step-down included (a backup refuses it: 409), so the
forwarding path is under test too; against the primary, every route but step-down (a valid body
would hand leadership over). tests/schemathesis.toml says why 502 and 503 are not server errors;
tests/schemathesis_hooks.py states the one rule the schema cannot. schemathesis comes with the
test extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = os.environ.get("HA_VOICE_SCHEMATHESIS_EXAMPLES", "30")
# The CLI's own entry point, run by this interpreter (no script on PATH needed).
_CLI = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    flags = ("--api-rate-per-s=10000", "--api-rate-burst=100000")
    with LocalCluster(3, extra_flags=flags) as running:
        running.start()
        assert running.wait_for_primary(20.0) is not None
        yield running


def _schemathesis(
    cluster: LocalCluster, url: str, workdir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-c",
        _CLI,
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--max-examples",
        EXAMPLES,
        "--workers",
        "1",
        "--seed",
        "1",
        "--header",
        f"Authorization: Bearer {cluster.token}",
        *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    # Run elsewhere: schemathesis keeps a cache directory where it runs.
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("role", ["backup", "primary"])
def test_no_server_errors_and_no_schema_violations(
    cluster: LocalCluster, role: str, tmp_path: Path
) -> None:
    (primary,) = cluster.primaries()
    if role == "primary":
        url = cluster.nodes[primary].url
        result = _schemathesis(cluster, url, tmp_path, "--exclude-path", "/cluster/step-down")
    else:
        backup = next(node for name, node in cluster.nodes.items() if name != primary)
        result = _schemathesis(cluster, backup.url, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or _only_expected_warnings(result.stdout, role), (
        result.stdout[-6000:]
    )


def _only_expected_warnings(out: str, role: str) -> bool:
    """No failure, and a warning only where a refusal is the documented answer: a backup
    refuses every step-down (409), which schemathesis 4.30 (the newest for Python 3.10) calls
    "mostly rejected generated data"; 4.32 does not warn. The same for transcriptions: the
    generated `file` is random bytes, no recording, and is refused (415, 422)."""
    if "WARNINGS" not in out or "FAILURES" in out or "Failures:" in out:
        return False
    warnings = out.split("WARNINGS", 1)[1].split("SUMMARY", 1)[0]
    named = {line.strip()[2:] for line in warnings.splitlines() if line.strip().startswith("- ")}
    expected = {"POST /v1/audio/transcriptions"}
    if role == "backup":
        expected.add("POST /cluster/step-down")
    kinds = [line for line in warnings.splitlines() if line and line[0].isalpha()]
    mismatch_only = all(line.startswith("Schema validation mismatch") for line in kinds)
    return bool(named) and named <= expected and mismatch_only
