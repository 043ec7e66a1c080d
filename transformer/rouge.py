"""ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F1 of summaries, through Google's `rouge-score`.

Settings, stated in every signature: Porter stemming on (`use_stemmer=True`), rouge-score's
own tokenizer (lowercase, runs of [a-z0-9]), F1 averaged over the summaries, times 100.
ROUGE-Lsum scores the longest common subsequence sentence by sentence; rouge-score splits
sentences itself only with NLTK's punkt data, a download no machine here can make, so each
summary is split first by NLTK's Punkt algorithm with its untrained parameters plus a list of
English abbreviations (no data file), and its sentences joined by newlines, which ROUGE-Lsum
reads as sentence ends.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Periods that end an abbreviation, not a sentence (lowercase, without the final period).
ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e",
                 "a.m", "p.m", "approx", "no")  # fmt: skip


@functools.cache
def _sentence_splitter():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    parameters = PunktParameters()
    parameters.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(parameters)


def sentences(text: str) -> list[str]:
    """The sentences of `text`, as ROUGE-Lsum sees them."""
    return [s for line in text.splitlines() for s in _sentence_splitter().tokenize(line)]


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeL", "rougeLsum"}: mean F1 x 100 over the pairs."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} summaries for {len(references)} references.")
    totals = {name: [] for name in ROUGE_TYPES}
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        split = ["\n".join(sentences(t)) for t in (reference, hypothesis)]
        scores = _scorer().score(*split)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name].append(scores[name].fmeasure)
    return {name: 100.0 * float(np.mean(values)) for name, values in totals.items()}


def signature(count: int) -> str:
    """How the figures were computed, as sacreBLEU's signature says it for BLEU."""
    from importlib.metadata import version

    return (
        f"rouge-score {version('rouge-score')}, F1 mean of {count}, stemmer: Porter, "
        f"tokenizer: default (lowercase [a-z0-9]+), Lsum sentences: NLTK {version('nltk')} "
        "Punkt, untrained, English abbreviations"
    )
