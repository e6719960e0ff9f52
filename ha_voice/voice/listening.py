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
- A stop is decided early: the segmenter's early look at a short utterance (after
  `listen_early_stop_s` of pause) is recognised at once and, only when it is a stop, run as a
  hearing of that utterance (same source and start); the full utterance is then a `duplicate`
  (Hearings' ran window, the journal key). Anything else heard early is dropped: a motion waits
  for the end of the utterance. At most one early look per utterance is being recognised; when
  no speech came after it, the full utterance is the same audio and reuses its recognition. An
  utterance whose stop ran early has one outcome (`ran`), not a second (`duplicate`).
- Recognition runs in the speech service (other processes or nodes); VAD in a worker thread;
  nothing here blocks the event loop for longer than a block's bookkeeping.
- Memory is bounded: per source a bounded queue and a bounded segmenter; at most
  `MAX_HEARD` utterances are remembered for /api/voice/status.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ha_voice import clock
from ha_voice.api.listen_relay import HearingRelay, Offer, RelayRefused
from ha_voice.api.robot import run_here
from ha_voice.cluster.node import NotPrimary
from ha_voice.commands import Busy, CommandRequest, KeyConflict
from ha_voice.voice.hearings import UTTERANCE_OUTCOMES, Heard, Hearing, Hearings, utterance_key
from ha_voice.voice.intents import Intent, Match, Vocabulary, fold
from ha_voice.voice.segmenter import Segmenter, SegmenterOptions, Utterance
from ha_voice.voice.sources import (
    AudioSource,
    PcmFormat,
    Reopening,
    SourceStats,
    open_source,
    reopens_after_end,
)
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
    "early_stop",
    "utterance_key",
]

log = logging.getLogger(__name__)

_Recognising = asyncio.Task["Recognition | None"]

# How often the listener looks whether it should listen: a new primary opens its sources
# within this of serving (a failover is 0.5-2 s).
POLL_S: Final = 0.1
MAX_HEARD: Final = 50  # utterances /api/voice/status remembers
# Early looks whose recognition is kept for the full utterance: one per source is under way at a
# time; the rest is for utterances lost before they ended.
_MAX_LOOKS: Final = 16


def segmenter_options(config: Config) -> SegmenterOptions:
    """The `vad_*` keys as the segmenter's options."""
    return SegmenterOptions(
        threshold=config.vad_speech_probability,
        min_silence_s=config.vad_min_silence_s,
        pad_s=config.vad_pad_s,
        max_utterance_s=config.vad_max_utterance_s,
        early_s=config.listen_early_stop_s,
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
        self._entries = (*config.audio_sources, *config.local_audio_sources)
        self._local = frozenset(config.local_audio_sources)
        self._local_names = frozenset(f"{config.node_id}/{e}" for e in self._local)
        self._closed_stats = {entry: SourceStats(entry) for entry in self._entries}
        self._totals = {entry: [0, 0, 0] for entry in self._entries}
        self._reopening = {entry: Reopening() for entry in self._entries}
        self._stopped = dict.fromkeys(self._entries, False)  # stopped by itself once
        self._opening: set[str] = set()  # being opened now, each in a task
        self._reopens = dict.fromkeys(self._entries, 0)
        self._heard: collections.deque[Heard] = collections.deque(maxlen=MAX_HEARD)
        self._hearings = Hearings(config.listen_dedup_s)
        # (source, start_s) -> (samples, its recognition) of the latest early look of each
        # utterance: the full utterance reuses it when no speech came after the look
        self._looks: collections.OrderedDict[tuple[str, float], tuple[int, _Recognising]] = (
            collections.OrderedDict()
        )
        # utterances with a stop heard early: their second hearing (early or full, whichever
        # is decided last) is the same utterance again, not recorded a second time
        self._early_stops: collections.deque[tuple[str, float]] = collections.deque(
            maxlen=_MAX_LOOKS
        )
        self._listening = False
        self._relay: HearingRelay | None = None  # made when a backup first hands a command over
        self._since: dict[str, float] = {}  # source -> stream time of this opening's first block
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
        self._early = Counter(
            "ha_voice_listen_early_looks_total",
            "Early looks at short utterances under way (the early stop), by result: stop (run "
            "at once), other (dropped: not a stop), skipped (one was still being recognised)",
            ["result"],
            registry=registry,
        )
        self._since_gauge = Gauge(
            "ha_voice_listening_since_timestamp_seconds",
            "Stream time (seconds since the epoch) of the first audio block a source took since "
            "this node opened it; 0 while closed. A new primary's value minus the old primary's "
            "death is the listening gap of a failover",
            ["source"],
            registry=registry,
        )
        for outcome in UTTERANCE_OUTCOMES:
            self._outcomes.labels(outcome)
        for entry in self._entries:
            self._since_gauge.labels(entry).set(0)
        for result in ("stop", "other", "skipped"):
            self._early.labels(result)
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

    def should_listen_locally(self) -> bool:
        """Listening on, local sources configured, speech here: whatever this node's role."""
        ctx = self._ctx
        return (
            bool(ctx.config.local_audio_sources)
            and ctx.speech is not None
            and ctx.node.journal.settings.listening
        )

    def _wanted(self) -> list[str]:
        """The entries this node should have open now (primary's first, then local ones)."""
        config = self._ctx.config
        wanted = list(config.audio_sources) if self.should_listen() else []
        if self.should_listen_locally():
            wanted.extend(config.local_audio_sources)
        return wanted

    async def async_run(self) -> None:
        """Open and close the sources as `should_listen` and `should_listen_locally` say,
        until cancelled."""
        try:
            opened: set[str] = set()  # wanted at the last poll
            while True:
                want = self.should_listen()
                if want and not self._listening:
                    self._listening = True
                    self._gaps.labels("opened").inc()
                elif not want and self._listening:
                    self._listening = False
                    log.info("stopped listening as the primary")
                wanted = self._wanted()
                self._close([e for e in self._sources if e not in wanted])
                for entry in set(wanted) - opened:  # newly wanted: try at once
                    self._reopening[entry] = Reopening()
                await self._async_open_missing(wanted)
                opened = set(wanted)
                await asyncio.sleep(POLL_S)
        finally:
            self._listening = False
            self._close(list(self._sources))
            for task in list(self._tasks):
                task.cancel()
            if self._relay is not None:
                await self._relay.aclose()

    async def _async_open_missing(self, wanted: list[str]) -> None:
        """Start opening every wanted source not open yet whose backoff is over (a port not
        bindable until the floating IP arrives, a microphone plugged in again, a stream back),
        except a file read to its end. Each opens in a task of its own: a device or URL that
        takes its time (up to sources.AV_OPEN_TIMEOUT_S) holds up neither the other sources
        nor this loop, which closes what is no longer wanted."""
        for entry in wanted:
            if entry in self._sources or entry in self._opening:
                continue
            if self._closed_stats[entry].ended:
                continue
            if not self._reopening[entry].due(clock.monotonic()):
                continue
            self._opening.add(entry)
            self._spawn(self._async_open(entry))

    async def _async_open(self, entry: str) -> None:
        reopening = self._reopening[entry]
        try:
            source = self._make_source(entry)
            try:
                await source.async_open()
            except Exception as exc:  # a device gone, a port taken: say so, listen to the rest
                wait_s = reopening.failed(clock.monotonic())
                error = f"does not open: {exc}"
                if self._closed_stats[entry].error != error:
                    log.warning("audio source %s %s", entry, error)
                self._closed_stats[entry] = SourceStats(entry, error=error)
                log.debug("audio source %s: trying again in %.0f s", entry, wait_s)
                return
        finally:
            self._opening.discard(entry)
        if entry not in self._wanted():  # switched off (or no longer primary) meanwhile
            source.close()
            return
        if self._stopped[entry]:
            self._reopens[entry] += 1
            log.info("audio source %s reopened (%d times)", entry, self._reopens[entry])
        self._sources[entry] = source
        self._spawn(self._async_listen(source))
        log.info("listening to %s", entry)

    def _close(self, entries: list[str]) -> None:
        for entry in entries:
            self._retire(entry)
            log.info("stopped listening to %s", entry)

    def _retire(self, entry: str) -> SourceStats:
        """Close `entry`'s open source, keeping its counters and why it ended; its stats."""
        source = self._sources.pop(entry)
        stats = source.stats()
        totals = self._totals[entry]
        totals[0] += stats.received
        totals[1] += stats.dropped
        totals[2] += stats.malformed
        self._closed_stats[entry] = SourceStats(entry, error=stats.error)
        source.close()
        self._since.pop(entry, None)
        self._since_gauge.labels(entry).set(0)
        return stats

    def _stopped_by_itself(self, source: AudioSource, failure: str | None = None) -> None:
        """`source`'s blocks ended while it was wanted: a file is done; anything else is
        tried again after the backoff (counted in `reopens`, logged)."""
        entry = source.source
        if self._sources.get(entry) is not source:
            return  # closed by us: not a stop
        stats = self._retire(entry)
        why = failure or stats.error or "the stream ended"
        if not reopens_after_end(entry):
            self._closed_stats[entry] = SourceStats(entry, error=why, ended=True)
            log.info("audio source %s: %s; not read again", entry, why)
            return
        self._stopped[entry] = True
        wait_s = self._reopening[entry].failed(clock.monotonic(), stats.received > 0)
        self._closed_stats[entry] = SourceStats(entry, error=f"stopped: {why}")
        log.warning("audio source %s stopped (%s); reopening in %.0f s", entry, why, wait_s)

    def problem(self) -> str | None:
        """Why this node does not hear a source it should listen to now (one that does not
        open or stopped); None when it hears them all. An idle UDP source is silence, not a
        problem; a file read to its end is done."""
        faults = [
            f"{entry} {self._closed_stats[entry].error}"
            for entry in self._wanted()
            if entry not in self._sources
            and self._closed_stats[entry].error
            and (
                not self._closed_stats[entry].ended
                or self._closed_stats[entry].error.startswith("failed:")
            )
        ]
        if not faults:
            return None
        more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        return f"listening: {faults[0]}{more}"

    def _name(self, entry: str) -> str:
        """The source's name in keys, hearings and the log: a local source is this node's
        (`n2/alsa:hw:1,0`: the same device name on two Jetsons is two microphones)."""
        return f"{self._ctx.config.node_id}/{entry}" if entry in self._local else entry

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _async_listen(self, source: AudioSource) -> None:
        name = self._name(source.source)
        segmenter: Segmenter | None = None
        failure: str | None = None
        try:
            segmenter = await asyncio.to_thread(self._make_segmenter)  # loads the VAD model
            async for block in source.blocks():
                self._maybe_mark_since(source, block.start_s)
                if block.gap_s > 0:
                    self._gaps.labels("stream").inc()
                lost = segmenter.lost
                cut = await asyncio.to_thread(
                    segmenter.push, block.samples, block.start_s, block.gap_s
                )
                for _ in range(segmenter.lost - lost):
                    self._record(Heard(name, block.start_s, 0.0, "", None, "lost"))
                for utterance in cut:
                    if utterance.early:
                        self._maybe_look(name, utterance)
                        continue
                    self._segments.labels(name).inc()
                    self._spawn(self._async_hear(name, utterance))
        except Exception as exc:  # the VAD, a block: this source stops, the others go on
            failure = f"failed: {type(exc).__name__}: {exc}"
            log.exception("audio source %s: listening to it failed", source.source)
        finally:
            if segmenter is not None and segmenter.in_speech:
                self._gaps.labels("closed").inc()
                self._record(Heard(name, segmenter.position_s, 0.0, "", None, "lost"))
            self._stopped_by_itself(source, failure)

    def _maybe_mark_since(self, source: AudioSource, start_s: float) -> None:
        """Remember the first block of this opening (not of a source closed since)."""
        name = source.source
        if name not in self._since and self._sources.get(name) is source:
            self._since[name] = start_s
            self._since_gauge.labels(name).set(start_s)

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

    def _maybe_look(self, source: str, utterance: Utterance) -> None:
        """Recognise an early look, unless one of the same utterance still is."""
        look = (source, utterance.start_s)
        pending = self._looks.get(look)
        if pending is not None and not pending[1].done():
            self._early.labels("skipped").inc()
            return
        recognising: _Recognising = self._spawn(self._async_recognise_look(utterance))
        self._looks[look] = (len(utterance.samples), recognising)
        self._looks.move_to_end(look)
        while len(self._looks) > _MAX_LOOKS:
            self._looks.popitem(last=False)
        self._spawn(self._async_look(source, utterance, recognising))

    async def _async_recognise_look(self, utterance: Utterance) -> Recognition | None:
        speech = self._ctx.speech
        assert speech is not None
        language = self._ctx.active_vocabulary().language
        try:
            return await speech.async_recognise(utterance.samples, language, priority="command")
        except SpeechUnavailable:
            return None  # the full utterance is tried, and reported, in its turn

    async def _async_look(
        self, source: str, utterance: Utterance, recognising: _Recognising
    ) -> None:
        """Run a stop heard in an early look at once; drop anything else."""
        recognition = await asyncio.shield(recognising)
        if recognition is None:
            return
        vocabulary = self._ctx.active_vocabulary()
        intent = early_stop(vocabulary, recognition, self._ctx.config.require_wake_word)
        if intent is None:
            self._early.labels("other").inc()
            return
        self._early.labels("stop").inc()
        self._early_stops.append((source, utterance.start_s))
        hearing = Hearing(source, utterance.start_s, intent, recognition)
        if not await self._hearings.async_decide(hearing, wait=False):
            self._heard_as(source, utterance, recognition, "duplicate")
            return
        await self._async_run(hearing, utterance)

    async def _async_looked(self, source: str, utterance: Utterance) -> Recognition | None:
        """The recognition of an early look that saw all of `utterance` (no speech came after
        it: the same samples), or None."""
        found = self._looks.pop((source, utterance.start_s), None)
        if found is None or found[0] != len(utterance.samples):
            return None
        return await asyncio.shield(found[1])

    async def _async_recognise(self, source: str, utterance: Utterance) -> Recognition | None:
        looked = await self._async_looked(source, utterance)
        if looked is not None:
            return looked
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
        if not intent.stop and not self._ctx.node.journal.settings.listening:
            # Switched off while this was being recognised: what was said before the switch
            # does not run after it (a stop still does: it only makes the robot safe).
            self._heard_as(hearing.source, utterance, recognition, "listening_off", key)
            return
        command = CommandRequest(
            key,
            intent.action,
            intent.action_params,
            intent.duration_s,
            recognition.heard,
            f"listen:{hearing.source}",
        )
        if hearing.source in self._local_names and not self._serving():
            await self._async_hand_over(hearing, utterance, phrase, key)
            return
        try:
            answer = await run_here(self._ctx, command)
        except (NotPrimary, KeyConflict, Busy) as exc:
            log.warning("%s: %r not run: %s", hearing.source, recognition.heard, exc)
            self._heard_as(hearing.source, utterance, recognition, "refused", key)
            return
        outcome = "duplicate" if answer.duplicate else "ran"
        self._heard_as(hearing.source, utterance, recognition, outcome, answer.record.key)

    def _serving(self) -> bool:
        commands = self._ctx.commands
        return commands is not None and commands.ready()

    async def _async_hand_over(
        self, hearing: Hearing, utterance: Utterance, phrase: str, key: str
    ) -> None:
        """A backup's hearing (a local source): the primary decides and runs it."""
        if self._relay is None:
            self._relay = HearingRelay(self._ctx)
        recognition = hearing.recognition
        offer = Offer(phrase, key, hearing.source, hearing.start_s, recognition.confidence)
        try:
            outcome, record_key = await self._relay.async_offer(offer)
        except RelayRefused as exc:
            log.warning("%s: %r not run: %s", hearing.source, recognition.heard, exc)
            self._heard_as(hearing.source, utterance, recognition, "refused", key)
            return
        self._heard_as(hearing.source, utterance, recognition, outcome, record_key)

    async def async_take(self, offer: Offer) -> tuple[str, str | None]:
        """A member's hearing (`Offer`) decided and run here, the primary, as this node's own
        hearings are: (outcome "ran" or "duplicate", the journal key that ran or None);
        LookupError if the phrase names no command, NotPrimary/KeyConflict/Busy as
        `run_here`."""
        vocabulary = self._ctx.active_vocabulary()
        found = vocabulary.match(offer.text)
        intent = found.intent if isinstance(found, Match) else None
        if intent is None:
            raise LookupError(f"{offer.text[:40]!r} names no command")
        if not self._serving():
            raise NotPrimary("this node is not the primary")
        recognition = Recognition(
            offer.text, intent.name, offer.text, offer.confidence, (), None, "", "", 0.0
        )
        hearing = Hearing(offer.source, offer.start_s, intent, recognition)
        if not await self._hearings.async_decide(hearing, wait=not intent.stop):
            self._record(
                Heard(offer.source, offer.start_s, 0.0, offer.text, intent.name, "duplicate")
            )
            return "duplicate", None
        if intent.action is None:
            self._record(
                Heard(offer.source, offer.start_s, 0.0, offer.text, intent.name, "ran", offer.key)
            )
            return "ran", offer.key
        command = CommandRequest(
            offer.key,
            intent.action,
            intent.action_params,
            intent.duration_s,
            offer.text,
            f"listen:{offer.source}",
        )
        answer = await run_here(self._ctx, command)
        outcome = "duplicate" if answer.duplicate else "ran"
        self._record(
            Heard(
                offer.source,
                offer.start_s,
                0.0,
                offer.text,
                intent.name,
                outcome,
                answer.record.key,
            )
        )
        return outcome, answer.record.key

    def _heard_as(
        self,
        source: str,
        utterance: Utterance,
        recognition: Recognition,
        outcome: str,
        key: str | None = None,
    ) -> None:
        if outcome == "duplicate" and (source, utterance.start_s) in self._early_stops:
            self._early_stops.remove((source, utterance.start_s))
            return  # one utterance, one outcome: its other hearing ran
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
            replace(
                self._sources[entry].stats()
                if entry in self._sources
                else self._closed_stats[entry],
                reopens=self._reopens[entry],
            )
            for entry in self._entries
        ]

    def reopen_totals(self) -> dict[str, int]:
        """Times each source was opened again after it stopped by itself, since the start."""
        return dict(self._reopens)

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
        sources = []
        for stats in self.source_stats():
            scope = "local" if stats.source in self._local else "primary"
            since = self._since.get(stats.source)
            sources.append({**stats.to_json(), "scope": scope, "listening_since": since})
        return {
            "listener": listener,
            "listening_here": self._listening,
            "sources": sources,
            "utterances": [heard.to_json() for heard in reversed(self._heard)],
        }


def early_stop(
    vocabulary: Vocabulary, recognition: Recognition, require_wake_word: bool
) -> Intent | None:
    """The stop intent an early look heard, or None: anything else waits for the utterance."""
    intent = _intent(vocabulary, recognition)
    if intent is None or not intent.stop:
        return None
    if require_wake_word and not _woken(vocabulary, recognition):
        return None
    return intent


def _intent(vocabulary: Vocabulary, recognition: Recognition) -> Intent | None:
    if recognition.intent is None:
        return None
    return next((i for i in vocabulary.intents if i.name == recognition.intent), None)


def _woken(vocabulary: Vocabulary, recognition: Recognition) -> bool:
    """Whether the winning phrase was said after a wake word."""
    words = fold(recognition.phrase or recognition.heard).split()
    return any(words[: len(w.split())] == w.split() for w in vocabulary.wake_words)


class _PacketCollector(Collector):
    """Packets and reopens per source, read from the listener at scrape time."""

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
        reopens = CounterMetricFamily(
            "ha_voice_audio_source_reopens",
            "Times a source that stopped by itself (the end of a stream, an unplugged device, a "
            "dropped connection) was opened again, by source",
            labels=["source"],
        )
        for entry, (got, full, malformed) in self._listener.packet_totals().items():
            received.add_metric([entry], got)
            dropped.add_metric([entry, "full"], full)
            dropped.add_metric([entry, "malformed"], malformed)
        for entry, count in self._listener.reopen_totals().items():
            reopens.add_metric([entry], count)
        yield received
        yield dropped
        yield reopens
