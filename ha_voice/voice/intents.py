"""Text → intent: the per-language vocabulary, normalisation, and matching with a stop-safety rule.

Invariants:
- A vocabulary (`vocab/<language>.toml`) is validated whole when loaded; an invalid one raises
  `VocabularyError` naming the file, the intent and the field, and is never partly used.
- Exactly one intent is the stop family (`stop = true`); its action is `stop_move`, and no other
  intent's phrase contains a stop phrase or lies within one edit of one.
- Matching sees whole words of the normalised text only: a command word inside a longer word
  ("zit" in "bezit", "opstaan" in "opstaand") is another word, not a misspelling.
- Stop safety: rule 1 before anything else, rules 2 and 3 before any match that is not exact:
  1. a stop phrase anywhere in the text, as whole words, is stop ("nee stop", "loop vooruit stop");
  2. a text that is not exactly a command phrase, lies within `STOP_RADIUS` edits of a stop phrase
     (ignoring word breaks) and resembles another intent is stop ("staop", "st op", "sto op");
  3. a phrase within one edit of a stop phrase once word breaks are ignored ("sta op" ~ "stop")
     matches only as the whole text, never fuzzily or inside a sentence; such a near miss is stop.
  So a transcript that could be a misheard "stop" becomes stop or is rejected. Stopping is always
  harmless (it ends a motion, or does nothing); standing up or walking is a motion.
- `Vocabulary.match` is pure: the same vocabulary and text give the same result.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import re
import sys
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, TypedDict

from ha_voice.errors import ConfigError
from ha_voice.markdown import table
from ha_voice.robot.base import ACTIONS, Action

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "LANGUAGES",
    "MATCH_THRESHOLD",
    "OUTCOMES",
    "REGENERATE_DOCS",
    "STOP_RADIUS",
    "CommandInfo",
    "Intent",
    "Match",
    "MatchRule",
    "Rejection",
    "RejectionReason",
    "Vocabulary",
    "VocabularyError",
    "edit_distance",
    "fold",
    "main",
    "render_commands_markdown",
]

LANGUAGES: Final = ("nl", "en")
REGENERATE_DOCS: Final = "python -m ha_voice.voice.intents --markdown > docs/commands.md"

# A fuzzy match needs a difflib ratio of 0.8: one wrong letter in a five-letter word ("zittn")
# passes, two do not.
MATCH_THRESHOLD: Final = 0.8
# Whisper's stop/"sta op" confusions differ by a vowel and a word break: two edits.
STOP_RADIUS: Final = 2
# "Resembles another intent" for rule 2: well below MATCH_THRESHOLD, so that a garbled motion
# command near "stop" is caught even when it would have been rejected anyway.
SHADOW_FLOOR: Final = 0.6
# Below this a phrase is no candidate at all, not even the "best candidate" of a rejection.
CANDIDATE_FLOOR: Final = 0.5
# Each word outside the matched phrase costs this much: commands are short, and a phrase buried
# in a long sentence (four extra words fall below MATCH_THRESHOLD) is likely not meant for us.
EXTRA_WORD_PENALTY: Final = 0.06
# Two intents whose scores differ by less than this are a tie: the text is ambiguous.
AMBIGUITY_MARGIN: Final = 0.02
# Beyond this many words (EXTRA_WORD_PENALTY) or characters (difflib ratio against phrases of
# at most ~20 characters) no phrase reaches SHADOW_FLOOR, so such a text is not scored at all:
# matching cost stays bounded whatever a client uploads.
MAX_COMMAND_WORDS: Final = 16
MAX_COMMAND_CHARS: Final = 200
# A voice motion is short so that a forgotten or misheard one ends by itself.
MAX_DURATION_S: Final = 10.0

MatchRule = Literal["exact", "contains", "fuzzy", "stop_phrase", "stop_shadow"]
RejectionReason = Literal["empty", "no_match", "ambiguous"]

_TOP_KEYS: Final = frozenset({"language", "name", "wake_words", "fillers", "responses", "intents"})
# The answers for outcomes other than "done" (which answers with the intent's own response).
OUTCOMES: Final = ("failed", "stopped", "unknown", "rejected")
_INTENT_KEYS: Final = frozenset({"stop", "action", "phrases", "params", "response"})
# Hyphens and apostrophes join word parts ("sta-op" is heard as one word, "commando's").
_JOINERS: Final = re.compile(r"[-‐‑'’‘`´]")
_NON_WORD: Final = re.compile(r"[^a-z0-9]+")


class VocabularyError(ConfigError):
    """A vocabulary file is invalid; the message names the file, the intent and the field."""

    def __init__(self, file: str, intent: str, field_name: str, problem: str) -> None:
        where = f"intent {intent!r}, " if intent else ""
        super().__init__(f"{file}: {where}field {field_name!r}: {problem}")
        self.file = file
        self.intent = intent
        self.field = field_name


@dataclass(frozen=True)
class Intent:
    """What a phrase means: a robot action (None for talk-only intents) and what to answer."""

    name: str
    action: Action | None
    params: Mapping[str, float] = field(hash=False)  # read-only; a dict cannot be hashed
    response: str
    phrases: tuple[str, ...]
    stop: bool = False

    @property
    def duration_s(self) -> float | None:
        """How long a motion lasts; None for one-shot actions."""
        return self.params.get("duration_s")

    @property
    def action_params(self) -> dict[str, float]:
        """The parameters the robot call takes (without `duration_s`, which the guard uses)."""
        return {key: value for key, value in self.params.items() if key != "duration_s"}


@dataclass(frozen=True)
class Match:
    """An accepted transcript: the intent, how sure (0..1), and which phrase and rule decided."""

    intent: Intent
    score: float
    normalised: str
    phrase: str
    rule: MatchRule


@dataclass(frozen=True)
class Rejection:
    """A transcript that is no command: why, and the best candidate (if any) with its score."""

    reason: RejectionReason
    normalised: str
    candidate: Intent | None = None
    score: float = 0.0
    runner_up: Intent | None = None


class CommandInfo(TypedDict):
    """One intent as `GET /api/commands` lists it."""

    intent: str
    action: str | None
    params: dict[str, float]
    phrases: list[str]
    response: str


@dataclass(frozen=True)
class _Candidate:
    intent: Intent
    phrase: str  # normalised
    score: float
    rule: MatchRule


def fold(text: str) -> str:
    """Lower case, accents stripped (NFKD), punctuation removed, whitespace collapsed."""
    joined = _JOINERS.sub("", text.casefold())
    decomposed = unicodedata.normalize("NFKD", joined)
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(_NON_WORD.sub(" ", bare).split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of single characters."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def _loose_distance(a: str, b: str) -> int:
    """Edit distance that also ignores word breaks (Whisper moves them: "staop", "st op")."""
    return min(edit_distance(a, b), edit_distance(a.replace(" ", ""), b.replace(" ", "")))


def _has_phrase(text: str, phrase: str) -> bool:
    """Whether normalised `phrase` occurs in normalised `text` as whole words."""
    return f" {phrase} " in f" {text} "  # normalised text has single spaces between words


def _extends_a_word(window: Sequence[str], phrase_words: Sequence[str]) -> bool:
    """Whether a word of the window strictly contains a phrase word ("bezit" ⊃ "zit")."""
    return any(
        part in word and part != word
        for word in window
        for part in phrase_words
        if len(part) > 1  # a one-letter word ("a") is inside too many words to mean anything
    )


@dataclass(frozen=True)
class Vocabulary:
    """One language's wake words, fillers and intents, validated; matches transcripts."""

    language: str
    name: str
    source: str
    wake_words: tuple[str, ...]
    fillers: frozenset[str]
    responses: Mapping[str, str]  # outcome (OUTCOMES) -> what the robot answers
    intents: tuple[Intent, ...]
    # Derived at load: normalised phrase → intent, and the safety sets.
    _phrases: Mapping[str, Intent] = field(repr=False, compare=False)
    _stop_phrases: tuple[str, ...] = field(repr=False, compare=False)
    _confusable: frozenset[str] = field(repr=False, compare=False)

    @classmethod
    def load(cls, language: str) -> Vocabulary:
        """The packaged vocabulary for `language` ("nl", "en"; "nl-NL" works too)."""
        return _load_packaged(language.replace("_", "-").split("-")[0].lower())

    @classmethod
    def from_path(cls, path: Path) -> Vocabulary:
        """A vocabulary from a TOML file (for tests and custom vocabularies)."""
        return cls.parse(path.read_text(encoding="utf-8"), source=path.name)

    @classmethod
    def parse(cls, text: str, source: str) -> Vocabulary:
        """Parse and validate TOML `text`; errors name `source`."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise VocabularyError(source, "", "", f"not valid TOML: {exc}") from exc
        return _build(data, source)

    def normalise(self, text: str) -> str:
        """Folded text without fillers and without leading wake words."""
        words = [word for word in fold(text).split() if word not in self.fillers]
        return " ".join(self._strip_wake_words(words))

    def match(self, text: str) -> Match | Rejection:
        """The intent `text` asks for, or why it is refused (see the module's safety rules)."""
        normalised = self.normalise(text)
        words = normalised.split()
        if not words:
            return Rejection("empty", normalised)
        stop_phrase = self._stop_phrase_in(normalised)
        if stop_phrase is not None:
            return Match(self.stop_intent, 1.0, normalised, stop_phrase, "stop_phrase")
        exact = self._phrases.get(normalised)
        if exact is not None:
            return Match(exact, 1.0, normalised, normalised, "exact")
        if len(words) > MAX_COMMAND_WORDS or len(normalised) > MAX_COMMAND_CHARS:
            return Rejection("no_match", normalised)
        candidates = self._candidates(words)
        shadow = self._stop_shadow(normalised, candidates)
        if shadow is not None:
            return shadow
        return _decide(normalised, candidates)

    def response(self, intent: Intent | None, outcome: str) -> str:
        """What the robot answers: the intent's own response when it ran ("done") or needs no
        robot (`intent.action` None), else this language's sentence for `outcome` (one of
        OUTCOMES; any other says "failed": never a success sentence for what did not happen)."""
        if intent is not None and (outcome == "done" or intent.action is None):
            return intent.response
        return self.responses.get(outcome, self.responses["failed"])

    @property
    def stop_intent(self) -> Intent:
        """The stop family's intent."""
        return self._phrases[self._stop_phrases[0]]

    @property
    def confusable_phrases(self) -> frozenset[str]:
        """Non-stop phrases that accept only an exact match, being one edit from a stop phrase."""
        return self._confusable

    def commands(self) -> list[CommandInfo]:
        """The intents as `GET /api/commands` lists them, in file order."""
        return [
            CommandInfo(
                intent=intent.name,
                action=intent.action.value if intent.action is not None else None,
                params=dict(intent.params),
                phrases=list(intent.phrases),
                response=intent.response,
            )
            for intent in self.intents
        ]

    def _strip_wake_words(self, words: list[str]) -> list[str]:
        # Longest first (the load order): were "hey" a wake word too, "hey hond" must go whole.
        start, stripped = 0, True
        while stripped:
            stripped = False
            for wake in self.wake_words:
                size = len(wake.split())
                if " ".join(words[start : start + size]) == wake:
                    start, stripped = start + size, True
                    break
        return words[start:]

    def _stop_phrase_in(self, text: str) -> str | None:
        return next((phrase for phrase in self._stop_phrases if _has_phrase(text, phrase)), None)

    def _candidates(self, words: Sequence[str]) -> list[_Candidate]:
        """The best-scoring phrase of each intent, best first."""
        best: dict[str, _Candidate] = {}
        for phrase, intent in self._phrases.items():
            # The stop family may match loosely ("stopt"): erring towards stop is safe.
            scored = _score_phrase(words, phrase, lenient=intent.stop)
            if scored is None:
                continue
            score, rule = scored
            known = best.get(intent.name)
            if known is None or score > known.score:
                best[intent.name] = _Candidate(intent, phrase, score, rule)
        return sorted(best.values(), key=lambda candidate: -candidate.score)

    def _stop_shadow(self, normalised: str, candidates: list[_Candidate]) -> Match | None:
        """Rules 2 and 3: a near miss that could be a misheard stop is stop."""
        others = [candidate for candidate in candidates if not candidate.intent.stop]
        if not others:
            return None
        near_stop = min(_loose_distance(normalised, p) for p in self._stop_phrases) <= STOP_RADIUS
        resembles_other = others[0].score >= SHADOW_FLOOR
        # Rule 3 only where the confusable phrase would otherwise win; else it loses anyway.
        confusable = others[0].phrase in self._confusable and others[0].score >= MATCH_THRESHOLD
        if not (near_stop and resembles_other) and not confusable:
            return None
        stop = next((c for c in candidates if c.intent.stop), None)
        phrase, score = (stop.phrase, stop.score) if stop else (self._stop_phrases[0], 0.0)
        return Match(self.stop_intent, score, normalised, phrase, "stop_shadow")


def _windows(words: Sequence[str], size: int) -> Iterator[tuple[list[str], float]]:
    """Every run of `size` consecutive words, with the penalty for the words left out."""
    low, high = max(1, size - 1), min(len(words), size + 1)
    for width in range(low, high + 1):
        penalty = EXTRA_WORD_PENALTY * (len(words) - width)
        for start in range(len(words) - width + 1):
            yield list(words[start : start + width]), penalty


def _score_phrase(
    words: Sequence[str], phrase: str, *, lenient: bool
) -> tuple[float, MatchRule] | None:
    """The best score of `phrase` over windows of `words`, or None if no window may match."""
    phrase_words = phrase.split()
    matcher = SequenceMatcher(None, "", phrase, autojunk=False)
    best: tuple[float, MatchRule] | None = None
    rule: MatchRule
    for window, penalty in _windows(words, len(phrase_words)):
        if window == phrase_words:
            score, rule = max(1.0 - penalty, 0.0), "contains"
        elif not lenient and _extends_a_word(window, phrase_words):
            continue
        else:
            matcher.set_seq1(" ".join(window))
            # Both quick ratios are upper bounds of ratio(): skip it when it cannot count.
            bar = max(best[0] if best else 0.0, CANDIDATE_FLOOR) + penalty
            if matcher.real_quick_ratio() < bar or matcher.quick_ratio() < bar:
                continue
            score, rule = max(matcher.ratio() - penalty, 0.0), "fuzzy"
        if best is None or score > best[0]:
            best = (score, rule)
    return best


def _decide(normalised: str, candidates: list[_Candidate]) -> Match | Rejection:
    """Threshold and tie rules over candidates already cleared by the stop rules."""
    if not candidates or candidates[0].score < MATCH_THRESHOLD:
        best = candidates[0] if candidates else None
        return Rejection(
            "no_match", normalised, best.intent if best else None, best.score if best else 0.0
        )
    best = candidates[0]
    if len(candidates) > 1 and candidates[1].score > best.score - AMBIGUITY_MARGIN:
        return Rejection("ambiguous", normalised, best.intent, best.score, candidates[1].intent)
    return Match(best.intent, best.score, normalised, best.phrase, best.rule)


@functools.cache
def _load_packaged(language: str) -> Vocabulary:
    if language not in LANGUAGES:
        raise VocabularyError(
            f"{language}.toml", "", "language", f"no vocabulary; known: {', '.join(LANGUAGES)}"
        )
    resource = importlib.resources.files("ha_voice.voice") / "vocab" / f"{language}.toml"
    return Vocabulary.parse(resource.read_text(encoding="utf-8"), source=f"vocab/{language}.toml")


# Loading and validation


def _build(data: Mapping[str, object], source: str) -> Vocabulary:
    _check_keys(data, _TOP_KEYS, source, "")
    language = _string(data.get("language"), source, "", "language")
    fillers = frozenset(fold(word) for word in _strings(data, "fillers", source, ""))
    wake_words = sorted(
        {fold(word) for word in _strings(data, "wake_words", source, "")},
        key=lambda wake: (-len(wake.split()), wake),
    )
    raw_intents = data.get("intents")
    if not isinstance(raw_intents, dict) or not raw_intents:
        raise VocabularyError(source, "", "intents", "needs at least one [intents.<name>] table")
    intents = tuple(_intent(name, raw, source) for name, raw in raw_intents.items())
    phrases = _phrase_table(intents, source, fillers, wake_words)
    stop_phrases = _stop_phrases(intents, source)
    _check_stop_safety(phrases, stop_phrases, source)
    return Vocabulary(
        language=language,
        name=_string(data.get("name", language), source, "", "name"),
        source=source,
        wake_words=tuple(wake_words),
        fillers=fillers,
        responses=_responses(data.get("responses"), source),
        intents=intents,
        _phrases=phrases,
        _stop_phrases=stop_phrases,
        _confusable=_confusable(phrases, stop_phrases),
    )


def _check_keys(
    table: Mapping[str, object], allowed: frozenset[str], source: str, intent: str
) -> None:
    for key in table:
        if key not in allowed:
            raise VocabularyError(source, intent, key, f"unknown key; allowed: {sorted(allowed)}")


def _string(value: object, source: str, intent: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise VocabularyError(source, intent, name, "must be a non-empty string")
    return value


def _strings(table: Mapping[str, object], name: str, source: str, intent: str) -> list[str]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise VocabularyError(source, intent, name, "must be a list of strings")
    return [_string(item, source, intent, name) for item in value]


def _responses(raw: object, source: str) -> Mapping[str, str]:
    if not isinstance(raw, dict):
        raise VocabularyError(source, "", "responses", f"needs a [responses] table: {OUTCOMES}")
    for key in raw:
        if key not in OUTCOMES:
            raise VocabularyError(source, "", f"responses.{key}", f"unknown; allowed: {OUTCOMES}")
    return MappingProxyType(
        {key: _string(raw.get(key), source, "", f"responses.{key}") for key in OUTCOMES}
    )


def _intent(name: str, raw: object, source: str) -> Intent:
    if not isinstance(raw, dict):
        raise VocabularyError(source, name, name, "must be a table [intents.<name>]")
    _check_keys(raw, _INTENT_KEYS, source, name)
    action = _action(raw.get("action"), source, name)
    stop = raw.get("stop", False)
    if not isinstance(stop, bool):
        raise VocabularyError(source, name, "stop", "must be true or false")
    if stop and action is not Action.STOP_MOVE:
        raise VocabularyError(source, name, "action", "the stop family must map to stop_move")
    phrases = tuple(_strings(raw, "phrases", source, name))
    if not phrases:
        raise VocabularyError(source, name, "phrases", "needs at least one phrase")
    return Intent(
        name=name,
        action=action,
        params=MappingProxyType(_params(raw.get("params", {}), action, source, name)),
        response=_string(raw.get("response"), source, name, "response"),
        phrases=phrases,
        stop=stop,
    )


def _action(value: object, source: str, intent: str) -> Action | None:
    if value is None:
        return None
    known = [action.value for action in Action]
    if not isinstance(value, str) or value not in known:
        raise VocabularyError(source, intent, "action", f"unknown {value!r}; known: {known}")
    return Action(value)


def _params(raw: object, action: Action | None, source: str, intent: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise VocabularyError(source, intent, "params", "must be a table of numbers")
    bounds = dict(ACTIONS[action].params) if action is not None else {}
    if action is Action.MOVE:
        bounds["duration_s"] = (0.0, MAX_DURATION_S)
        if "duration_s" not in raw:
            raise VocabularyError(source, intent, "params.duration_s", "a move needs a duration")
    params: dict[str, float] = {}
    for key, value in raw.items():
        where = f"params.{key}"
        if key not in bounds:
            raise VocabularyError(source, intent, where, f"not a parameter of {action}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VocabularyError(source, intent, where, f"must be a number, not {value!r}")
        low, high = bounds[key]
        if not low <= value <= high or (key == "duration_s" and value == 0):
            raise VocabularyError(source, intent, where, f"{value} outside {low}..{high}")
        params[key] = float(value)
    return params


def _phrase_table(
    intents: Sequence[Intent], source: str, fillers: frozenset[str], wake_words: Sequence[str]
) -> dict[str, Intent]:
    table: dict[str, Intent] = {}
    for intent in intents:
        for phrase in intent.phrases:
            key = fold(phrase)
            words = key.split()
            dropped = [w for w in words if w in fillers] or [
                w for w in wake_words if words[: len(w.split())] == w.split()
            ]
            if not words or dropped:
                why = f"normalises away (fillers or wake words: {dropped})" if words else "empty"
                raise VocabularyError(source, intent.name, "phrases", f"{phrase!r} {why}")
            if key in table:
                owner = table[key].name
                raise VocabularyError(
                    source, intent.name, "phrases", f"{phrase!r} is already a phrase of {owner!r}"
                )
            table[key] = intent
    return table


def _stop_phrases(intents: Sequence[Intent], source: str) -> tuple[str, ...]:
    families = [intent for intent in intents if intent.stop]
    if len(families) != 1:
        names = [intent.name for intent in families]
        raise VocabularyError(source, "", "stop", f"exactly one intent needs stop = true: {names}")
    return tuple(fold(phrase) for phrase in families[0].phrases)


def _check_stop_safety(
    phrases: Mapping[str, Intent], stop_phrases: Sequence[str], source: str
) -> None:
    """No other intent may use a stop phrase, or a phrase one slip away from one."""
    for phrase, intent in phrases.items():
        if intent.stop:
            continue
        for stop in stop_phrases:
            if _has_phrase(phrase, stop):
                problem = f"{phrase!r} contains the stop phrase {stop!r}"
            elif edit_distance(phrase, stop) <= 1 or _loose_distance(phrase, stop) == 0:
                problem = f"{phrase!r} is one slip away from the stop phrase {stop!r}"
            else:
                continue
            raise VocabularyError(source, intent.name, "phrases", problem)


def _confusable(phrases: Mapping[str, Intent], stop_phrases: Sequence[str]) -> frozenset[str]:
    return frozenset(
        phrase
        for phrase, intent in phrases.items()
        if not intent.stop and min(_loose_distance(phrase, s) for s in stop_phrases) <= 1
    )


# docs/commands.md

_PROSE: Final = f"""# Voice commands

<!-- Generated from ha_voice/voice/vocab/*.toml; edit those, then run: {REGENERATE_DOCS} -->

`GET /api/commands` lists the vocabulary of the configured language.

## How a transcript is matched

1. **Normalise**: lower case; accents stripped ("hé" → "he"); hyphens and apostrophes removed
   ("sta-op" → "staop"); other punctuation removed; fillers dropped; wake words dropped from
   the start.
2. **Stop first** (rule 1 below); then a text equal to a phrase is that intent (score 1).
3. **Score**: each phrase is compared (difflib ratio) with every run of whole words of about its
   length, minus {EXTRA_WORD_PENALTY} per word outside the run. A word that merely contains a
   command word ("bezit" ⊃ "zit", "opstaand" ⊃ "opstaan") is another word and never matches it;
   only the stop family may match such words, since erring towards stop is safe.
4. **Stop shadow** (rules 2 and 3 below), then **decide**: a best score under
   {MATCH_THRESHOLD} is rejected (`no_match`), two intents within {AMBIGUITY_MARGIN} of each
   other are rejected (`ambiguous`), else the best intent wins.

## Stop safety

Whisper sometimes writes "stop" as "sta op", and "sta op" makes the robot move. So:

1. **A stop phrase anywhere wins**, as whole words: "stop nu", "nee stop", "loop vooruit stop".
2. **Near "stop" is stop.** A text that is not exactly a phrase, lies within {STOP_RADIUS} edits
   of a stop phrase (word breaks ignored: Whisper moves them) and resembles another intent
   (score {SHADOW_FLOOR} or more) is stop: "staop", "st op", "sta-op", "sto op", "sta opp".
3. **A phrase one slip from a stop phrase matches only exactly.** Such a phrase ("sta op" is
   "stop" plus one letter once word breaks are ignored; listed per language below) is accepted
   only as the whole text; any other match that would choose it ("hond sta op") is stop.

Stopping is always harmless: it ends a motion or does nothing, while standing up or walking is a
motion. A false stop costs a repeat; a false motion could hurt someone. Loading enforces the
rest: the stop intent maps to `stop_move`, and no other phrase contains a stop phrase or is
within one edit (or only a word break) of one. What remains: the exact text "sta op" is stand
up, the seed's own command; "sta stil" and "hou op" are stop phrases no other command resembles.

## Differences from the seed

The seed mapped "ga zitten" to StandDown (lie down). ha-voice maps **"ga zitten" to `sit`**
(Sit, 1009) and **"ga liggen" to `stand_down`** (StandDown, 1005), as the words say. The seed
also matched words inside words ("zit" in "bezit"); ha-voice matches whole words only.
"""


def render_commands_markdown() -> str:
    """The text of docs/commands.md, generated from every packaged vocabulary."""
    sections = [_language_section(Vocabulary.load(language)) for language in LANGUAGES]
    return "\n".join([_PROSE, *sections]).rstrip("\n") + "\n"


def _language_section(vocabulary: Vocabulary) -> str:
    def quoted(items: Sequence[str]) -> str:
        return ", ".join(f"`{item}`" for item in items) or "none"

    header = ["intent", "phrases", "action", "parameters", "response"]
    rows = [
        [
            f"`{intent.name}`" + (" (stop family)" if intent.stop else ""),
            ", ".join(f'"{phrase}"' for phrase in intent.phrases),
            _action_text(intent.action),
            _params_text(intent.params),
            intent.response,
        ]
        for intent in vocabulary.intents
    ]
    exact_only = quoted(sorted(vocabulary.confusable_phrases))
    answers = "; ".join(f'{key}: "{text}"' for key, text in vocabulary.responses.items())
    return "\n".join(
        [
            f"## {vocabulary.name} (`{vocabulary.language}`, {vocabulary.source})",
            "",
            f"Wake words: {quoted(vocabulary.wake_words)}. Fillers: "
            f"{quoted(sorted(vocabulary.fillers))}. Exact only (rule 3): {exact_only}.",
            "",
            f"A command that did not do what its response says answers otherwise ({answers}).",
            "",
            *table(header, rows),
            "",
        ]
    )


def _action_text(action: Action | None) -> str:
    if action is None:
        return "none (answer only)"
    return f"`{action.value}` ({ACTIONS[action].api_id})"


_UNITS: Final = {"vx": "m/s", "vy": "m/s", "vyaw": "rad/s", "duration_s": "s"}


def _params_text(params: Mapping[str, float]) -> str:
    return ", ".join(
        f"{key} {value:g} {_UNITS.get(key, '')}".rstrip() for key, value in params.items()
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`--markdown` prints docs/commands.md; TEXT prints what TEXT matches (exit 1 if nothing)."""
    parser = argparse.ArgumentParser(
        prog="python -m ha_voice.voice.intents", description="Document or try the vocabulary."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--markdown", action="store_true", help="print docs/commands.md")
    mode.add_argument("text", nargs="?", help="a transcript to match")
    parser.add_argument("--language", default="nl", choices=LANGUAGES)
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_commands_markdown())
        return 0
    result = Vocabulary.load(args.language).match(args.text)
    print(result)
    return 0 if isinstance(result, Match) else 1


if __name__ == "__main__":
    sys.exit(main())
