"""A scripted live stream: minutes of generated Dutch speech with what was said when, and the
score of what a cluster ran against it.

`make_script(duration_s, seed)` lays out, with a generator seeded by `seed`: commands of the
vocabulary (several espeak-ng/MBROLA voices, speeds and pitches, a little louder or softer),
non-command chatter (Dutch sentences with no command in them), pauses of 1.2-3.5 s, and white
background noise under all of it. Its `Script` holds the 16 kHz float32 stream and, for every
command, its intent and its start and end in stream time (the voiced part, not espeak-ng's
silence around it). `score(script, ran, windows)` matches the commands a cluster ran (intent,
stream time it accepted them) to the script: recognised, lost, duplicated, extra.

The commands are the ones the recogniser gets right reliably on espeak-ng speech
(docs/benchmarks.md, per intent: stop 97 %, turn left 100 %, turn right 93 %, walk backward
93 %, stretch 93 %, lie down 80 %) and "opstaan" for stand up: espeak-ng's "sta op" is heard as
stop (docs/voice.md). Sit, walk forward, hello and help (60-68 %) are left out: a run should
measure the failovers, not the recogniser. The same intent is never said twice within
`SAME_INTENT_GAP_S`, so a command run twice cannot be mistaken for the next one said.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tests.speech_corpus import SAMPLE_RATE, say, voices

__all__ = [
    "CHATTER",
    "COMMANDS",
    "SAME_INTENT_GAP_S",
    "Said",
    "Score",
    "Script",
    "make_script",
    "score",
]

# (phrase, intent) said as commands.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("stop", "stop"),
    ("halt", "stop"),
    ("ga liggen", "lie_down"),
    ("opstaan", "stand_up"),
    ("draai naar links", "turn_left"),
    ("draai links", "turn_left"),
    ("draai naar rechts", "turn_right"),
    ("loop achteruit", "walk_backward"),
    ("rek je uit", "stretch"),
)
# Dutch sentences with no phrase, filler-free word or wake word of vocab/nl.toml in them.
CHATTER: tuple[str, ...] = (
    "het weer is vandaag erg mooi",
    "ik heb gisteren een boek gelezen",
    "de koffie is koud geworden",
    "wat eten we vanavond",
    "mijn buurman heeft een nieuwe fiets gekocht",
    "de trein was weer te laat vanochtend",
    "zullen we morgen naar het strand fietsen",
    "de kinderen spelen in de tuin",
    "het museum is op maandag gesloten",
    "ik vind die film heel spannend",
)
SAME_INTENT_GAP_S = 20.0  # the same intent is said again only this long after it ended
_VOICES: tuple[str, ...] = ("nl", "nl+m3", "mb-nl2", "mb-nl3")  # nl+f3 is the weakest (70 %)
_SPEEDS = (140, 160, 180)  # words a minute
_PITCHES = (40, 50, 60)
_PAUSE_S = (1.2, 3.5)  # silence between two things said: > the VAD's 0.4 s end of speech
_NOISE_RMS = 0.003  # background white noise, about -50 dBFS: ~25-30 dB under the speech
_COMMAND_SHARE = 0.6
_VOICED = 0.01  # |sample| above this is speech, for the start and end of what was said


@dataclass(frozen=True)
class Said:
    """One thing said: a command (`intent` set) or chatter, at stream times in seconds."""

    text: str
    intent: str | None
    voice: str
    start_s: float
    end_s: float

    @property
    def command(self) -> bool:
        return self.intent is not None


@dataclass(frozen=True)
class Script:
    """The stream (16 kHz mono float32 in [-1, 1]) and everything said in it, in order."""

    audio: npt.NDArray[np.float32]
    said: tuple[Said, ...]
    seed: int

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def commands(self) -> list[Said]:
        return [s for s in self.said if s.command]


def _voiced(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """`samples` without the silence espeak-ng puts before and after the speech."""
    loud = np.flatnonzero(np.abs(samples) > _VOICED)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def _pick_command(
    rng: np.random.Generator, now_s: float, last_end: dict[str, float]
) -> tuple[str, str] | None:
    free = [c for c in COMMANDS if now_s - last_end.get(c[1], -1e9) >= SAME_INTENT_GAP_S]
    return free[int(rng.integers(len(free)))] if free else None


def make_script(duration_s: float, seed: int, voice_names: Sequence[str] = _VOICES) -> Script:
    """About `duration_s` seconds of commands, chatter and pauses (see the module docstring);
    the same arguments give the same audio. Raises RuntimeError without espeak-ng."""
    rng = np.random.default_rng(seed)
    speaking = [v for v in voice_names if v in voices()] or ["nl"]
    pieces: list[npt.NDArray[np.float32]] = []
    said: list[Said] = []
    last_end: dict[str, float] = {}
    now_s = 0.0
    while now_s < duration_s:
        pause = float(rng.uniform(*_PAUSE_S))
        pieces.append(np.zeros(round(pause * SAMPLE_RATE), dtype=np.float32))
        now_s += pause
        chosen = _pick_command(rng, now_s, last_end) if rng.random() < _COMMAND_SHARE else None
        text, intent = chosen or (CHATTER[int(rng.integers(len(CHATTER)))], None)
        voice = speaking[int(rng.integers(len(speaking)))]
        speech = _voiced(
            say(
                text,
                voice,
                speed_wpm=int(rng.choice(_SPEEDS)),
                pitch=int(rng.choice(_PITCHES)),
            )
        ) * float(rng.uniform(0.6, 1.0))
        end_s = now_s + len(speech) / SAMPLE_RATE
        said.append(Said(text, intent, voice, round(now_s, 3), round(end_s, 3)))
        if intent is not None:
            last_end[intent] = end_s
        pieces.append(speech.astype(np.float32))
        now_s = end_s
    pieces.append(np.zeros(SAMPLE_RATE, dtype=np.float32))  # the last words' end of speech
    audio = np.concatenate(pieces)
    noise = np.random.default_rng(seed + 1).normal(0.0, _NOISE_RMS, len(audio))
    mixed = np.clip(audio + noise, -1.0, 1.0).astype(np.float32)
    return Script(mixed, tuple(said), seed)


@dataclass(frozen=True)
class Ran:
    """One command the cluster ran: its intent and when it was accepted, in stream time."""

    intent: str
    at_s: float
    key: str = ""
    said: int | None = None  # the index in `Script.said` of the utterance it came from, if known


@dataclass
class Score:
    """The commands of a script against what ran (see `score`)."""

    recognised: list[Said] = field(default_factory=list)
    lost: list[Said] = field(default_factory=list)  # said, never ran
    in_windows: list[Said] = field(default_factory=list)  # said (partly) in a failover window
    duplicated: list[Said] = field(default_factory=list)  # ran more than once
    extra: list[Ran] = field(default_factory=list)  # ran, never said

    def outside_windows(self) -> tuple[int, int]:
        """(recognised, said) of the commands said wholly outside the failover windows."""
        said = [s for s in self.recognised + self.lost if s not in self.in_windows]
        return sum(s in self.recognised for s in said), len(said)

    def summary(self) -> dict[str, int]:
        heard, said = self.outside_windows()
        return {
            "commands": len(self.recognised) + len(self.lost),
            "recognised": len(self.recognised),
            "lost": len(self.lost),
            "lost_in_failover_windows": sum(s in self.in_windows for s in self.lost),
            "duplicated": len(self.duplicated),
            "extra": len(self.extra),
            "outside_windows_recognised": heard,
            "outside_windows_said": said,
        }


def score(
    script: Script,
    ran: Sequence[Ran],
    windows: Sequence[tuple[float, float]] = (),
    late_s: float = SAME_INTENT_GAP_S,
) -> Score:
    """Match each ran command to what was said: to the utterance it came from when known
    (`Ran.said`), else to the latest command of its intent said before it was accepted (at
    most `late_s` after its end). A second match of one said command is a duplicate; a ran
    command from chatter, from a command of another intent, or with no match is extra.
    `windows` are the failover windows (stream time, start-end): a command overlapping one is
    counted in `in_windows`."""
    result = Score()
    matched: dict[int, int] = {}
    commands = script.commands
    for command in sorted(ran, key=lambda r: r.at_s):
        index = _matched(script, command, late_s)
        if index is None:
            result.extra.append(command)
            continue
        matched[index] = matched.get(index, 0) + 1
    for i, said in enumerate(commands):
        (result.recognised if i in matched else result.lost).append(said)
        if matched.get(i, 0) > 1:
            result.duplicated.append(said)
        if any(said.start_s < end and said.end_s > start for start, end in windows):
            result.in_windows.append(said)
    return result


def _matched(script: Script, ran: Ran, late_s: float) -> int | None:
    """The index in `script.commands` of the command `ran` came from, or None."""
    commands = script.commands
    if ran.said is not None:
        said = script.said[ran.said]
        return commands.index(said) if said.intent == ran.intent else None
    candidates = [
        i
        for i, said in enumerate(commands)
        if said.intent == ran.intent and said.start_s <= ran.at_s <= said.end_s + late_s
    ]
    return candidates[-1] if candidates else None
