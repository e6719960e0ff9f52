"""The shipped units as systemd reads them: `systemd-analyze verify` finds nothing, and
`systemd-analyze security --offline=true` scores each unit's exposure at most 2.5, alone and
with the drop-ins of systemd/ha-voice.service.d (the floating IP, the Jetson GPU)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
DROP_INS = sorted(SYSTEMD.glob("*.service.d/*.conf"))
INSTALLED = "/opt/ha-voice/venv/bin/ha-voice"
TARGET_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze (Debian: systemd)"
)


def exposure(unit: Path) -> float:
    """The overall exposure `systemd-analyze security` gives `unit` (and its drop-ins beside)."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    return float(found[1])


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_each_unit_is_exposed_at_most_2_5(path: Path, tmp_path: Path) -> None:
    alone = tmp_path / path.name
    shutil.copy(path, alone)
    scores = {"alone": exposure(alone), "with its drop-ins": exposure(path)}
    print(path.name, scores)
    assert max(scores.values()) <= TARGET_EXPOSURE, scores


def test_there_are_drop_ins_for_the_floating_ip_and_the_gpu() -> None:
    names = {p.relative_to(SYSTEMD).as_posix() for p in DROP_INS}
    assert names == {"ha-voice.service.d/floating-ip.conf", "ha-voice.service.d/jetson-gpu.conf"}


def test_the_gpu_drop_in_joins_the_group_that_owns_the_gpu() -> None:
    # L4T's /dev/nvhost-* and /dev/nvmap are 0660 root:video: DeviceAllow= alone opens the
    # cgroup, not the file mode.
    text = (SYSTEMD / "ha-voice.service.d" / "jetson-gpu.conf").read_text()
    assert re.search(r"^SupplementaryGroups=video$", text, re.M)


def test_systemd_finds_nothing_wrong_in_the_units_and_drop_ins(tmp_path: Path) -> None:
    # Only the install path changes: this machine's interpreter stands in for the venv's script
    # (verify checks that the command exists).
    for path in [*UNITS, *DROP_INS]:
        target = tmp_path / path.relative_to(SYSTEMD)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text().replace(INSTALLED, f"{sys.executable} -m ha_voice"))
    verify = ["systemd-analyze", "verify", *(str(tmp_path / p.name) for p in UNITS)]
    result = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
