"""The generated English -> German-like task: determinism, splits, and the grammar."""

from collections import Counter

import numpy as np
import pytest

from transformer.data import generated
from transformer.data.generated import (
    LEXICON,
    MAX_SOURCE_TOKENS,
    MAX_TARGET_TOKENS,
    MIN_SOURCE_TOKENS,
    Clause,
    NounPhrase,
    PrepPhrase,
    Sentence,
    generate_pair,
    generate_splits,
    render_sentence,
)


def phrase(noun, adjective=None, *, plural=False, definite=True):
    return NounPhrase(
        LEXICON["noun"][noun],
        plural=plural,
        definite=definite,
        adjective=LEXICON["adjective"][adjective] if adjective else None,
    )


def clause(subject, verb, obj=None, *, pp=None, adverb=None, **options):
    return Clause(
        subject,
        LEXICON["verb"][verb],
        object=obj,
        pp=PrepPhrase(LEXICON["preposition"][pp[0]], pp[1]) if pp else None,
        adverb=LEXICON["adverb"][adverb] if adverb else None,
        **options,
    )


def joined(main, conjunction, second, *, second_first=False):
    return Sentence(main, second, LEXICON["conjunction"][conjunction], second_first=second_first)


MAN, WOMAN, DOG, DOOR = phrase("man"), phrase("woman"), phrase("dog"), phrase("door")
WOMAN_OPENS_DOOR = clause(WOMAN, "open", DOOR)

EXAMPLES = [
    pytest.param(
        Sentence(clause(DOG, "see", phrase("cat"))),
        "the dog sees the cat .",
        "der Hund sieht die Katze .",
        id="svo",
    ),
    pytest.param(
        Sentence(clause(phrase("dog", plural=True), "see", phrase("cat", plural=True))),
        "the dogs see the cats .",
        "die Hunde sehen die Katzen .",
        id="plural-agreement",
    ),
    pytest.param(
        Sentence(clause(phrase("dog", "big"), "follow", phrase("dog", "small"))),
        "the big dog follows the small dog .",
        "der große Hund folgt dem kleinen Hund .",
        id="nominative-and-dative-object",
    ),
    pytest.param(
        Sentence(clause(MAN, "see", phrase("dog", "big"), pp=("with", phrase("cat", "small")))),
        "the man sees the big dog with the small cat .",
        "der Mann sieht den großen Hund mit der kleinen Katze .",
        id="accusative-and-dative-pp",
    ),
    pytest.param(
        Sentence(
            clause(
                phrase("man", "old", definite=False), "find", phrase("book", "new", definite=False)
            )
        ),
        "an old man finds a new book .",
        "ein alter Mann findet ein neues Buch .",
        id="indefinite-mixed-endings",
    ),
    pytest.param(
        Sentence(
            clause(phrase("girl", definite=False), "help", phrase("child", "small", definite=False))
        ),
        "a girl helps a small child .",
        "ein Mädchen hilft einem kleinen Kind .",
        id="indefinite-dative",
    ),
    pytest.param(
        Sentence(clause(MAN, "go", pp=("with", phrase("dog", "big", plural=True, definite=False)))),
        "the man goes with big dogs .",
        "der Mann geht mit großen Hunden .",
        id="bare-plural-dative",
    ),
    pytest.param(
        Sentence(WOMAN_OPENS_DOOR),
        "the woman opens the door .",
        "die Frau macht die Tür auf .",
        id="separable-main",
    ),
    pytest.param(
        joined(clause(MAN, "see", DOG, tense="perfect"), "because", WOMAN_OPENS_DOOR),
        "the man has seen the dog , because the woman opens the door .",
        "der Mann hat den Hund gesehen , weil die Frau die Tür aufmacht .",
        id="perfect-and-separable-subordinate",
    ),
    pytest.param(
        joined(
            clause(DOG, "sleep"), "when", clause(phrase("man", plural=True), "go", tense="perfect")
        ),
        "the dog sleeps , when the men have gone .",
        "der Hund schläft , wenn die Männer gegangen sind .",
        id="perfect-with-sein-subordinate",
    ),
    pytest.param(
        joined(clause(MAN, "see", DOG), "because", WOMAN_OPENS_DOOR, second_first=True),
        "because the woman opens the door , the man sees the dog .",
        "weil die Frau die Tür aufmacht , sieht der Mann den Hund .",
        id="fronted-subordinate-inversion",
    ),
    pytest.param(
        Sentence(clause(MAN, "see", DOG, adverb="today", adverb_fronted=True)),
        "today the man sees the dog .",
        "heute sieht der Mann den Hund .",
        id="fronted-adverb-inversion",
    ),
    pytest.param(
        Sentence(clause(MAN, "see", DOG, adverb="today")),
        "the man sees the dog today .",
        "der Mann sieht heute den Hund .",
        id="adverb-in-middle-field",
    ),
    pytest.param(
        Sentence(clause(MAN, "see", DOG, negated=True)),
        "the man does not see the dog .",
        "der Mann sieht den Hund nicht .",
        id="negation-main",
    ),
    pytest.param(
        Sentence(clause(MAN, "see", phrase("dog", definite=False), negated=True)),
        "the man does not see a dog .",
        "der Mann sieht keinen Hund .",
        id="negation-kein",
    ),
    pytest.param(
        Sentence(
            clause(
                phrase("man", plural=True),
                "see",
                phrase("dog", plural=True, definite=False),
                tense="perfect",
                negated=True,
            )
        ),
        "the men have not seen dogs .",
        "die Männer haben keine Hunde gesehen .",
        id="negation-kein-plural-perfect",
    ),
    pytest.param(
        joined(clause(DOG, "sleep"), "although", clause(WOMAN, "open", DOOR, negated=True)),
        "the dog sleeps , although the woman does not open the door .",
        "der Hund schläft , obwohl die Frau die Tür nicht aufmacht .",
        id="negation-subordinate",
    ),
    pytest.param(
        Sentence(clause(phrase("child"), "run", pp=("to", phrase("dog", "big")))),
        "the child runs to the big dog .",
        "das Kind läuft zum großen Hund .",
        id="contraction-zum",
    ),
    pytest.param(
        Sentence(clause(phrase("child"), "come", pp=("from", phrase("house")), tense="perfect")),
        "the child has come from the house .",
        "das Kind ist vom Haus gekommen .",
        id="contraction-vom",
    ),
    pytest.param(
        Sentence(clause(MAN, "say", complement=WOMAN_OPENS_DOOR)),
        "the man says that the woman opens the door .",
        "der Mann sagt , dass die Frau die Tür aufmacht .",
        id="dass-clause",
    ),
    pytest.param(
        Sentence(clause(WOMAN, "open", DOOR, tense="can")),
        "the woman can open the door .",
        "die Frau kann die Tür aufmachen .",
        id="modal-infinitive",
    ),
    pytest.param(
        Sentence(clause(phrase("woman", plural=True), "open", DOOR, tense="want", negated=True)),
        "the women do not want to open the door .",
        "die Frauen wollen die Tür nicht aufmachen .",
        id="modal-negated",
    ),
    pytest.param(
        joined(
            clause(MAN, "sleep"), "and", clause(WOMAN, "work", adverb="now", adverb_fronted=True)
        ),
        "the man sleeps and now the woman works .",
        "der Mann schläft und jetzt arbeitet die Frau .",
        id="coordination-keeps-v2",
    ),
]


@pytest.mark.parametrize(("sentence", "english", "german"), EXAMPLES)
def test_hand_checked_translations(sentence, english, german):
    assert render_sentence(sentence) == (english, german)


def test_generate_pair_is_deterministic():
    first = [generate_pair(np.random.default_rng(3)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert [generate_pair(rng_a) for _ in range(50)] == [generate_pair(rng_b) for _ in range(50)]


def test_splits_are_deterministic_and_seed_dependent():
    splits = generate_splits(11, 300, 50, 50)
    assert splits == generate_splits(11, 300, 50, 50)
    assert splits["train"] != generate_splits(12, 300, 50, 50)["train"]


def test_splits_have_requested_sizes_and_disjoint_sources():
    splits = generate_splits(0, 2000, 300, 300)
    assert {name: len(pairs) for name, pairs in splits.items()} == {
        "train": 2000,
        "validation": 300,
        "test": 300,
    }
    sources = {name: {english for english, _ in pairs} for name, pairs in splits.items()}
    assert len(sources["train"]) == 2000
    assert not sources["train"] & sources["validation"]
    assert not sources["train"] & sources["test"]
    assert not sources["validation"] & sources["test"]


def test_splits_reject_impossible_requests(monkeypatch):
    with pytest.raises(ValueError):
        generate_splits(0, -1, 0, 0)
    monkeypatch.setattr(generated, "_sample_pair", lambda sampler: ("the man sleeps .", "x ."))
    with pytest.raises(ValueError, match="distinct"):
        generate_splits(0, 2, 0, 0)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(2024)
    return [generate_pair(rng) for _ in range(20_000)]


def test_lengths_and_tokenisation(samples):
    german_nouns = {
        form
        for noun in LEXICON["noun"].values()
        for form in (noun.german, noun.german_plural, noun.german_plural + "n")
    }
    for english, german in samples[:5000]:
        source, target = english.split(" "), german.split(" ")
        assert MIN_SOURCE_TOKENS <= len(source) <= MAX_SOURCE_TOKENS, english
        assert len(target) <= MAX_TARGET_TOKENS, german
        assert source[-1] == target[-1] == "."
        assert all(source) and all(target), (english, german)  # no doubled spaces
        assert english == english.lower()
        assert all(word in german_nouns for word in target if word[0].isupper()), german


def test_vocabulary_is_a_few_hundred_words(samples):
    english = {word for pair in samples for word in pair[0].split()}
    german = {word for pair in samples for word in pair[1].split()}
    assert 150 <= len(english) <= 500
    assert 150 <= len(german) <= 600


def test_each_source_has_exactly_one_target(samples):
    targets: dict[str, str] = {}
    for english, german in samples:
        assert targets.setdefault(english, german) == german, english


def test_sample_covers_the_phenomena(samples):
    words = Counter(word for _, german in samples for word in german.split())
    for marker in ("weil", "wenn", "obwohl", "dass", "und", "aber", "nicht", "kein", "keinen"):
        assert words[marker] > 20, marker
    for marker in ("zum", "zur", "vom", "dem", "einem", "heute", "gestern", "ist", "sind"):
        assert words[marker] > 20, marker
    single_clause = sum("," not in german and " und " not in german for _, german in samples)
    assert 0.3 < single_clause / len(samples) < 0.6
