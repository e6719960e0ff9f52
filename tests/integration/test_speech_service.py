"""The speech service with real worker processes and the real Whisper base model.

Each test starts its own `SpeechService` (one or two spawned workers, each loading the packaged
base model in about a second) and closes it, so no worker outlives its test.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ha_voice.metrics import Metrics
from ha_voice.voice.models import packaged_model
from ha_voice.voice.speech import Recognition, SpeechUnavailable, Transcription
from ha_voice.voice.stt import ServiceOptions, SpeechService
from ha_voice.voice.stt_worker import DEFAULT_BACKEND, ModelOptions
from tests.speech_corpus import have_espeak, say

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng makes the test speech")

BACKEND = DEFAULT_BACKEND
LOAD_TIMEOUT_S = 120.0  # a model load takes ~1 s alone; the machine may be shared


def on_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the coroutine test `test` on an event loop of its own."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def _options(model: str | None = None, **service: Any) -> ServiceOptions:
    path = model if model is not None else str(packaged_model("base"))
    return ServiceOptions(ModelOptions(path, backend=BACKEND), **service)


# A retried job keeps its deadline (stt_job_timeout_s counts from submission); a worker started
# again on a loaded CI machine can take longer than the default 30 s to load, so the tests that
# kill workers give the job room and test the retry, not the deadline (tested on its own below).
_ROOMY_S = 600.0


@asynccontextmanager
async def running(
    options: ServiceOptions, metrics: Metrics | None = None
) -> AsyncIterator[SpeechService]:
    service = SpeechService(options, "n1", metrics)
    service.start()
    try:
        yield service
    finally:
        pids = service.worker_pids()
        await service.async_close()
        assert service.worker_pids() == ()
        for pid in pids:  # reaped: no worker outlives the service
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def until(predicate: Callable[[], bool], timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Poll `predicate` every 20 ms until it holds; fail the test after `timeout_s`."""
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"gave up waiting after {timeout_s} s")


@functools.cache
def command() -> np.ndarray[Any, np.dtype[np.float32]]:
    """A spoken command that the recogniser gets right whatever its tuning: "stop" wins
    whenever it is plausible (the recogniser's own tests cover the other commands)."""
    return say("stop")


@functools.cache
def long_speech() -> np.ndarray[Any, np.dtype[np.float32]]:
    """About 25 s of speech: free transcription of it keeps a worker busy for seconds."""
    sentence = say("de robot loopt vooruit en draait dan naar links, en daarna gaat hij zitten")
    clip = np.concatenate([sentence] * 6)
    return clip[: 25 * 16_000]


@on_loop
async def test_loads_in_the_background_and_recognises_a_command() -> None:
    async with running(_options()) as service:
        early = service.status()
        assert (early.ready, early.reason) == (False, f"loading {early.configured}")
        with pytest.raises(SpeechUnavailable, match="speech not ready: loading"):
            await service.async_recognise(command(), "nl")
        await until(lambda: service.status().ready)
        status = service.status()
        assert (status.model, status.device, status.compute_type) == (
            status.configured,
            "cpu",
            "int8",
        )
        assert (status.workers, status.running, status.queued, status.reason) == (1, 0, 0, "")
        recognition = await service.async_recognise(command(), "nl")
        assert (recognition.intent, recognition.node) == ("stop", "n1")
        english = await service.async_recognise(say("stop", "en"), "en")  # made on first use
        assert (english.language, english.node) == ("en", "n1")
        transcription = await service.async_transcribe(command(), "nl")
        assert isinstance(transcription, Transcription)
        assert transcription.node == "n1"


@on_loop
async def test_a_model_that_does_not_load_is_named_and_refuses_work(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    async with running(_options(str(missing))) as service:
        await until(lambda: service.status().reason.startswith("load failed"))
        status = service.status()
        assert not status.ready
        assert f"no model directory at {missing}" in status.reason
        assert "fix: whisper_model" in status.reason
        with pytest.raises(SpeechUnavailable, match="load failed") as refused:
            await service.async_recognise(command(), "nl")
        assert refused.value.status == 503


@on_loop
async def test_every_command_is_served_before_any_batch_job() -> None:
    async with running(_options()) as service:
        await until(lambda: service.status().ready)
        busy = asyncio.ensure_future(service.async_transcribe(long_speech(), "nl"))
        await until(lambda: service.status().running == 1)
        finished: list[str] = []

        async def job(name: str, work: Any) -> None:
            await work
            finished.append(name)

        clip = command()
        batch = [job(f"batch{i}", service.async_transcribe(clip, "nl")) for i in range(2)]
        commands = [job(f"command{i}", service.async_recognise(clip, "nl")) for i in range(2)]
        tasks = [asyncio.ensure_future(c) for c in (*batch, *commands)]
        await until(lambda: service.status().queued == 4, timeout_s=5.0)
        await asyncio.gather(busy, *tasks)
        assert finished == ["command0", "command1", "batch0", "batch1"]


@on_loop
async def test_batch_work_leaves_a_worker_for_commands() -> None:
    # Two workers, two long transcriptions (Wyoming clients, say): one runs, one waits, and a
    # spoken command submitted meanwhile runs on the worker kept for it, before either ends.
    async with running(_options(workers=2)) as service:
        await until(lambda: service.status().ready and service.status().workers == 2)
        first = asyncio.ensure_future(service.async_transcribe(long_speech(), "nl"))
        second = asyncio.ensure_future(service.async_transcribe(long_speech(), "nl"))
        await until(lambda: service.status().running == 1 and service.status().queued == 1, 5.0)
        await asyncio.sleep(0.3)  # had a second worker taken the batch job, it would have
        assert (service.status().running, service.status().queued) == (1, 1)
        recognition = await service.async_recognise(command(), "nl")
        assert recognition.intent == "stop"
        assert not first.done()
        assert not second.done()
        await asyncio.gather(first, second)  # the held-back job runs once a worker frees


@on_loop
async def test_a_full_queue_refuses_at_once_but_a_command_pushes_out_a_batch_job() -> None:
    async with running(_options(max_queue=2)) as service:
        await until(lambda: service.status().ready)
        busy = asyncio.ensure_future(service.async_transcribe(long_speech(), "nl"))
        await until(lambda: service.status().running == 1)
        clip = command()
        first = asyncio.ensure_future(service.async_recognise(clip, "nl"))
        batch = asyncio.ensure_future(service.async_transcribe(clip, "nl"))
        await until(lambda: service.status().queued == 2, timeout_s=5.0)
        with pytest.raises(SpeechUnavailable, match="queue full") as refused:
            await service.async_transcribe(clip, "nl")
        assert (refused.value.status, refused.value.retry_after_s >= 1.0) == (503, True)
        second = asyncio.ensure_future(service.async_recognise(clip, "nl"))
        with pytest.raises(SpeechUnavailable, match="pushed out by a command"):
            await batch
        assert service.status().queued == 2
        with pytest.raises(SpeechUnavailable, match="queue full"):
            await service.async_recognise(clip, "nl")  # full of commands: refused
        results = await asyncio.gather(busy, first, second)
        assert [r.intent for r in results[1:] if isinstance(r, Recognition)] == ["stop", "stop"]


@on_loop
async def test_a_worker_killed_mid_job_is_restarted_and_the_job_retried_once() -> None:
    metrics = Metrics("n1")
    async with running(_options(job_timeout_s=_ROOMY_S), metrics) as service:
        await until(lambda: service.status().ready)
        job = asyncio.ensure_future(service.async_recognise(command(), "nl"))
        long_job = asyncio.ensure_future(service.async_transcribe(long_speech(), "nl"))
        assert (await job).intent == "stop"
        await until(lambda: service.status().running == 1)
        (pid,) = service.worker_pids()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: service.status().restarts == 1)
        assert "worker 0 died of SIGKILL" in service.status().last_restart
        result = await long_job  # retried on the worker started again
        assert isinstance(result, Transcription)
        assert service.status().ready
        assert b"ha_voice_speech_worker_restarts_total 1.0" in metrics.render()


@on_loop
async def test_a_job_whose_worker_dies_twice_fails_cleanly() -> None:
    async with running(_options(job_timeout_s=_ROOMY_S)) as service:
        await until(lambda: service.status().ready)
        long_job = asyncio.ensure_future(service.async_transcribe(long_speech(), "nl"))
        for restarts in (1, 2):
            await until(lambda: service.status().running == 1)
            (pid,) = service.worker_pids()
            os.kill(pid, signal.SIGKILL)
            await until(lambda r=restarts: service.status().restarts == r)  # type: ignore[misc]
        with pytest.raises(SpeechUnavailable, match="died on this job twice"):
            await long_job
        await until(lambda: service.status().ready)  # and the service works on
        assert (await service.async_recognise(command(), "nl")).intent == "stop"


@on_loop
async def test_a_job_past_its_deadline_fails_and_its_worker_is_replaced() -> None:
    async with running(_options(job_timeout_s=0.3)) as service:
        await until(lambda: service.status().ready)
        with pytest.raises(SpeechUnavailable, match="stt_job_timeout_s"):
            await service.async_transcribe(long_speech(), "nl")  # seconds of work
        await until(lambda: service.status().restarts == 1)
        assert "ran past its deadline" in service.status().last_restart
        await until(lambda: service.status().ready)


@on_loop
async def test_metrics_follow_the_service() -> None:
    metrics = Metrics("n1")
    async with running(_options(), metrics) as service:
        assert b"ha_voice_speech_ready 0.0" in metrics.render()
        await until(lambda: service.status().ready)
        await service.async_recognise(command(), "nl")
        await service.async_recognise(np.zeros(16_000, dtype=np.float32), "nl")
        text = metrics.render().decode()
        assert "ha_voice_speech_ready 1.0" in text
        assert "ha_voice_speech_queue_depth 0.0" in text
        assert 'ha_voice_speech_intents_total{intent="stop"} 1.0' in text
        assert 'ha_voice_speech_results_total{outcome="accepted"} 1.0' in text
        assert 'ha_voice_speech_results_total{outcome="no_speech"} 1.0' in text
        assert 'kind="recognise",model=' in text
        assert 'ha_voice_speech_seconds_count{kind="recognise"' in text
