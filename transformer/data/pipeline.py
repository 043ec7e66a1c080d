"""Tokenized, padded, step-indexed batches from in-memory sentence pairs.

The batch of a step is a pure function of (seed, step): resuming at step k sees exactly the
batches an uninterrupted run would, with no iterator state to checkpoint. Each process reads
only its rows of the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from transformer.data.tokenizer import WordTokenizer
from transformer.special_tokens import PAD_ID


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """Padded token ids of a split; rows past a sentence's EOS hold PAD_ID."""

    inputs: np.ndarray  # [num_examples, max_length] int32
    targets: np.ndarray  # [num_examples, max_length] int32
    sources: tuple[str, ...]  # Raw source sentences, for decoding.
    references: tuple[str, ...]  # Raw target sentences, for BLEU.
    num_dropped: int  # Pairs longer than max_length, left out.

    def __len__(self) -> int:
        return len(self.inputs)


def encode_split(
    pairs: Sequence[tuple[str, str]], tokenizer: WordTokenizer, max_length: int
) -> EncodedSplit:
    """Tokenizes (source, target) pairs and pads them to `max_length` tokens (EOS included).

    Pairs with a side longer than `max_length` are dropped and counted.
    """
    inputs, targets, sources, references = [], [], [], []
    for source, target in pairs:
        src, tgt = tokenizer.encode(source), tokenizer.encode(target)
        if len(src) > max_length or len(tgt) > max_length:
            continue
        inputs.append(src + [PAD_ID] * (max_length - len(src)))
        targets.append(tgt + [PAD_ID] * (max_length - len(tgt)))
        sources.append(source)
        references.append(target)
    if not inputs:
        raise ValueError(f"No sentence pair fits in data.max_length={max_length} tokens.")
    return EncodedSplit(
        inputs=np.asarray(inputs, np.int32).reshape(-1, max_length),
        targets=np.asarray(targets, np.int32).reshape(-1, max_length),
        sources=tuple(sources),
        references=tuple(references),
        num_dropped=len(pairs) - len(inputs),
    )


class TrainBatches:
    """Shuffled training batches indexed by step: every epoch is a fresh permutation."""

    def __init__(
        self,
        split: EncodedSplit,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch_size={global_batch_size} must divide evenly over {process_count} hosts."
            )
        if global_batch_size > len(split):
            raise ValueError(
                f"batch_size={global_batch_size} exceeds the {len(split)} training examples."
            )
        self.split = split
        self.global_batch_size = global_batch_size
        self.seed = seed
        local = global_batch_size // process_count
        self._rows = slice(process_index * local, (process_index + 1) * local)
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_cache = (epoch, rng.permutation(len(self.split)))
        return self._epoch_cache[1]

    def global_indices(self, step: int) -> np.ndarray:
        """Example indices of the whole batch of `step` (batches never straddle epochs)."""
        per_epoch = len(self.split) // self.global_batch_size
        epoch, offset = divmod(step, per_epoch)
        start = offset * self.global_batch_size
        return self._permutation(epoch)[start : start + self.global_batch_size]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the batch of `step`: {"inputs", "targets"}, [rows, length]."""
        idx = self.global_indices(step)[self._rows]
        return {"inputs": self.split.inputs[idx], "targets": self.split.targets[idx]}


def eval_batches(
    split: EncodedSplit, batch_size: int, process_index: int = 0, process_count: int = 1
) -> list[dict[str, np.ndarray]]:
    """The whole split in order, as batches of `batch_size` (the last one padded with PAD
    rows, which carry no tokens and so no weight). Each process holds its rows of each batch."""
    local = batch_size // process_count
    rows = slice(process_index * local, (process_index + 1) * local)
    batches = []
    for start in range(0, len(split), batch_size):
        inputs = split.inputs[start : start + batch_size]
        targets = split.targets[start : start + batch_size]
        pad = batch_size - len(inputs)
        if pad:
            inputs = np.pad(inputs, ((0, pad), (0, 0)), constant_values=PAD_ID)
            targets = np.pad(targets, ((0, pad), (0, 0)), constant_values=PAD_ID)
        batches.append({"inputs": inputs[rows], "targets": targets[rows]})
    return batches
