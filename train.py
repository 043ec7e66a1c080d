"""Trains a Transformer; running again with the same --workdir resumes. SIGTERM or Ctrl-C
stops after the current step with a checkpoint (exit 0); a second one stops at once.

  python train.py --config configs/quickstart.py --workdir /tmp/quickstart \
      [--config.num_train_steps=2000 --config.model.dropout_rate=0.2 ...]
  python train.py --config configs/ablations.py:C_n2 --workdir /tmp/C_n2
  python train.py --config configs/big.py --workdir /tmp/big --dry_run   # fits? writes nothing

--config.KEY=VALUE overrides any key of the config (values as Python literals: 2000, 0.2,
None, True; anything else is a string).
"""

from absl import app, flags

from transformer import distributed, trainer
from transformer.config import load_file, split_overrides, with_overrides
from transformer.dry_run import dry_run
from transformer.errors import cli_main

_CONFIG = flags.DEFINE_string("config", None, "Experiment config file: configs/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    "",
    "Multi-host: 'auto' detects the cluster (SLURM, TPU VM, GKE); 'host:port' of process 0 "
    "with --num_processes and --process_id; empty for one process.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-host: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-host: this process's id.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Build the state and compile the train step on the configured mesh, print parameters, "
    "per-device bytes and XLA's memory analysis, and exit without touching the workdir.",
)
flags.mark_flags_as_required(["config", "workdir"])
OVERRIDES: list[str] = []  # The --config.KEY=VALUE arguments, taken out before absl parses.


def parse_flags(argv: list[str]) -> list[str]:
    rest, OVERRIDES[:] = split_overrides(argv)
    return app.parse_flags_with_usage(rest)


def train() -> None:
    config = with_overrides(load_file(_CONFIG.value), OVERRIDES)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _DRY_RUN.value:
        print("\n".join(dry_run(config)))
        return
    trainer.run(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(cli_main(train), flags_parser=parse_flags)
