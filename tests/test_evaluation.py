"""Translating a split in length-sorted batches, and the two BLEU variants it reports."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import pytest
import sacrebleu

from transformer import sharding, trainer
from transformer.config import MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.decode import Search, beam_search, greedy_decode
from transformer.evaluation import tokenized_bleu, translate_ids

from .model_configs import tiny_config


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """configs/tiny.py's model, randomly initialised with its weights doubled (at the plain
    scale every sentence gets the same few repeated words), with its task's vocabulary."""
    config = from_config_dict(tiny_config(eval_batch_size=8))
    task = load_task(config.data, str(tmp_path_factory.mktemp("workdir")))
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    setup = trainer.build(config, sharding.make_mesh(config.mesh))
    with trainer.mesh_context(setup.mesh, config):
        params = jax.tree.map(lambda x: 2 * x, setup.init(jax.random.key(3)).params)
    return config, setup, params, task


def test_sorted_batches_give_each_sentence_its_own_translation_in_input_order(untrained):
    config, setup, params, task = untrained
    inputs = task.splits["test"].inputs
    # Short and long sentences interleaved, so sorting moves them across batches of 8.
    sources = [inputs[i] for i in range(40)]
    assert len(set(map(len, sources))) > 5
    with trainer.mesh_context(setup.mesh, config):
        batched = translate_ids(
            config, setup.model, params, task.tokenizer, sources, setup.batch_sharding
        )
        one_by_one = [
            translate_ids(config, setup.model, params, task.tokenizer, [s], setup.batch_sharding)[0]
            for s in sources[:12]
        ]
    assert len(batched) == len(sources) and len(set(batched)) > 30
    assert batched[:12] == one_by_one


def test_tokenized_bleu_ignores_case_and_punctuation_spacing_as_the_moses_files_do():
    hypotheses = ["Ein Mann, der „Fußball“ spielt.", "Zwei Hunde laufen über eine Wiese."]
    references = ['ein Mann , der "Fußball" spielt .', "Zwei hunde rennen über die Wiese."]
    # Lowercased and tokenized by hand as tokenizer.perl -l de does.
    by_hand = sacrebleu.corpus_bleu(
        ['ein mann , der " fußball " spielt .', "zwei hunde laufen über eine wiese ."],
        [['ein mann , der " fußball " spielt .', "zwei hunde rennen über die wiese ."]],
        tokenize="none",
    ).score
    assert tokenized_bleu(hypotheses, references, "de") == pytest.approx(by_hand)
    assert tokenized_bleu(hypotheses[:1], references[:1], "de") == pytest.approx(100.0)
    cased = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert cased < by_hand < 100.0


def test_tokenized_bleu_of_hand_made_hypotheses_is_the_brevity_penalised_geometric_mean():
    """Known answers counted by hand on the Moses-prepared words (BLEU-4, one reference)."""
    reference = "der Hund läuft über eine grüne Wiese."  # 8 tokens: ... wiese .
    # "Der" and "Wiese ." match once lowercased and tokenized: n-grams 7/8, 5/7, 3/6, 1/5.
    same_length = "Der Hund läuft über die grüne Wiese ."
    assert tokenized_bleu([same_length], [reference], "de") == pytest.approx(50.0)
    # 6 tokens against 8: n-grams 6/6, 4/5, 3/4, 2/3, brevity penalty exp(1 - 8/6).
    short = "der Hund läuft über eine Wiese"
    expected = 100 * math.exp(1 - 8 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert tokenized_bleu([short], [reference], "de") == pytest.approx(expected)
    # A corpus pools the counts of its sentences before taking the mean.
    pooled = 100 * math.exp(1 - 16 / 14) * (13 / 14 * 9 / 12 * 6 / 10 * 3 / 8) ** 0.25
    assert tokenized_bleu([same_length, short], [reference] * 2, "de") == pytest.approx(pooled)
    # sacreBLEU on the text as it is sees "Der" and "Wiese ." as other words.
    assert sacrebleu.corpus_bleu([same_length], [[reference]]).score < 50.0


def test_empty_hypotheses_score_zero():
    assert tokenized_bleu(["", ""], ["Ein Hund läuft im Park.", "Eine Katze schläft."], "de") == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("beam_size", [1, 3])
def test_every_device_decoding_its_own_rows_gives_one_devices_translations(untrained, beam_size):
    """8 devices with replicated parameters (inference: each decodes its rows under
    shard_map) and with FSDP-sharded ones (training's validation BLEU: one jit over the mesh)
    translate exactly as one device does."""
    config, _, params, task = untrained
    inputs = task.splits["test"].inputs
    sources = [inputs[i] for i in range(20)]

    def translate(mesh_config, devices):
        cfg = dataclasses.replace(config, mesh=mesh_config)
        built = trainer.build(cfg, sharding.make_mesh(mesh_config, devices))
        placed = jax.device_put(params, built.state_shardings.params)
        with trainer.mesh_context(built.mesh, cfg):
            out = translate_ids(
                cfg,
                built.model,
                placed,
                task.tokenizer,
                sources,
                built.batch_sharding,
                Search(beam_size),
            )
        return out, placed

    one, _ = translate(MeshConfig(1, 1, 1), jax.devices()[:1])
    replicated, placed = translate(MeshConfig(8, 1, 1), jax.devices())
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))
    fsdp, placed = translate(MeshConfig(2, 4, 1), jax.devices())
    assert not all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))
    assert replicated == one and fsdp == one and len(set(one)) > 10


@pytest.mark.parametrize("beam_size", [1, 3])
def test_rows_decoded_per_device_need_no_cross_device_work(untrained, beam_size):
    """Left to the partitioner, the loop's stopping test (and the beam's reorder) make
    collectives at every step; decoded per device by sharding.map_rows, there are none."""
    config, _, params, _ = untrained
    config = dataclasses.replace(config, mesh=MeshConfig(8, 1, 1))
    built = trainer.build(config, sharding.make_mesh(config.mesh, jax.devices()))
    params = jax.device_put(params, built.state_shardings.params)
    inputs = jax.device_put(jnp.ones((16, 8), jnp.int32), built.batch_sharding)

    def decode(p, x):
        if beam_size == 1:
            return greedy_decode(built.model, p, x, 12)
        return beam_search(built.model, p, x, 12, beam_size, 0.6)[0]

    collectives = re.compile(r"all-reduce|all-gather|collective-permute|all-to-all")
    with trainer.mesh_context(built.mesh, config):
        partitioned = jax.jit(decode).lower(params, inputs).compile().as_text()
        per_device = sharding.map_rows(decode, built.batch_sharding).lower(params, inputs)
        per_device = per_device.compile().as_text()
    assert collectives.search(partitioned)
    assert not collectives.search(per_device)
