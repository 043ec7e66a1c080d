"""ROUGE of summaries (transformer.rouge) against the rouge-score package run here by hand on
hand-made examples, and the sentence splitting ROUGE-Lsum reads."""

import numpy as np
import pytest
from rouge_score import rouge_scorer

from transformer import rouge

REFERENCES = [
    "Amanda baked cookies. She will bring Jerry some tomorrow.",
    "Olivia and Olivier are voting for liberals in this election.",
    "Mr. Smith can't come to the meeting at 5 p.m. today. Tim will call him.",
]
HYPOTHESES = [
    "Amanda will bring Jerry cookies tomorrow. She baked them.",
    "Olivia votes for the liberals.",
    "Tim will call Mr. Smith. He can't come to the meeting.",
]
# The same texts split into sentences by hand, one per line, as ROUGE-Lsum reads them.
REFERENCES_SPLIT = [
    "Amanda baked cookies.\nShe will bring Jerry some tomorrow.",
    REFERENCES[1],
    "Mr. Smith can't come to the meeting at 5 p.m. today.\nTim will call him.",
]
HYPOTHESES_SPLIT = [
    "Amanda will bring Jerry cookies tomorrow.\nShe baked them.",
    HYPOTHESES[1],
    "Tim will call Mr. Smith.\nHe can't come to the meeting.",
]


def test_scores_are_the_packages_mean_f1_with_stemming_on_sentences_split_by_hand():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    by_hand = [scorer.score(r, h) for r, h in zip(REFERENCES_SPLIT, HYPOTHESES_SPLIT, strict=True)]
    got = rouge.rouge(HYPOTHESES, REFERENCES)
    for name in rouge.ROUGE_TYPES:
        want = 100 * np.mean([s[name].fmeasure for s in by_hand])
        assert got[name] == pytest.approx(want, abs=1e-9), name
    # Sentence order matters to ROUGE-L over the whole text, not to ROUGE-Lsum.
    assert got["rougeLsum"] > got["rougeL"]


def test_stemming_is_on():
    """ "bakes" and "baked" stem to "bake": a full unigram match only with stemming."""
    assert rouge.rouge(["Amanda bakes cookies."], ["Amanda baked cookies."])["rouge1"] == 100.0


def test_a_perfect_summary_scores_100_and_a_disjoint_one_0():
    assert set(rouge.rouge(REFERENCES, REFERENCES).values()) == {100.0}
    assert set(rouge.rouge(["Nothing here matches."] * 3, REFERENCES).values()) == {0.0}


def test_sentences_end_at_stops_not_at_abbreviations():
    assert rouge.sentences(REFERENCES[2]) == REFERENCES_SPLIT[2].split("\n")
    assert rouge.sentences("Is it? Yes! e.g. this one.\nNext line") == [
        "Is it?", "Yes!", "e.g. this one.", "Next line",
    ]  # fmt: skip


def test_unequal_lists_are_refused_and_the_signature_says_the_settings():
    with pytest.raises(ValueError, match="2 summaries for 3 references"):
        rouge.rouge(HYPOTHESES[:2], REFERENCES)
    signature = rouge.signature(819)
    for setting in ("rouge-score 0.1.2", "F1 mean of 819", "stemmer: Porter", "Punkt"):
        assert setting in signature


def test_the_extractive_baselines_pick_the_first_and_the_longest_utterances():
    from benchmarks.summary_baselines import lead, longest

    dialogue = (
        "A: hi\nB: I will buy the bread today\nA: ok\nB: and the milk too, at 5\nA: thanks a lot!"
    )
    assert lead(dialogue, 3) == "A: hi\nB: I will buy the bread today\nA: ok"
    # The three longest, in the order they were said.
    assert (
        longest(dialogue, 3)
        == "B: I will buy the bread today\nB: and the milk too, at 5\nA: thanks a lot!"
    )
