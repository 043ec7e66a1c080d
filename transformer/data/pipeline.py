"""Tokenized, step-indexed batches from in-memory sentence pairs.

The batch of a step is a pure function of (seed, step): resuming at step k sees exactly the
batches an uninterrupted run would, so the data position is the step itself. Each process
holds only its shard of the training data and builds its own rows of every global batch.

Three ways to batch (`data.batching`):
  sentences  batch_size pairs per step, padded to max_length (one shape);
  packed     batch_size rows of max_length tokens, each filled with whole pairs, with segment
             ids and per-segment positions so pairs never attend to each other (one shape);
  tokens     about batch_size tokens per side: pairs are bucketed by length and each bucket
             length L gets batch_size // L rows (one shape per bucket), as the paper batched
             "by approximate sequence length".

`train_batches` picks the strategy: EpochBatches (sentences, packed) walks each host's
shuffled epochs; TokenBatches (tokens) follows a bucket schedule shared by all hosts. Both
plan a step's rows (a PlannedBatch) and build its arrays with `batch_arrays`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np

from transformer.data.tokenizer import Tokenizer
from transformer.special_tokens import EOS_ID, PAD_ID

# Bucket lengths for token batching: few shapes (each compiles once), little padding.
BUCKET_LENGTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclasses.dataclass(frozen=True)
class Ragged:
    """Variable-length sequences stored flat: sequence i is tokens[offsets[i] : offsets[i+1]]."""

    tokens: np.ndarray  # [total_tokens] int32
    offsets: np.ndarray  # [num_sequences + 1] int64

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> Ragged:
        lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tokens = np.fromiter((t for s in seqs for t in s), np.int32, int(offsets[-1]))
        return cls(tokens, offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def padded(self, indices: Sequence[int], length: int) -> np.ndarray:
        """[len(indices), length] int32: the sequences, cut to `length` or right-padded."""
        out = np.full((len(indices), length), PAD_ID, np.int32)
        for row, i in enumerate(indices):
            seq = self[i][:length]
            out[row, : len(seq)] = seq
        return out


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """A split's token ids (EOS-terminated) and raw text."""

    inputs: Ragged
    targets: Ragged
    sources: tuple[str, ...]  # Raw source sentences, for decoding.
    references: tuple[str, ...]  # Raw target sentences, for BLEU.
    num_dropped: int  # Over-long pairs left out (data.overlong = "drop").
    num_truncated: int  # Over-long pairs cut to max_length (data.overlong = "truncate").

    def __len__(self) -> int:
        return len(self.sources)


def encode_split(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Tokenizer,
    max_length: int,
    overlong: str = "drop",
) -> EncodedSplit:
    """Tokenizes (source, target) pairs; a side longer than `max_length` tokens (EOS included)
    drops the pair, or is cut to max_length - 1 tokens + EOS, as `overlong` says."""
    src_ids = tokenizer.encode_batch([s for s, _ in pairs])
    tgt_ids = tokenizer.encode_batch([t for _, t in pairs])
    keep, inputs, targets, truncated = [], [], [], 0
    for i, (src, tgt) in enumerate(zip(src_ids, tgt_ids, strict=True)):
        if len(src) > max_length or len(tgt) > max_length:
            if overlong == "drop":
                continue
            truncated += 1
            src = [*src[: max_length - 1], EOS_ID] if len(src) > max_length else src
            tgt = [*tgt[: max_length - 1], EOS_ID] if len(tgt) > max_length else tgt
        keep.append(i)
        inputs.append(src)
        targets.append(tgt)
    if not keep:
        raise ValueError(f"No sentence pair fits in data.max_length={max_length} tokens.")
    return EncodedSplit(
        inputs=Ragged.from_lists(inputs),
        targets=Ragged.from_lists(targets),
        sources=tuple(pairs[i][0] for i in keep),
        references=tuple(pairs[i][1] for i in keep),
        num_dropped=len(pairs) - len(keep),
        num_truncated=truncated,
    )


def pack_rows(
    order: np.ndarray, src_len: np.ndarray, tgt_len: np.ndarray, length: int
) -> list[np.ndarray]:
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


def bucket_length(length: int, max_length: int) -> int:
    """The smallest bucket that holds `length` tokens (max_length is always a bucket)."""
    return next((b for b in BUCKET_LENGTHS if length <= b < max_length), max_length)


def bucket_lengths(max_length: int) -> tuple[int, ...]:
    """Every bucket length token batching can use with `max_length`, ascending."""
    return (*(b for b in BUCKET_LENGTHS if b < max_length), max_length)


def bucket_indices(split: EncodedSplit, max_length: int) -> np.ndarray:
    """[len(split)]: the index into bucket_lengths(max_length) of each pair's bucket, the
    first bucket that holds its longer side."""
    longest = np.maximum(split.inputs.lengths, split.targets.lengths)
    return np.searchsorted(np.asarray(bucket_lengths(max_length)), longest)


def count_buckets(split: EncodedSplit, max_length: int) -> np.ndarray:
    """[len(bucket_lengths(max_length))] int64: how many pairs of `split` fall in each bucket."""
    which = bucket_indices(split, max_length)
    return np.bincount(which, minlength=len(bucket_lengths(max_length))).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """This process's rows of one global batch: their padded length and the example
    indices (into its shard) of each row."""

    length: int
    rows: list[np.ndarray]


def batch_arrays(split: EncodedSplit, planned: PlannedBatch, packed: bool) -> dict[str, np.ndarray]:
    """The arrays of a planned batch, each [len(planned.rows), planned.length]: inputs and
    targets (one pair per row, padded), plus positions and segmentation when `packed`."""
    if not packed:
        idx = np.concatenate(planned.rows)
        return {
            "inputs": split.inputs.padded(idx, planned.length),
            "targets": split.targets.padded(idx, planned.length),
        }
    batch = {}
    for side, seqs in (("inputs", split.inputs), ("targets", split.targets)):
        tokens, positions, segmentation = _pack_side(seqs, planned.rows, planned.length)
        batch[side] = tokens
        batch[f"{side}_positions"] = positions
        batch[f"{side}_segmentation"] = segmentation
    return batch


def _pack_side(
    seqs: Ragged, rows: list[np.ndarray], length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, positions, segmentation), each [len(rows), length], for one side of a batch."""
    tokens = np.full((len(rows), length), PAD_ID, np.int32)
    positions = np.zeros_like(tokens)
    segmentation = np.zeros_like(tokens)
    for r, row in enumerate(rows):
        start = 0
        for segment, i in enumerate(row, start=1):
            seq = seqs[i]
            end = start + len(seq)
            tokens[r, start:end] = seq
            positions[r, start:end] = np.arange(len(seq))
            segmentation[r, start:end] = segment
            start = end
    return tokens, positions, segmentation


class StepBatches(abc.ABC):
    """This process's rows of the shuffled training batches, indexed by step.

    `split` is this process's shard of the training data; every process builds its rows from
    its own shard, so no host reads another's data. `batch_size` is global. `row_multiple`
    (hosts x data-parallel devices) divides the global row count of every batch, so each
    device gets an equal share. Subclasses plan the rows of a step; building them is shared.
    """

    packed = False  # Whether rows hold several pairs (with positions and segmentation).

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        seed: int,
        max_length: int | None,
        row_multiple: int,
        process_index: int,
        process_count: int,
    ):
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        longest = max(split.inputs.lengths.max(), split.targets.lengths.max())
        self.max_length = max_length or int(longest)
        if row_multiple % process_count:
            raise ValueError(
                f"{row_multiple} batch shards do not divide over {process_count} hosts."
            )
        self.row_multiple = row_multiple
        self.process_index, self.process_count = process_index, process_count

    @abc.abstractmethod
    def plan(self, step: int) -> PlannedBatch:
        """This process's rows of the global batch of `step`."""

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the batch of `step`, each array [rows, length]: inputs and
        targets, plus positions and segmentation when packed."""
        return batch_arrays(self.split, self.plan(step), self.packed)


class EpochBatches(StepBatches):
    """Batches of data.batching "sentences" (one pair per row, padded to max_length) or
    "packed" (rows of max_length tokens filled with whole pairs): each process takes
    batch_size / process_count rows per step from its own shuffled epochs (a fresh
    permutation of its shard each epoch); an epoch's incomplete last batch is left out."""

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        seed: int,
        packed: bool = False,
        max_length: int | None = None,
        row_multiple: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__(
            split, batch_size, seed, max_length, row_multiple, process_index, process_count
        )
        self.packed = packed
        if batch_size % row_multiple:
            raise ValueError(
                f"batch_size={batch_size} must divide evenly over {row_multiple} batch shards."
            )
        self._local_rows = batch_size // process_count
        self._epoch_cache: tuple[int, list[PlannedBatch]] | None = None
        self._steps_per_epoch: list[int] = []  # Of epochs 0, 1, ... planned so far.
        if not self._epoch(0):
            raise ValueError(
                f"batch_size={batch_size} ({'packed' if packed else 'sentences'}) is larger "
                f"than one epoch of the {len(split)} training pairs"
                + (" of this host." if process_count > 1 else ".")
            )

    def _epoch(self, epoch: int) -> list[PlannedBatch]:
        """Every complete batch of this host's `epoch`, in order."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, self.process_index, epoch])
        order = rng.permutation(len(self.split))
        if self.packed:
            lengths = self.split.inputs.lengths, self.split.targets.lengths
            rows = pack_rows(order, *lengths, self.max_length)
        else:
            rows = [order[i : i + 1] for i in range(len(order))]
        size = self._local_rows
        batches = [
            PlannedBatch(self.max_length, rows[start : start + size])
            for start in range(0, len(rows) - size + 1, size)
        ]
        self._epoch_cache = (epoch, batches)
        return batches

    def plan(self, step: int) -> PlannedBatch:
        """This process's rows of the global batch of `step`."""
        epoch = 0  # Batches never straddle epochs; packed epochs differ in length.
        while True:
            if epoch == len(self._steps_per_epoch):
                self._steps_per_epoch.append(len(self._epoch(epoch)))
            if step < self._steps_per_epoch[epoch]:
                return self._epoch(epoch)[step]
            step -= self._steps_per_epoch[epoch]
            epoch += 1


class TokenBatches(StepBatches):
    """Batches of data.batching "tokens": about batch_size tokens per side, of pairs bucketed
    by length (one shape per bucket).

    All processes must pad to the same bucket length at each step, so the sequence of bucket
    lengths is planned from the seed and the global bucket counts alone (each global epoch
    holds every bucket's share of batches, in shuffled order); each process fills its rows of
    the step from an endless, shuffled stream of its pairs in that bucket.
    `global_bucket_counts` ([len(bucket_lengths(max_length))], summed over every host's shard)
    may be left out on a single host.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        seed: int,
        max_length: int | None = None,
        row_multiple: int = 1,
        process_index: int = 0,
        process_count: int = 1,
        global_bucket_counts: np.ndarray | None = None,
    ):
        super().__init__(
            split, batch_size, seed, max_length, row_multiple, process_index, process_count
        )
        self._lengths = bucket_lengths(self.max_length)
        if global_bucket_counts is None:
            if process_count > 1:
                raise ValueError("Token batching over several hosts needs the global counts.")
            global_bucket_counts = count_buckets(split, self.max_length)
        rows = np.array([self._rows_per_batch(n) for n in self._lengths])
        self._batches_per_epoch = np.asarray(global_bucket_counts) // rows
        if not self.steps_per_epoch:
            raise ValueError(
                f"batch_size={batch_size} tokens is larger than one epoch of the "
                f"training pairs of any length bucket."
            )
        self._local_rows_of = rows // process_count
        self._pools = self._bucket_pools()
        self._schedule_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._permutation_cache: dict[int, tuple[int, np.ndarray]] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Steps of one global epoch, the same on every host."""
        return int(self._batches_per_epoch.sum())

    def _rows_per_batch(self, length: int) -> int:
        """Global rows of a token batch of `length`: the budget, cut to a row_multiple."""
        rows = self.batch_size // length // self.row_multiple * self.row_multiple
        return max(rows, self.row_multiple)

    def _bucket_pools(self) -> dict[int, np.ndarray]:
        """For each bucket the schedule uses, the indices of this host's pairs that fill it."""
        which = bucket_indices(self.split, self.max_length)
        pools = {}
        for b in np.flatnonzero(self._batches_per_epoch):
            pool = np.flatnonzero(which == b)
            if not len(pool):
                # This host has no pair of this length but others do: shorter pairs fit.
                shorter = np.flatnonzero(which < b)
                pool = shorter[which[shorter] == which[shorter].max()] if len(shorter) else pool
            if not len(pool):
                raise ValueError(
                    f"Host {self.process_index} holds no training pair of at most "
                    f"{self._lengths[b]} tokens; use fewer hosts or data.batching='sentences'."
                )
            pools[int(b)] = pool
        return pools

    def _schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket, how many earlier batches of that bucket in the epoch), each
        [steps_per_epoch], for each step of a global epoch; the same on every host."""
        if self._schedule_cache is None or self._schedule_cache[0] != epoch:
            buckets = np.repeat(np.arange(len(self._lengths)), self._batches_per_epoch)
            buckets = np.random.default_rng([self.seed, epoch]).permutation(buckets)
            earlier = np.zeros_like(buckets)
            for b in np.unique(buckets):
                where = np.flatnonzero(buckets == b)
                earlier[where] = np.arange(len(where))
            self._schedule_cache = (epoch, buckets, earlier)
        return self._schedule_cache[1], self._schedule_cache[2]

    def _stream(self, bucket: int, start: int, count: int) -> np.ndarray:
        """[count]: items start .. start + count of this host's endless stream of `bucket`'s
        pairs, a fresh permutation of the bucket's pool every cycle."""
        pool = self._pools[bucket]
        positions = np.arange(start, start + count)
        cycles = positions // len(pool)
        out = np.empty(count, np.int64)
        for cycle in np.unique(cycles):
            cached = self._permutation_cache.get(bucket)
            if cached is None or cached[0] != cycle:
                rng = np.random.default_rng([self.seed, self.process_index, bucket, cycle])
                cached = (int(cycle), rng.permutation(pool))
                self._permutation_cache[bucket] = cached
            here = cycles == cycle
            out[here] = cached[1][positions[here] % len(pool)]
        return out

    def plan(self, step: int) -> PlannedBatch:
        """This process's rows of the global batch of `step`: one pair per row."""
        epoch, index = divmod(step, self.steps_per_epoch)
        buckets, earlier = self._schedule(epoch)
        b = int(buckets[index])
        rows = int(self._local_rows_of[b])
        # Earlier epochs used this bucket's stream for _batches_per_epoch[b] batches each.
        start = (epoch * int(self._batches_per_epoch[b]) + int(earlier[index])) * rows
        return PlannedBatch(self._lengths[b], list(self._stream(b, start, rows)[:, None]))


BATCHINGS = ("sentences", "packed", "tokens")


def train_batches(
    split: EncodedSplit,
    batch_size: int,
    seed: int,
    batching: str = "sentences",
    max_length: int | None = None,
    row_multiple: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    global_bucket_counts: np.ndarray | None = None,
) -> StepBatches:
    """This process's step-indexed training batches of `split` as data.batching says:
    EpochBatches for "sentences" and "packed", TokenBatches for "tokens"."""
    hosts = (row_multiple, process_index, process_count)
    if batching == "tokens":
        return TokenBatches(split, batch_size, seed, max_length, *hosts, global_bucket_counts)
    if batching in ("sentences", "packed"):
        return EpochBatches(split, batch_size, seed, batching == "packed", max_length, *hosts)
    raise ValueError(f"data.batching={batching!r} is none of {', '.join(BATCHINGS)}.")


def eval_batches(
    split: EncodedSplit,
    batch_size: int,
    length: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """The whole split in order, as batches of `batch_size` pairs padded to `length` (the last
    batch padded with empty rows, which carry no tokens and so no weight). Each process holds
    its rows of each batch."""
    local = batch_size // process_count
    batches = []
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        inputs = np.full((batch_size, length), PAD_ID, np.int32)
        targets = np.full((batch_size, length), PAD_ID, np.int32)
        inputs[: len(idx)] = split.inputs.padded(idx, length)
        targets[: len(idx)] = split.targets.padded(idx, length)
        rows = slice(process_index * local, (process_index + 1) * local)
        batches.append({"inputs": inputs[rows], "targets": targets[rows]})
    return batches
