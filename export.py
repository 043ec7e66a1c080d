"""Exports a trained Transformer for serving: a Hugging Face MarianMTModel with its tokenizer
(`--to hf`), or that model converted by CTranslate2 (`--to ct2`).

  pip install -e '.[export]'
  python export.py --workdir DIR --to hf OUT [--step N] [--average_last 5]
  python export.py --workdir DIR --to ct2 OUT

OUT must not exist; it appears whole or not at all. The HF model loads with
`MarianMTModel.from_pretrained(OUT)` and `MarianTokenizer.from_pretrained(OUT)`; the CTranslate2
model with `ctranslate2.Translator(OUT)`, its SentencePiece model beside it as spm.model.
What MarianMT computes differently, and why it is the same function: transformer/export.py.
"""

import os
import shutil
import tempfile

from absl import app, flags

from transformer import export, inference, workdir
from transformer.config import from_config_dict
from transformer.errors import cli_main

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_TO = flags.DEFINE_enum("to", None, ["hf", "ct2"], "Hugging Face or CTranslate2.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_AVERAGE = flags.DEFINE_integer(
    "average_last", 1, "Average this many checkpoints up to --step.", lower_bound=1
)


def export_model(out: str) -> None:
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise export.ExportError(f"{out} already exists; give a new directory.")
    config = from_config_dict(workdir.read_config(_WORKDIR.value))
    export.check_exportable(config.model, config.data.tokenizer)
    export.check_installed(_TO.value)
    restored = inference.restore(_WORKDIR.value, _STEP.value, _AVERAGE.value)
    model, spm_model = restored.config.model, workdir.vocabulary_path(config.data, _WORKDIR.value)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=os.path.dirname(out))
    try:
        made = os.path.join(staging, "hf")
        export.write_hf(restored.params, model, spm_model, made)
        if _TO.value == "ct2":
            hf_dir, made = made, os.path.join(staging, "ct2")
            export.convert_ct2(hf_dir, made, model.layer_norm_epsilon)
            shutil.copyfile(spm_model, os.path.join(made, "spm.model"))
        os.rename(made, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    steps = restored.steps
    source = f"steps {steps[0]}-{steps[-1]} averaged" if len(steps) > 1 else f"step {steps[0]}"
    engine = {"hf": "Hugging Face MarianMTModel", "ct2": "CTranslate2 model"}[_TO.value]
    print(f"{engine} of {_WORKDIR.value} ({source}) written to {out}")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("Give one output directory: export.py --workdir DIR --to hf OUT")
    cli_main(lambda: export_model(argv[1]))(argv[:1])


if __name__ == "__main__":
    app.run(main)
