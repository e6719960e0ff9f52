"""Text → intent: the seed's phrases, whole-word matching, normalisation, and stop safety.

The safety tests are exhaustive over every corruption within two edits of "stop", "sta op" and
"staop" (the words Whisper confuses), and property-based over random text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha_voice.robot.base import Action
from ha_voice.voice.intents import (
    LANGUAGES,
    MATCH_THRESHOLD,
    REGENERATE_DOCS,
    Match,
    Rejection,
    Vocabulary,
    VocabularyError,
    edit_distance,
    fold,
    main,
    render_commands_markdown,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "commands.md"

NL = Vocabulary.load("nl")
EN = Vocabulary.load("en")

# The seed's commands (and ours), with the action each must give.
NL_COMMANDS = {
    "sta op": Action.STAND_UP,
    "sta rechtop": Action.STAND_UP,
    "opstaan": Action.STAND_UP,
    "rechtop staan": Action.STAND_UP,
    "ga zitten": Action.SIT,
    "zit": Action.SIT,
    "zitten": Action.SIT,
    "stop": Action.STOP_MOVE,
    "stoppen": Action.STOP_MOVE,
    "ga liggen": Action.STAND_DOWN,
    "liggen": Action.STAND_DOWN,
    "loop vooruit": Action.MOVE,
    "loop achteruit": Action.MOVE,
    "draai naar links": Action.MOVE,
    "draai naar rechts": Action.MOVE,
    "zeg hallo": Action.HELLO,
    "strek je uit": Action.STRETCH,
    "dans": Action.DANCE1,
    "herstel": Action.RECOVERY_STAND,
    "sta weer op": Action.RECOVERY_STAND,
}
NL_HELP = ("help", "hulp", "wat kan je")
EN_COMMANDS = {
    "stand up": Action.STAND_UP,
    "sit": Action.SIT,
    "sit down": Action.SIT,
    "stop": Action.STOP_MOVE,
    "lie down": Action.STAND_DOWN,
    "walk forward": Action.MOVE,
    "walk back": Action.MOVE,
    "turn left": Action.MOVE,
    "turn right": Action.MOVE,
    "say hello": Action.HELLO,
    "stretch": Action.STRETCH,
    "dance": Action.DANCE1,
    "recover": Action.RECOVERY_STAND,
}
MOTION_PARAMS = {
    "loop vooruit": {"vx": 0.3, "duration_s": 2.0},
    "loop achteruit": {"vx": -0.3, "duration_s": 2.0},
    "draai naar links": {"vyaw": 0.6, "duration_s": 1.5},
    "draai naar rechts": {"vyaw": -0.6, "duration_s": 1.5},
}


def _matched(vocabulary: Vocabulary, text: str) -> Match:
    result = vocabulary.match(text)
    assert isinstance(result, Match), f"{text!r} was rejected: {result}"
    return result


def _action_of(vocabulary: Vocabulary, text: str) -> Action | None:
    result = vocabulary.match(text)
    return result.intent.action if isinstance(result, Match) else None


def _is_stop_or_rejected(vocabulary: Vocabulary, text: str) -> bool:
    result = vocabulary.match(text)
    return isinstance(result, Rejection) or result.intent.stop


# The seed's phrases, and every phrase of both files


@pytest.mark.parametrize(("phrase", "action"), NL_COMMANDS.items())
def test_every_seed_phrase_maps_to_its_action(phrase: str, action: Action) -> None:
    match = _matched(NL, phrase)
    assert (match.intent.action, match.score, match.rule) in {
        (action, 1.0, "exact"),
        (action, 1.0, "stop_phrase"),
    }


@pytest.mark.parametrize("phrase", NL_HELP)
def test_help_is_an_intent_without_robot_action(phrase: str) -> None:
    match = _matched(NL, phrase)
    assert match.intent.name == "help"
    assert match.intent.action is None
    assert "sta op" in match.intent.response


@pytest.mark.parametrize(("phrase", "params"), MOTION_PARAMS.items())
def test_motions_carry_velocity_and_duration(phrase: str, params: dict[str, float]) -> None:
    intent = _matched(NL, phrase).intent
    assert dict(intent.params) == params
    assert intent.duration_s == params["duration_s"]
    assert "duration_s" not in intent.action_params


def test_ga_zitten_is_sit_and_ga_liggen_is_stand_down_unlike_the_seed() -> None:
    assert _action_of(NL, "ga zitten") is Action.SIT
    assert _action_of(NL, "ga liggen") is Action.STAND_DOWN


@pytest.mark.parametrize(("phrase", "action"), EN_COMMANDS.items())
def test_english_equivalents(phrase: str, action: Action) -> None:
    assert _action_of(EN, phrase) is action


def test_english_help_and_responses_are_english() -> None:
    assert _matched(EN, "help").intent.action is None
    assert _matched(EN, "stand up").intent.response == "Standing up."
    assert _matched(NL, "sta op").intent.response == "Ik sta op."


@pytest.mark.parametrize("vocabulary", [NL, EN], ids=LANGUAGES)
def test_every_phrase_of_the_file_matches_its_own_intent(vocabulary: Vocabulary) -> None:
    for intent in vocabulary.intents:
        for phrase in intent.phrases:
            assert _matched(vocabulary, phrase).intent == intent, phrase


# Whole words only


@pytest.mark.parametrize(
    ("text", "not_action"),
    [
        ("ik bezit een hond", Action.SIT),
        ("bezit", Action.SIT),
        ("opstaand", Action.STAND_UP),
        ("de opstaande kraag", Action.STAND_UP),
        ("ligstoel", Action.STAND_DOWN),
        ("dansschool", Action.DANCE1),
    ],
)
def test_command_words_inside_other_words_do_not_match(text: str, not_action: Action) -> None:
    assert _action_of(NL, text) is not not_action


def test_english_whole_words_only() -> None:
    assert _action_of(EN, "sitting") is not Action.SIT
    assert _action_of(EN, "outstanding") is not Action.STAND_UP


# Normalisation


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("STA OP", "sta op"),
        ("Sta op!", "sta op"),
        ("Hé hond, sta op!", "sta op"),
        ("hey hond sta op", "sta op"),
        ("Robot: ga zitten.", "ga zitten"),
        ("robot, eh, ga even zitten alsjeblieft", "ga zitten"),
        ("hé robot robot zit", "zit"),
        ("zit robot", "zit robot"),  # a wake word only at the start
        ("  loop \t vooruit \n ", "loop vooruit"),
        ("sta-op", "staop"),  # a hyphen joins, as Whisper hears it: one word
        ("Welke commando’s?", "welke commandos"),
        ("Crème brûlée", "creme brulee"),
        ("eh uh nou", ""),
        ("robot", ""),
    ],
)
def test_normalise(text: str, normalised: str) -> None:
    assert NL.normalise(text) == normalised


def test_any_number_of_wake_words_is_stripped() -> None:
    assert NL.normalise("robot, " * 10_000 + "zit") == "zit"


def test_fold_is_case_accent_and_punctuation_blind() -> None:
    assert fold("HÉ, Hond!!  Zit...") == "he hond zit"
    assert fold("ÇA ÑO ß") == "ca no ss"


def test_english_normalise_strips_wake_words_and_fillers() -> None:
    assert EN.normalise("Hey dog, um, please sit down now!") == "sit down"
    assert _action_of(EN, "Robot, just stand up please") is Action.STAND_UP


@pytest.mark.parametrize("text", ["Hé hond, ga eens even zitten alsjeblieft", "ZIT!", "Zitten."])
def test_normalised_text_matches_exactly(text: str) -> None:
    match = _matched(NL, text)
    assert (match.intent.action, match.score) == (Action.SIT, 1.0)


@pytest.mark.parametrize("text", ["", "   ", "?!", "robot", "eh nou"])
def test_nothing_left_is_rejected_as_empty(text: str) -> None:
    result = NL.match(text)
    assert isinstance(result, Rejection)
    assert result.reason == "empty"


# Fuzzy matching and rejection


@pytest.mark.parametrize(
    ("vocabulary", "text", "action"),
    [
        (NL, "ga zittn", Action.SIT),
        (NL, "ga ligen", Action.STAND_DOWN),
        (NL, "loop vooruut", Action.MOVE),
        (NL, "draai naar lings", Action.MOVE),
        (NL, "opstan", Action.STAND_UP),
        (NL, "rechtop stan", Action.STAND_UP),
        (NL, "zeg halo", Action.HELLO),
        (EN, "walk forwrd", Action.MOVE),
        (EN, "lie dwn", Action.STAND_DOWN),
    ],
)
def test_near_misses_are_accepted_above_the_threshold(
    vocabulary: Vocabulary, text: str, action: Action
) -> None:
    match = _matched(vocabulary, text)
    assert match.intent.action is action
    assert MATCH_THRESHOLD <= match.score < 1.0
    assert match.rule == "fuzzy"


def test_a_phrase_inside_a_short_sentence_is_found_with_a_lower_score() -> None:
    match = _matched(NL, "kun je rechtop staan")
    assert (match.intent.action, match.rule) == (Action.STAND_UP, "contains")
    assert MATCH_THRESHOLD <= match.score < 1.0


@pytest.mark.parametrize(
    "text",
    [
        "banaan",
        "xyz",
        "wat is het weer vandaag",
        "ik zit vandaag in de auto met mijn hond",  # a command word buried in a sentence
        "zit " + "bla " * 40,
        "zit " + "x" * 100_000,
    ],
)
def test_junk_is_rejected(text: str) -> None:
    result = NL.match(text)
    assert isinstance(result, Rejection)
    assert result.reason == "no_match"
    assert result.score < MATCH_THRESHOLD


def test_a_tie_between_intents_is_rejected_as_ambiguous() -> None:
    result = NL.match("zit dans")
    assert isinstance(result, Rejection)
    assert result.reason == "ambiguous"
    assert {result.candidate, result.runner_up} == {
        _matched(NL, "zit").intent,
        _matched(NL, "dans").intent,
    }


# SAFETY: stop is never a motion, and "stop" / "sta op" confusions never stand up


ALPHABET = "stapo "
SEEDS = ("stop", "sta op", "staop")
# The one string in the set that is a command phrase word for word: the seed's own "sta op".
EXACT_STAND_UP = frozenset({"sta op"})


def _one_edit(word: str) -> set[str]:
    """Every string one insertion, deletion or substitution (from ALPHABET) away from `word`."""
    out: set[str] = set()
    for i in range(len(word) + 1):
        out.update(word[:i] + char + word[i:] for char in ALPHABET)
        if i < len(word):
            out.add(word[:i] + word[i + 1 :])
            out.update(word[:i] + char + word[i + 1 :] for char in ALPHABET)
    return out


def _within_two_edits(seeds: Iterable[str]) -> set[str]:
    ring1 = set().union(*(_one_edit(seed) for seed in seeds))
    return set(seeds) | ring1 | set().union(*(_one_edit(word) for word in ring1))


CORRUPTIONS = sorted(_within_two_edits(SEEDS))


def test_the_corruption_set_is_what_it_claims() -> None:
    assert len(CORRUPTIONS) > 3000
    for text in ("stop", "sta op", "staop", "stap op", "st op", "sto op", "stop op", "sta opp"):
        assert text in CORRUPTIONS
    for text in CORRUPTIONS[::97]:
        assert min(edit_distance(text, seed) for seed in SEEDS) <= 2


@pytest.mark.parametrize(
    ("vocabulary", "exceptions"), [(NL, EXACT_STAND_UP), (EN, frozenset())], ids=LANGUAGES
)
def test_no_corruption_between_stop_and_sta_op_ever_stands_up(
    vocabulary: Vocabulary, exceptions: frozenset[str]
) -> None:
    # Corruptions differ in spaces only once normalised; matching each normalised text once
    # covers them all (normalise is idempotent) at a sixth less cost.
    texts = {vocabulary.normalise(text) for text in CORRUPTIONS}
    results = {text: vocabulary.match(text) for text in texts}
    motions = {
        text: result
        for text, result in results.items()
        if isinstance(result, Match) and not result.intent.stop
    }
    assert set(motions) == exceptions, f"corruptions that became motions: {motions}"
    assert all(motions[text].rule == "exact" for text in exceptions)


@pytest.mark.parametrize(
    "text",
    ["stop", "stap op", "staop", "st op", "sta-op", "stop op", "sto op", "sta opp", "s t o p"],
)
def test_whisper_confusions_are_stop_or_rejected(text: str) -> None:
    assert _action_of(NL, text) is not Action.STAND_UP
    assert _is_stop_or_rejected(NL, text)


@pytest.mark.parametrize("text", ["staop", "st op", "sta-op", "sto op", "sta opp", "stopp"])
def test_near_stop_resolves_to_stop(text: str) -> None:
    assert _action_of(NL, text) is Action.STOP_MOVE


@pytest.mark.parametrize("text", ["hond sta op", "sta op op", "kun je sta op"])
def test_a_phrase_one_slip_from_stop_matches_only_as_the_whole_text(text: str) -> None:
    assert NL.confusable_phrases == {"sta op"}
    match = _matched(NL, text)
    assert (match.intent.action, match.rule) == (Action.STOP_MOVE, "stop_shadow")


@pytest.mark.parametrize("vocabulary", [NL, EN], ids=LANGUAGES)
def test_every_stop_synonym_is_stop(vocabulary: Vocabulary) -> None:
    stop = vocabulary.stop_intent
    assert stop.action is Action.STOP_MOVE
    for phrase in stop.phrases:
        assert _matched(vocabulary, phrase).intent is stop, phrase


SENTENCES = (
    "{} nu",
    "nee {}",
    "loop vooruit {}",
    "{} loop vooruit",
    "sta op {}",
    "{} sta op",
    "draai naar links en {} dan",
    "robot {} alsjeblieft",
    "ik zei {} {}",
)


@pytest.mark.parametrize("sentence", SENTENCES)
def test_a_stop_phrase_anywhere_wins_over_everything(sentence: str) -> None:
    for phrase in NL.stop_intent.phrases:
        text = sentence.format(phrase, phrase)
        match = _matched(NL, text)
        assert (match.intent.action, match.rule) == (Action.STOP_MOVE, "stop_phrase"), text


def test_an_english_stop_anywhere_wins() -> None:
    for text in ("stop now", "no stop", "walk forward stop", "stand up, stop!", "turn left halt"):
        assert _action_of(EN, text) is Action.STOP_MOVE, text


@pytest.mark.parametrize("vocabulary", [NL, EN], ids=LANGUAGES)
def test_no_stop_phrase_in_either_vocabulary_maps_to_a_motion(vocabulary: Vocabulary) -> None:
    stop_phrases = [fold(phrase).split() for phrase in vocabulary.stop_intent.phrases]
    for intent in vocabulary.intents:
        for phrase in intent.phrases:
            words = fold(phrase).split()
            has_stop = any(
                words[i : i + len(stop)] == stop
                for stop in stop_phrases
                for i in range(len(words) - len(stop) + 1)
            )
            assert not has_stop or intent.action is Action.STOP_MOVE, (intent.name, phrase)


_WORDS = st.sampled_from(
    ["stop", "sta", "op", "staop", "stap", "zit", "loop", "vooruit", "robot", "eh", "nee", "hé"]
)
_SEPARATORS = st.sampled_from([" ", ", ", "! ", " - ", "  ", "... "])


@st.composite
def _sentences(draw: st.DrawFn) -> str:
    words = draw(st.lists(_WORDS | st.text(max_size=8), min_size=1, max_size=6))
    return "".join(word + draw(_SEPARATORS) for word in words)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_sentences(), st.text(max_size=40)))
def test_property_text_with_the_word_stop_never_stands_up(text: str) -> None:
    for vocabulary in (NL, EN):
        result = vocabulary.match(text)
        if "stop" in vocabulary.normalise(text).split():
            assert isinstance(result, Match)
            assert result.intent.action is Action.STOP_MOVE


@settings(max_examples=200, deadline=None)
@given(st.one_of(_sentences(), st.text(max_size=40)))
def test_property_normalise_is_idempotent(text: str) -> None:
    for vocabulary in (NL, EN):
        once = vocabulary.normalise(text)
        assert vocabulary.normalise(once) == once


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet="stapo -", max_size=9))
def test_property_stop_alphabet_stands_up_only_on_the_exact_phrase(text: str) -> None:
    """Anything nearer "stop" than every stand-up phrase never stands the robot up ("opsta" is
    a near "opstaan" and may; "stap" or "sto" may not)."""
    said = NL.normalise(text)
    stand_phrases = next(i for i in NL.intents if i.action is Action.STAND_UP).phrases
    nearer_stop = _edits(said, "stop") < min(_edits(said, p) for p in stand_phrases)
    if nearer_stop and said not in EXACT_STAND_UP:
        assert _action_of(NL, text) is not Action.STAND_UP


# Validation: errors name the file, the intent and the field


VALID = """
language = "xx"
wake_words = ["robot"]
fillers = ["eh"]

[responses]
failed = "Failed."
stopped = "Stopped."
unknown = "Unknown."
rejected = "Pardon?"

[intents.stop]
stop = true
action = "stop_move"
phrases = ["stop", "halt"]
response = "Stopping."

[intents.walk]
action = "move"
phrases = ["walk"]
params = { vx = 0.3, duration_s = 2.0 }
response = "Walking."

[intents.sit]
action = "sit"
phrases = ["sit"]
response = "Sitting."
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vocab.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_vocabulary_loads(tmp_path: Path) -> None:
    vocabulary = Vocabulary.from_path(_write(tmp_path, VALID))
    assert _action_of(vocabulary, "robot walk") is Action.MOVE
    assert _action_of(vocabulary, "walk halt") is Action.STOP_MOVE


@pytest.mark.parametrize(
    ("old", "new", "intent", "field", "problem"),
    [
        ('action = "sit"', 'action = "sitt"', "sit", "action", "unknown 'sitt'"),
        ("vx = 0.3", "vx = 9.0", "walk", "params.vx", "outside"),
        ("vx = 0.3", "speed = 0.3", "walk", "params.speed", "not a parameter"),
        ("vx = 0.3", 'vx = "fast"', "walk", "params.vx", "must be a number"),
        (", duration_s = 2.0", "", "walk", "params.duration_s", "needs a duration"),
        ("duration_s = 2.0", "duration_s = 60.0", "walk", "params.duration_s", "outside"),
        ('phrases = ["sit"]', 'phrases = ["sit", "walk"]', "sit", "phrases", "already"),
        ('phrases = ["sit"]', 'phrases = ["Sit!", "sit"]', "sit", "phrases", "already"),
        ('phrases = ["walk"]', 'phrases = ["walk", "walk stop"]', "walk", "phrases", "stop"),
        ('phrases = ["walk"]', 'phrases = ["stop walking"]', "walk", "phrases", "stop"),
        ('phrases = ["walk"]', 'phrases = ["stap"]', "walk", "phrases", "one slip"),
        ('phrases = ["walk"]', 'phrases = ["st op"]', "walk", "phrases", "one slip"),
        ('phrases = ["walk"]', 'phrases = ["eh walk"]', "walk", "phrases", "normalises away"),
        ('phrases = ["walk"]', 'phrases = ["robot walk"]', "walk", "phrases", "normalises away"),
        ('phrases = ["walk"]', "phrases = []", "walk", "phrases", "at least one"),
        ('action = "stop_move"', 'action = "stand_up"', "stop", "action", "stop_move"),
        ('response = "Sitting."', "", "sit", "response", "non-empty string"),
        ('response = "Sitting."', 'respons = "x"', "sit", "respons", "unknown key"),
        ("stop = true", "stop = false", "", "stop", "exactly one"),
        ("stop = true", 'stop = "yes"', "stop", "stop", "true or false"),
        ('rejected = "Pardon?"', "", "", "responses.rejected", "non-empty string"),
        ('rejected = "Pardon?"', 'refused = "x"', "", "responses.refused", "unknown"),
        ("[responses]", "[answers]", "", "answers", "unknown key"),
    ],
)
def test_validation_errors_name_file_intent_and_field(
    tmp_path: Path, old: str, new: str, intent: str, field: str, problem: str
) -> None:
    assert old in VALID
    with pytest.raises(VocabularyError) as caught:
        Vocabulary.from_path(_write(tmp_path, VALID.replace(old, new, 1)))
    error = caught.value
    assert (error.file, error.intent, error.field) == ("vocab.toml", intent, field)
    message = str(error)
    assert message.startswith("vocab.toml: ")
    assert f"'{field}'" in message
    assert not intent or f"'{intent}'" in message
    assert problem in message


def test_a_stop_family_mapped_to_a_motion_is_refused(tmp_path: Path) -> None:
    text = VALID.replace('action = "stop_move"', 'action = "move"\nparams = { duration_s = 1 }')
    with pytest.raises(VocabularyError, match=r"vocab\.toml: intent 'stop', field 'action'"):
        Vocabulary.from_path(_write(tmp_path, text))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match=r"^vocab\.toml: .*not valid TOML"):
        Vocabulary.from_path(_write(tmp_path, "language = "))


def test_unknown_language_is_refused_with_the_known_ones() -> None:
    with pytest.raises(VocabularyError, match="known: nl, en"):
        Vocabulary.load("fr")


def test_language_tags_like_the_seeds_work() -> None:
    assert Vocabulary.load("nl-NL") is NL
    assert Vocabulary.load("en_GB") is EN


# What the robot says: the intent's response only for what happened


@pytest.mark.parametrize(
    ("vocabulary", "said", "sentences"),
    [
        (
            NL,
            "sta op",
            {
                "done": "Ik sta op.",
                "failed": "Dat lukt me nu niet.",
                "stopped": "Ik ben gestopt.",
                "unknown": "Ik weet niet of het gelukt is.",
            },
        ),
        (
            EN,
            "stand up",
            {
                "done": "Standing up.",
                "failed": "I cannot do that now.",
                "stopped": "I stopped.",
                "unknown": "I do not know whether that worked.",
            },
        ),
    ],
)
def test_the_response_follows_the_outcome(
    vocabulary: Vocabulary, said: str, sentences: dict[str, str]
) -> None:
    found = vocabulary.match(said)
    assert isinstance(found, Match)
    for outcome, sentence in sentences.items():
        assert vocabulary.response(found.intent, outcome) == sentence
    success = found.intent.response
    assert vocabulary.response(found.intent, "no such outcome") == sentences["failed"]
    assert all(vocabulary.response(found.intent, o) != success for o in sentences if o != "done")


def test_a_rejection_and_a_talk_only_intent_answer_in_their_language() -> None:
    assert NL.response(None, "rejected") == "Dat heb ik niet verstaan."
    assert EN.response(None, "rejected") == "I did not understand that."
    help_nl = NL.match("help")
    assert isinstance(help_nl, Match)
    assert NL.response(help_nl.intent, "done").startswith("Ik ken:")


# GET /api/commands and docs/commands.md


def test_commands_list_every_intent_as_json() -> None:
    commands = NL.commands()
    assert [command["intent"] for command in commands] == [i.name for i in NL.intents]
    by_name = {command["intent"]: command for command in json.loads(json.dumps(commands))}
    assert by_name["stand_up"]["action"] == "stand_up"
    assert "sta op" in by_name["stand_up"]["phrases"]
    assert by_name["help"]["action"] is None
    assert by_name["walk_forward"]["params"] == {"vx": 0.3, "duration_s": 2.0}


def test_docs_commands_md_is_generated_from_the_vocabularies() -> None:
    expected = render_commands_markdown()
    actual = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    assert actual == expected, f"docs/commands.md is out of date; run: {REGENERATE_DOCS}"


def test_the_docs_state_the_seed_difference_and_the_stop_rule() -> None:
    text = render_commands_markdown()
    assert '"ga zitten" to `sit`' in text
    assert '"ga liggen" to `stand_down`' in text
    assert "## Stop safety" in text
    for language in LANGUAGES:
        assert f"vocab/{language}.toml" in text


def test_main_prints_the_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_commands_markdown()


def test_main_matches_a_transcript(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sta op"]) == 0
    assert "stand_up" in capsys.readouterr().out
    assert main(["--language", "en", "banana"]) == 1
