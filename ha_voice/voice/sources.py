"""Live audio in: the robot's UDP stream, a microphone, or anything PyAV opens, as 16 kHz blocks.

`audio_sources` entries (config.py) name each source: `udp://HOST:PORT` (raw PCM datagrams,
the seed's streamer format by default: 16 kHz mono s16le), `alsa:DEVICE`, `pulse:DEVICE`,
`file:PATH`, or any URL FFmpeg opens (rtsp://…). Every source yields `Block`s: mono float32 at
`SAMPLE_RATE` with the stream time (seconds since the epoch) of the first sample.

Invariants:
- Nothing a sender does costs more than a bounded queue: a datagram whose size is not a whole
  number of frames, or over `MAX_DATAGRAM_BYTES`, is dropped and counted as malformed; one that
  arrives while `queue_blocks` blocks wait is dropped and counted as dropped.
- Stream time is continuous while packets keep coming: a block's time is the previous block's
  end, unless that is more than `REANCHOR_S` away from its arrival (a gap, a late start), when
  it is the arrival time. So an utterance's start does not jitter with the network.
  A PyAV source's stream time is its opening time plus the samples decoded (the device's
  clock, or a file's own time).
- A PyAV source reads in a thread of its own and never on the event loop; opening a device or a
  stream waits at most `AV_OPEN_TIMEOUT_S`, and a read that gets nothing for
  `AV_READ_TIMEOUT_S` ends the source (a stalled RTSP stream is a stopped one).
- A source that stopped (the end of a stream, an unplugged microphone, a dropped connection) or
  did not open is tried again with `Reopening`'s backoff, except a `file:` once opened: read
  again it would replay its commands under new stream times (`reopens_after_end`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import av
import numpy as np

from ha_voice import clock
from ha_voice.config import parse_source
from ha_voice.voice.speech import SAMPLE_RATE, Audio

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "AV_OPEN_TIMEOUT_S",
    "AV_READ_TIMEOUT_S",
    "MAX_DATAGRAM_BYTES",
    "REANCHOR_S",
    "AudioSource",
    "AvSource",
    "Block",
    "PcmFormat",
    "Reopening",
    "SourceStats",
    "StreamResampler",
    "UdpSource",
    "open_source",
    "reopens_after_end",
]

log = logging.getLogger(__name__)

# A UDP datagram over IPv4 carries at most 65507 bytes; the seed's streamer sends 1024-4096.
MAX_DATAGRAM_BYTES: Final = 65_507
# A block arriving further than this from where the stream should be is a new start (the
# sender paused, or restarted): 0.5 s is ten times the jitter of Wi-Fi with retries.
REANCHOR_S: Final = 0.5
# FFmpeg's own defaults wait forever on a stream that never answers. A device opens in well
# under a second; an RTSP stream over Wi-Fi in a few: 10 s. A microphone delivers a frame every
# 10-100 ms and a stream as fast as it is spoken, so 5 s without data means it stalled.
AV_OPEN_TIMEOUT_S: Final = 10.0
AV_READ_TIMEOUT_S: Final = 5.0
_SAMPLE_TYPES: Final = {1: np.uint8, 2: np.int16, 4: np.int32}
_END: Final = object()


@dataclass(frozen=True)
class Block:
    """Consecutive samples of one source: mono float32 in [-1, 1] at SAMPLE_RATE."""

    source: str
    start_s: float  # stream time of samples[0]: seconds since the Unix epoch
    samples: Audio
    gap_s: float = 0.0  # seconds missing before this block (the stream was re-anchored)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass
class SourceStats:
    """What /api/voice/status and the metrics say of one source."""

    source: str
    open: bool = False
    received: int = 0  # packets (UDP) or decoded frames (PyAV) taken
    dropped: int = 0  # packets lost to a full queue
    malformed: int = 0  # packets of a size no whole number of frames has
    level_dbfs: float | None = None  # RMS of the last block, dB relative to full scale
    error: str = ""  # why the source is not open, or what ended it
    reopens: int = 0  # times opened again after it stopped, while this node listened
    ended: bool = False  # a file read to its end: done, not reopened, no fault

    def to_json(self) -> dict[str, Any]:
        level = None if self.level_dbfs is None else round(self.level_dbfs, 1)
        return {
            "id": self.source,
            "open": self.open,
            "level_dbfs": level,
            "packets_received": self.received,
            "packets_dropped": self.dropped,
            "packets_malformed": self.malformed,
            "error": self.error,
            "reopens": self.reopens,
            "ended": self.ended,
        }


@dataclass(frozen=True)
class PcmFormat:
    """Raw PCM of a UDP source: sample rate (Hz), bytes per sample (1, 2 or 4), channels."""

    rate: int = SAMPLE_RATE
    width: int = 2
    channels: int = 1

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels


class AudioSource(Protocol):
    """One live input. `open` starts it, `blocks` yields until `close`; `stats` never blocks."""

    source: str

    async def async_open(self) -> None:
        """Start receiving; raises OSError (UDP bind) or av.error.FFmpegError (device)."""
        ...

    def blocks(self) -> AsyncIterator[Block]:
        """The blocks as they come, until `close`."""
        ...

    def close(self) -> None:
        """Stop receiving and release the socket, device or file; idempotent."""
        ...

    def stats(self) -> SourceStats:
        """Counters and level, now."""
        ...


def open_source(entry: str, pcm: PcmFormat, queue_blocks: int) -> AudioSource:
    """The source `entry` names (see `parse_source`), not yet open."""
    kind, target = parse_source(entry)
    if kind == "udp":
        host, _, port = target.rpartition(":")
        return UdpSource(entry, host, int(port), pcm, queue_blocks)
    return AvSource(entry, kind, target, queue_blocks)


def reopens_after_end(entry: str) -> bool:
    """Whether `entry` is opened again once it stopped: every source but a `file:`."""
    return parse_source(entry)[0] != "file"


@dataclass
class Reopening:
    """When a source that did not open or stopped is tried again (times: monotonic seconds):
    `first_s` after the first failure, doubling up to `max_s` while it keeps failing without
    delivering audio; `first_s` again once it delivered some."""

    first_s: float = 1.0
    max_s: float = 8.0
    failures: int = 0
    due_s: float = 0.0  # the next attempt, not before

    def failed(self, now_s: float, delivered: bool = False) -> float:
        """Record a failure (or a stop, having `delivered` audio since opening) at `now_s`;
        the seconds until the next attempt."""
        self.failures = 1 if delivered else self.failures + 1
        wait_s = min(self.max_s, self.first_s * 2.0 ** min(self.failures - 1, 16))
        self.due_s = now_s + wait_s
        return wait_s

    def due(self, now_s: float) -> bool:
        """Whether an attempt may be made at `now_s`."""
        return now_s >= self.due_s


def level_dbfs(samples: Audio) -> float:
    """RMS of `samples` in dB relative to full scale; -120 for digital silence."""
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(-120.0, 20 * math.log10(rms)) if rms > 0 else -120.0


def pcm_to_mono(data: bytes, pcm: PcmFormat) -> npt.NDArray[np.float32]:
    """Interleaved little-endian PCM as mono float32 in [-1, 1] at `pcm.rate`; the caller has
    checked that `data` is a whole number of frames."""
    dtype = np.dtype(_SAMPLE_TYPES[pcm.width]).newbyteorder("<")
    raw: npt.NDArray[np.float32] = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if pcm.width == 1:  # unsigned 8-bit, centred on 128
        raw = (raw - 128.0) / 128.0
    else:
        raw /= float(2 ** (8 * pcm.width - 1))
    mono: npt.NDArray[np.float32] = raw.reshape(-1, pcm.channels).mean(axis=1, dtype=np.float32)
    return mono


class StreamResampler:
    """Mono float32 at `rate` Hz to SAMPLE_RATE, block after block of one stream: FFmpeg's
    swresample (PyAV), whose filter state runs across blocks, so a stream cut into datagrams
    sounds as it would whole and what is above 8 kHz is filtered out rather than folded into
    the speech band. At SAMPLE_RATE it is the identity. It holds back a few milliseconds (the
    filter's delay): a block may come out a little shorter than its length at 16 kHz."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = (
            None
            if rate == SAMPLE_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        )

    def __call__(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._resampler is None or len(samples) == 0:
            return samples
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self.rate
        frame.pts = None  # resample by count, as voice/audio.py does
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


async def _queued(queue: asyncio.Queue[Block | object]) -> AsyncIterator[Block]:
    """The blocks put on `queue`, until the end marker (anything that is not a Block)."""
    while True:
        block = await queue.get()
        if not isinstance(block, Block):
            return
        yield block


class _Clocked:
    """Stream time of consecutive blocks (see the module's invariants)."""

    def __init__(self) -> None:
        self._next_s: float | None = None

    def place(self, arrived_s: float, duration_s: float) -> tuple[float, float]:
        """(start_s, gap_s) of a block of `duration_s` that arrived complete at `arrived_s`."""
        start_s = arrived_s - duration_s
        gap_s = 0.0
        if self._next_s is not None and abs(start_s - self._next_s) <= REANCHOR_S:
            start_s = self._next_s
        elif self._next_s is not None:
            gap_s = max(0.0, start_s - self._next_s)
        self._next_s = start_s + duration_s
        return start_s, gap_s


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, source: UdpSource) -> None:
        self._source = source

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._source.take(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self._source.source, exc)


class UdpSource:
    """Raw PCM datagrams on HOST:PORT (see the module's invariants)."""

    def __init__(
        self, source: str, host: str, port: int, pcm: PcmFormat, queue_blocks: int
    ) -> None:
        self.source = source
        self.host, self.port, self.pcm = host, port, pcm
        self._queue: asyncio.Queue[Block | object] = asyncio.Queue(queue_blocks)
        self._transport: asyncio.DatagramTransport | None = None
        self._stats = SourceStats(source)
        self._clock = _Clocked()
        self._resample = StreamResampler(pcm.rate)
        self._warned = False

    async def async_open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self._stats.open, self._stats.error = True, ""

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the port the OS chose for port 0)."""
        assert self._transport is not None
        name = self._transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    def take(self, data: bytes) -> None:
        """One datagram: counted, checked, converted, queued or dropped."""
        stats = self._stats
        stats.received += 1
        if not data or len(data) % self.pcm.frame_bytes or len(data) > MAX_DATAGRAM_BYTES:
            stats.malformed += 1
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(level, "%s: dropped a datagram of %d bytes", self.source, len(data))
            self._warned = True
            return
        samples = self._resample(pcm_to_mono(data, self.pcm))
        if len(samples) == 0:  # held in the resampler's filter: it comes with the next
            return
        start_s, gap_s = self._clock.place(clock.wall_clock_us() / 1e6, len(samples) / SAMPLE_RATE)
        stats.level_dbfs = level_dbfs(samples)
        try:
            self._queue.put_nowait(Block(self.source, start_s, samples, gap_s))
        except asyncio.QueueFull:
            stats.dropped += 1

    def blocks(self) -> AsyncIterator[Block]:
        return _queued(self._queue)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            _end(self._queue)
        self._stats.open = False

    def stats(self) -> SourceStats:
        return SourceStats(**vars(self._stats))


def _end(queue: asyncio.Queue[Block | object]) -> None:
    """Wake the reader with the end marker, making room for it if the queue is full."""
    while True:
        try:
            queue.put_nowait(_END)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


class AvSource:
    """A microphone, stream or file through PyAV, decoded and resampled in a thread."""

    def __init__(self, source: str, kind: str, target: str, queue_blocks: int) -> None:
        self.source = source
        self.kind, self.target = kind, target
        self._queue: asyncio.Queue[Block | object] = asyncio.Queue(queue_blocks)
        self._stats = SourceStats(source)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def async_open(self) -> None:
        fmt = self.kind if self.kind in ("alsa", "pulse") else None
        timeout = None if self.kind == "file" else (AV_OPEN_TIMEOUT_S, AV_READ_TIMEOUT_S)
        container = await asyncio.to_thread(av.open, self.target, "r", format=fmt, timeout=timeout)
        loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._read, args=(container, loop), name=f"audio {self.source}", daemon=True
        )
        self._stats.open, self._stats.error = True, ""
        self._thread.start()

    def _read(self, container: Any, loop: asyncio.AbstractEventLoop) -> None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        opened_s, taken = clock.wall_clock_us() / 1e6, 0
        try:
            for frame in container.decode(audio=0):
                if self._stop.is_set():
                    break
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32)
                    self._put(loop, Block(self.source, opened_s + taken / SAMPLE_RATE, samples))
                    taken += len(samples)
            if not self._stop.is_set():
                self._stats.error = "end of file" if self.kind == "file" else "the stream ended"
                log.info("%s: %s", self.source, self._stats.error)
        except (av.error.FFmpegError, OSError) as exc:
            self._stats.error = str(exc)
            log.warning("%s: %s", self.source, exc)
        finally:
            container.close()
            self._stats.open = False
            if not self._stop.is_set():
                asyncio.run_coroutine_threadsafe(self._queue.put(_END), loop)

    def _put(self, loop: asyncio.AbstractEventLoop, block: Block) -> None:
        """Queue one block, waiting for room (a file is read no faster than it is used)."""
        self._stats.received += 1
        self._stats.level_dbfs = level_dbfs(block.samples)
        future = asyncio.run_coroutine_threadsafe(self._queue.put(block), loop)
        while not self._stop.is_set():
            try:
                future.result(timeout=0.1)
                return
            except TimeoutError:
                continue
        future.cancel()

    def blocks(self) -> AsyncIterator[Block]:
        return _queued(self._queue)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            _end(self._queue)
            self._thread = None

    def stats(self) -> SourceStats:
        return SourceStats(**vars(self._stats))
