"""A task: a tokenizer plus encoded train/validation/test splits, ready to batch."""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

from transformer.config import DataConfig
from transformer.data import embedded
from transformer.data.pipeline import EncodedSplit, TrainBatches, encode_split, eval_batches
from transformer.data.tokenizer import WordTokenizer, join_words

VOCAB_FILE = "vocab.txt"


class VocabularyMismatchError(ValueError):
    """The workdir's stored vocabulary does not fit the config."""


@dataclasses.dataclass(frozen=True)
class Task:
    tokenizer: WordTokenizer
    splits: dict[str, EncodedSplit]

    def train_batches(self, batch_size: int, seed: int, packing: bool) -> TrainBatches:
        """Step-indexed shuffled batches; this process gets its rows of each."""
        return TrainBatches(
            self.splits["train"],
            batch_size,
            seed,
            packing,
            jax.process_index(),
            jax.process_count(),
        )

    def eval_batches(self, split: str, batch_size: int):
        """The whole split in order; this process gets its rows of each batch."""
        return eval_batches(
            self.splits[split], batch_size, jax.process_index(), jax.process_count()
        )


def load_task(config: DataConfig, workdir: str) -> Task:
    """Generates or reads the corpus, and builds (first run) or reloads (resume) the vocabulary
    stored in `workdir`."""
    if config.source != "embedded":
        raise ValueError(f"Unknown data.source {config.source!r}.")
    e = config.embedded
    generated = embedded.generate_splits(e.corpus_seed, e.num_train, e.num_validation, e.num_test)
    # The generator emits space-separated tokens; present it as natural text, like any corpus.
    pairs = {
        name: [(join_words(src.split()), join_words(tgt.split())) for src, tgt in split]
        for name, split in generated.items()
    }

    vocab_path = os.path.join(workdir, VOCAB_FILE)
    if os.path.exists(vocab_path):
        tokenizer = WordTokenizer.load(vocab_path)
        if tokenizer.vocab_size > config.vocab_size:
            raise VocabularyMismatchError(
                f"{vocab_path} holds {tokenizer.vocab_size} tokens but data.vocab_size is "
                f"{config.vocab_size}. Use a new --workdir or the config that made it."
            )
    else:
        tokenizer = WordTokenizer.build(
            (s for pair in pairs["train"] for s in pair), config.vocab_size
        )
        if jax.process_index() == 0:
            tokenizer.save(vocab_path)

    splits = {}
    for name, split_pairs in pairs.items():
        splits[name] = encode_split(split_pairs, tokenizer, config.max_length)
        if splits[name].num_dropped:
            logging.warning(
                "%s: dropped %d of %d pairs longer than data.max_length=%d tokens.",
                name,
                splits[name].num_dropped,
                len(split_pairs),
                config.max_length,
            )
    return Task(tokenizer=tokenizer, splits=splits)
