"""Writes the average of the last N checkpoints as a new checkpoint (section 6.1).

  python average_checkpoints.py --workdir DIR --last 5 [--step N] [--output_dir DIR/averaged]
  python evaluate.py --workdir DIR --checkpoint_dir DIR/averaged

The averaged checkpoint keeps the step and optimizer state of the newest one it averages, so
it can be evaluated, translated with, or trained from. Existing checkpoints are only read,
those of the workdir and any already in the output directory alike.
"""

import os

import jax
from absl import app, flags

from transformer import checkpoint, inference, trainer, workdir
from transformer.errors import cli_main

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_LAST = flags.DEFINE_integer(
    "last", None, "How many checkpoints to average.", lower_bound=1, required=True
)
_STEP = flags.DEFINE_integer("step", None, "The newest step to average (default: the newest).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Default: WORKDIR/averaged.")


def average() -> None:
    restored = inference.restore(_WORKDIR.value, _STEP.value, _LAST.value)
    config, placed, steps = restored.config, restored.placed, restored.steps
    output = _OUTPUT.value or os.path.join(_WORKDIR.value, "averaged")
    # Checked before Orbax opens the directory: a manager closed at once can race its own
    # start-up work (tmp-directory cleanup) and print a traceback after the error.
    if os.path.exists(os.path.join(output, str(steps[-1]))):
        raise inference.CheckpointNotFoundError(
            f"{output}/{steps[-1]} exists already; choose another --output_dir."
        )
    source = checkpoint.Checkpointer(os.path.join(_WORKDIR.value, "checkpoints"), read_only=True)
    # keep=None: the checkpoints already in --output_dir stay (the default keeps only one).
    target = checkpoint.Checkpointer(output, keep=None)
    try:
        meta = workdir.checkpoint_meta(config)
        with trainer.mesh_context(placed.mesh, config):
            newest = source.restore(steps[-1], placed.abstract_state, meta)
            averaged = newest.replace(params=restored.params)
            target.save(steps[-1], averaged, meta, force=True)
            target.wait_until_finished()
    finally:
        source.close()
        target.close()
    if jax.process_index() == 0:
        print(f"Averaged steps {', '.join(map(str, steps))} into {output}/{steps[-1]}.")


if __name__ == "__main__":
    app.run(cli_main(average))
