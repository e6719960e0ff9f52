"""`python -m tests.speech_node [python -m ha_voice] run ARGS…`: `ha-voice run ARGS…` whose API
has a `Speech` made here, for the audio routes' tests (tests/integration/test_voice_audio*.py).

`ThreadSpeech` runs real faster-whisper in a thread of the daemon: the packaged multilingual base
model (`packaged_model("base")`), loaded on first use, one job at a time. It recognises by free
transcription with the vocabulary's phrases as the prompt, then the vocabulary's own text
matcher: the routes are under test here, not the recogniser (voice/recogniser.py) nor the
speech service (voice/stt.py). A first argument `--unavailable` makes it refuse every job
(SpeechUnavailable, retry after 2 s), as a node whose model is not ready.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

from ha_voice import daemon
from ha_voice.cli import main as cli_main
from ha_voice.voice.intents import Match, Vocabulary
from ha_voice.voice.models import packaged_model
from ha_voice.voice.speech import (
    Audio,
    Priority,
    Recognition,
    SpeechStatus,
    SpeechUnavailable,
    Transcription,
)

__all__ = ["ThreadSpeech", "main"]


class ThreadSpeech:
    """faster-whisper in a thread, one job at a time; `node` is named in every result."""

    def __init__(self, node: str, unavailable: bool = False) -> None:
        self.node = node
        self.unavailable = unavailable
        self.model_dir = str(packaged_model("base"))
        self._model: Any = None
        self._lock = threading.RLock()  # held while loading and while transcribing

    def status(self) -> SpeechStatus:
        if self.unavailable:
            return SpeechStatus(self.model_dir, False, "disabled: test")
        return SpeechStatus(self.model_dir, True, "", self.model_dir, "cpu", "int8", 1)

    async def async_recognise(
        self, audio: Audio, language: str, *, priority: Priority = "command"
    ) -> Recognition:
        self._check()
        return await asyncio.to_thread(self._recognise, audio, language)

    async def async_transcribe(
        self, audio: Audio, language: str | None, prompt: str | None = None
    ) -> Transcription:
        self._check()
        return await asyncio.to_thread(self._transcribe, audio, language, prompt)

    def _check(self) -> None:
        if self.unavailable:
            raise SpeechUnavailable("no model is ready on any node (test)", retry_after_s=2.0)

    def _whisper(self) -> Any:
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    self.model_dir, device="cpu", compute_type="int8", cpu_threads=1
                )
            return self._model

    def _recognise(self, audio: Audio, language: str) -> Recognition:
        started = time.perf_counter()
        vocabulary = Vocabulary.load(language)
        phrases = ", ".join(p for i in vocabulary.intents for p in i.phrases)
        with self._lock:
            segments, _ = self._whisper().transcribe(
                audio,
                language=language,
                initial_prompt=phrases,
                beam_size=1,
                temperature=0.0,
                condition_on_previous_text=False,
            )
            text = " ".join(s.text.strip() for s in segments).strip()
        found = vocabulary.match(text)
        stt_ms = (time.perf_counter() - started) * 1000
        if not isinstance(found, Match):
            reason = "no_speech" if not text else "unknown"
            return Recognition(
                text, None, None, 0.0, (), reason, language, "base", stt_ms, self.node, text
            )
        return Recognition(
            text,
            found.intent.name,
            found.phrase,
            found.score,
            (),
            None,
            language,
            "base",
            stt_ms,
            self.node,
            text,
        )

    def _transcribe(self, audio: Audio, language: str | None, prompt: str | None) -> Transcription:
        started = time.perf_counter()
        with self._lock:
            segments, info = self._whisper().transcribe(
                audio, language=language, initial_prompt=prompt, beam_size=1, temperature=0.0
            )
            parts = [(s.start, s.end, s.text.strip()) for s in segments]
        text = " ".join(p[2] for p in parts).strip()
        stt_ms = (time.perf_counter() - started) * 1000
        return Transcription(
            text, info.language, info.duration, tuple(parts), "base", stt_ms, self.node
        )


def main() -> int:
    """Run the CLI after the arguments' `python -m ha_voice` (if given), with ThreadSpeech in
    the daemon's ApiContext."""
    args = sys.argv[1:]
    unavailable = args[:1] == ["--unavailable"]
    if unavailable:
        args = args[1:]
    if "ha_voice" in args:
        args = args[args.index("ha_voice") + 1 :]
    node = next((a.split("=", 1)[1] for a in args if a.startswith("--node-id=")), "?")
    speech = ThreadSpeech(node, unavailable)
    original = daemon.ApiContext

    def with_speech(*positional: Any, **named: Any) -> Any:
        named.setdefault("speech", speech)
        return original(*positional, **named)

    daemon.ApiContext = with_speech  # type: ignore[misc]
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
