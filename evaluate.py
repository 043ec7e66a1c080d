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

from transformer import command_line, inference, trainer
from transformer.data.tasks import load_task
from transformer.decode import Search
from transformer.errors import cli_main
from transformer.evaluation import describe, evaluate_split
from transformer.files import write_atomically

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to translate.")
_CHECKPOINT = command_line.define_checkpoint_flags()
_SEARCH = command_line.define_search_flags()
flags.adopt_module_key_flags(command_line)  # Listed by --help, as this file's own.


def evaluate() -> None:
    restored = _CHECKPOINT.restore(_WORKDIR.value)
    config, placed = restored.config, restored.placed
    if not config.model.has_encoder:
        raise inference.CheckpointNotFoundError(
            f"{_WORKDIR.value} holds a {config.model.kind} model; evaluate.py translates."
        )
    task = load_task(config.data, _WORKDIR.value, splits=(_SPLIT.value,))  # That split only.
    how = _SEARCH()
    with trainer.mesh_context(placed.mesh, config):
        scores, hypotheses, signature = evaluate_split(
            config, placed.model, restored.params, task, _SPLIT.value, placed.batch_sharding, how
        )
    steps = restored.steps
    out_dir = os.path.join(
        _WORKDIR.value, "translations" if config.data.metric == "bleu" else "summaries"
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{hypotheses_name(steps, how)}.txt")
    write_atomically(path, "".join(h + "\n" for h in hypotheses))
    source = (
        "average of steps " + ", ".join(map(str, steps)) if len(steps) > 1 else f"step {steps[0]}"
    )
    print(f"{_SPLIT.value}: {len(hypotheses)} sentences, {source}, {search_text(how)}")
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


def hypotheses_name(steps: list[int], how: Search) -> str:
    """The hypotheses file's name: split, checkpoint(s) and search, e.g.
    test-step3000-avg5-beam4-alpha0.6-norepeat3."""
    name = f"{_SPLIT.value}-step{steps[-1]}" + (f"-avg{len(steps)}" if len(steps) > 1 else "")
    directory = _CHECKPOINT.checkpoint_dir.value
    if directory:  # e.g. WORKDIR/averaged: not the training run's own step N.
        name += "-" + os.path.basename(os.path.normpath(directory))
    name += f"-beam{how.beam_size}" + (f"-alpha{how.alpha:g}" if how.beam_size > 1 else "")
    name += f"-min{how.min_length}" if how.min_length else ""
    return name + (f"-norepeat{how.no_repeat_ngram}" if how.no_repeat_ngram else "")


def search_text(how: Search) -> str:
    """e.g. "beam 4, alpha 1.2, at least 16 pieces, no 3-gram twice"."""
    text = f"beam {how.beam_size}, alpha {how.alpha}"
    text += f", at least {how.min_length} pieces" if how.min_length else ""
    return text + (f", no {how.no_repeat_ngram}-gram twice" if how.no_repeat_ngram else "")


if __name__ == "__main__":
    app.run(cli_main(evaluate))
