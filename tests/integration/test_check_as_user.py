"""`ha-voice check`, `config check` and `run` by a user who cannot enter some paths (as the
service's user cannot enter another's 0700 directory): a named configuration problem (exit 2,
which systemd does not restart), never a traceback (exit 1, restarted every few seconds forever).

The tests run as root. The child stays root but without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (`setpriv --bounding-set`), so the kernel checks permissions as it would for
any user: a directory owned by nobody with mode 0700 cannot be entered, while the interpreter,
the virtual environment and the checkout (root's, wherever they are) stay readable. Dropping to
nobody instead needed an interpreter and packages nobody can read, which a checkout under a
0700 directory (as CI's) or a pyenv interpreter under /root does not give.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_voice.keyfiles import write_private
from ha_voice.local_cluster import free_port
from ha_voice.voice.models import packaged_model

NOBODY = 65534
_SETPRIV = shutil.which("setpriv")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or _SETPRIV is None, reason="needs root and setpriv (util-linux)"
)


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory holding a key and tokens (mode 0600) and a state directory, the user's."""
    root = Path(tempfile.mkdtemp(prefix="hv-as-user-"))
    root.chmod(0o755)
    (root / "state").mkdir(mode=0o700)
    for name, body in (("cluster.key", os.urandom(32)), ("api.tokens", b"ops:" + b"t" * 43)):
        write_private(root / name, body)
    yield root
    shutil.rmtree(root)


@pytest.fixture
def closed(place: Path) -> Path:
    """A directory only its owner, nobody, may enter (as /var/lib/ha-voice is only ha-voice's)."""
    path = place / "closed"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    return path


def _user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _as_user(place: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`ha-voice argv` without the capabilities that let root past file permissions."""
    assert _SETPRIV is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    return subprocess.run(
        [
            _SETPRIV,
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            "--",
            sys.executable,
            "-m",
            "ha_voice",
            *argv,
        ],
        env={**env, "HOME": str(place)},
        cwd=place,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _config(place: Path, **values: Any) -> str:
    base = {
        "cluster": f"as-user-{os.getpid()}",
        "cluster_key_file": str(place / "cluster.key"),
        "api_token_file": str(place / "api.tokens"),
        "state_dir": str(place / "state"),
        "port": free_port(),
        "stt_enabled": False,
        **values,
    }
    path = place / "config.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in base.items()))
    path.chmod(0o644)
    return str(path)


def _finding(report: dict[str, Any], check: str) -> dict[str, Any]:
    [finding] = [f for f in report["checks"] if f["check"] == check]
    return finding


def test_the_project_runs_as_user(place: Path) -> None:
    done = _as_user(place, "check", "--json", "--offline", "--config", _config(place))
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert _finding(report, "state_dir")["level"] == "ok"


def test_a_model_directory_that_cannot_be_entered(place: Path, closed: Path) -> None:
    model = closed / "whisper-tiny"
    shutil.copytree(packaged_model("tiny.en"), model)
    config = _config(
        place, stt_enabled=True, stt_device="cpu", whisper_model=str(model), language="en"
    )
    done = _as_user(place, "check", "--json", "--offline", "--config", config)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    finding = _finding(json.loads(done.stdout), "whisper_model")
    assert finding["level"] == "fail"
    assert (
        finding["detail"]
        == f"{model}: this user ({_user()}) cannot look into it (Permission denied)"
    )
    assert "docs/jetson-install.md" in finding["fix"]


@pytest.mark.parametrize("key", ["state_dir", "cluster_key_file", "api_token_file"])
def test_a_path_under_a_directory_that_cannot_be_entered(
    place: Path, closed: Path, key: str
) -> None:
    path = closed / ("state" if key == "state_dir" else key)
    config = _config(place, **{key: str(path)})
    done = _as_user(place, "check", "--json", "--offline", "--config", config)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    finding = _finding(json.loads(done.stdout), key)
    assert finding["level"] == "fail"
    assert str(path) in finding["detail"]
    assert "Permission denied" in finding["detail"] or "cannot" in finding["detail"]
    assert finding["fix"]


@pytest.mark.parametrize("command", [["config", "check"], ["run", "--config"]])
def test_start_refuses_an_unreachable_state_dir_as_a_configuration_error(
    place: Path, closed: Path, command: list[str]
) -> None:
    # Exit 2 is what the unit's RestartPreventExitStatus= keeps from a restart loop.
    state_dir = closed / "state"
    done = _as_user(place, *command, _config(place, state_dir=str(state_dir)))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    assert f"state_dir = '{state_dir}': this user ({_user()}) cannot reach it" in done.stderr
    assert f"({closed} cannot be entered)" in done.stderr
    assert "fix: " in done.stderr
