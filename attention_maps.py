"""Draws the attention maps of a trained translation model for one sentence pair.

  python attention_maps.py --workdir /tmp/quickstart --source "the man has seen the dog."
      [--target "der Mann hat den Hund gesehen."] [--output_dir DIR/attention]

Without --target the model's own greedy translation is used (what translate.py
--beam_size 1 gives). Writes one PNG per layer and kind (encoder self-attention, decoder
self-attention, encoder-decoder attention), with a heatmap per head and the tokens on the axes.
A sentence longer than the model was trained on is cut to that length, as translate.py cuts
it, and reported on stderr.
"""

import os
import sys

from absl import app, flags

from transformer import inference, trainer
from transformer.attention_maps import write_attention_maps
from transformer.errors import cli_main
from transformer.evaluation import translate_ids
from transformer.special_tokens import EOS_ID

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
_SOURCE = flags.DEFINE_string("source", None, "Source sentence.", required=True)
_TARGET = flags.DEFINE_string("target", None, "Target sentence (default: the translation).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Default: WORKDIR/attention.")


def cut(ids: list[int], limit: int, side: str) -> list[int]:
    """`ids` (EOS-ended), cut to `limit` tokens with the EOS kept, as translate.py and the
    evaluation splits cut an over-long sentence."""
    if len(ids) <= limit:
        return ids
    print(f"warning: the {side} has {len(ids)} tokens; the model takes {limit}, so it is cut.",
          file=sys.stderr)  # fmt: skip
    return [*ids[: limit - 1], EOS_ID]


def draw() -> None:
    restored = inference.restore(_WORKDIR.value, _STEP.value)
    config, placed, tokenizer = restored.config, restored.placed, restored.tokenizer
    if not config.model.has_encoder:
        raise inference.CheckpointNotFoundError("Attention maps need a translation model.")
    source = cut(tokenizer.encode(_SOURCE.value.strip()), config.data.source_length, "source")
    target_text = _TARGET.value
    with trainer.mesh_context(placed.mesh, config):
        if target_text is None:
            (target_text,) = translate_ids(
                config, placed.model, restored.params, tokenizer, [source], placed.batch_sharding
            )
    target = cut(tokenizer.encode(target_text), config.data.max_length, "target")
    output_dir = _OUTPUT.value or os.path.join(_WORKDIR.value, "attention")
    paths = write_attention_maps(
        placed.model, restored.params, source, target, tokenizer.pieces, output_dir
    )
    print(f"source: {_SOURCE.value}\ntarget: {target_text}")
    print("\n".join(paths))


if __name__ == "__main__":
    app.run(cli_main(draw))
