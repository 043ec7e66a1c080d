"""TFDS translation datasets, read through a real TFDS builder prepared on local disk."""

import dataclasses

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("tensorflow")

from configs import tiny  # noqa: E402
from transformer.config import TfdsConfig, from_config_dict  # noqa: E402
from transformer.data import generated  # noqa: E402
from transformer.data.tasks import load_task  # noqa: E402
from transformer.data.text_files import CorpusError  # noqa: E402
from transformer.data.tfds_source import read_tfds  # noqa: E402

CORPUS = generated.generate_splits(seed=7, num_train=300, num_validation=20, num_test=30)


class TinyParallelCorpus(tfds.core.GeneratorBasedBuilder):
    """A small English-German translation dataset in TFDS's own format (no download)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.Translation(languages=("de", "en"))
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in CORPUS}

    def _generate_examples(self, split):
        for i, (en, de) in enumerate(CORPUS[split]):
            yield i, {"en": en, "de": "" if i == 3 else de}


def test_reads_a_prepared_tfds_dataset_in_either_direction(tmp_path):
    pairs = read_tfds("tiny_parallel_corpus", "en", "de", "train", str(tmp_path), None, True)
    expected = [p for i, p in enumerate(CORPUS["train"]) if i != 3]  # the empty pair skipped
    assert sorted(pairs) == sorted(expected)  # TFDS stores examples in its own fixed order
    assert read_tfds("tiny_parallel_corpus", "en", "de", "train", str(tmp_path), None, False) == (
        pairs
    )
    reverse = read_tfds("tiny_parallel_corpus", "de", "en", "test", str(tmp_path), None, False)
    assert sorted(reverse) == sorted(
        (de, en) for i, (en, de) in enumerate(CORPUS["test"]) if i != 3
    )


def test_host_shards_of_a_tfds_split_are_disjoint_and_cover_it(tmp_path):
    whole = read_tfds("tiny_parallel_corpus", "en", "de", "train", str(tmp_path), None, True)
    shards = [
        read_tfds("tiny_parallel_corpus", "en", "de", "train", str(tmp_path), None, False, i, 3)
        for i in range(3)
    ]
    assert all(90 <= len(s) <= 110 for s in shards)
    assert sorted(p for s in shards for p in s) == sorted(whole)


def test_a_language_the_dataset_lacks_is_named(tmp_path):
    with pytest.raises(
        CorpusError, match=r"languages \['de', 'en'\]; data\.tfds\.target_lang='fr'"
    ):
        read_tfds("tiny_parallel_corpus", "en", "fr", "train", str(tmp_path), None, True)


def test_a_missing_split_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"not 'dev'"):
        read_tfds("tiny_parallel_corpus", "en", "de", "dev", str(tmp_path), None, True)


def test_a_tfds_task_trains_a_shared_sentencepiece_vocabulary(tmp_path):
    data = from_config_dict(tiny.get_config()).data
    source = TfdsConfig(
        name="tiny_parallel_corpus", source_lang="en", target_lang="de",
        data_dir=str(tmp_path / "tfds"), manual_dir="", download=True,
        train_split="train", validation_split="validation", test_split="test",
    )  # fmt: skip
    data = dataclasses.replace(
        data, source="tfds", generated=None, tfds=source, tokenizer="bpe", vocab_size=200
    )
    (tmp_path / "work").mkdir()
    task = load_task(data, str(tmp_path / "work"))
    assert (tmp_path / "work" / "spm.model").exists() and task.tokenizer.vocab_size == 200
    assert len(task.splits["test"]) == 29  # one pair has an empty side
    assert set(task.splits["test"].sources) < {en for en, _ in CORPUS["test"]}
