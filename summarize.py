"""Summarises dialogues (or any long texts) with a trained summariser, one summary per record.

  python summarize.py --workdir /tmp/samsum --input dialogues.json      # or .jsonl
  python summarize.py --workdir /tmp/samsum --input chat.txt            # one dialogue
  printf 'Ann: Lunch?\nBob: Sure, at 1.\n' | python summarize.py --workdir /tmp/samsum
      [--output summaries.txt] [--field dialogue] [--beam_size 4 --alpha 0.6]
      [--no_repeat_ngram 3]
      [--step N] [--average_last 5]

A .json file holds a list of records and a .jsonl file one record per line; the text is
each record's --field (default: the field the model was trained on). Any other file, or
stdin, is one dialogue, newlines and all. Writes one summary per line, in order. A record
without the field or with an empty text is an error naming it, and nothing is written; a
text longer than the model was trained on is cut to that length, with a warning.
"""

import sys

from absl import app, flags

from transformer import inference, trainer, workdir
from transformer.data import json_files
from transformer.data.text_files import CorpusError
from transformer.decode import Search
from transformer.errors import cli_main
from transformer.evaluation import translate_ids
from transformer.files import write_atomically

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained summariser's workdir.", required=True)
_INPUT = flags.DEFINE_string("input", "-", ".json / .jsonl records, a text file, or - (stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file, one summary per line; - for stdout.")
_FIELD = flags.DEFINE_string("field", None, "Record field to summarise (default: as trained).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_AVERAGE = flags.DEFINE_integer(
    "average_last", 1, "Average this many checkpoints up to --step.", lower_bound=1
)
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Default: WORKDIR/checkpoints.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam size; 1 decodes greedily.", lower_bound=1)
_ALPHA = flags.DEFINE_float("alpha", 0.6, "Length penalty alpha.")
flags.register_validator("alpha", lambda a: a >= 0, "--alpha must be >= 0.")
_MIN_LENGTH = flags.DEFINE_integer(
    "min_length", 0, "Each output has at least this many pieces before EOS.", lower_bound=0
)
_NO_REPEAT = flags.DEFINE_integer(
    "no_repeat_ngram", 0, "No output repeats an n-gram of this many pieces; 0: off.", lower_bound=0
)


def read_texts(path: str, field: str) -> list[str]:
    """The texts to summarise: `field` of each record of a .json / .jsonl file, else the
    whole file (or stdin) as one text. CorpusError naming the record (or input) that has no
    text."""
    if path.endswith(json_files.FORMATS):
        records = json_files.read_records(path)
        texts = [json_files.field_text(r, field, path, i) for i, r in enumerate(records)]
        empty = [str(i) for i, text in enumerate(texts) if not text]
        if not records:
            raise CorpusError(f"{path} holds no record.")
        if empty:
            raise CorpusError(f"{path}: record(s) {', '.join(empty[:5])} have an empty {field!r}.")
        return texts
    text = "\n".join(inference.read_lines(path)).strip()
    if not text:
        raise CorpusError(f"{'stdin' if path == '-' else path} is empty: nothing to summarise.")
    return [text]


def summarize() -> None:
    # The input is checked before the model loads: a bad file fails in a second.
    trained = workdir.read_config(_WORKDIR.value)["data"].get("json_files")
    field = _FIELD.value or (trained["source_field"] if trained else "dialogue")
    texts = read_texts(_INPUT.value, field)
    restored = inference.restore(_WORKDIR.value, _STEP.value, _AVERAGE.value, _CHECKPOINT_DIR.value)
    config, placed, tokenizer = restored.config, restored.placed, restored.tokenizer
    if not config.model.has_encoder:
        raise inference.CheckpointNotFoundError(
            f"{_WORKDIR.value} holds a {config.model.kind} model; summarize.py needs an "
            "encoder-decoder."
        )
    ids = inference.fit_sources(tokenizer, texts, config.data.source_length, "record")
    with trainer.mesh_context(placed.mesh, config):
        summaries = translate_ids(
            config, placed.model, restored.params, tokenizer, ids, placed.batch_sharding,
            Search(_BEAM.value, _ALPHA.value, _MIN_LENGTH.value, _NO_REPEAT.value),
        )  # fmt: skip
    lines = [s.replace("\n", " ") + "\n" for s in summaries]
    if _OUTPUT.value == "-":
        sys.stdout.writelines(lines)
        return
    write_atomically(_OUTPUT.value, "".join(lines))


if __name__ == "__main__":
    app.run(cli_main(summarize))
