"""Trains a Transformer; running again with the same --workdir resumes.

  python train.py --config configs/quickstart.py --workdir /tmp/quickstart \
      [--config.num_train_steps=2000 --config.model.dropout_rate=0.2 ...]
"""

from absl import app, flags
from ml_collections import config_flags

from transformer import trainer
from transformer.errors import cli_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def train() -> None:
    trainer.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(cli_main(train))
