"""Flags shared by the commands that decode with a trained workdir (evaluate.py,
translate.py, summarize.py, generate.py): which checkpoint to restore and how to search, each
defined once so that every command reads them alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from absl import flags

from transformer import inference
from transformer.decode import Search


@dataclasses.dataclass(frozen=True)
class CheckpointFlags:
    """--step, --average_last and --checkpoint_dir, as defined by `define_checkpoint_flags`."""

    step: flags.FlagHolder
    average_last: flags.FlagHolder
    checkpoint_dir: flags.FlagHolder

    def restore(self, workdir: str) -> inference.Restored:
        """The parameters the flags name, from `workdir` (transformer.inference.restore)."""
        return inference.restore(
            workdir, self.step.value, self.average_last.value, self.checkpoint_dir.value
        )


def define_checkpoint_flags() -> CheckpointFlags:
    """--step, --average_last and --checkpoint_dir: which checkpoint(s) a command restores."""
    return CheckpointFlags(
        step=flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest)."),
        average_last=flags.DEFINE_integer(
            "average_last", 1, "Average this many checkpoints up to --step.", lower_bound=1
        ),
        checkpoint_dir=flags.DEFINE_string("checkpoint_dir", None, "Default: WORKDIR/checkpoints."),
    )


def define_search_flags() -> Callable[[], Search]:
    """--beam_size, --alpha, --min_length and --no_repeat_ngram; returns a function that
    gives the decode.Search they ask for."""
    beam_size = flags.DEFINE_integer(
        "beam_size", 4, "Beam size; 1 decodes greedily (section 6.1: 4).", lower_bound=1
    )
    alpha = flags.DEFINE_float("alpha", 0.6, "Length penalty alpha (section 6.1: 0.6).")
    flags.register_validator("alpha", lambda a: a >= 0, "--alpha must be >= 0.")
    min_length = flags.DEFINE_integer(
        "min_length", 0, "Each output has at least this many pieces before EOS.", lower_bound=0
    )
    no_repeat = flags.DEFINE_integer(
        "no_repeat_ngram",
        0,
        "No output repeats an n-gram of this many pieces; 0: off.",
        lower_bound=0,
    )
    return lambda: Search(beam_size.value, alpha.value, min_length.value, no_repeat.value)
