"""Tokenizers built from a corpus, with no download: whole words, or SentencePiece.

Both share one interface (encode -> ids + EOS, decode -> detokenized text up to EOS,
vocab_size, save/load) and reserve ids 0-3 for the project's special tokens
(`transformer.special_tokens`). Words and punctuation marks are separate word tokens; for the
generated task's closed vocabulary that is exact and keeps sequences short.
"""

from __future__ import annotations

import collections
import io
import os
import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from transformer.config import ConfigError
from transformer.files import write_atomically
from transformer.special_tokens import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID, UNK_ID

_SPECIAL_TOKENS = ("<pad>", "</s>", "<s>", "<unk>")
_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")
_SPACE_BEFORE_MARK = re.compile(r" ([.,;:!?])")


def split_words(text: str) -> list[str]:
    """'der Mann schläft, weil' -> ['der', 'Mann', 'schläft', ',', 'weil']."""
    return _WORD_OR_MARK.findall(text)


def content_ids(ids: Iterable[int]) -> list[int]:
    """The ids before the first EOS, without padding (what a decoder should turn into text)."""
    out = []
    for i in map(int, ids):
        if i == EOS_ID:
            break
        if i != PAD_ID:
            out.append(i)
    return out


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
        write_atomically(path, "".join(w + "\n" for w in self.words))

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Word ids of `text` followed by EOS."""
        return [self._ids.get(w, UNK_ID) for w in split_words(text)] + [EOS_ID]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The token string of every id (special tokens included), for display."""
        return [self.words[int(i)] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text of `ids` up to the first EOS, without padding."""
        return join_words(self.words[i] for i in content_ids(ids))


class SentencePieceTokenizer:
    """A SentencePiece model (BPE or unigram) shared by source and target, as in the paper.

    Trained from the training split on first use; ids 0-3 are the project's special tokens.
    """

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        spec = sentencepiece_model_pb2.ModelProto.FromString(model_proto).trainer_spec
        self.model_type = {spec.BPE: "bpe", spec.UNIGRAM: "unigram"}.get(spec.model_type, "?")

    @classmethod
    def train(
        cls, sentences: Iterable[str], vocab_size: int, model_type: str
    ) -> SentencePieceTokenizer:
        """Trains on `sentences` (both languages) with all characters covered."""
        writer = io.BytesIO()
        try:
            _train_sentencepiece(sentences, writer, vocab_size, model_type)
        except RuntimeError as e:
            if "Vocabulary size too high" not in str(e):
                raise
            most = str(e).rsplit("<=", 1)[-1].strip(" .")
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too large for this training corpus: "
                f"SentencePiece ({model_type}) can make at most {most} pieces from it."
            ) from None
        return cls(writer.getvalue())

    @classmethod
    def load(cls, path: str) -> SentencePieceTokenizer:
        with open(path, "rb") as f:
            return cls(f.read())

    def save(self, path: str) -> None:
        """Writes the model atomically (a crash never leaves half a model)."""
        write_atomically(path, self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        """Piece ids of `text` followed by EOS."""
        return [*self._sp.encode(text), EOS_ID]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of many sentences in one call (SentencePiece batches them in C++)."""
        return [[*ids, EOS_ID] for ids in self._sp.encode(texts)]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The piece string of every id (special tokens included), for display."""
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text of `ids` up to the first EOS, without padding."""
        return self._sp.decode(content_ids(ids))


def _train_sentencepiece(
    sentences: Iterable[str], writer: io.BytesIO, vocab_size: int, model_type: str
) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        character_coverage=1.0,
        input_sentence_size=10_000_000,  # A sample of this many sentences at most.
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )


Tokenizer = WordTokenizer | SentencePieceTokenizer
