"""Tokenizer and batching of the embedded task: exact, deterministic, resumable."""

import dataclasses

import numpy as np
import pytest

from configs import tiny
from transformer.config import from_config_dict
from transformer.data.pipeline import TrainBatches, encode_split, eval_batches, pack_rows
from transformer.data.tasks import VocabularyMismatchError, load_task
from transformer.data.tokenizer import WordTokenizer, join_words, split_words
from transformer.special_tokens import EOS_ID, PAD_ID, UNK_ID

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
    assert split_words(text)[-4:] == ["Mann", "schläft", "."] or split_words(text)[-3:] == [
        "Mann",
        "schläft",
        ".",
    ]
    assert "," in split_words(text)
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


def test_encode_split_pads_and_drops_overlong_pairs():
    tok = WordTokenizer.build((s for pair in PAIRS for s in pair), max_vocab_size=1000)
    split = encode_split(PAIRS, tok, max_length=8)
    assert split.num_dropped == 1  # the pair with a subordinate clause
    assert split.inputs.shape == (5, 8) and split.targets.dtype == np.int32
    assert tok.decode(split.targets[0]) == "der Mann schläft."
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


@pytest.mark.parametrize("packing", [False, True])
def test_batches_are_a_pure_function_of_seed_and_step(task, packing):
    a = TrainBatches(task.splits["train"], 16, seed=3, packing=packing)
    b = TrainBatches(task.splits["train"], 16, seed=3, packing=packing)
    for step in (0, 5, 1000, 7):  # any order: a resumed run starts mid-way
        for key, value in a(step).items():
            np.testing.assert_array_equal(value, b(step)[key])
    assert not np.array_equal(a(0)["inputs"], a(1)["inputs"])
    c = TrainBatches(task.splits["train"], 16, seed=4, packing=packing)
    assert not np.array_equal(a(0)["inputs"], c(0)["inputs"])


def test_an_epoch_visits_every_example_once(task):
    n = len(task.splits["train"])
    batches = TrainBatches(task.splits["train"], 10, seed=0)
    seen = np.concatenate([np.concatenate(batches.global_rows(s)) for s in range(n // 10)])
    assert len(seen) == len(set(seen.tolist())) == (n // 10) * 10


def test_packed_rows_hold_whole_pairs_with_segments_and_positions(tmp_path):
    data = dataclasses.replace(from_config_dict(tiny.get_config()).data, max_length=64)
    split = load_task(data, str(tmp_path)).splits["train"]
    batch = TrainBatches(split, 8, seed=0, packing=True)(2)
    for side in ("inputs", "targets"):
        tokens, seg, pos = batch[side], batch[f"{side}_segmentation"], batch[f"{side}_positions"]
        assert np.all((tokens != PAD_ID) == (seg > 0))
        for row in range(len(tokens)):
            for s in range(1, seg[row].max() + 1):
                where = np.flatnonzero(seg[row] == s)
                np.testing.assert_array_equal(pos[row, where], np.arange(len(where)))
                assert tokens[row, where[-1]] == EOS_ID  # each segment is a whole sentence
    assert np.array_equal(batch["inputs_segmentation"].max(1), batch["targets_segmentation"].max(1))
    unpacked = TrainBatches(split, 8, seed=0)(2)
    assert (batch["targets"] != PAD_ID).mean() > 2 * (unpacked["targets"] != PAD_ID).mean()


def test_hosts_read_disjoint_rows_that_make_up_the_global_batch(task):
    split = task.splits["train"]
    whole = TrainBatches(split, 8, seed=0, packing=True)(4)
    parts = [
        TrainBatches(split, 8, seed=0, packing=True, process_index=i, process_count=2)(4)
        for i in range(2)
    ]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_batches_cover_the_split_in_order(task):
    split = task.splits["validation"]
    batches = eval_batches(split, 48)
    inputs = np.concatenate([b["inputs"] for b in batches])
    assert len(inputs) % 48 == 0
    np.testing.assert_array_equal(inputs[: len(split)], split.inputs)
    assert np.all(inputs[len(split) :] == PAD_ID)


def test_a_stored_vocabulary_larger_than_the_config_is_refused(tmp_path):
    data = from_config_dict(tiny.get_config()).data
    load_task(data, str(tmp_path))
    with pytest.raises(VocabularyMismatchError, match=r"data\.vocab_size is 100"):
        load_task(dataclasses.replace(data, vocab_size=100), str(tmp_path))
