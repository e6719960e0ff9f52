"""Dutch (and English) test speech made here: espeak-ng and MBROLA voices, speeds, pitches, noise.

`say(text)` returns 16 kHz mono float32 samples and `wav_bytes(samples)` a 16-bit WAV; `voices()`
lists the voices this machine can speak (MBROLA Dutch voices only where installed). Noise is
white Gaussian noise mixed at a given SNR over the whole clip, seeded: the same call gives the
same audio.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["ESPEAK", "have_espeak", "mix_noise", "say", "voices", "wav_bytes"]

ESPEAK = shutil.which("espeak-ng")
SAMPLE_RATE = 16_000
# espeak-ng voice names for Dutch: its own formant voice with variants, and MBROLA nl2 (male),
# nl3 (female) when the mbrola package and its voice are installed.
_DUTCH = ("nl", "nl+f3", "nl+m3", "mb-nl2", "mb-nl3")


def have_espeak() -> bool:
    """espeak-ng is on PATH."""
    return ESPEAK is not None


@cache
def voices(language: str = "nl") -> tuple[str, ...]:
    """The voices for `language` that speak on this machine (each tried once)."""
    names = _DUTCH if language == "nl" else ("en", "en+f3", "en-us")
    return tuple(v for v in names if _speaks(v))


def _speaks(voice: str) -> bool:
    if ESPEAK is None:
        return False
    if voice.startswith("mb-") and not Path(f"/usr/share/mbrola/{voice[3:]}").exists():
        return False
    done = subprocess.run(
        [ESPEAK, "-v", voice, "--stdout", "test"], check=False, capture_output=True
    )
    return done.returncode == 0 and len(done.stdout) > 1000


def say(
    text: str,
    voice: str = "nl",
    *,
    speed_wpm: int = 160,
    pitch: int = 50,
    snr_db: float | None = None,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """`text` spoken by espeak-ng `voice` at `speed_wpm` words a minute and `pitch` (0–99), as
    16 kHz mono float32 in [-1, 1]; with `snr_db`, white noise mixed in at that SNR.

    Raises RuntimeError when espeak-ng is missing or fails."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        cmd = [ESPEAK, "-v", voice, "-s", str(speed_wpm), "-p", str(pitch), "-w", str(out), text]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"espeak-ng {voice}: {done.stderr.strip()}")
        samples = _read_wav(out.read_bytes())
    if snr_db is not None:
        samples = mix_noise(samples, snr_db, seed)
    return samples


def _read_wav(data: bytes) -> npt.NDArray[np.float32]:
    with wave.open(io.BytesIO(data)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    pcm = pcm.reshape(-1, channels).mean(axis=1) / 32768.0
    if rate != SAMPLE_RATE:
        n = round(len(pcm) * SAMPLE_RATE / rate)
        pcm = np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm)
    return pcm.astype(np.float32)


def mix_noise(
    samples: npt.NDArray[np.float32], snr_db: float, seed: int = 0
) -> npt.NDArray[np.float32]:
    """`samples` with white Gaussian noise at `snr_db` dB below the signal's power, clipped."""
    power = float(np.mean(samples.astype(np.float64) ** 2)) or 1e-12
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(samples))
    return np.clip(samples + noise, -1.0, 1.0).astype(np.float32)


def wav_bytes(samples: npt.NDArray[np.float32], rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV of `samples` (float in [-1, 1]) at `rate` Hz."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()
