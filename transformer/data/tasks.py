"""A task: a tokenizer plus encoded train/validation/test splits, ready to batch."""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

from transformer.config import DataConfig
from transformer.data import embedded, text_files, tfds_source
from transformer.data.pipeline import EncodedSplit, TrainBatches, encode_split, eval_batches
from transformer.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    join_words,
)

SPLITS = ("train", "validation", "test")
VOCAB_FILES = {"word": "vocab.txt", "bpe": "spm.model", "unigram": "spm.model"}


class VocabularyMismatchError(ValueError):
    """The workdir's stored vocabulary does not fit the config."""


@dataclasses.dataclass(frozen=True)
class Task:
    config: DataConfig
    tokenizer: Tokenizer
    splits: dict[str, EncodedSplit]

    def train_batches(self, batch_size: int, seed: int, row_multiple: int = 1) -> TrainBatches:
        """Step-indexed shuffled batches; this process gets its rows of each."""
        return TrainBatches(
            self.splits["train"],
            batch_size,
            seed,
            batching=self.config.batching,
            max_length=self.config.max_length,
            row_multiple=row_multiple,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """The whole split in order; this process gets its rows of each batch."""
        return eval_batches(
            self.splits[split],
            batch_size,
            self.config.max_length,
            jax.process_index(),
            jax.process_count(),
        )


def read_pairs(config: DataConfig) -> dict[str, list[tuple[str, str]]]:
    """Raw (source, target) sentence pairs of every split, from the configured source."""
    if config.source == "embedded":
        e = config.embedded
        generated = embedded.generate_splits(
            e.corpus_seed, e.num_train, e.num_validation, e.num_test
        )
        # The generator emits space-separated tokens; present it as natural text.
        return {
            name: [(join_words(src.split()), join_words(tgt.split())) for src, tgt in split]
            for name, split in generated.items()
        }
    if config.source == "tfds":
        t = config.tfds
        names = dict(train=t.train_split, validation=t.validation_split, test=t.test_split)
        return {
            split: tfds_source.read_tfds(
                t.name, t.source_lang, t.target_lang, names[split], t.data_dir or None,
                t.manual_dir or None, t.download,
            )
            for split in SPLITS
        }  # fmt: skip
    t = config.text_files
    return {
        split: text_files.read_parallel(t.directory, t.source_lang, t.target_lang, split)
        for split in SPLITS
    }


def load_tokenizer(
    config: DataConfig, workdir: str, train_pairs: list[tuple[str, str]] | None
) -> Tokenizer:
    """The workdir's vocabulary; built from both sides of the training split on first use
    (`train_pairs` None: it must exist already)."""
    path = os.path.join(workdir, VOCAB_FILES[config.tokenizer])
    other = [f for f in set(VOCAB_FILES.values()) - {VOCAB_FILES[config.tokenizer]}
             if os.path.exists(os.path.join(workdir, f))]  # fmt: skip
    if other:
        raise VocabularyMismatchError(
            f"{workdir} holds a {other[0]} vocabulary but data.tokenizer is "
            f"{config.tokenizer!r}. Use a new --workdir or the config that made it."
        )
    if train_pairs is None and not os.path.exists(path):
        raise VocabularyMismatchError(f"{workdir} has no vocabulary ({path}); train first.")
    sentences = [s for pair in train_pairs or () for s in pair]
    if config.tokenizer == "word":
        if os.path.exists(path):
            tokenizer = WordTokenizer.load(path)
            if tokenizer.vocab_size > config.vocab_size:
                raise VocabularyMismatchError(
                    f"{path} holds {tokenizer.vocab_size} tokens but data.vocab_size is "
                    f"{config.vocab_size}. Use a new --workdir or the config that made it."
                )
            return tokenizer
        tokenizer = WordTokenizer.build(sentences, config.vocab_size)
    else:
        if os.path.exists(path):
            tokenizer = SentencePieceTokenizer.load(path)
            found = (tokenizer.model_type, tokenizer.vocab_size)
            if found != (config.tokenizer, config.vocab_size):
                raise VocabularyMismatchError(
                    f"{path} is a {found[0]} model of {found[1]} pieces but the config asks "
                    f"for data.tokenizer={config.tokenizer!r}, data.vocab_size="
                    f"{config.vocab_size}. Use a new --workdir or the config that made it."
                )
            return tokenizer
        tokenizer = SentencePieceTokenizer.train(sentences, config.vocab_size, config.tokenizer)
    if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer


def load_task(config: DataConfig, workdir: str) -> Task:
    """Reads the corpus, loads or builds the vocabulary in `workdir`, and encodes each split."""
    pairs = read_pairs(config)
    tokenizer = load_tokenizer(config, workdir, pairs["train"])
    splits = {}
    for name, split_pairs in pairs.items():
        # Evaluation sets stay whole: their over-long pairs are truncated, never dropped.
        overlong = config.overlong if name == "train" else "truncate"
        split = encode_split(split_pairs, tokenizer, config.max_length, overlong)
        if split.num_dropped or split.num_truncated:
            logging.warning(
                "%s: %s %d of %d pairs longer than data.max_length=%d tokens.",
                name,
                "dropped" if split.num_dropped else "truncated",
                split.num_dropped or split.num_truncated,
                len(split_pairs),
                config.max_length,
            )
        splits[name] = split
    return Task(config=config, tokenizer=tokenizer, splits=splits)
