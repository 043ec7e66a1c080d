"""Trains a Transformer; running again with the same --workdir resumes. SIGTERM or Ctrl-C
stops after the current step with a checkpoint (exit 0); a second one stops at once.

  python train.py --config configs/quickstart.py --workdir /tmp/quickstart \
      [--config.num_train_steps=2000 --config.model.dropout_rate=0.2 ...]
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from transformer import distributed, trainer
from transformer.errors import cli_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    "",
    "Multi-host: 'auto' detects the cluster (SLURM, TPU VM, GKE); 'host:port' of process 0 "
    "with --num_processes and --process_id; empty for one process.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-host: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-host: this process's id.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; an override of a key the config lacks is a one-line error."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' way of saying "no such key".
        cause: BaseException = e
        while cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        key, _, hint = str(cause.args[0] if cause.args else cause).partition("\n")
        key = key.strip("'\"")
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        culprit = next((a for a in overrides if key in a.split(".")), None)
        if culprit is None:
            raise
        sys.exit(f"error: {culprit}: the config has no key {key!r}. {hint}".strip())


def train() -> None:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    trainer.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(cli_main(train), flags_parser=parse_flags)
