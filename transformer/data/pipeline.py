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


def pack_rows(order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, length: int):
    """Greedily fills rows of `length` tokens per side with examples in `order`.

    Returns a list of example-index arrays, one per row; an example never splits across rows.
    """
    rows, current, used_src, used_tgt = [], [], 0, 0
    for i in order:
        if used_src + src_len[i] > length or used_tgt + tgt_len[i] > length:
            rows.append(np.asarray(current))
            current, used_src, used_tgt = [], 0, 0
        current.append(i)
        used_src += src_len[i]
        used_tgt += tgt_len[i]
    if current:
        rows.append(np.asarray(current))
    return rows


def _packed_side(tokens: np.ndarray, lengths: np.ndarray, rows: list[np.ndarray], length: int):
    """(tokens, positions, segmentation), each [len(rows), length], for one side of a batch."""
    out = np.full((len(rows), length), PAD_ID, np.int32)
    positions = np.zeros_like(out)
    segmentation = np.zeros_like(out)
    for r, row in enumerate(rows):
        start = 0
        for segment, i in enumerate(row, start=1):
            n = lengths[i]
            out[r, start : start + n] = tokens[i, :n]
            positions[r, start : start + n] = np.arange(n)
            segmentation[r, start : start + n] = segment
            start += n
    return out, positions, segmentation


class TrainBatches:
    """Shuffled training batches indexed by step: every epoch is a fresh permutation.

    Unpacked, a batch is `global_batch_size` sentence pairs. Packed, it is
    `global_batch_size` rows, each holding as many whole pairs as fit in the row's length,
    with segment ids and per-segment positions so that pairs never attend to each other.
    """

    def __init__(
        self,
        split: EncodedSplit,
        global_batch_size: int,
        seed: int,
        packing: bool = False,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"batch_size={global_batch_size} must divide evenly over {process_count} hosts."
            )
        self.split = split
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.packing = packing
        self._src_len = (split.inputs != PAD_ID).sum(axis=1)
        self._tgt_len = (split.targets != PAD_ID).sum(axis=1)
        local = global_batch_size // process_count
        self._rows = slice(process_index * local, (process_index + 1) * local)
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None
        self._steps_per_epoch: list[int] = []
        if len(self._epoch_rows(0)) < global_batch_size:
            unit = "packed rows" if packing else "examples"
            raise ValueError(
                f"batch_size={global_batch_size} exceeds the {len(self._epoch_rows(0))} "
                f"training {unit} of an epoch."
            )

    def _epoch_rows(self, epoch: int) -> list[np.ndarray]:
        """Example indices of every row of `epoch`, in batch order."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
            if self.packing:
                length = self.split.inputs.shape[1]
                rows = pack_rows(order, self._src_len, self._tgt_len, length)
            else:
                rows = [order[i : i + 1] for i in range(len(order))]
            self._epoch_cache = (epoch, rows)
        return self._epoch_cache[1]

    def _locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of `step`; batches never straddle epochs."""
        epoch = 0
        while True:
            if epoch == len(self._steps_per_epoch):
                rows = len(self._epoch_rows(epoch))
                self._steps_per_epoch.append(rows // self.global_batch_size)
            if step < self._steps_per_epoch[epoch]:
                return epoch, step
            step -= self._steps_per_epoch[epoch]
            epoch += 1

    def global_rows(self, step: int) -> list[np.ndarray]:
        """Example indices of every row of the whole batch of `step`."""
        epoch, offset = self._locate(step)
        start = offset * self.global_batch_size
        return self._epoch_rows(epoch)[start : start + self.global_batch_size]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the batch of `step`, each array [rows, length]:
        inputs and targets, plus positions and segmentation when packed."""
        rows = self.global_rows(step)[self._rows]
        if not self.packing:
            idx = np.concatenate(rows)
            return {"inputs": self.split.inputs[idx], "targets": self.split.targets[idx]}
        length = self.split.inputs.shape[1]
        inputs, in_pos, in_seg = _packed_side(self.split.inputs, self._src_len, rows, length)
        targets, tgt_pos, tgt_seg = _packed_side(self.split.targets, self._tgt_len, rows, length)
        return {
            "inputs": inputs,
            "targets": targets,
            "inputs_positions": in_pos,
            "targets_positions": tgt_pos,
            "inputs_segmentation": in_seg,
            "targets_segmentation": tgt_seg,
        }


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
