"""The packaged model assembled for the tests, the demo and a Jetson without internet."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ha_voice.voice.models import PackagedModelMissing, packaged_model


def test_the_assembled_model_is_readable_like_its_other_files(tmp_path: Path) -> None:
    """model.bin is written through a private temporary file; it must not stay 0600, or a model
    assembled by root cannot be read by the unprivileged service user (the unit's `ha-voice`)."""
    old = os.umask(0o022)
    try:
        target = packaged_model("base", tmp_path)
    except PackagedModelMissing as missing:
        pytest.skip(str(missing))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert modes["model.bin"] == modes["config.json"] == 0o644, modes
    assert not [p for p in target.iterdir() if p.name.startswith(".model.bin.")]
