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

from transformer import command_line, inference, trainer, workdir
from transformer.data import json_files
from transformer.data.text_files import CorpusError
from transformer.errors import cli_main
from transformer.evaluation import translate_ids
from transformer.files import write_atomically

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained summariser's workdir.", required=True)
_INPUT = flags.DEFINE_string("input", "-", ".json / .jsonl records, a text file, or - (stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file, one summary per line; - for stdout.")
_FIELD = flags.DEFINE_string("field", None, "Record field to summarise (default: as trained).")
_CHECKPOINT = command_line.define_checkpoint_flags()
_SEARCH = command_line.define_search_flags()
flags.adopt_module_key_flags(command_line)  # Listed by --help, as this file's own.


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
    restored = _CHECKPOINT.restore(_WORKDIR.value)
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
            _SEARCH(),
        )  # fmt: skip
    lines = [s.replace("\n", " ") + "\n" for s in summaries]
    if _OUTPUT.value == "-":
        sys.stdout.writelines(lines)
        return
    write_atomically(_OUTPUT.value, "".join(lines))


if __name__ == "__main__":
    app.run(cli_main(summarize))
