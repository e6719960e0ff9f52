"""The speech commands of docs/jetson-install.md and docs/operations.md, run as written
(tests/doc_commands.py says what is replaced: the system directories and the service user; here
also the Jetson's venv, which is this interpreter's)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ha_voice.config import Config
from tests.doc_commands import OPERATIONS, ROOT, block, blocks, machine_replacements, run

JETSON = ROOT / "docs" / "jetson-install.md"
# The speech sections whose every shell block must be marked (so run here), and their blocks; the
# install line above them installs from a path only the reader has.
SECTIONS = {
    JETSON: (
        "### Which model",  # to the end of section 5 ("### CPU or GPU" included)
        {"jetson-packaged-model", "jetson-cuda-devices"},
    ),
    OPERATIONS: ("## Speech", {"speech-model"}),
}
_SH = re.compile(r"^[ \t]*```sh$", re.M)
_MARKED = re.compile(r"^[ \t]*<!-- tested: ([a-z0-9-]+) -->\n[ \t]*```sh$", re.M)


def _replacements(root: Path) -> dict[str, str]:
    return {**machine_replacements(root), "/opt/ha-voice/venv/bin/python": sys.executable}


@pytest.mark.parametrize("doc", sorted(SECTIONS), ids=lambda p: p.name)
def test_every_shell_block_of_the_speech_sections_is_run_here(doc: Path) -> None:
    heading, names = SECTIONS[doc]
    section = doc.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    assert len(_SH.findall(section)) == len(_MARKED.findall(section))
    assert set(_MARKED.findall(section)) == names
    assert names <= set(blocks(doc))


@pytest.mark.parametrize(
    ("doc", "name"), [(JETSON, "jetson-packaged-model"), (OPERATIONS, "speech-model")]
)
def test_the_packaged_model_command_prints_a_directory_the_config_takes(
    tmp_path: Path, doc: Path, name: str
) -> None:
    state = tmp_path / "var" / "lib" / "ha-voice"
    state.mkdir(parents=True)
    printed = run(block(name, doc), tmp_path, _replacements(tmp_path)).stdout.strip()
    model = state / "models" / "whisper-base"
    assert printed == str(model)  # what the TOML after the command names, under /var/lib
    assert (model / "model.bin").stat().st_size > 100_000_000
    assert Config(whisper_model=printed).whisper_model == printed


def test_the_cuda_check_prints_the_devices_and_compute_types(tmp_path: Path) -> None:
    out = run(block("jetson-cuda-devices", JETSON), tmp_path, _replacements(tmp_path)).stdout
    count, types = out.split(" ", 1)
    assert int(count) >= 0
    assert "int8" in types  # on the CPU (no CUDA here) as on a Jetson's GPU
