"""Translates sentences, one per line, from stdin or a file with a trained model.

  echo "the man sees the dog." | python translate.py --workdir /tmp/quickstart
  python translate.py --workdir DIR --input in.txt --output out.txt [--beam_size 4 --alpha 0.6]
      [--step N] [--average_last 5] [--min_length 0] [--no_repeat_ngram 0]

Writes one translation per input line, in order. An empty input line gives an empty output
line; a line longer than the model was trained on is cut to that length; both are reported
on stderr with their line numbers. The search flags are evaluate.py's, so that a search
chosen on a validation split translates alike.
"""

import sys

from absl import app, flags

from transformer import command_line, inference, trainer
from transformer.errors import cli_main
from transformer.evaluation import translate_ids

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_INPUT = flags.DEFINE_string("input", "-", "Input file, one sentence per line; - for stdin.")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file; - for stdout.")
_CHECKPOINT = command_line.define_checkpoint_flags()
_SEARCH = command_line.define_search_flags()
flags.adopt_module_key_flags(command_line)  # Listed by --help, as this file's own.


def translate() -> None:
    lines = inference.read_lines(_INPUT.value)
    restored = _CHECKPOINT.restore(_WORKDIR.value)
    config, placed, tokenizer = restored.config, restored.placed, restored.tokenizer
    if not config.model.has_encoder:
        raise inference.CheckpointNotFoundError(
            f"{_WORKDIR.value} holds a {config.model.kind} model; translate.py needs a translator."
        )
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            print(f"warning: line {number} is empty; its translation is empty.", file=sys.stderr)
    texts = [line.strip() for line in lines]
    ids = inference.fit_sources(tokenizer, texts, config.data.source_length, "line")
    keep = [i for i, line in enumerate(lines) if line.strip()]
    with trainer.mesh_context(placed.mesh, config):
        outputs = translate_ids(
            config, placed.model, restored.params, tokenizer, [ids[i] for i in keep],
            placed.batch_sharding, _SEARCH(),
        )  # fmt: skip
    translations = [""] * len(lines)
    for i, text in zip(keep, outputs, strict=True):
        translations[i] = text
    if _OUTPUT.value == "-":
        sys.stdout.writelines(t + "\n" for t in translations)
    else:
        with open(_OUTPUT.value, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in translations)


if __name__ == "__main__":
    app.run(cli_main(translate))
