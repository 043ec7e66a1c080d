"""TFDS translation datasets, read through a real TFDS builder prepared on local disk (no
download), and a model trained on one through `trainer.run`."""

import math
import os

import pytest
from ml_collections import ConfigDict

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("tensorflow")

from transformer import trainer  # noqa: E402
from transformer.config import from_config_dict  # noqa: E402
from transformer.data import generated  # noqa: E402
from transformer.data.tasks import load_task  # noqa: E402
from transformer.data.text_files import CorpusError  # noqa: E402
from transformer.data.tfds_source import read_tfds  # noqa: E402

from .model_configs import tiny_config  # noqa: E402

# A word of the training split only, with a letter no other sentence has: a vocabulary
# trained on any other text (all characters covered, no byte fallback) cannot spell it.
TRAIN_ONLY_WORD = "Fjøl"
CORPUS = generated.generate_splits(seed=7, num_train=300, num_validation=20, num_test=30)
CORPUS["train"] = [
    (f"{en} {TRAIN_ONLY_WORD}", f"{de} {TRAIN_ONLY_WORD}") if i % 10 == 5 else (en, de)
    for i, (en, de) in enumerate(CORPUS["train"])
]


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
    assert sorted(len(s) for s in shards) == [99, 100, 100]  # The empty pair is left out.
    assert sorted(p for s in shards for p in s) == sorted(whole)


def test_a_language_the_dataset_lacks_is_named(tmp_path):
    with pytest.raises(
        CorpusError, match=r"languages \['de', 'en'\]; data\.tfds\.target_lang='fr'"
    ):
        read_tfds("tiny_parallel_corpus", "en", "fr", "train", str(tmp_path), None, True)


def test_a_missing_split_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"not 'dev'"):
        read_tfds("tiny_parallel_corpus", "en", "de", "dev", str(tmp_path), None, True)


def tfds_source_config(data_dir):
    """The data.tfds section for the tiny dataset, prepared under `data_dir` on first use."""
    return dict(
        name="tiny_parallel_corpus", source_lang="en", target_lang="de", data_dir=data_dir,
        manual_dir="", download=True, train_split="train", validation_split="validation",
        test_split="test",
    )  # fmt: skip


def test_training_on_a_tfds_dataset_uses_its_splits_and_checkpoints(tmp_path, capsys):
    config = tiny_config(
        **{
            "num_train_steps": 4,
            "checkpoint_every_steps": 2,
            "eval_every_steps": 0,
            "bleu_every_steps": 0,
            "num_samples_to_print": 0,
            "data.source": "tfds",
            "data.tokenizer": "bpe",
            "data.vocab_size": 200,
            "data.max_length": 32,
        }
    )
    del config.data["generated"]
    config.data.tfds = ConfigDict(tfds_source_config(str(tmp_path / "tfds")))
    workdir = tmp_path / "work"
    results = trainer.run(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    assert math.isfinite(results["loss"]) and results["perplexity"] > 1.0
    # The test results are of the dataset's test split: its 30 pairs less the one with an
    # empty side (the generated task tiny.py names has 64).
    assert "on 29 sentences." in capsys.readouterr().out
    # The vocabulary: SentencePiece, stored in the workdir, trained on the dataset's training
    # split; the splits are the dataset's.
    task = load_task(from_config_dict(config).data, str(workdir))
    assert (workdir / "spm.model").exists() and task.tokenizer.vocab_size == 200
    assert len(task.splits["test"]) == 29
    assert set(task.splits["test"].sources) < {en for en, _ in CORPUS["test"]}
    assert task.tokenizer.decode(task.tokenizer.encode(TRAIN_ONLY_WORD)) == TRAIN_ONLY_WORD


def test_an_unprepared_dataset_is_only_downloaded_by_one_process_that_may(tmp_path):
    read = ("tiny_parallel_corpus", "en", "de", "train", str(tmp_path), None)
    with pytest.raises(
        CorpusError, match=r"not prepared in data_dir .*download=False.*prepare\.py"
    ):
        read_tfds(*read, False)
    with pytest.raises(CorpusError, match=r"multi-host run does not download.*prepare\.py"):
        read_tfds(*read, True, 0, 2)  # Host 0 of 2.
    assert not tfds.builder("tiny_parallel_corpus", data_dir=str(tmp_path)).is_prepared()


@pytest.mark.slow
def test_a_prepared_corpus_and_vocabulary_train_without_download(tmp_path):
    from transformer.data.tasks import read_pairs, train_vocabulary

    config = tiny_config(**{"num_train_steps": 2, "checkpoint_every_steps": 2,
                            "eval_every_steps": 0, "bleu_every_steps": 0,
                            "num_samples_to_print": 0, "data.source": "tfds",
                            "data.tokenizer": "bpe", "data.vocab_size": 200,
                            "data.max_length": 32})  # fmt: skip
    del config.data["generated"]
    config.data.tfds = ConfigDict(tfds_source_config(str(tmp_path / "tfds")))
    # What prepare.py does, once: the dataset prepared, the vocabulary trained and written.
    data = from_config_dict(config).data
    vocabulary = tmp_path / "shared" / "spm.model"
    vocabulary.parent.mkdir()
    train_vocabulary(data, read_pairs(data, wanted=("train",))["train"]).save(str(vocabulary))
    config.data.tfds.download = False
    config.data.vocabulary = str(vocabulary)
    trainer.run(config, str(tmp_path / "work"))
    assert (tmp_path / "work" / "spm.model").read_bytes() == vocabulary.read_bytes()
