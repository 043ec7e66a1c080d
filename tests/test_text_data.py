"""Local parallel text files and SentencePiece vocabularies, on real corpora and broken files."""

import dataclasses
import pathlib

import pytest

from configs import multi30k
from transformer.config import ConfigError, from_config_dict
from transformer.data.tasks import load_task
from transformer.data.text_files import CorpusError, read_parallel
from transformer.data.tokenizer import SentencePieceTokenizer
from transformer.special_tokens import EOS_ID, PAD_ID
from transformer.workdir import WorkdirError

MULTI30K = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "multi30k"
needs_multi30k = pytest.mark.skipif(not MULTI30K.is_dir(), reason="../shared/data not present")


def write(directory, name, data: bytes):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


@needs_multi30k
def test_multi30k_is_read_in_place_with_every_split():
    counts = {
        s: len(read_parallel(str(MULTI30K), "en", "de", s)) for s in ("train", "validation", "test")
    }
    assert counts == {"train": 29_000, "validation": 1_014, "test": 1_000}
    src, tgt = read_parallel(str(MULTI30K), "en", "de", "test")[0]
    assert src.startswith("A man in an orange hat") and "orangefarbenen Hut" in tgt


def test_a_host_reads_every_nth_line_and_names_its_own_bad_lines(tmp_path):
    write(tmp_path, "en.train.txt", "".join(f"s{i}\n" for i in range(7)).encode())
    write(tmp_path, "de.train.txt", b"t0\nt1\nt2\nt3\n\xff\nt5\nt6\n")
    shards = [read_parallel(str(tmp_path), "en", "de", "train", i, 3) for i in (0, 2)]
    assert shards == [[("s0", "t0"), ("s3", "t3"), ("s6", "t6")], [("s2", "t2"), ("s5", "t5")]]
    with pytest.raises(CorpusError, match=r"de\.train\.txt:5: invalid UTF-8"):
        read_parallel(str(tmp_path), "en", "de", "train", 1, 3)


def test_a_missing_file_is_named_with_what_the_folder_holds(tmp_path):
    write(tmp_path, "en.train.txt", b"a\n")
    write(tmp_path, "fr.train.txt", b"b\n")
    with pytest.raises(
        CorpusError, match=r"de\.train\.txt does not exist.*en\.train\.txt, fr\.train"
    ):
        read_parallel(str(tmp_path), "en", "de", "train")


def test_unequal_line_counts_name_both_files(tmp_path):
    write(tmp_path, "en.train.txt", b"one\ntwo\nthree\n")
    write(tmp_path, "de.train.txt", b"eins\nzwei\n")
    with pytest.raises(CorpusError, match=r"en\.train\.txt has 3 lines but .*de\.train\.txt has 2"):
        read_parallel(str(tmp_path), "en", "de", "train")


def test_invalid_utf8_names_file_and_line(tmp_path):
    write(tmp_path, "en.train.txt", b"one\ntwo\nthree\n")
    write(tmp_path, "de.train.txt", b"eins\nzw\xffei\ndrei\n")
    with pytest.raises(CorpusError, match=r"de\.train\.txt:2: invalid UTF-8"):
        read_parallel(str(tmp_path), "en", "de", "train")


def test_empty_lines_are_skipped_and_counted(tmp_path, caplog):
    write(tmp_path, "en.train.txt", b"one\n\nthree\r\nfour\n")
    write(tmp_path, "de.train.txt", b"eins\nzwei\ndrei\r\n  \n")
    with caplog.at_level("WARNING"):
        pairs = read_parallel(str(tmp_path), "en", "de", "train")
    assert pairs == [("one", "eins"), ("three", "drei")]
    assert "skipped 2 pairs with an empty side (lines 2, 4)" in caplog.text


def test_a_corpus_of_empty_lines_is_an_error(tmp_path):
    write(tmp_path, "en.train.txt", b"\n\n")
    write(tmp_path, "de.train.txt", b"\n\n")
    with pytest.raises(CorpusError, match="hold no non-empty sentence pair"):
        read_parallel(str(tmp_path), "en", "de", "train")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_roundtrip_with_reserved_ids(model_type):
    sentences = [
        "Ein Mann mit einem orangefarbenen Hut.", "Zwei junge weiße Männer sind im Freien.",
        "A little girl climbing into a wooden playhouse.", "Größere Häuser über der Straße.",
    ] * 50  # fmt: skip
    tok = SentencePieceTokenizer.train(sentences, vocab_size=50, model_type=model_type)
    assert tok.vocab_size == 50 and tok.model_type == model_type
    for text in sentences[:4]:
        ids = tok.encode(text)
        assert ids[-1] == EOS_ID and PAD_ID not in ids
        assert tok.decode([*ids, PAD_ID]) == text
    assert tok.encode_batch(sentences[:2]) == [tok.encode(s) for s in sentences[:2]]


def test_a_vocabulary_too_large_for_the_corpus_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.vocab_size=5000 is too large .* at most \d+"):
        SentencePieceTokenizer.train(["a tiny corpus", "of two lines"], 5000, "bpe")


def multi30k_data(**overrides):
    data = from_config_dict(multi30k.get_config()).data
    data = dataclasses.replace(
        data, text_files=dataclasses.replace(data.text_files, directory=str(MULTI30K))
    )
    return dataclasses.replace(data, **overrides)


@needs_multi30k
def test_the_vocabulary_is_trained_once_stored_and_reused(tmp_path):
    task = load_task(multi30k_data(vocab_size=1000), str(tmp_path))
    model = (tmp_path / "spm.model").read_bytes()
    assert task.tokenizer.vocab_size == 1000
    again = load_task(multi30k_data(vocab_size=1000), str(tmp_path))
    assert again.tokenizer.model_proto == model == (tmp_path / "spm.model").read_bytes()
    with pytest.raises(WorkdirError, match=r"bpe model of 1000 pieces.*vocab_size=2000"):
        load_task(multi30k_data(vocab_size=2000), str(tmp_path))
    with pytest.raises(WorkdirError, match=r"tokenizer='unigram'"):
        load_task(multi30k_data(vocab_size=1000, tokenizer="unigram"), str(tmp_path))
    with pytest.raises(WorkdirError, match=r"holds a spm\.model vocabulary"):
        load_task(multi30k_data(vocab_size=1000, tokenizer="word"), str(tmp_path))


@needs_multi30k
def test_multi30k_task_encodes_every_split_and_decodes_back(tmp_path):
    task = load_task(multi30k_data(vocab_size=2000, max_length=24), str(tmp_path))
    assert len(task.splits["validation"]) == 1_014 and len(task.splits["test"]) == 1_000
    assert task.splits["train"].num_dropped > 0  # over-long training pairs dropped ...
    assert task.splits["test"].num_truncated > 0  # ... but test pairs are only truncated
    test = task.splits["test"]
    whole = next(i for i in range(len(test)) if len(test.targets[i]) < 24)
    assert task.tokenizer.decode(test.targets[whole]) == test.references[whole]


@needs_multi30k
def test_a_task_of_one_split_reads_no_other_file(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("en.test.txt", "de.test.txt", "en.train.txt", "de.train.txt"):
        (corpus / name).write_bytes((MULTI30K / name).read_bytes())
    data = dataclasses.replace(
        multi30k_data(vocab_size=1000),
        text_files=dataclasses.replace(multi30k_data().text_files, directory=str(corpus)),
    )
    load_task(data, str(tmp_path), splits=("train",))  # Builds the vocabulary.
    for name in ("en.train.txt", "de.train.txt"):  # Without them, and without validation,
        (corpus / name).unlink()  # the test split still loads: as evaluate.py reads it.
    task = load_task(data, str(tmp_path), splits=("test",))
    assert set(task.splits) == {"test"} and len(task.splits["test"]) == 1_000
