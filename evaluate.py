"""Translates (or summarises) a split with a trained model and reports sacreBLEU (with its
signature), chrF and the tokenized lowercased BLEU that Multi30k papers quote, or for a
summariser (data.metric = "rouge") ROUGE-1/2/L/Lsum with rouge-score's settings.

  python evaluate.py --workdir DIR [--split test] [--step N] [--average_last 5]
      [--beam_size 4 --alpha 0.6] [--no_repeat_ngram 3] [--checkpoint_dir DIR/averaged]

Restores the newest checkpoint (or --step), optionally averaged with the ones before it, onto
whatever devices this machine has, and writes the hypotheses to DIR/translations/ (or
DIR/summaries/).
"""

import os

from absl import app, flags

from transformer import inference, trainer
from transformer.data.tasks import load_task
from transformer.errors import cli_main
from transformer.evaluation import describe, evaluate_split
from transformer.files import write_atomically

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to translate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_AVERAGE = flags.DEFINE_integer(
    "average_last", 1, "Average this many checkpoints up to --step.", lower_bound=1
)
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Default: WORKDIR/checkpoints.")
_BEAM = flags.DEFINE_integer(
    "beam_size", 4, "Beam size; 1 decodes greedily (section 6.1: 4).", lower_bound=1
)
_ALPHA = flags.DEFINE_float("alpha", 0.6, "Length penalty alpha (section 6.1: 0.6).")
flags.register_validator("alpha", lambda a: a >= 0, "--alpha must be >= 0.")
_NO_REPEAT = flags.DEFINE_integer(
    "no_repeat_ngram", 0, "No output repeats an n-gram of this many pieces; 0: off.", lower_bound=0
)


def evaluate() -> None:
    restored = inference.restore(_WORKDIR.value, _STEP.value, _AVERAGE.value, _CHECKPOINT_DIR.value)
    config, placed = restored.config, restored.placed
    if not config.model.has_encoder:
        raise inference.CheckpointNotFoundError(
            f"{_WORKDIR.value} holds a {config.model.kind} model; evaluate.py translates."
        )
    task = load_task(config.data, _WORKDIR.value, splits=(_SPLIT.value,))  # That split only.
    with trainer.mesh_context(placed.mesh, config):
        scores, hypotheses, signature = evaluate_split(
            config, placed.model, restored.params, task, _SPLIT.value, placed.batch_sharding,
            _BEAM.value, _ALPHA.value, _NO_REPEAT.value,
        )  # fmt: skip
    steps = restored.steps
    name = f"{_SPLIT.value}-step{steps[-1]}" + (f"-avg{len(steps)}" if len(steps) > 1 else "")
    if _CHECKPOINT_DIR.value:  # e.g. WORKDIR/averaged: not the training run's own step N.
        name += "-" + os.path.basename(os.path.normpath(_CHECKPOINT_DIR.value))
    name += f"-beam{_BEAM.value}" + (f"-alpha{_ALPHA.value:g}" if _BEAM.value > 1 else "")
    name += f"-norepeat{_NO_REPEAT.value}" if _NO_REPEAT.value else ""
    out_dir = os.path.join(
        _WORKDIR.value, "translations" if config.data.metric == "bleu" else "summaries"
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.txt")
    write_atomically(path, "".join(h + "\n" for h in hypotheses))
    source = (
        "average of steps " + ", ".join(map(str, steps)) if len(steps) > 1 else f"step {steps[0]}"
    )
    blocked = f", no {_NO_REPEAT.value}-gram twice" if _NO_REPEAT.value else ""
    print(f"{_SPLIT.value}: {len(hypotheses)} sentences, {source}, beam {_BEAM.value}, "
          f"alpha {_ALPHA.value}{blocked}")  # fmt: skip
    if config.data.metric == "rouge":
        print(f"{describe(scores)}  ({signature})")
    else:
        print(f"BLEU {scores['bleu']:.2f}  ({signature})")
        print(f"chrF {scores['chrf']:.2f}")
        print(
            f"Tokenized lowercased BLEU {scores['tok_bleu']:.2f}  (Moses normalize + tokenize -l "
            f"{config.data.target_lang}, as multi-bleu.perl on *.lc.norm.tok files; not sacreBLEU)"
        )
    print(f"Hypotheses: {path}")


if __name__ == "__main__":
    app.run(cli_main(evaluate))
