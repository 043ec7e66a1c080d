"""Translating a split and scoring it with sacreBLEU."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import sacrebleu
from jax.experimental import multihost_utils

from transformer import sharding
from transformer.config import Config
from transformer.data.tasks import Task
from transformer.decode import greedy_decode, greedy_decode_lm
from transformer.model import DecoderOnlyLM, Transformer
from transformer.special_tokens import EOS_ID, PAD_ID


def translate_split(
    config: Config,
    model: Transformer,
    params: Any,
    task: Task,
    split: str,
    batch_sharding: jax.sharding.NamedSharding,
) -> list[str]:
    """Greedy translations of every source sentence of `split`, in order."""
    decode = jax.jit(
        lambda p, x: greedy_decode(model, p, x, config.data.max_length),
        in_shardings=(None, batch_sharding),
    )
    hypotheses = []
    for batch in task.eval_batches(split, config.eval_batch_size):
        tokens = decode(params, sharding.global_batch({"x": batch["inputs"]}, batch_sharding)["x"])
        tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
        hypotheses.extend(task.tokenizer.decode(row) for row in tokens)
    return hypotheses[: len(task.splits[split])]


def evaluate_translation(
    config: Config,
    model: Transformer,
    params: Any,
    task: Task,
    split: str,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[dict[str, float], list[str]]:
    """({"bleu": sacreBLEU, "chrf": chrF}, hypotheses) for `split`."""
    hypotheses = translate_split(config, model, params, task, split, batch_sharding)
    references = list(task.splits[split].references)
    bleu = sacrebleu.corpus_bleu(hypotheses, [references])
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": bleu.score, "chrf": chrf.score}, hypotheses


def continue_prompts(
    config: Config,
    model: DecoderOnlyLM,
    params: Any,
    task: Task,
    split: str,
    num_samples: int,
    prompt_tokens: int = 3,
) -> list[tuple[str, str]]:
    """(prompt, greedy continuation) for the first `prompt_tokens` tokens of the first
    `num_samples` target sentences of `split` (a decoder-only model's samples)."""
    targets = task.splits[split].targets.padded(range(num_samples), prompt_tokens)
    prompts = np.where(targets == EOS_ID, PAD_ID, targets)  # a short sentence: prompt only
    decode = jax.jit(lambda p, x: greedy_decode_lm(model, p, x, config.data.max_length))
    outputs = np.asarray(decode(params, prompts))
    return [
        (task.tokenizer.decode(prompt), task.tokenizer.decode(out))
        for prompt, out in zip(prompts, outputs, strict=True)
    ]
