"""Scoring vocabulary phrases against encoded audio with Whisper's decoder (CTranslate2).

Two CTranslate2 calls, both on the encoder output of the trimmed utterance:
- `Scorer.first_logprobs`: one greedy step after the transcribe prompt (and an optional forced
  wake word): the log-probability of every possible first token. A phrase's mean log-probability
  per token can never exceed (first token's log-probability) / (its token count), since every
  other token's is ≤ 0: an upper bound that rules most phrases out without scoring them.
- `Scorer.mean_logprobs`: `Whisper.align`, which runs the decoder over each phrase in one
  parallel pass (not a step per token as `generate` does) and returns every token's probability
  (softmax over the text tokens): ~4 ms a phrase for a 1–2 s command with base int8 on 2 cores.

Invariants: scores and bounds are over the same distribution (text tokens only, below
end-of-text), so a bound is a bound up to int8 rounding (`BOUND_SLACK`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ha_voice.voice.intents import Vocabulary

__all__ = [
    "BOUND_SLACK",
    "PhraseForm",
    "Scored",
    "Scorer",
    "phrase_forms",
    "wake_form",
    "wake_prefix",
]

# generate's step and align's parallel pass round int8 differently; measured differences in
# per-token log-probability were below 0.02, so a bound is loosened by this much (nats).
BOUND_SLACK: Final = 0.1
# A probability is never taken as below this before the log (align returns float32 probs).
_MIN_PROB: Final = 1e-30


@dataclass(frozen=True)
class PhraseForm:
    """One way to say an intent's phrase, as text tokens after the transcribe prompt.

    The score covers `tokens[scored_from:]`: a wake word before the phrase conditions it but is
    no part of its score, so phrases with and without one compare."""

    text: str  # what was scored, as shown: "sta op" or "robot, sta op"
    phrase: str  # the vocabulary phrase
    intent: str
    stop: bool
    tokens: tuple[int, ...]
    scored_from: int = 0

    @property
    def scored_tokens(self) -> int:
        """How many tokens the score averages over."""
        return len(self.tokens) - self.scored_from


@dataclass(frozen=True)
class Scored:
    """A phrase form with its mean log-probability per scored token (nats, ≤ 0)."""

    form: PhraseForm
    score: float


def _whisper_text(text: str, capitalise: bool) -> str:
    """How Whisper writes a short utterance: a leading space, capitalised when it starts it."""
    return " " + (text[:1].upper() + text[1:] if capitalise else text)


def phrase_forms(vocabulary: Vocabulary, tokenizer: Any) -> tuple[PhraseForm, ...]:
    """Every phrase of every intent as the tokens of " Phrase." (faster-whisper's tokenizer)."""
    return tuple(
        PhraseForm(
            phrase,
            phrase,
            intent.name,
            intent.stop,
            tuple(tokenizer.encode(_whisper_text(phrase, True) + ".")),
        )
        for intent in vocabulary.intents
        for phrase in intent.phrases
    )


def wake_prefix(wake: str, tokenizer: Any) -> tuple[int, ...]:
    """The tokens of " Wake," as Whisper would write a wake word before a command."""
    return tuple(tokenizer.encode(_whisper_text(wake, True) + ","))


def wake_form(form: PhraseForm, wake: str, tokenizer: Any) -> PhraseForm:
    """`form` said after `wake`: " Robot, sta op.", scored from "sta"."""
    prefix = wake_prefix(wake, tokenizer)
    tokens = tuple(tokenizer.encode(_whisper_text(form.phrase, False) + "."))
    return PhraseForm(
        f"{wake}, {form.phrase}", form.phrase, form.intent, form.stop, prefix + tokens, len(prefix)
    )


class Scorer:
    """The two decoder calls of one model and language (see the module docstring)."""

    def __init__(self, whisper_model: Any, tokenizer: Any) -> None:
        self._ct2 = importlib.import_module("ctranslate2")
        self._model = whisper_model.model  # ctranslate2.models.Whisper
        self._sot = list(tokenizer.sot_sequence)
        self._prompt = [*self._sot, tokenizer.no_timestamps]
        self._text_vocabulary = int(tokenizer.eot)  # text tokens are the ids below end-of-text

    def first_logprobs(
        self, encoded: npt.NDArray[np.float32], prefix: Sequence[int] = ()
    ) -> npt.NDArray[np.float64]:
        """Log-probabilities (over text tokens) of the token after the prompt and the forced
        `prefix`, given `encoded` (1, frames, d_model): shape (eot_id,)."""
        steps = len(prefix) + 1
        # generate decodes min(max_length / 2, max_length - start_step) steps, where start_step
        # is the prompt's length before its last token (CTranslate2 whisper.cc).
        max_length = max(2 * steps, steps + len(self._prompt) - 1)
        result = self._model.generate(
            self._ct2.StorageView.from_array(encoded),
            [self._prompt + list(prefix)],
            beam_size=1,
            max_length=max_length,
            return_logits_vocab=True,
            suppress_blank=False,
            suppress_tokens=[],
        )[0]
        if len(result.logits[0]) < steps:
            raise RuntimeError(f"CTranslate2 returned {len(result.logits[0])} of {steps} logits")
        logits = np.asarray(result.logits[0][len(prefix)], dtype=np.float64)
        text = logits[: self._text_vocabulary]
        shifted = text - text.max()
        return np.asarray(shifted - np.log(np.exp(shifted).sum()), dtype=np.float64)

    def mean_logprobs(
        self, encoded: npt.NDArray[np.float32], frames: int, forms: Sequence[PhraseForm]
    ) -> npt.NDArray[np.float64]:
        """Each form's mean log-probability per scored token given `encoded` (1, frames / 2,
        d_model) of `frames` mel frames: shape (len(forms),)."""
        if not forms:
            return np.zeros(0, dtype=np.float64)
        tiled = self._ct2.StorageView.from_array(np.repeat(encoded, len(forms), axis=0))
        results = self._model.align(
            tiled, self._sot, [list(f.tokens) for f in forms], frames, median_filter_width=1
        )
        scores = np.empty(len(forms), dtype=np.float64)
        for index, (form, result) in enumerate(zip(forms, results, strict=True)):
            probs = np.asarray(result.text_token_probs, dtype=np.float64)[form.scored_from :]
            scores[index] = float(np.log(np.maximum(probs, _MIN_PROB)).mean())
        return scores
