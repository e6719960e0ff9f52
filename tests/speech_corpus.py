"""Dutch (and English) test speech made here: espeak-ng and MBROLA voices, speeds, pitches, noise.

`say(text)` returns 16 kHz mono float32 samples and `wav_bytes(samples)` a 16-bit WAV; `voices()`
lists the voices this machine can speak (MBROLA Dutch voices only where installed). Noise is
white Gaussian noise mixed at a given SNR over the whole clip, seeded: the same call gives the
same audio. `corpus()` makes a labelled set of commands (phrases × voices × speeds × pitches ×
noise, some after a wake word) for the recogniser's tests and benchmark.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "ESPEAK",
    "Clip",
    "corpus",
    "encode",
    "have_espeak",
    "mix_noise",
    "say",
    "voices",
    "wav_bytes",
]

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


@dataclass(frozen=True)
class Clip:
    """One labelled test utterance; `audio()` speaks it (deterministic for the same fields)."""

    text: str  # what is said, wake word included: "robot, sta op"
    phrase: str  # the vocabulary phrase
    intent: str
    stop: bool  # the phrase is of the stop family
    voice: str
    speed_wpm: int
    pitch: int
    snr_db: float | None  # None: clean
    lead_s: float  # silence before the speech, seconds
    tail_s: float  # silence after it
    seed: int

    def audio(self) -> npt.NDArray[np.float32]:
        """16 kHz float32 samples: silence, the speech, silence, with noise over all of it."""
        speech = say(self.text, self.voice, speed_wpm=self.speed_wpm, pitch=self.pitch)
        lead = np.zeros(round(self.lead_s * SAMPLE_RATE), dtype=np.float32)
        tail = np.zeros(round(self.tail_s * SAMPLE_RATE), dtype=np.float32)
        if self.snr_db is None:
            return np.concatenate([lead, speech, tail])
        noisy = mix_noise(speech, self.snr_db, self.seed)  # SNR against the speech itself
        noise = noisy - speech
        rng = np.random.default_rng(self.seed + 1)
        sigma = float(np.std(noise)) or 1e-6
        return np.concatenate(
            [
                rng.normal(0, sigma, len(lead)).astype(np.float32),
                noisy,
                rng.normal(0, sigma, len(tail)).astype(np.float32),
            ]
        )


def corpus(
    phrases: Sequence[tuple[str, str, bool]],
    voices: Sequence[str],
    *,
    noise: Sequence[float | None] = (None, 20.0, 10.0),
    speeds: Sequence[int] = (130, 160, 190),
    pitches: Sequence[int] = (35, 50, 65),
    wake_words: Sequence[str] = (),
    wake_share: float = 0.25,
    variants: int = 1,
    seed: int = 0,
) -> Iterator[Clip]:
    """Clips of every (phrase, intent, is_stop) in `phrases` × voice × variant; each draws a
    speed, a pitch, the silence around it and (with `wake_share` probability) a wake word from a
    generator seeded by `seed`, and the noise levels take turns so each is equally common."""
    rng = np.random.default_rng(seed)
    turn = 0
    for phrase, intent, stop in phrases:
        for voice in voices:
            for _ in range(variants):
                wake = None
                if wake_words and rng.random() < wake_share:
                    wake = wake_words[int(rng.integers(len(wake_words)))]
                yield Clip(
                    text=f"{wake}, {phrase}" if wake else phrase,
                    phrase=phrase,
                    intent=intent,
                    stop=stop,
                    voice=voice,
                    speed_wpm=int(rng.choice(speeds)),
                    pitch=int(rng.choice(pitches)),
                    snr_db=noise[turn % len(noise)],
                    lead_s=round(float(rng.uniform(0.1, 0.6)), 2),
                    tail_s=round(float(rng.uniform(0.1, 0.6)), 2),
                    seed=int(rng.integers(1 << 31)),
                )
                turn += 1


def encode(
    container: str,
    codec: str,
    rate: int,
    samples: npt.NDArray[np.float32],
    *,
    layout: str = "mono",
    source_rate: int = SAMPLE_RATE,
) -> bytes:
    """`samples` (float32 at `source_rate`, in each channel of `layout`) encoded by PyAV as
    `codec` in `container`."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate)
        stream.layout = layout
        channels = 2 if layout == "stereo" else 1  # the same samples in each, as wav() does
        interleaved = np.repeat(samples, channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout=layout)
        frame.sample_rate = source_rate
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()
