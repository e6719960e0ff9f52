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
    "PRIOR_WEIGHT",
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
# How much of a phrase's log-probability given silence is taken off its score. Whisper's decoder
# likes some texts whatever it hears ("Hallo robot, hallo." after "hallo robot, hou op"); taking
# half of that prior off (pointwise mutual information, damped) raised top-1 intent accuracy on
# the generated set from 88 to 95 % on the tuning voices and from 73 to 83 % on held-out ones
# (0, 0.25, 0.75 and 1 were worse).
PRIOR_WEIGHT: Final = 0.5
# A probability is never taken as below this before the log (align returns float32 probs).
_MIN_PROB: Final = 1e-30


@dataclass(frozen=True)
class PhraseForm:
    """One way to say an intent's phrase, as text tokens after the transcribe prompt.

    The score covers all tokens, a wake word's included: it is the likelihood of the whole
    utterance as that text, so "hallo robot, halt" is not heard as the phrase "hallo" alone."""

    text: str  # what was scored, as shown: "sta op" or "robot, sta op"
    phrase: str  # the vocabulary phrase
    intent: str
    stop: bool
    tokens: tuple[int, ...]
    phrase_from: int = 0  # where the phrase's tokens start (after a wake word's)


@dataclass(frozen=True)
class Scored:
    """A phrase form as heard: its mean log-probability per token given the audio (nats, ≤ 0)
    and the score decisions compare, that log-probability less PRIOR_WEIGHT × the form's mean
    log-probability given silence (the decoder's own liking for the text)."""

    form: PhraseForm
    score: float
    logprob: float


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
    """`form` said after `wake`: " Robot, sta op."."""
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
        self, encoded: npt.NDArray[np.float32], prefixes: Sequence[Sequence[int]] = ((),)
    ) -> list[tuple[float, npt.NDArray[np.float64]]]:
        """Per forced prefix (a wake word's tokens, or none), in one batched call: the summed
        log-probability of the prefix after the prompt, and the log-probabilities of every token
        after it, shape (eot_id,); given `encoded` (1, frames / 2, d_model). Over text tokens
        only, as `mean_logprobs`."""
        longest = max(len(p) for p in prefixes)
        steps = longest + 1
        # Prompts of one length (CTranslate2 requires it): a shorter prefix is padded with its
        # last token, which cannot change the logits before it (the decoder is causal).
        prompts = [
            self._prompt + [*p] + [p[-1] if p else self._prompt[-1]] * (longest - len(p))
            for p in prefixes
        ]
        # generate decodes min(max_length / 2, max_length - start_step) steps, where start_step
        # is the prompt's length before its last token (CTranslate2 whisper.cc).
        max_length = max(2 * steps, steps + len(self._prompt) - 1)
        results = self._model.generate(
            self._ct2.StorageView.from_array(np.repeat(encoded, len(prompts), axis=0)),
            prompts,
            beam_size=1,
            max_length=max_length,
            return_logits_vocab=True,
            suppress_blank=False,
            suppress_tokens=[],
        )
        answers = []
        for prefix, result in zip(prefixes, results, strict=True):
            logits = result.logits[0]
            if len(logits) <= len(prefix):
                raise RuntimeError(f"CTranslate2 returned {len(logits)} of {steps} logits")
            prefix_sum = sum(
                float(self._text_logprobs(logits[k])[token]) for k, token in enumerate(prefix)
            )
            answers.append((prefix_sum, self._text_logprobs(logits[len(prefix)])))
        return answers

    def _text_logprobs(self, logits: Any) -> npt.NDArray[np.float64]:
        """log softmax of one position's logits over the text tokens."""
        text = np.asarray(logits, dtype=np.float64)[: self._text_vocabulary]
        shifted = text - text.max()
        return np.asarray(shifted - np.log(np.exp(shifted).sum()), dtype=np.float64)

    def mean_logprobs(
        self, encoded: npt.NDArray[np.float32], frames: int, forms: Sequence[PhraseForm]
    ) -> npt.NDArray[np.float64]:
        """Each form's mean log-probability per token given `encoded` (1, frames / 2,
        d_model) of `frames` mel frames: shape (len(forms),)."""
        if not forms:
            return np.zeros(0, dtype=np.float64)
        tiled = self._ct2.StorageView.from_array(np.repeat(encoded, len(forms), axis=0))
        results = self._model.align(
            tiled, self._sot, [list(f.tokens) for f in forms], frames, median_filter_width=1
        )
        scores = np.empty(len(forms), dtype=np.float64)
        for index, result in enumerate(results):
            probs = np.asarray(result.text_token_probs, dtype=np.float64)
            scores[index] = float(np.log(np.maximum(probs, _MIN_PROB)).mean())
        return scores
