"""Continues prompts with a trained decoder-only language model, greedily or by sampling.

  python generate.py --workdir /tmp/lm_multi30k --prompt "Ein Mann" --prompt "Zwei Hunde"
  echo "Eine Frau" | python generate.py --workdir DIR --temperature 0.8 --top_p 0.9 \
      --num_samples 3
  python generate.py --workdir DIR --input prompts.txt [--top_k 40] [--seed 0] [--step N]

Prompts come from --prompt (repeatable) or else one per line from --input (stdin by
default). Prints each prompt's --num_samples continuations, prompt included, one per line,
in order. An empty prompt generates a sentence from scratch. --temperature 0 decodes greedily;
otherwise each token is drawn from softmax(logits / temperature) restricted to the top-k
tokens and to the top-p nucleus. The same --seed gives the same samples.
"""

import sys

import jax
import numpy as np
from absl import app, flags

from transformer import command_line, inference, trainer
from transformer.data.text_files import CorpusError
from transformer.decode import sample_lm
from transformer.errors import cli_main
from transformer.special_tokens import PAD_ID

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained language-model workdir.", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
_INPUT = flags.DEFINE_string("input", "-", "Without --prompt: prompts, one per line; - = stdin.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations per prompt.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "0 decodes greedily.")
flags.register_validator(
    "temperature", lambda t: 0 <= t < float("inf"), "--temperature must be finite and >= 0."
)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Only the k likeliest tokens; 0: all.", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus: the likeliest tokens of this probability mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
_CHECKPOINT = command_line.define_checkpoint_flags()
flags.adopt_module_key_flags(command_line)  # Listed by --help, as this file's own.
flags.register_validator("top_p", lambda p: 0 < p <= 1, "--top_p must be in (0, 1].")


def prompt_rows(prompts: list[list[int]], copies: int, max_length: int) -> np.ndarray:
    """[len(prompts) * copies, longest prompt] int32: each prompt's piece ids `copies` times,
    PAD after it. A prompt of `max_length` pieces or more leaves no room to continue."""
    if not prompts:
        raise CorpusError("No prompts: give --prompt, or lines on --input (an empty line is a "
                          "prompt too: it generates from scratch).")  # fmt: skip
    for number, ids in enumerate(prompts, start=1):
        if len(ids) >= max_length:
            raise CorpusError(
                f"Prompt {number} has {len(ids)} pieces; the model generates at most "
                f"{max_length} tokens in all (data.max_length), so prompts must be shorter."
            )
    width = max(1, max(len(ids) for ids in prompts))
    rows = np.full((len(prompts) * copies, width), PAD_ID, np.int32)
    for i, ids in enumerate(prompts):
        rows[i * copies : (i + 1) * copies, : len(ids)] = ids
    return rows


def generate() -> None:
    prompts = _PROMPT.value or inference.read_lines(_INPUT.value)
    restored = _CHECKPOINT.restore(_WORKDIR.value)
    config, placed, tokenizer = restored.config, restored.placed, restored.tokenizer
    if config.model.kind != "decoder_only":
        raise inference.CheckpointNotFoundError(
            f"{_WORKDIR.value} holds a {config.model.kind} model; generate.py needs a language "
            "model (model.kind = 'decoder_only'); translate.py translates."
        )
    max_length = config.data.max_length
    ids = [seq[:-1] for seq in tokenizer.encode_batch([p.strip() for p in prompts])]  # No EOS.
    rows = prompt_rows(ids, _NUM_SAMPLES.value, max_length)
    decode = jax.jit(
        lambda params, prompt, rng: sample_lm(
            placed.model, params, prompt, max_length, rng,
            _TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
        )
    )  # fmt: skip
    with trainer.mesh_context(placed.mesh, config):
        outputs = np.asarray(decode(restored.params, rows, jax.random.key(_SEED.value)))
    sys.stdout.writelines(tokenizer.decode(out) + "\n" for out in outputs)


if __name__ == "__main__":
    app.run(cli_main(generate))
