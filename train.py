"""Trains a Transformer; running again with the same --workdir resumes.

  python train.py --config configs/quickstart.py --workdir /tmp/quickstart \
      [--config.num_train_steps=2000 --config.model.dropout_rate=0.2 ...]
"""

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


def train() -> None:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    trainer.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(cli_main(train))
