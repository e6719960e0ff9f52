"""Live listening: on the primary, while listening is on, audio sources → VAD → speech → commands.

Who listens: only the primary (docs/voice.md, "Live listening"). The robot's streamer sends to
the floating IP, which follows the primary; a node opens its `audio_sources` once it serves as
primary (its takeover done) with the replicated `listening` setting on, and closes them as soon
as either stops being true. A new primary opens them within one poll (`POLL_S`) of serving.

Invariants:
- An utterance's command goes into the journal under `utterance_key(source, start_s, phrase)`:
  the same utterance heard again (the same stream replayed) maps to the same key and runs once.
  An utterance under way when the sources close (a failover, listening off) is lost: counted
  (outcome `lost`), never run.
- The same intent heard by several sources within `listen_dedup_s` is one command: the hearing
  with the best confidence runs, the others are `duplicate`. A stop does not wait for the other
  hearings (it runs at once; later stops in the window are duplicates).
- Recognition runs in the speech service (other processes or nodes); VAD in a worker thread;
  nothing here blocks the event loop for longer than a block's bookkeeping.
- Memory is bounded: per source a bounded queue and a bounded segmenter; at most
  `MAX_HEARD` utterances are remembered for /api/voice/status.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ha_voice import clock
from ha_voice.api.robot import run_here
from ha_voice.cluster.node import NotPrimary
from ha_voice.commands import Busy, CommandRequest, KeyConflict
from ha_voice.voice.intents import Intent, Vocabulary, fold
from ha_voice.voice.segmenter import Segmenter, SegmenterOptions, Utterance
from ha_voice.voice.sources import AudioSource, PcmFormat, SourceStats, open_source
from ha_voice.voice.speech import Recognition, SpeechUnavailable

if TYPE_CHECKING:
    from ha_voice.api.context import ApiContext
    from ha_voice.config import Config

__all__ = [
    "MAX_HEARD",
    "POLL_S",
    "UTTERANCE_OUTCOMES",
    "Hearing",
    "Hearings",
    "Listener",
    "utterance_key",
]

log = logging.getLogger(__name__)

# How often the listener looks whether it should listen: a new primary opens its sources
# within this of serving (a failover is 0.5-2 s).
POLL_S: Final = 0.1
# A source that did not open is tried again this often while this node listens.
_RETRY_S: Final = 1.0
MAX_HEARD: Final = 50  # utterances /api/voice/status remembers
# How long a hearing waits for the other sources' hearings of the same moment: recognition of
# a command takes 0.1-0.4 s on two cores (docs/benchmarks.md); past this it decides alone.
_GROUP_WAIT_S: Final = 5.0
# ran: a command ran (whatever its robot outcome); duplicate: another source's hearing ran;
# rejected/no_speech: not a command; no_wake_word: require_wake_word and none said; unavailable:
# no speech service could take it; refused: the primary could not take the command (busy, no
# longer primary, its key held another command); lost: cut off by a gap or by closing.
UTTERANCE_OUTCOMES: Final = (
    "ran",
    "duplicate",
    "rejected",
    "no_speech",
    "no_wake_word",
    "unavailable",
    "refused",
    "lost",
)


def utterance_key(source: str, start_s: float, phrase: str) -> str:
    """The idempotency key of an utterance: its source, its stream start rounded to 100 ms and
    the phrase, hashed into printable ASCII (a journal key has no spaces)."""
    tenths = round(start_s * 10)
    digest = hashlib.sha256(f"{source}\n{tenths}\n{fold(phrase)}".encode()).hexdigest()
    return f"listen-{digest[:32]}"


@dataclass
class Hearing:
    """One recognised utterance of one source, waiting to be run or dropped as a duplicate."""

    source: str
    start_s: float
    intent: Intent
    recognition: Recognition
    verdict: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Hearings:
    """Several sources' hearings of one moment become one command (see the module's
    invariants); bounded: the last 64 commands are remembered for the window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._pending: dict[int, tuple[str, float]] = {}  # token -> (source, start_s)
        self._waiting: list[Hearing] = []
        self._ran: collections.deque[tuple[str, float]] = collections.deque(maxlen=64)
        self._changed = asyncio.Condition()
        self._tokens = 0
        self._notifying: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def expecting(self, source: str, start_s: float) -> Iterator[None]:
        """While inside, a hearing of `source` at `start_s` may come: others wait for it."""
        self._tokens += 1
        token = self._tokens
        self._pending[token] = (source, start_s)
        try:
            yield
        finally:
            del self._pending[token]
            task = asyncio.get_running_loop().create_task(self._notify())
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def async_decide(self, hearing: Hearing, *, wait: bool) -> bool:
        """Whether `hearing` runs (True) or is a duplicate of one that does."""
        self._waiting.append(hearing)
        if wait:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: not self._others_pending(hearing)),
                        _GROUP_WAIT_S,
                    )
        if not hearing.verdict.done():
            self._settle(hearing)
        return hearing.verdict.result()

    def _near(self, a_s: float, b_s: float) -> bool:
        return abs(a_s - b_s) <= self.window_s

    def _others_pending(self, hearing: Hearing) -> bool:
        return any(
            source != hearing.source and self._near(start_s, hearing.start_s)
            for source, start_s in self._pending.values()
        )

    def _settle(self, hearing: Hearing) -> None:
        name = hearing.intent.name
        group = [
            h
            for h in self._waiting
            if h.intent.name == name and self._near(h.start_s, hearing.start_s)
        ]
        self._waiting = [h for h in self._waiting if h not in group]
        ran = any(n == name and self._near(s, hearing.start_s) for n, s in self._ran)
        best = max(group, key=lambda h: h.recognition.confidence)
        for member in group:
            member.verdict.set_result(member is best and not ran)
        if not ran:
            self._ran.append((name, best.start_s))


@dataclass(frozen=True)
class Heard:
    """One utterance as /api/voice/status shows it."""

    source: str
    start_s: float
    duration_s: float
    heard: str
    intent: str | None
    outcome: str
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "start": round(self.start_s, 3),
            "duration_s": round(self.duration_s, 3),
            "heard": self.heard,
            "intent": self.intent,
            "outcome": self.outcome,
            "key": self.key,
        }


def segmenter_options(config: Config) -> SegmenterOptions:
    """The `vad_*` keys as the segmenter's options."""
    return SegmenterOptions(
        threshold=config.vad_speech_probability,
        min_silence_s=config.vad_min_silence_s,
        pad_s=config.vad_pad_s,
        max_utterance_s=config.vad_max_utterance_s,
    )


class Listener:
    """This node's live listening (see the module's invariants). `async_run` is its task."""

    def __init__(
        self,
        ctx: ApiContext,
        make_source: Callable[[str], AudioSource] | None = None,
        make_segmenter: Callable[[], Segmenter] | None = None,
    ) -> None:
        config = ctx.config
        self._ctx = ctx
        pcm = PcmFormat(config.audio_udp_rate_hz, config.audio_udp_width, config.audio_udp_channels)
        self._make_source = make_source or (
            lambda entry: open_source(entry, pcm, config.audio_queue_blocks)
        )
        self._make_segmenter = make_segmenter or (lambda: Segmenter(segmenter_options(config)))
        self._sources: dict[str, AudioSource] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_stats = {entry: SourceStats(entry) for entry in config.audio_sources}
        self._totals = {entry: [0, 0, 0] for entry in config.audio_sources}
        self._heard: collections.deque[Heard] = collections.deque(maxlen=MAX_HEARD)
        self._hearings = Hearings(config.listen_dedup_s)
        self._listening = False
        registry = ctx.metrics.registry
        self._outcomes = Counter(
            "ha_voice_listen_utterances_total",
            "Utterances live listening cut from its sources, by what became of them",
            ["outcome"],
            registry=registry,
        )
        self._segments = Counter(
            "ha_voice_vad_segments_total",
            "Speech segments the voice activity detector cut, by source",
            ["source"],
            registry=registry,
        )
        self._gaps = Counter(
            "ha_voice_listening_gaps_total",
            "Times listening missed audio: opened (sources opened by a new primary or listening "
            "switched on: what came before was not heard), stream (the source's audio stopped "
            "and came back), closed (an utterance cut off)",
            ["reason"],
            registry=registry,
        )
        for outcome in UTTERANCE_OUTCOMES:
            self._outcomes.labels(outcome)
        for reason in ("opened", "stream", "closed"):
            self._gaps.labels(reason)
        registry.register(_PacketCollector(self))

    @property
    def listening(self) -> bool:
        """Whether this node has its sources open now."""
        return self._listening

    def should_listen(self) -> bool:
        """Primary with its takeover done, listening on, sources configured, speech here."""
        ctx = self._ctx
        commands = ctx.commands
        return (
            bool(ctx.config.audio_sources)
            and ctx.speech is not None
            and commands is not None
            and commands.ready()
            and ctx.node.journal.settings.listening
        )

    async def async_run(self) -> None:
        """Open and close the sources as `should_listen` says, until cancelled."""
        try:
            retry_at = 0.0
            while True:
                want = self.should_listen()
                if want and not self._listening:
                    self._listening = True
                    self._gaps.labels("opened").inc()
                    await self._async_open_missing()
                    retry_at = clock.monotonic() + _RETRY_S
                elif want and clock.monotonic() >= retry_at:
                    await self._async_open_missing()
                    retry_at = clock.monotonic() + _RETRY_S
                elif not want and self._listening:
                    self._close()
                await asyncio.sleep(POLL_S)
        finally:
            if self._listening:
                self._close()
            for task in list(self._tasks):
                task.cancel()

    async def _async_open_missing(self) -> None:
        """Open every configured source not open yet (a port not bindable until the floating
        IP arrives, a microphone plugged in later: tried again every _RETRY_S)."""
        missing = [e for e in self._ctx.config.audio_sources if e not in self._sources]
        for entry in missing:
            source = self._make_source(entry)
            try:
                await source.async_open()
            except Exception as exc:  # a device gone, a port taken: say so, listen to the rest
                if self._closed_stats[entry].error != str(exc):
                    log.warning("audio source %s does not open: %s", entry, exc)
                self._closed_stats[entry] = SourceStats(entry, error=str(exc))
                continue
            self._sources[entry] = source
            self._spawn(self._async_listen(source))
            log.info("listening to %s", entry)

    def _close(self) -> None:
        self._listening = False
        for entry, source in self._sources.items():
            stats = source.stats()
            totals = self._totals[entry]
            totals[0] += stats.received
            totals[1] += stats.dropped
            totals[2] += stats.malformed
            self._closed_stats[entry] = SourceStats(entry, error=stats.error)
            source.close()
        self._sources.clear()
        log.info("stopped listening")

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _async_listen(self, source: AudioSource) -> None:
        segmenter = await asyncio.to_thread(self._make_segmenter)  # loads the VAD model
        name = source.source
        try:
            async for block in source.blocks():
                if block.gap_s > 0:
                    self._gaps.labels("stream").inc()
                lost = segmenter.lost
                cut = await asyncio.to_thread(
                    segmenter.push, block.samples, block.start_s, block.gap_s
                )
                for _ in range(segmenter.lost - lost):
                    self._record(Heard(name, block.start_s, 0.0, "", None, "lost"))
                for utterance in cut:
                    self._segments.labels(name).inc()
                    self._spawn(self._async_hear(name, utterance))
        finally:
            if segmenter.in_speech:
                self._gaps.labels("closed").inc()
                self._record(Heard(name, segmenter.position_s, 0.0, "", None, "lost"))

    async def _async_hear(self, source: str, utterance: Utterance) -> None:
        with self._hearings.expecting(source, utterance.start_s):
            recognition = await self._async_recognise(source, utterance)
        if recognition is None:
            return
        vocabulary = self._ctx.active_vocabulary()
        intent = _intent(vocabulary, recognition)
        if intent is None:
            outcome = "no_speech" if recognition.rejection == "no_speech" else "rejected"
            self._heard_as(source, utterance, recognition, outcome)
            return
        if self._ctx.config.require_wake_word and not _woken(vocabulary, recognition):
            self._heard_as(source, utterance, recognition, "no_wake_word")
            return
        hearing = Hearing(source, utterance.start_s, intent, recognition)
        if not await self._hearings.async_decide(hearing, wait=not intent.stop):
            self._heard_as(source, utterance, recognition, "duplicate")
            return
        await self._async_run(hearing, utterance)

    async def _async_recognise(self, source: str, utterance: Utterance) -> Recognition | None:
        speech = self._ctx.speech
        assert speech is not None
        language = self._ctx.active_vocabulary().language
        try:
            return await speech.async_recognise(utterance.samples, language, priority="command")
        except SpeechUnavailable as exc:
            log.warning("%s: an utterance went unheard: %s", source, exc.reason)
            heard = Heard(source, utterance.start_s, utterance.duration_s, "", None, "unavailable")
            self._record(heard)
            return None

    async def _async_run(self, hearing: Hearing, utterance: Utterance) -> None:
        intent, recognition = hearing.intent, hearing.recognition
        phrase = recognition.phrase or recognition.heard
        key = utterance_key(hearing.source, hearing.start_s, phrase)
        if intent.action is None:
            self._heard_as(hearing.source, utterance, recognition, "ran", key)
            return
        command = CommandRequest(
            key,
            intent.action,
            intent.action_params,
            intent.duration_s,
            recognition.heard,
            f"listen:{hearing.source}",
        )
        try:
            answer = await run_here(self._ctx, command)
        except (NotPrimary, KeyConflict, Busy) as exc:
            log.warning("%s: %r not run: %s", hearing.source, recognition.heard, exc)
            self._heard_as(hearing.source, utterance, recognition, "refused", key)
            return
        outcome = "duplicate" if answer.duplicate else "ran"
        self._heard_as(hearing.source, utterance, recognition, outcome, answer.record.key)

    def _heard_as(
        self,
        source: str,
        utterance: Utterance,
        recognition: Recognition,
        outcome: str,
        key: str | None = None,
    ) -> None:
        heard = Heard(
            source,
            utterance.start_s,
            utterance.duration_s,
            recognition.heard,
            recognition.intent,
            outcome,
            key,
        )
        self._record(heard)

    def _record(self, heard: Heard) -> None:
        self._outcomes.labels(heard.outcome).inc()
        self._heard.append(heard)
        log.info(
            "heard %r from %s: %s (%s)", heard.heard, heard.source, heard.intent, heard.outcome
        )

    def source_stats(self) -> list[SourceStats]:
        """Every configured source, open or not, now."""
        return [
            self._sources[entry].stats() if entry in self._sources else self._closed_stats[entry]
            for entry in self._ctx.config.audio_sources
        ]

    def packet_totals(self) -> dict[str, tuple[int, int, int]]:
        """Packets (received, dropped, malformed) per source since the daemon started."""
        live = {s.source: s for s in self.source_stats() if s.source in self._sources}
        totals: dict[str, tuple[int, int, int]] = {}
        for entry, (received, dropped, malformed) in self._totals.items():
            now = live.get(entry, SourceStats(entry))
            totals[entry] = (
                received + now.received,
                dropped + now.dropped,
                malformed + now.malformed,
            )
        return totals

    def status(self) -> dict[str, Any]:
        """What /api/voice/status adds: sources, who listens, the last utterances heard."""
        view = self._ctx.node.view
        listening = self._ctx.node.journal.settings.listening
        if self._listening:
            listener: str | None = view.node_id
        else:
            listener = view.leader if listening and self._ctx.config.audio_sources else None
        return {
            "listener": listener,
            "listening_here": self._listening,
            "sources": [stats.to_json() for stats in self.source_stats()],
            "utterances": [heard.to_json() for heard in reversed(self._heard)],
        }


def _intent(vocabulary: Vocabulary, recognition: Recognition) -> Intent | None:
    if recognition.intent is None:
        return None
    return next((i for i in vocabulary.intents if i.name == recognition.intent), None)


def _woken(vocabulary: Vocabulary, recognition: Recognition) -> bool:
    """Whether the winning phrase was said after a wake word."""
    words = fold(recognition.phrase or recognition.heard).split()
    return any(words[: len(w.split())] == w.split() for w in vocabulary.wake_words)


class _PacketCollector(Collector):
    """Packets per source, read from the listener at scrape time."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "ha_voice_audio_packets_received",
            "Audio packets (UDP datagrams, decoded frames) a source took, by source",
            labels=["source"],
        )
        dropped = CounterMetricFamily(
            "ha_voice_audio_packets_dropped",
            "Audio packets dropped, by source and reason: full (the listener fell behind), "
            "malformed (a size no whole number of frames has)",
            labels=["source", "reason"],
        )
        for entry, (got, full, malformed) in self._listener.packet_totals().items():
            received.add_metric([entry], got)
            dropped.add_metric([entry, "full"], full)
            dropped.add_metric([entry, "malformed"], malformed)
        yield received
        yield dropped
