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
             "by approximate sequence length"; with data.token_count "real", batch_size //
             the bucket's mean real length, so real tokens (not padding) make the budget.
             Where sources have a limit of their own (max_source_length: a dialogue and its
             summary), a bucket is a (source, target) length pair and gets batch_size // the
             longer of the two rows.

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
# With real tokens counted, a batch's padded tokens per side stay under this multiple of its
# budget: the widest step between bucket lengths, so only the shortest bucket is ever capped.
MAX_PADDING_GROWTH = 1.5


def max_rows(batch_size: int, length: float, token_count: str, row_multiple: int = 1) -> int:
    """The most rows of `length` tokens a token batch of `batch_size` holds: the budget over
    the length, or, counting real tokens, over length / MAX_PADDING_GROWTH (padding may take
    the batch that far past the budget); cut to a multiple of `row_multiple`, at least one."""
    if token_count == "real":
        length = length / MAX_PADDING_GROWTH
    rows = int(batch_size // length) // row_multiple * row_multiple
    return max(rows, row_multiple)


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
    max_source_length: int | None = None,
) -> EncodedSplit:
    """Tokenizes (source, target) pairs; a source longer than `max_source_length` tokens
    (EOS included; None: max_length) or a target longer than `max_length` drops the pair, or
    is cut to the limit - 1 tokens + EOS, as `overlong` says."""
    src_limit = max_length if max_source_length is None else max_source_length
    src_ids = tokenizer.encode_batch([s for s, _ in pairs])
    tgt_ids = tokenizer.encode_batch([t for _, t in pairs])
    keep, inputs, targets, truncated = [], [], [], 0
    for i, (src, tgt) in enumerate(zip(src_ids, tgt_ids, strict=True)):
        if len(src) > src_limit or len(tgt) > max_length:
            if overlong == "drop":
                continue
            truncated += 1
            src = [*src[: src_limit - 1], EOS_ID] if len(src) > src_limit else src
            tgt = [*tgt[: max_length - 1], EOS_ID] if len(tgt) > max_length else tgt
        keep.append(i)
        inputs.append(src)
        targets.append(tgt)
    if not keep:
        limits = (
            f"data.max_length={max_length} tokens"
            if max_source_length is None
            else f"data.max_source_length={src_limit} and data.max_length={max_length} tokens"
        )
        raise ValueError(f"No sentence pair fits in {limits}.")
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


def bucket_shapes(max_length: int, max_source_length: int | None = None) -> list[tuple[int, int]]:
    """Every (source length, target length) a token batch can have. With one limit for both
    sides the two are one, the bucket of the longer side; with a source limit of its own
    (sources ~10x longer than targets) each side has its own bucket, so neither is padded to
    the other's length."""
    if max_source_length is None:
        return [(n, n) for n in bucket_lengths(max_length)]
    return [(s, t) for s in bucket_lengths(max_source_length) for t in bucket_lengths(max_length)]


def bucket_indices(
    split: EncodedSplit, max_length: int, max_source_length: int | None = None
) -> np.ndarray:
    """[len(split)]: the index into bucket_shapes(...) of each pair's bucket, the smallest
    that holds it."""
    src, tgt = split.inputs.lengths, split.targets.lengths
    targets = np.asarray(bucket_lengths(max_length))
    if max_source_length is None:
        return np.searchsorted(targets, np.maximum(src, tgt))
    sources = np.asarray(bucket_lengths(max_source_length))
    return np.searchsorted(sources, src) * len(targets) + np.searchsorted(targets, tgt)


def count_buckets(
    split: EncodedSplit, max_length: int, max_source_length: int | None = None
) -> np.ndarray:
    """[len(bucket_shapes(...)), 3] int64: for each bucket, how many pairs of `split` fall
    in it and their real source and target tokens. Summed over hosts, the global counts."""
    which = bucket_indices(split, max_length, max_source_length)
    size = len(bucket_shapes(max_length, max_source_length))
    weights = (None, split.inputs.lengths, split.targets.lengths)
    return np.stack([np.bincount(which, w, minlength=size) for w in weights], 1).astype(np.int64)


def merge_sparse_buckets(
    shapes: list[tuple[int, int]], counts: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """[len(shapes)]: the bucket each bucket's pairs are batched in. A bucket with pairs but
    fewer than one batch (`rows`) of them hands them to the smallest bucket that holds them
    (the same source length and a longer target first), so that no pair is left out of every
    epoch and no shape compiles for a handful of pairs; the largest keeps its own. Decided
    from the global counts: the same on every host."""
    merged = np.arange(len(shapes))
    counts = np.array(counts, np.int64)
    for b in sorted(range(len(shapes)), key=lambda b: sum(shapes[b])):
        s, t = shapes[b]
        bigger = [c for c, (s2, t2) in enumerate(shapes) if s2 >= s and t2 >= t and c != b]
        if 0 < counts[b] < rows[b] and bigger:
            to = min(bigger, key=lambda c: shapes[c])
            counts[to] += counts[b]
            counts[b] = 0
            merged[merged == b] = to
    return merged


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """This process's rows of one global batch: their padded source and target lengths and
    the example indices (into its shard) of each row."""

    source_length: int
    target_length: int
    rows: list[np.ndarray]


def batch_arrays(split: EncodedSplit, planned: PlannedBatch, packed: bool) -> dict[str, np.ndarray]:
    """The arrays of a planned batch, [len(planned.rows), source_length] for the inputs and
    [len(planned.rows), target_length] for the targets (one pair per row, padded), plus
    positions and segmentation when `packed`."""
    if not packed:
        idx = np.concatenate(planned.rows)
        return {
            "inputs": split.inputs.padded(idx, planned.source_length),
            "targets": split.targets.padded(idx, planned.target_length),
        }
    batch = {}
    sides = (("inputs", split.inputs, planned.source_length),
             ("targets", split.targets, planned.target_length))  # fmt: skip
    for side, seqs, length in sides:
        tokens, positions, segmentation = _pack_side(seqs, planned.rows, length)
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
        max_source_length: int | None = None,
    ):
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        longest = max(split.inputs.lengths.max(), split.targets.lengths.max())
        self.max_length = max_length or int(longest)
        self.max_source_length = max_source_length  # None: max_length.
        self.source_length = self.max_length if max_source_length is None else max_source_length
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
        max_source_length: int | None = None,
    ):
        super().__init__(
            split, batch_size, seed, max_length, row_multiple, process_index, process_count,
            max_source_length,
        )  # fmt: skip
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
            PlannedBatch(self.source_length, self.max_length, rows[start : start + size])
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

    All processes must pad to the same bucket shape at each step, so the sequence of bucket
    shapes is planned from the seed and the global bucket counts alone (each global epoch
    holds every bucket's share of batches, in shuffled order); each process fills its rows of
    the step from an endless, shuffled stream of its pairs in that bucket. Buckets too
    sparse for one batch join a larger one (`merge_sparse_buckets`).
    `token_count` says what batch_size counts: "padded" tokens (a bucket of length L gets
    batch_size // L rows, so a step's memory is fixed by it) or "real" ones, as the paper's
    ~25K source and ~25K target tokens (batch_size // the bucket's mean real length of the
    longer side, at most MAX_PADDING_GROWTH x batch_size padded tokens).
    `global_bucket_counts` (count_buckets(...) summed over every host's shard) may be left
    out on a single host.
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
        max_source_length: int | None = None,
        token_count: str = "padded",
    ):
        super().__init__(
            split, batch_size, seed, max_length, row_multiple, process_index, process_count,
            max_source_length,
        )  # fmt: skip
        if token_count not in TOKEN_COUNTS:
            raise ValueError(f"data.token_count={token_count!r} is none of {TOKEN_COUNTS}.")
        self._shapes = bucket_shapes(self.max_length, max_source_length)
        if global_bucket_counts is None:
            if process_count > 1:
                raise ValueError("Token batching over several hosts needs the global counts.")
            global_bucket_counts = count_buckets(split, self.max_length, max_source_length)
        rows = np.array([self._rows_per_batch(max(shape)) for shape in self._shapes])
        self._merged = merge_sparse_buckets(self._shapes, global_bucket_counts[:, 0], rows)
        merged = np.zeros_like(global_bucket_counts)
        np.add.at(merged, self._merged, global_bucket_counts)
        counts = merged[:, 0]
        if token_count == "real":
            rows = self._rows_of_real_tokens(merged)
        # A bucket still short of a batch (the largest) gets one, its pairs repeated.
        self._batches_per_epoch = np.maximum(counts // rows, counts > 0)
        if not np.any(counts >= rows):
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

    def _rows_per_batch(self, length: float) -> int:
        """Global rows of a token batch of rows of `length`: the budget, cut to a row_multiple."""
        return max_rows(self.batch_size, length, "padded", self.row_multiple)

    def _rows_of_real_tokens(self, merged_counts: np.ndarray) -> np.ndarray:
        """[len(shapes)]: rows whose real tokens on the longer side come to about the budget,
        from each (merged) bucket's mean real lengths; padded tokens capped at
        MAX_PADDING_GROWTH x the budget so that no step's memory runs away."""
        pairs = np.maximum(merged_counts[:, :1], 1)
        mean_longer_side = (merged_counts[:, 1:] / pairs).max(1)
        rows = []
        for (source, target), mean in zip(self._shapes, mean_longer_side, strict=True):
            cap = max_rows(self.batch_size, max(source, target), "real", self.row_multiple)
            rows.append(min(self._rows_per_batch(max(mean, 1.0)), cap))
        return np.array(rows)

    def _bucket_pools(self) -> dict[int, np.ndarray]:
        """For each bucket the schedule uses, the indices of this host's pairs that fill it."""
        which = self._merged[bucket_indices(self.split, self.max_length, self.max_source_length)]
        pools = {}
        for b in np.flatnonzero(self._batches_per_epoch):
            pool = np.flatnonzero(which == b)
            if not len(pool):
                # This host has no pair of this shape but others do: smaller pairs fit.
                fits = [c for c, (s, t) in enumerate(self._shapes) if s <= self._shapes[b][0]
                        and t <= self._shapes[b][1] and np.any(which == c)]  # fmt: skip
                pool = np.flatnonzero(which == max(fits)) if fits else pool
            if not len(pool):
                source, target = self._shapes[b]
                size = f"{target}" if source == target else f"{source} source and {target} target"
                raise ValueError(
                    f"Host {self.process_index} holds no training pair of at most {size} "
                    "tokens; use fewer hosts or data.batching='sentences'."
                )
            pools[int(b)] = pool
        return pools

    def _schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket, how many earlier batches of that bucket in the epoch), each
        [steps_per_epoch], for each step of a global epoch; the same on every host."""
        if self._schedule_cache is None or self._schedule_cache[0] != epoch:
            buckets = np.repeat(np.arange(len(self._shapes)), self._batches_per_epoch)
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
        return PlannedBatch(*self._shapes[b], list(self._stream(b, start, rows)[:, None]))


BATCHINGS = ("sentences", "packed", "tokens")
TOKEN_COUNTS = ("padded", "real")


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
    max_source_length: int | None = None,
    token_count: str = "padded",
) -> StepBatches:
    """This process's step-indexed training batches of `split` as data.batching says:
    EpochBatches for "sentences" and "packed", TokenBatches for "tokens" (counting
    `token_count` tokens)."""
    hosts = (row_multiple, process_index, process_count)
    if batching == "tokens":
        return TokenBatches(split, batch_size, seed, max_length, *hosts, global_bucket_counts,
                            max_source_length, token_count)  # fmt: skip
    if batching in ("sentences", "packed"):
        packed = batching == "packed"
        return EpochBatches(split, batch_size, seed, packed, max_length, *hosts, max_source_length)
    raise ValueError(f"data.batching={batching!r} is none of {', '.join(BATCHINGS)}.")


def eval_batches(
    split: EncodedSplit,
    batch_size: int,
    length: int,
    process_index: int = 0,
    process_count: int = 1,
    source_length: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """The whole split in order, as batches of `batch_size` pairs, sources padded to
    `source_length` (None: `length`) and targets to `length` (the last batch padded with
    empty rows, which carry no tokens and so no weight). Each process holds its rows of each
    batch."""
    source_length = length if source_length is None else source_length
    local = batch_size // process_count
    batches = []
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        inputs = np.full((batch_size, source_length), PAD_ID, np.int32)
        targets = np.full((batch_size, length), PAD_ID, np.int32)
        inputs[: len(idx)] = split.inputs.padded(idx, source_length)
        targets[: len(idx)] = split.targets.padded(idx, length)
        rows = slice(process_index * local, (process_index + 1) * local)
        batches.append({"inputs": inputs[rows], "targets": targets[rows]})
    return batches
