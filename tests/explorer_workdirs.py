"""Tiny trained workdirs for the explorer's tests: a translation model with a SentencePiece
vocabulary (so that words split into pieces) on generated English -> German-like pairs
written here as JSON Lines, and a language model on the same German side."""

import contextlib
import fcntl
import json
import os
import pathlib
from collections.abc import Iterator

from ml_collections import ConfigDict

from configs import tiny
from transformer import trainer
from transformer.data.generated import generate_splits

SPLITS = {"train": 1_500, "val": 32, "test": 32}


def write_corpus(directory: pathlib.Path) -> None:
    """train/val/test.jsonl of {"en", "de"} records."""
    splits = generate_splits(0, SPLITS["train"], SPLITS["val"], SPLITS["test"])
    for name, key in (("train", "train"), ("val", "validation"), ("test", "test")):
        lines = [json.dumps({"en": en, "de": de}) + "\n" for en, de in splits[key]]
        (directory / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")


def explorer_config(corpus: pathlib.Path, kind: str = "encoder_decoder") -> ConfigDict:
    """configs/tiny.py on the JSON Lines corpus with 200 BPE pieces, 2 + 2 layers of 2 heads,
    trained for 300 steps (seconds), one checkpoint."""
    config = tiny.get_config()
    config.num_train_steps = 300
    config.checkpoint_every_steps = 300
    config.learning_rate_scale = 0.4
    config.eval_every_steps = 0
    config.bleu_every_steps = 0
    config.num_samples_to_print = 0
    config.model.num_encoder_layers = 0 if kind == "decoder_only" else 2
    config.model.num_decoder_layers = 2
    config.model.kind = kind
    if kind == "rnn":  # A recurrence reads one pair per row.
        config.data.batching = "sentences"
    config.data.source = "json_files"
    del config.data["generated"]
    config.data.json_files = ConfigDict(dict(
        directory=str(corpus), source_field="en", target_field="de",
        train_split="train", validation_split="val", test_split="test",
    ))  # fmt: skip
    config.data.tokenizer = "bpe"
    config.data.vocab_size = 200
    config.data.max_length = 40
    return config


DEFAULT_KINDS = (("translation", "encoder_decoder"), ("language_model", "decoder_only"))


def run_directory(tmp_path_factory) -> pathlib.Path:
    """A directory of this test run: under pytest-xdist, the one its workers share (so that
    test_explorer.py and test_export.py, in two workers, train the translation model once)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return tmp_path_factory.getbasetemp().parent
    return tmp_path_factory.getbasetemp()


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
    """Holds an exclusive lock on `path` (made if missing), across processes."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def train_workdirs(tmp_path_factory, kinds=DEFAULT_KINDS) -> dict[str, pathlib.Path]:
    """{name: trained workdir} for each (name, model.kind) of `kinds`: by default
    {"translation": ..., "language_model": ...}. Each is trained once per test run, by the
    first process to ask (the others wait for it), and only read after."""
    root = run_directory(tmp_path_factory) / "explorer_workdirs"
    root.mkdir(exist_ok=True)
    corpus = root / "pairs"
    with locked(root / "pairs.lock"):
        if not (root / "pairs.done").exists():
            corpus.mkdir(exist_ok=True)
            write_corpus(corpus)
            (root / "pairs.done").touch()
    workdirs = {}
    for name, kind in kinds:
        workdirs[name] = root / name
        with locked(root / f"{name}.lock"):
            if (root / f"{name}.done").exists():
                continue
            config = explorer_config(corpus, kind)
            if kind == "decoder_only":  # Its one test needs a continuation, not a good one.
                config.num_train_steps = config.checkpoint_every_steps = 150
            trainer.run(config, str(workdirs[name]))
            (root / f"{name}.done").touch()
    return workdirs
