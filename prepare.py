"""Prepares a corpus and its vocabulary once, for every run and host that trains on it.

  python prepare.py --config configs/wmt14.py --vocabulary /shared/vocab/wmt14_bpe37k.model \
      --config.data.tfds.data_dir=/shared/tensorflow_datasets

For a TFDS corpus it downloads and prepares the dataset into data_dir (WMT14: about 4.5M
pairs, several GB); for any corpus it then trains the config's vocabulary on the training
split and writes it to --vocabulary. Runs then read both without downloading or training:

  python train.py --config configs/wmt14.py --workdir DIR \
      --config.data.tfds.data_dir=/shared/tensorflow_datasets \
      --config.data.tfds.download=False --config.data.vocabulary=/shared/vocab/wmt14_bpe37k.model

A multi-host run never downloads: where the dataset is not prepared it stops and names this
command. Run this on one machine whose disk every host sees.
"""

import os

from absl import app, flags

from transformer.config import from_config_dict, load_file, split_overrides, with_overrides
from transformer.data.tasks import read_pairs, train_vocabulary
from transformer.errors import cli_main

_CONFIG = flags.DEFINE_string("config", None, "Experiment config file: configs/NAME.py[:ARG].")
_VOCABULARY = flags.DEFINE_string("vocabulary", None, "Where to write the vocabulary file.")
flags.mark_flags_as_required(["config", "vocabulary"])
OVERRIDES: list[str] = []


def parse_flags(argv: list[str]) -> list[str]:
    rest, OVERRIDES[:] = split_overrides(argv)
    return app.parse_flags_with_usage(rest)


def prepare() -> None:
    data = from_config_dict(with_overrides(load_file(_CONFIG.value), OVERRIDES)).data
    path = _VOCABULARY.value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pairs = read_pairs(data, wanted=("train",))["train"]  # A TFDS corpus is prepared here.
    print(f"Read {len(pairs):,} training pairs; training a {data.tokenizer} vocabulary of "
          f"{data.vocab_size:,}.", flush=True)  # fmt: skip
    train_vocabulary(data, pairs).save(path)
    flags_out = [f"--config.data.vocabulary={os.path.abspath(path)}"]
    if data.source == "tfds":
        flags_out.insert(0, "--config.data.tfds.download=False")
    print(f"Wrote {path}. Train and evaluate with: {' '.join(flags_out)}")


if __name__ == "__main__":
    app.run(cli_main(prepare), flags_parser=parse_flags)
