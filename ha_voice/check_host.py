"""`ha-voice check` on this host's speech: the model a node would load, and the GPU.

Invariants:
- The model is judged as the speech workers would load it (`recogniser.resolve_device`,
  `stt.ServiceOptions.from_config`); it is looked up in its cache, never downloaded, and loaded
  only when asked (`--load-model`), in a worker process as the daemon does, within a bound.
- faster-whisper and CTranslate2 are imported when a check needs them, never at import time.
- Each subprocess (nvidia-smi) has a timeout.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ha_voice import clock
from ha_voice.check import Finding, run_probe, split_fix, user_name

if TYPE_CHECKING:
    from ha_voice.check import CheckOptions
    from ha_voice.config import Config
    from ha_voice.voice.speech import SpeechStatus

__all__ = ["gpu_findings", "model_finding", "speech_findings"]

_NVIDIA_SMI_TIMEOUT_S: Final = 3.0
_JETSON_RELEASE: Final = Path("/etc/nv_tegra_release")  # L4T's release file, on every Jetson
_LOAD_POLL_S: Final = 0.2
_GPU_DOCS: Final = "docs/jetson-install.md, 'CTranslate2 with CUDA'"
_STT_EXTRA: Final = "/opt/ha-voice/venv/bin/pip install 'ha-voice[stt]'"


def speech_findings(config: Config, options: CheckOptions) -> list[Finding]:
    """The model and the GPU as this node's speech would use them; one finding when speech is
    off here."""
    if not config.stt_enabled:
        return [
            Finding(
                "speech",
                "ok",
                "off on this node (stt_enabled = false): the other nodes transcribe for it",
            )
        ]
    return [model_finding(config, options), *gpu_findings(config)]


# --- the model -------------------------------------------------------------------------------


def model_finding(config: Config, options: CheckOptions) -> Finding:
    """Whether the configured model is there (and with `options.load_model`, loads), on which
    device and with which compute type."""
    if importlib.util.find_spec("faster_whisper") is None:
        return Finding("whisper_model", "fail", "faster-whisper is not installed", _STT_EXTRA)
    try:
        device, compute_type = _resolved(config)
    except Exception as exc:  # CTranslate2 says why: no CUDA device, an unknown type
        return Finding(
            "whisper_model",
            "fail",
            f"stt_device {config.stt_device!r}, stt_compute_type {config.stt_compute_type!r}: "
            f"{_one_line(exc)}",
            f'set stt_device = "auto" and stt_compute_type = "auto" ({_GPU_DOCS})',
        )
    on = f"on {device}, {compute_type}"
    if options.load_model:
        return _loaded(config, options.load_timeout_s, on)
    return _located(config, on)


def _resolved(config: Config) -> tuple[str, str]:
    """(device, compute type) as a worker resolves them; raises if CTranslate2 cannot."""
    from ha_voice.voice.recogniser import ModelSettings, resolve_device  # noqa: PLC0415

    settings = ModelSettings(
        model=config.whisper_model,
        device=config.stt_device,
        compute_type=config.stt_compute_type,
    )
    device, compute_type = resolve_device(settings)
    supported = _ctranslate2().get_supported_compute_types(device)
    if compute_type not in supported:
        raise ValueError(
            f"compute type {compute_type} is not supported on {device} here "
            f"(supported: {', '.join(sorted(supported))})"
        )
    return device, compute_type


def _located(config: Config, on: str) -> Finding:
    """Where the model is, without loading it: the directory, or the download cache."""
    model = config.whisper_model
    if model.startswith(("/", "./", "../", "~")):
        directory = Path(model).expanduser()
        try:
            found = (directory / "model.bin").is_file()
        except OSError as exc:  # /var/lib/ha-voice is 0700 ha-voice: only that user may look
            return Finding(
                "whisper_model",
                "fail",
                f"{model}: this user ({user_name()}) cannot look into it ({exc.strerror or exc})",
                "run the check as the service's user, as docs/jetson-install.md says ('The "
                "whole node: ha-voice check'), or let this user read the model directory",
            )
        if found:
            return Finding("whisper_model", "ok", f"{model}: a CTranslate2 model, {on}; not loaded")
        return Finding(
            "whisper_model",
            "fail",
            f"{model}: no CTranslate2 model there (no model.bin)",
            "set whisper_model to a model directory or a size name (docs/jetson-install.md, "
            "'Which model')",
        )
    return _cached(config, on)


def _cached(config: Config, on: str) -> Finding:
    utils = importlib.import_module("faster_whisper.utils")
    root = config.whisper_download_root
    try:
        path = utils.download_model(
            config.whisper_model,
            local_files_only=True,
            cache_dir=None if root is None else str(root),
        )
    except Exception as exc:  # huggingface_hub's "not in the cache", or a bad name
        where = f"not in {root or 'the Hugging Face cache'} ({type(exc).__name__})"
        if config.whisper_local_files_only:
            return Finding(
                "whisper_model",
                "fail",
                f"{config.whisper_model}: {where}, and whisper_local_files_only forbids a download",
                "start once with internet and whisper_local_files_only = false, or use the "
                "packaged base model (docs/jetson-install.md, 'Which model')",
            )
        return Finding(
            "whisper_model",
            "warn",
            f"{config.whisper_model}: {where}: the first start downloads it",
            "give this node internet for its first start, then set whisper_local_files_only = true",
        )
    return Finding("whisper_model", "ok", f"{config.whisper_model}: {path}, {on}; not loaded")


def _loaded(config: Config, timeout_s: float, on: str) -> Finding:
    """Load the model in one worker process, as the daemon's speech service does."""
    from ha_voice.voice.stt import ServiceOptions, SpeechService  # noqa: PLC0415

    service = SpeechService(replace(ServiceOptions.from_config(config), workers=1), "check")
    started = clock.monotonic()
    service.start()
    try:
        status = _until_settled(service, started + timeout_s)
    finally:
        service.close()
    took_s = clock.monotonic() - started
    if status.ready:
        return Finding(
            "whisper_model",
            "ok",
            f"{status.model}: loaded in {took_s:.1f} s on {status.device}, {status.compute_type}",
        )
    if status.reason.startswith("load failed"):
        what, fix = split_fix(status.reason)
        fix = fix or "a directory of a CTranslate2 model or a size name ('Which model')"
        return Finding("whisper_model", "fail", f"{what} (expected {on})", fix)
    return Finding(
        "whisper_model",
        "fail",
        f"{config.whisper_model}: not loaded within {timeout_s:g} s ({status.reason})",
        "a smaller model, or the GPU (docs/jetson-install.md, 'Which model')",
    )


def _until_settled(service: Any, deadline: float) -> SpeechStatus:
    """The service's status once its worker is ready or has failed, or at `deadline`."""
    while True:
        status: SpeechStatus = service.status()
        settled = status.ready or status.reason.startswith("load failed")
        if settled or clock.monotonic() >= deadline:
            return status
        threading.Event().wait(_LOAD_POLL_S)


# --- the GPU ---------------------------------------------------------------------------------


def gpu_findings(config: Config | None) -> list[Finding]:
    """Whether a GPU is here (a Jetson, nvidia-smi) and whether CTranslate2 can use it, judged
    against `stt_device` when the configuration is known."""
    hardware = _gpu_hardware()
    cuda = _cuda_devices()
    wants_cuda = config is not None and config.stt_device == "cuda"
    if isinstance(cuda, str):
        return [Finding("gpu", "warn", f"{hardware}; CTranslate2: {cuda}", _STT_EXTRA)]
    if cuda > 0:
        return [Finding("gpu", "ok", f"{hardware}; CTranslate2 sees {cuda} CUDA device(s)")]
    if wants_cuda:
        return [
            Finding(
                "gpu",
                "fail",
                f"{hardware}; stt_device = 'cuda' but CTranslate2 sees no CUDA device",
                f'build CTranslate2 with CUDA ({_GPU_DOCS}), or set stt_device = "auto"',
            )
        ]
    if hardware.startswith("no GPU"):
        return [Finding("gpu", "ok", f"{hardware}: speech runs on the CPU")]
    return [
        Finding(
            "gpu",
            "warn",
            f"{hardware}, but CTranslate2 sees no CUDA device: speech runs on the CPU",
            f"build CTranslate2 with CUDA for this JetPack ({_GPU_DOCS})",
        )
    ]


def _gpu_hardware() -> str:
    """What GPU this host has, as a Jetson's release file, tegrastats or nvidia-smi say."""
    found = []
    if _JETSON_RELEASE.exists():
        release = _JETSON_RELEASE.read_text(errors="replace").splitlines()[:1]
        found.append(f"Jetson ({' '.join(release).strip('# ')[:80]})")
    elif shutil.which("tegrastats"):
        found.append("Jetson (tegrastats)")
    listed = _nvidia_smi()
    if listed:
        found.append(listed)
    return "; ".join(found) if found else "no GPU found (no Jetson, no nvidia-smi)"


def _nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    done = run_probe([exe, "-L"], _NVIDIA_SMI_TIMEOUT_S)
    if isinstance(done, str):
        return done
    gpus = [line.split(" (UUID")[0] for line in done.stdout.splitlines() if line.strip()]
    return "; ".join(gpus) if done.returncode == 0 and gpus else ""


def _cuda_devices() -> int | str:
    """CTranslate2's CUDA device count, or why it cannot be asked."""
    try:
        return int(_ctranslate2().get_cuda_device_count())
    except ImportError:
        return "not installed"


def _ctranslate2() -> Any:
    return importlib.import_module("ctranslate2")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
