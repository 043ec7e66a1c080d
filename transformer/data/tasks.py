"""A task: a tokenizer plus encoded train/validation/test splits, ready to batch.

On several hosts each process reads and encodes only its shard of the training split (and
the whole, small, evaluation splits); the vocabulary is built once, by process 0, from the
whole training split and shared through the workdir, which every host must see.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from transformer import workdir as workdir_files
from transformer.config import ConfigError, DataConfig
from transformer.data import generated, json_files, text_files, tfds_source
from transformer.data.pipeline import (
    EncodedSplit,
    StepBatches,
    count_buckets,
    encode_split,
    eval_batches,
    train_batches,
)
from transformer.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    join_words,
)
from transformer.files import write_atomically

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Task:
    """Encoded splits; `splits["train"]` is shard `process_index` of `process_count`."""

    config: DataConfig
    tokenizer: Tokenizer
    splits: dict[str, EncodedSplit]
    process_index: int
    process_count: int

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        row_multiple: int = 1,
        global_bucket_counts: np.ndarray | None = None,
    ) -> StepBatches:
        """Step-indexed shuffled batches: this process's rows of each global batch, drawn
        from its shard. Token batching needs the bucket counts of all shards; across real
        processes they are gathered here, `global_bucket_counts` gives them otherwise."""
        if (
            self.config.batching == "tokens"
            and global_bucket_counts is None
            and jax.process_count() == self.process_count > 1
        ):
            local = count_buckets(
                self.splits["train"], self.config.max_length, self.config.max_source_length
            )
            global_bucket_counts = multihost_utils.process_allgather(local).sum(0)
        return train_batches(
            self.splits["train"],
            batch_size,
            seed,
            batching=self.config.batching,
            max_length=self.config.max_length,
            row_multiple=row_multiple,
            process_index=self.process_index,
            process_count=self.process_count,
            global_bucket_counts=global_bucket_counts,
            max_source_length=self.config.max_source_length,
            token_count=self.config.token_count,
        )

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """The whole split in order; this process gets its rows of each batch."""
        return eval_batches(
            self.splits[split],
            batch_size,
            self.config.max_length,
            self.process_index,
            self.process_count,
            self.config.source_length,
        )


def read_pairs(
    config: DataConfig,
    shard_index: int = 0,
    shard_count: int = 1,
    wanted: Sequence[str] = SPLITS,
) -> dict[str, list[tuple[str, str]]]:
    """Raw (source, target) sentence pairs of the `wanted` splits from the configured
    source; of the training split only shard `shard_index` of `shard_count`."""
    if config.source == "generated":
        g = config.generated
        splits = generated.generate_splits(g.corpus_seed, g.num_train, g.num_validation, g.num_test)
        splits["train"] = splits["train"][shard_index::shard_count]
        # The generator emits space-separated tokens; present it as natural text.
        return {
            name: [(join_words(src.split()), join_words(tgt.split())) for src, tgt in split]
            for name, split in splits.items()
            if name in wanted
        }
    shards = {"train": (shard_index, shard_count), "validation": (0, 1), "test": (0, 1)}
    if config.source == "tfds":
        t = config.tfds
        names = dict(train=t.train_split, validation=t.validation_split, test=t.test_split)
        return {
            split: tfds_source.read_tfds(
                t.name, t.source_lang, t.target_lang, names[split], t.data_dir or None,
                t.manual_dir or None, t.download, *shards[split],
            )
            for split in wanted
        }  # fmt: skip
    if config.source == "json_files":
        j = config.json_files
        names = dict(train=j.train_split, validation=j.validation_split, test=j.test_split)
        return {
            split: json_files.read_pairs(
                j.directory, j.source_field, j.target_field, names[split], *shards[split]
            )
            for split in wanted
        }
    t = config.text_files
    return {
        split: text_files.read_parallel(
            t.directory, t.source_lang, t.target_lang, split, *shards[split]
        )
        for split in wanted
    }


def train_vocabulary(config: DataConfig, train_pairs: list[tuple[str, str]]) -> Tokenizer:
    """The vocabulary of `config` built from both sides of the training pairs."""
    sentences = [s for pair in train_pairs for s in pair]
    if config.tokenizer == "word":
        return WordTokenizer.build(sentences, config.vocab_size)
    return SentencePieceTokenizer.train(sentences, config.vocab_size, config.tokenizer)


def build_tokenizer(config: DataConfig, workdir: str, train_pairs: Callable[[], list]) -> None:
    """Stores the workdir's vocabulary (atomically): a copy of `data.vocabulary` where it is
    set (a file from prepare.py), else one trained on `train_pairs()`."""
    path = workdir_files.vocabulary_path(config, workdir)
    if not config.vocabulary:
        train_vocabulary(config, train_pairs()).save(path)
        return
    if not os.path.isfile(config.vocabulary):
        raise ConfigError(
            f"config.data.vocabulary={config.vocabulary!r} does not exist; make it with "
            "python prepare.py --config CONFIG --vocabulary PATH."
        )
    with open(config.vocabulary, "rb") as f:
        write_atomically(path, f.read())


def load_task(
    config: DataConfig,
    workdir: str,
    process_index: int | None = None,
    process_count: int | None = None,
    splits: Sequence[str] = SPLITS,
) -> Task:
    """Reads this process's shard of the corpus (only the named `splits`: scoring the test
    split of WMT14 need not read its 4.5M training pairs), loads the vocabulary in `workdir`
    (process 0 builds it on first use, from the training split), and encodes each split. The
    process defaults to JAX's."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    pairs = read_pairs(config, index, count, splits)
    if index == 0 and not os.path.exists(workdir_files.vocabulary_path(config, workdir)):
        whole = pairs.get("train") if count == 1 else None
        build_tokenizer(
            config, workdir, lambda: whole or read_pairs(config, wanted=("train",))["train"]
        )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("transformer: vocabulary ready")
    tokenizer = workdir_files.load_vocabulary(config, workdir)
    encoded = {}
    for name, split_pairs in pairs.items():
        # Evaluation sets stay whole: their over-long pairs are truncated, never dropped.
        overlong = config.overlong if name == "train" else "truncate"
        split = encode_split(
            split_pairs, tokenizer, config.max_length, overlong, config.max_source_length
        )
        if split.num_dropped or split.num_truncated:
            logging.warning(
                "%s: %s %d of %d pairs %s.",
                name,
                "dropped" if split.num_dropped else "truncated",
                split.num_dropped or split.num_truncated,
                len(split_pairs),
                f"longer than data.max_length={config.max_length} tokens"
                if config.max_source_length is None
                else f"with a source over data.max_source_length={config.source_length} "
                f"or a target over data.max_length={config.max_length} tokens",
            )
        encoded[name] = split
    return Task(config, tokenizer, encoded, index, count)
