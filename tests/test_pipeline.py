"""Tokenizer and batching of the embedded task: exact, deterministic, resumable."""

import dataclasses

import numpy as np
import pytest

from benchmarks.bucket_padding import epoch_padding
from configs import tiny
from transformer.config import from_config_dict
from transformer.data.pipeline import (
    MAX_PADDING_GROWTH,
    EncodedSplit,
    EpochBatches,
    Ragged,
    TokenBatches,
    bucket_length,
    bucket_shapes,
    count_buckets,
    encode_split,
    eval_batches,
    merge_sparse_buckets,
    pack_rows,
    train_batches,
)
from transformer.data.tasks import load_task
from transformer.data.tokenizer import WordTokenizer, join_words, split_words
from transformer.special_tokens import EOS_ID, PAD_ID, UNK_ID
from transformer.workdir import WorkdirError

PAIRS = [
    ("the man sleeps.", "der Mann schläft."),
    (
        "the dog sees the cat, because the man sleeps.",
        "der Hund sieht die Katze, weil der Mann schläft.",
    ),
    ("a woman opens the door.", "eine Frau macht die Tür auf."),
    ("today the man sees the dog.", "heute sieht der Mann den Hund."),
    ("the cat sleeps.", "die Katze schläft."),
    ("the dogs see the man.", "die Hunde sehen den Mann."),
]


def test_words_and_punctuation_split_and_join_back():
    text = "der Hund sieht die Katze, weil der Mann schläft."
    assert split_words(text)[4:7] == ["Katze", ",", "weil"]
    assert split_words(text)[-2:] == ["schläft", "."]
    assert join_words(split_words(text)) == text


def test_tokenizer_roundtrip_unknown_words_and_saved_vocabulary(tmp_path):
    tok = WordTokenizer.build((s for pair in PAIRS for s in pair), max_vocab_size=1000)
    ids = tok.encode("der Mann schläft.")
    assert ids[-1] == EOS_ID and UNK_ID not in ids
    assert tok.decode([*ids, PAD_ID, PAD_ID]) == "der Mann schläft."
    assert tok.encode("der Elefant schläft.")[1] == UNK_ID
    tok.save(str(tmp_path / "vocab.txt"))
    assert WordTokenizer.load(str(tmp_path / "vocab.txt")).words == tok.words
    small = WordTokenizer.build((s for pair in PAIRS for s in pair), max_vocab_size=10)
    assert small.vocab_size == 10 and small.words[4] == "."  # most frequent first


def test_encode_split_drops_or_truncates_overlong_pairs():
    tok = WordTokenizer.build((s for pair in PAIRS for s in pair), max_vocab_size=1000)
    split = encode_split(PAIRS, tok, max_length=8)
    assert split.num_dropped == 1 and len(split) == 5  # the pair with a subordinate clause
    assert split.inputs.tokens.dtype == np.int32
    assert tok.decode(split.targets[0]) == "der Mann schläft."
    assert split.targets.padded([0], 8)[0].tolist()[-3:] == [PAD_ID] * 3
    cut = encode_split(PAIRS, tok, max_length=8, overlong="truncate")
    assert cut.num_truncated == 1 and len(cut) == 6
    assert len(cut.inputs[1]) == 8 and cut.inputs[1][-1] == EOS_ID
    assert cut.references[1] == PAIRS[1][1]  # BLEU still scores against the whole reference
    with pytest.raises(ValueError, match="max_length=2"):
        encode_split(PAIRS, tok, max_length=2)


def test_pack_rows_never_overflows_and_keeps_every_example_once():
    rng = np.random.default_rng(0)
    src_len, tgt_len = rng.integers(3, 20, 500), rng.integers(3, 20, 500)
    order = rng.permutation(500)
    rows = pack_rows(order, src_len, tgt_len, length=40)
    assert sorted(np.concatenate(rows).tolist()) == list(range(500))
    assert all(src_len[r].sum() <= 40 and tgt_len[r].sum() <= 40 for r in rows)
    assert np.concatenate(rows).tolist() == order.tolist()  # order preserved


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return load_task(from_config_dict(tiny.get_config()).data, str(tmp_path_factory.mktemp("t")))


@pytest.mark.parametrize("batching, size", [("sentences", 16), ("packed", 16), ("tokens", 256)])
def test_batches_are_a_pure_function_of_seed_and_step(task, batching, size):
    a = train_batches(task.splits["train"], size, seed=3, batching=batching)
    b = train_batches(task.splits["train"], size, seed=3, batching=batching)
    for step in (0, 5, 1000, 7):  # any order: a resumed run starts mid-way
        for key, value in a(step).items():
            np.testing.assert_array_equal(value, b(step)[key])
    assert not np.array_equal(a(0)["inputs"], a(1)["inputs"])
    c = train_batches(task.splits["train"], size, seed=4, batching=batching)
    assert not np.array_equal(a(0)["inputs"], c(0)["inputs"])


def test_an_epoch_visits_every_example_once(task):
    n = len(task.splits["train"])
    batches = train_batches(task.splits["train"], 10, seed=0)
    seen = np.concatenate([np.concatenate(batches.plan(s).rows) for s in range(n // 10)])
    assert len(seen) == len(set(seen.tolist())) == (n // 10) * 10


def test_packed_rows_hold_whole_pairs_with_segments_and_positions(tmp_path):
    data = dataclasses.replace(from_config_dict(tiny.get_config()).data, max_length=64)
    split = load_task(data, str(tmp_path)).splits["train"]
    batch = train_batches(split, 8, seed=0, batching="packed", max_length=64)(2)
    for side in ("inputs", "targets"):
        tokens, seg, pos = batch[side], batch[f"{side}_segmentation"], batch[f"{side}_positions"]
        assert np.all((tokens != PAD_ID) == (seg > 0))
        for row in range(len(tokens)):
            for s in range(1, seg[row].max() + 1):
                where = np.flatnonzero(seg[row] == s)
                np.testing.assert_array_equal(pos[row, where], np.arange(len(where)))
                assert tokens[row, where[-1]] == EOS_ID  # each segment is a whole sentence
    assert np.array_equal(batch["inputs_segmentation"].max(1), batch["targets_segmentation"].max(1))
    unpacked = train_batches(split, 8, seed=0, max_length=64)(2)
    assert (batch["targets"] != PAD_ID).mean() > 2 * (unpacked["targets"] != PAD_ID).mean()


def host_shards(tmp_path, count, **data_overrides):
    """The tasks of `count` hosts: each holds its shard of the same training split."""
    data = dataclasses.replace(from_config_dict(tiny.get_config()).data, **data_overrides)
    return [load_task(data, str(tmp_path), i, count) for i in range(count)]


def pair_set(split):
    return {(tuple(split.inputs[i]), tuple(split.targets[i])) for i in range(len(split))}


@pytest.mark.parametrize("batching, size", [("sentences", 16), ("packed", 16)])
def test_each_host_builds_its_rows_from_its_own_shard(tmp_path, batching, size):
    whole = host_shards(tmp_path, 1)[0].splits["train"]
    tasks = host_shards(tmp_path, 2)
    shards = [pair_set(t.splits["train"]) for t in tasks]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == pair_set(whole)
    for step in (0, 3, 500):
        for t in tasks:
            plan = t.train_batches(size, seed=0, row_multiple=2).plan(step)
            assert len(plan.rows) == size // 2
            assert np.concatenate(plan.rows).max() < len(t.splits["train"])
    assert tasks[0].splits["validation"].sources == tasks[1].splits["validation"].sources


def test_token_batches_of_all_hosts_share_each_steps_bucket_length(tmp_path):
    tasks = host_shards(tmp_path, 2, batching="tokens")
    counts = sum(count_buckets(t.splits["train"], 24) for t in tasks)
    hosts = [
        t.train_batches(256, seed=0, row_multiple=4, global_bucket_counts=counts) for t in tasks
    ]
    for step in range(60):
        shapes = {tuple(h(step)["inputs"].shape) for h in hosts}
        assert len(shapes) == 1 and next(iter(shapes))[0] % 2 == 0
    with pytest.raises(ValueError, match="global counts"):
        tasks[0].train_batches(256, seed=0, row_multiple=4)


def test_a_host_lacking_a_buckets_pairs_fills_it_with_shorter_ones_or_refuses():
    tok = WordTokenizer.build((s for pair in PAIRS for s in pair), max_vocab_size=1000)
    short = encode_split(PAIRS[:1] + PAIRS[2:], tok, 24)  # every pair fits the 8-token bucket
    other_hosts_hold_12_token_pairs = np.array([[0, 0, 0], [100, 1100, 1100], [0, 0, 0], [0] * 3])
    batches = train_batches(short, 96, 0, "tokens", 24, 2, 1, 2, other_hosts_hold_12_token_pairs)
    plan = batches.plan(0)
    assert (plan.source_length, plan.target_length) == (12, 12)
    assert len(plan.rows) == 96 // 12 // 2  # this host's half of the rows
    long = encode_split(PAIRS[1:2], tok, 24)  # 12 tokens: nothing fits the 8-token bucket
    with pytest.raises(ValueError, match="Host 1 holds no training pair of at most 8 tokens"):
        counts = np.array([[100, 600, 600], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
        train_batches(long, 96, 0, "tokens", 24, 2, 1, 2, counts)


def test_the_factory_picks_the_class_of_each_batching_and_refuses_others(task):
    split = task.splits["train"]
    assert type(train_batches(split, 16, 0, "sentences")) is EpochBatches
    packed = train_batches(split, 16, 0, "packed")
    assert type(packed) is EpochBatches and packed.packed
    assert type(train_batches(split, 256, 0, "tokens")) is TokenBatches
    with pytest.raises(ValueError, match=r"data\.batching='words' is none of sentences, packed"):
        train_batches(split, 16, 0, "words")


def test_batches_that_cannot_be_built_are_refused_with_the_reason(task):
    split = task.splits["train"]
    n = len(split)
    with pytest.raises(
        ValueError, match=rf"\(sentences\) .* one epoch of the {n} training pairs\.$"
    ):
        train_batches(split, n + 1, 0, "sentences")
    with pytest.raises(ValueError, match=r"\(packed\) .* training pairs of this host\.$"):
        train_batches(split, 2 * n + 2, 0, "packed", row_multiple=2, process_count=2)
    with pytest.raises(ValueError, match="tokens is larger than one epoch"):
        train_batches(split, 10**9, 0, "tokens")
    for batching in ("sentences", "tokens"):
        with pytest.raises(ValueError, match="3 batch shards do not divide over 2 hosts"):
            train_batches(split, 48, 0, batching, row_multiple=3, process_count=2)
    with pytest.raises(ValueError, match="batch_size=30 must divide evenly over 4 batch shards"):
        train_batches(split, 30, 0, row_multiple=4)


def test_eval_batches_cover_the_split_in_order(task):
    split = task.splits["validation"]
    batches = eval_batches(split, 48, 24)
    inputs = np.concatenate([b["inputs"] for b in batches])
    assert len(inputs) % 48 == 0 and inputs.shape[1] == 24
    np.testing.assert_array_equal(inputs[: len(split)], split.inputs.padded(range(len(split)), 24))
    assert np.all(inputs[len(split) :] == PAD_ID)


def test_a_stored_vocabulary_larger_than_the_config_is_refused(tmp_path):
    data = from_config_dict(tiny.get_config()).data
    load_task(data, str(tmp_path))
    with pytest.raises(WorkdirError, match=r"data\.vocab_size is 100"):
        load_task(dataclasses.replace(data, vocab_size=100), str(tmp_path))


def test_token_batches_fill_a_budget_with_pairs_of_similar_length(task):
    split = task.splits["train"]
    batches = train_batches(split, 256, seed=0, batching="tokens", max_length=24, row_multiple=4)
    lengths = np.maximum(split.inputs.lengths, split.targets.lengths)
    plans = [batches.plan(step) for step in range(batches.steps_per_epoch)]
    seen = np.concatenate([np.concatenate(p.rows) for p in plans])
    assert len(set(seen.tolist())) > 0.9 * len(split)  # an epoch: nearly every pair once
    for plan in plans:
        rows = np.concatenate(plan.rows)
        assert plan.source_length == plan.target_length  # One limit: one length.
        assert len(rows) % 4 == 0 and len(rows) * plan.target_length <= 256
        # Its own bucket, or a larger one its sparse bucket merged into.
        assert all(bucket_length(int(lengths[i]), 24) <= plan.target_length for i in rows)
    assert len({p.target_length for p in plans}) <= 5  # one compiled shape per bucket
    budget = sum(p.target_length * len(p.rows) for p in plans)
    assert (split.inputs.lengths[seen].sum() + split.targets.lengths[seen].sum()) / (
        2 * budget
    ) > 0.6


def test_counting_real_tokens_fills_each_side_of_a_batch_with_the_budget_not_padding():
    split = long_source_split(num_pairs=3000, seed=2)
    kwargs = dict(max_length=48, max_source_length=256, row_multiple=2)
    real = train_batches(split, 4096, 0, "tokens", token_count="real", **kwargs)
    padded = train_batches(split, 4096, 0, "tokens", **kwargs)
    real_tokens, padded_tokens = [], []
    for step in range(real.steps_per_epoch):
        plan = real.plan(step)
        rows = np.concatenate(plan.rows)
        assert len(rows) % 2 == 0
        real_tokens.append(split.inputs.lengths[rows].sum())  # The longer side here.
        padded_tokens.append(len(rows) * plan.source_length)
        assert padded_tokens[-1] <= MAX_PADDING_GROWTH * 4096
    # Rows are chosen from each bucket's mean length: a batch's real tokens are near the
    # budget on average, where counting padding leaves them well under it.
    assert 0.93 * 4096 < np.mean(real_tokens) < 1.07 * 4096
    plans = [padded.plan(step) for step in range(padded.steps_per_epoch)]
    padded_real = np.mean([split.inputs.lengths[np.concatenate(p.rows)].sum() for p in plans])
    assert padded_real < 0.85 * 4096
    assert real.steps_per_epoch < padded.steps_per_epoch  # Fuller batches: fewer per epoch.


def test_hosts_counting_real_tokens_agree_with_one_host_on_every_batch_shape(tmp_path):
    tasks = host_shards(tmp_path, 2, batching="tokens")
    counts = sum(count_buckets(t.splits["train"], 24) for t in tasks)
    whole = host_shards(tmp_path, 1)[0].splits["train"]
    np.testing.assert_array_equal(counts, count_buckets(whole, 24))  # Pairs, real tokens.
    make = dict(batching="tokens", max_length=24, row_multiple=2, token_count="real")
    hosts = [
        train_batches(t.splits["train"], 256, 0, **make, process_index=i, process_count=2,
                      global_bucket_counts=counts)
        for i, t in enumerate(tasks)
    ]  # fmt: skip
    one = train_batches(whole, 256, 0, **make)
    for step in range(40):
        shapes = [h(step)["inputs"].shape for h in hosts]
        assert shapes[0] == shapes[1]
        assert (2 * shapes[0][0], shapes[0][1]) == one(step)["inputs"].shape


def long_source_split(num_pairs=600, seed=0):
    """Pairs whose sources are ~6x longer than their targets, as a dialogue and its summary."""
    rng = np.random.default_rng(seed)
    source_lengths = rng.integers(10, 200, num_pairs)
    target_lengths = np.maximum(2, source_lengths // 6 + rng.integers(-2, 8, num_pairs))
    inputs = [[5] * (n - 1) + [EOS_ID] for n in source_lengths]
    targets = [[6] * (n - 1) + [EOS_ID] for n in target_lengths]
    return EncodedSplit(Ragged.from_lists(inputs), Ragged.from_lists(targets),
                        ("",) * num_pairs, ("",) * num_pairs, 0, 0)  # fmt: skip


def test_a_source_limit_of_its_own_buckets_each_side_by_its_length_and_pads_less():
    split = long_source_split()
    own_batches = train_batches(split, 2048, 0, "tokens", max_length=48, max_source_length=256)
    for step in range(own_batches.steps_per_epoch):
        plan, batch = own_batches.plan(step), own_batches(step)
        rows = np.concatenate(plan.rows)
        assert batch["inputs"].shape == (len(rows), plan.source_length)
        assert batch["targets"].shape == (len(rows), plan.target_length)
        assert plan.source_length <= 256 and plan.target_length <= 48
        assert np.all(split.inputs.lengths[rows] <= plan.source_length)
        assert np.all(split.targets.lengths[rows] <= plan.target_length)
        assert len(rows) * max(plan.source_length, plan.target_length) <= 2048
    own = epoch_padding(split, 2048, 48, 256)  # benchmarks/bucket_padding.py's count
    shared = epoch_padding(split, 2048, 256, None)
    assert own["padded_per_real"] < 1.3 < shared["padded_per_real"]
    assert own["target_padding"] < 0.5 * shared["target_padding"]
    assert own["steps"] == own_batches.steps_per_epoch


def test_sparse_buckets_join_the_smallest_bucket_that_holds_them():
    shapes = bucket_shapes(16, 24)  # (source, target): 8, 12, 16, 24 x 8, 12, 16
    assert shapes[:4] == [(8, 8), (8, 12), (8, 16), (12, 8)] and len(shapes) == 12
    counts = np.zeros(12, np.int64)
    counts[shapes.index((8, 8))] = 3  # Fewer than a batch: to (8, 12), then on to (8, 16).
    counts[shapes.index((8, 12))] = 2
    counts[shapes.index((8, 16))] = 6  # 11 with the two above: a batch.
    counts[shapes.index((12, 12))] = 50
    counts[shapes.index((24, 16))] = 1  # The largest keeps its own.
    merged = merge_sparse_buckets(shapes, counts, rows=np.full(12, 10))
    assert shapes[merged[shapes.index((8, 8))]] == (8, 16)
    assert shapes[merged[shapes.index((8, 12))]] == (8, 16)
    assert shapes[merged[shapes.index((12, 12))]] == (12, 12)
    assert shapes[merged[shapes.index((24, 16))]] == (24, 16)
    # With one length for both sides, the next larger length takes them.
    one = bucket_shapes(24)
    merged = merge_sparse_buckets(one, np.array([5, 40, 0, 0]), rows=np.full(4, 10))
    assert [one[b] for b in merged[:2]] == [(12, 12), (12, 12)]


def test_every_pair_of_a_sparse_bucket_is_trained_on():
    split = long_source_split(num_pairs=200, seed=1)
    batches = train_batches(split, 2048, 0, "tokens", max_length=48, max_source_length=256)
    seen = set()
    for step in range(3 * batches.steps_per_epoch):
        seen.update(np.concatenate(batches.plan(step).rows).tolist())
    assert seen == set(range(len(split)))


def test_a_source_limit_of_its_own_cuts_each_side_to_its_limit():
    tok = WordTokenizer.build((s for pair in PAIRS for s in pair), max_vocab_size=1000)
    split = encode_split(PAIRS, tok, max_length=6, overlong="truncate", max_source_length=12)
    assert split.inputs.lengths.max() == 12 and split.targets.lengths.max() == 6
    assert split.num_truncated == 4  # Targets over 6 tokens; one source over 12.
    batch = eval_batches(split, 4, 6, source_length=12)[0]
    assert batch["inputs"].shape == (4, 12) and batch["targets"].shape == (4, 6)
