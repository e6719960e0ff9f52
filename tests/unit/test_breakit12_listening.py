"""Review of issue 12 (breakit12): live listening keeps listening, and says so, whatever its
sources do, and runs nothing once listening is off. Each test reproduces one finding on main
and fails there; voice/listening.py and voice/sources.py now pass it.

- a URL source whose server accepts and never answers: `av.open` has no timeout and the
  listener awaits it in its poll loop, so the UDP source beside it never opens, and listening
  switched off closes nothing (the port stays bound);
- a source whose stream ends (a microphone unplugged, a stream dropped) or whose listening task
  fails is never opened again, while the status says the node listens;
- an utterance being recognised when listening is switched off still runs its command.

The listener runs with a fake context (no cluster: its journal setting is a flag, its command
service records what it is given) and a FrameVad fake, and real sources where they matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ha_voice.config import Config
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.listening import Listener
from ha_voice.voice.segmenter import Segmenter, SegmenterOptions
from ha_voice.voice.sources import Block, SourceStats
from ha_voice.voice.speech import SAMPLE_RATE, Audio, Recognition

_SAFETY_S = 8.0  # how long a wait may last before the test fails: a net, not a timing assert


class _LoudVad:
    """Speech wherever the frame is not silent."""

    def probability(self, frame: Audio) -> float:
        return 1.0 if float(np.abs(frame).max()) > 0 else 0.0

    def reset(self) -> None:
        pass


def _segmenter() -> Segmenter:
    return Segmenter(SegmenterOptions(min_silence_s=0.2, pad_s=0.0), vad=_LoudVad())


class _Speech:
    """Hears "ga liggen" in anything, once `gate` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def async_recognise(self, audio: Audio, language: str, **_: Any) -> Recognition:
        self.calls += 1
        await self.gate.wait()
        return Recognition("ga liggen", "lie_down", "ga liggen", 0.9, (), None, "nl", "fake", 1.0)


class _Commands:
    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def ready(self) -> bool:
        return True

    async def submit(self, command: Any, max_pending: int) -> Any:
        self.submitted.append(command)
        record = SimpleNamespace(status="done", key=command.key)
        return SimpleNamespace(duplicate=False, record=record)


def _context(sources: list[str]) -> Any:
    registry = CollectorRegistry()
    settings = SimpleNamespace(listening=True, language=None)
    counter = SimpleNamespace(inc=lambda: None, labels=lambda *_: SimpleNamespace(inc=lambda: 0))
    vocabulary = Vocabulary.load("nl")
    return SimpleNamespace(
        config=Config(node_id="n1", cluster="c", audio_sources=sources),
        metrics=SimpleNamespace(registry=registry, commands=counter, command_duplicates=counter),
        node=SimpleNamespace(
            journal=SimpleNamespace(settings=settings),
            view=SimpleNamespace(node_id="n1", leader="n1"),
        ),
        commands=_Commands(),
        speech=_Speech(),
        active_vocabulary=lambda: vocabulary,
    )


class _Source:
    """A source fed by the test: `feed` queues samples, `end` ends its stream."""

    def __init__(self, entry: str) -> None:
        self.source = entry
        self.opened = 0
        self._queue: asyncio.Queue[Block | None] = asyncio.Queue()
        self._at_s = 1000.0

    async def async_open(self) -> None:
        self.opened += 1

    async def _blocks(self) -> AsyncIterator[Block]:
        while (block := await self._queue.get()) is not None:
            yield block

    def blocks(self) -> AsyncIterator[Block]:
        return self._blocks()

    def feed(self, samples: Audio) -> None:
        self._queue.put_nowait(Block(self.source, self._at_s, samples))
        self._at_s += len(samples) / SAMPLE_RATE

    def end(self) -> None:
        self._queue.put_nowait(None)

    def close(self) -> None:
        self.end()

    def stats(self) -> SourceStats:
        return SourceStats(self.source, open=True)


async def _until(predicate: Callable[[], bool]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SAFETY_S
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class _SilentServer:
    """An HTTP URL whose server accepts connections and never answers (a stalled camera);
    `close` ends them, so that FFmpeg, still waiting, sees the end and gives up."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/stream.wav"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._held.append(self._server.accept()[0])

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_stalled_url_source_holds_up_neither_the_others_nor_listening_off() -> None:
    port = _free_udp_port()

    async def scenario(server: _SilentServer) -> tuple[bool, bool]:
        ctx = _context([server.url, f"udp://127.0.0.1:{port}"])
        listener = Listener(ctx, make_segmenter=_segmenter)
        task = asyncio.create_task(listener.async_run())
        try:
            udp_opened = await _until(lambda: not _bindable(port))
            ctx.node.journal.settings.listening = False
            closed = await _until(lambda: not listener.listening and _bindable(port))
            return udp_opened, closed
        finally:
            server.close()  # before asyncio.run waits for the thread stuck in av.open
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    udp_opened, closed = asyncio.run(scenario(_SilentServer()))
    assert udp_opened, "the UDP source never opened behind the stalled URL"
    assert closed, "listening off did not close the sources"


@pytest.mark.parametrize("how", ["stream ends", "listening task fails"])
def test_a_source_that_stops_is_opened_again(how: str) -> None:
    async def scenario() -> int:
        ctx = _context(["alsa:hw:1,0"])
        made: list[_Source] = []
        failures = [RuntimeError("the VAD did not load")] if how != "stream ends" else []

        def make_source(entry: str) -> _Source:
            made.append(_Source(entry))
            return made[-1]

        def make_segmenter() -> Segmenter:
            if failures:
                raise failures.pop()
            return _segmenter()

        listener = Listener(ctx, make_source=make_source, make_segmenter=make_segmenter)
        task = asyncio.create_task(listener.async_run())
        try:
            assert await _until(lambda: len(made) == 1)
            if how == "stream ends":
                made[0].end()
            await _until(lambda: len(made) >= 2)
            return len(made)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario()) >= 2


def test_nothing_runs_once_listening_is_switched_off() -> None:
    async def scenario() -> list[Any]:
        ctx = _context(["alsa:hw:1,0"])
        made: list[_Source] = []

        def make_source(entry: str) -> _Source:
            made.append(_Source(entry))
            return made[-1]

        listener = Listener(ctx, make_source=make_source, make_segmenter=_segmenter)
        task = asyncio.create_task(listener.async_run())
        try:
            assert await _until(lambda: len(made) == 1)
            made[0].feed(np.full(SAMPLE_RATE // 2, 0.3, dtype=np.float32))  # "ga liggen"
            made[0].feed(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))  # and a pause
            assert await _until(lambda: ctx.speech.calls == 1)  # being recognised
            ctx.node.journal.settings.listening = False  # POST /api/voice/stop
            assert await _until(lambda: not listener.listening)
            ctx.speech.gate.set()  # the recognition comes back
            await _until(lambda: bool(listener.status()["utterances"]))
            submitted: list[Any] = ctx.commands.submitted
            return submitted
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario()) == []
