"""Decoding sources or a split (greedy or beam search) and scoring the outputs: sacreBLEU and
chrF for translations, ROUGE for summaries (data.metric)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import sacrebleu
from jax.experimental import multihost_utils

from transformer import rouge, sharding
from transformer.config import EXTRA_OUTPUT_TOKENS, Config
from transformer.data.pipeline import Ragged
from transformer.data.tasks import Task
from transformer.data.tokenizer import Tokenizer
from transformer.decode import Search, greedy_decode_lm, search
from transformer.model import DecoderOnlyLM, Transformer
from transformer.special_tokens import EOS_ID, PAD_ID

GREEDY = Search()  # Training's validation and test scores.


def decode_length(config: Config, source_length: int) -> int:
    """Output buffer for sources of at most `source_length` tokens: that plus 50 (section
    6.1), and at most the longest target (data.max_length) plus 50, as a summary is much
    shorter than its source. Each output stops at its own input length + 50 inside it
    (`decode.output_limits`)."""
    return min(config.data.max_length, source_length) + EXTRA_OUTPUT_TOKENS


def translate_ids(
    config: Config,
    model: Transformer,
    params: Any,
    tokenizer: Tokenizer,
    source_ids: Sequence[np.ndarray],
    batch_sharding: jax.sharding.NamedSharding,
    how: Search = GREEDY,
) -> list[str]:
    """Detokenized outputs of EOS-terminated id sequences (at most data.source_length each),
    searched for as `how` says (default: greedily); in order.

    Sources are decoded longest first in batches of similar length, each padded to a
    multiple of a quarter of the longest source, with an output buffer `decode_length`: less
    padding for the encoder, the cross-attention and the cache than one size for all, and at
    most four shapes to compile. Each output stops at EOS or its source's length + 50."""
    shards = sharding.num_shards(batch_sharding, dim=0)
    batch_size = -(-config.eval_batch_size // shards) * shards  # Rounded up to fill every shard.
    source = Ragged.from_lists(source_ids)
    max_length = config.data.source_length
    quantum = max(1, -(-max_length // 4))
    order = np.argsort(-np.minimum(source.lengths, max_length), kind="stable")
    per_shard = shards > 1 and all(
        leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params)
    )
    hypotheses: list[str] = [""] * len(source_ids)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = int(min(source.lengths[idx].max(), max_length))
        width = min(max_length, -(-longest // quantum) * quantum)
        rows = np.full((batch_size, width), PAD_ID, np.int32)
        rows[: len(idx)] = source.padded(idx, width)
        decode = _compiled_decoder(
            model, decode_length(config, width), how, batch_sharding, per_shard
        )
        local = np.array_split(rows, jax.process_count())[jax.process_index()]
        tokens = decode(params, sharding.global_batch({"x": local}, batch_sharding)["x"])
        tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
        for i, row in zip(idx, tokens[: len(idx)], strict=True):
            hypotheses[i] = tokenizer.decode(row)
    return hypotheses


@functools.cache
def _compiled_decoder(
    model: Transformer,
    length: int,
    how: Search,
    batch_sharding: jax.sharding.NamedSharding,
    per_shard: bool,
):
    """One jitted decoder per setting, so evaluating again during training recompiles nothing.

    With `per_shard` (parameters replicated, the batch split over several devices) every
    device decodes its own rows (`sharding.map_rows`). Left to the partitioner, the beam's
    reorder by parent hypothesis and the loop's stopping test become cross-device work at
    every step. Otherwise (training's validation BLEU, with parameters sharded by the
    training rules) one jit over the mesh."""

    def decode(params: Any, inputs: jax.Array) -> jax.Array:
        return search(model, params, inputs, length, how)

    return sharding.map_rows(decode, batch_sharding) if per_shard else jax.jit(decode)


def translate_split(
    config: Config,
    model: Transformer,
    params: Any,
    task: Task,
    split: str,
    batch_sharding: jax.sharding.NamedSharding,
    how: Search = GREEDY,
) -> list[str]:
    """Translations of every source sentence of `split`, in order."""
    inputs = task.splits[split].inputs
    return translate_ids(
        config, model, params, task.tokenizer, [inputs[i] for i in range(len(inputs.lengths))],
        batch_sharding, how,
    )  # fmt: skip


def evaluate_split(
    config: Config,
    model: Transformer,
    params: Any,
    task: Task,
    split: str,
    batch_sharding: jax.sharding.NamedSharding,
    how: Search = GREEDY,
) -> tuple[dict[str, float], list[str], str]:
    """(scores, hypotheses, signature) of the outputs for `split`, as data.metric says:
    `bleu_scores` for translations, `rouge.rouge` for summaries."""
    hypotheses = translate_split(config, model, params, task, split, batch_sharding, how)
    references = list(task.splits[split].references)
    if config.data.metric == "rouge":
        return rouge.rouge(hypotheses, references), hypotheses, rouge.signature(len(references))
    scores, signature = bleu_scores(hypotheses, references, config.data.target_lang)
    return scores, hypotheses, signature


def describe(scores: dict[str, float]) -> str:
    """One line of the scores `evaluate_split` gives, for logs."""
    if "rouge1" in scores:
        return "ROUGE-1/2/L/Lsum " + " / ".join(
            f"{scores[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")
        )
    return f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}"


def bleu_scores(
    hypotheses: Sequence[str], references: Sequence[str], lang: str
) -> tuple[dict[str, float], str]:
    """({"bleu", "chrf", "tok_bleu"}, sacreBLEU signature); bleu is sacreBLEU's (detokenized,
    cased), tok_bleu `tokenized_bleu`'s."""
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hypotheses, [references])
    chrf = sacrebleu.metrics.CHRF().corpus_score(hypotheses, [references])
    scores = {
        "bleu": score.score,
        "chrf": chrf.score,
        "tok_bleu": tokenized_bleu(hypotheses, references, lang),
    }
    return scores, str(bleu.get_signature())


def tokenized_bleu(hypotheses: Sequence[str], references: Sequence[str], lang: str) -> float:
    """BLEU on lowercased, Moses-normalized and Moses-tokenized text, as multi-bleu.perl (or
    fairseq's BLEU4) scores the `*.lc.norm.tok.*` files that Multi30k papers report on.

    Not comparable with sacreBLEU's figure: tokenized, lowercased BLEU runs higher for the
    same output. Both sides go through the same `lowercase | normalize-punctuation.perl -l
    lang | tokenizer.perl -l lang` steps (sacremoses' ports of the Moses scripts)."""
    import sacremoses  # Here: it compiles its rules on import (0.3 s), needed only by this.

    normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
    tokenizer = sacremoses.MosesTokenizer(lang=lang)

    def prepare(text: str) -> str:
        return tokenizer.tokenize(normalizer.normalize(text.lower()), escape=False, return_str=True)

    return sacrebleu.corpus_bleu(
        [prepare(h) for h in hypotheses],
        [[prepare(r) for r in references]],
        tokenize="none",
        force=True,  # Tokenized on purpose: without it sacreBLEU warns of undetokenized text.
    ).score


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
    num_samples = min(num_samples, len(task.splits[split]))
    targets = task.splits[split].targets.padded(range(num_samples), prompt_tokens)
    prompts = np.where(targets == EOS_ID, PAD_ID, targets)  # a short sentence: prompt only
    decode = jax.jit(lambda p, x: greedy_decode_lm(model, p, x, config.data.max_length))
    outputs = np.asarray(decode(params, prompts))
    return [
        (task.tokenizer.decode(prompt), task.tokenizer.decode(out))
        for prompt, out in zip(prompts, outputs, strict=True)
    ]
