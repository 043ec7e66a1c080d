"""Trains a Transformer; running again with the same --workdir resumes.

  python train.py --config configs/quickstart.py --workdir /tmp/quickstart \
      [--config.num_train_steps=2000 --config.model.dropout_rate=0.2 ...]
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from transformer import trainer
from transformer.errors import USER_ERRORS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    try:
        trainer.run(_CONFIG.value, _WORKDIR.value)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
