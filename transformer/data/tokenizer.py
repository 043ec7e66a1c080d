"""A word-level tokenizer built from a corpus, with no download.

Words and punctuation marks are separate tokens. For the embedded task's closed vocabulary
this is exact and keeps sequences short. Ids 0-3 are the project's special tokens
(`transformer.special_tokens`).
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Sequence

from transformer.special_tokens import EOS_ID, NUM_SPECIAL, PAD_ID, UNK_ID

_SPECIAL_TOKENS = ("<pad>", "</s>", "<s>", "<unk>")
_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")
_SPACE_BEFORE_MARK = re.compile(r" ([.,;:!?])")


def split_words(text: str) -> list[str]:
    """'der Mann schläft, weil' -> ['der', 'Mann', 'schläft', ',', 'weil']."""
    return _WORD_OR_MARK.findall(text)


def join_words(words: Iterable[str]) -> str:
    """Inverse of split_words for text whose marks follow a word: no space before , . etc."""
    return _SPACE_BEFORE_MARK.sub(r"\1", " ".join(words))


class WordTokenizer:
    """Maps space-separated words to ids and back. One vocabulary serves both languages."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[:NUM_SPECIAL]) != _SPECIAL_TOKENS:
            raise ValueError(f"A vocabulary must start with the special tokens {_SPECIAL_TOKENS}.")
        if len(set(words)) != len(words):
            raise ValueError("A vocabulary must not repeat a word.")
        self.words = tuple(words)
        self._ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: Iterable[str], max_vocab_size: int) -> WordTokenizer:
        """The most frequent words of `sentences` (ties alphabetical), at most
        `max_vocab_size` entries including the special tokens."""
        counts = collections.Counter(w for s in sentences for w in split_words(s))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(list(_SPECIAL_TOKENS) + ranked[: max_vocab_size - NUM_SPECIAL])

    @classmethod
    def load(cls, path: str) -> WordTokenizer:
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f])

    def save(self, path: str) -> None:
        """Writes one word per line, atomically (a crash never leaves half a vocabulary)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(w + "\n" for w in self.words))
        os.replace(tmp, path)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Word ids of `text` followed by EOS."""
        return [self._ids.get(w, UNK_ID) for w in split_words(text)] + [EOS_ID]

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text of `ids` up to the first EOS, without padding."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i != PAD_ID:
                words.append(self.words[i])
        return join_words(words)
