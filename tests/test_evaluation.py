"""Translating a split in length-sorted batches, and the two BLEU variants it reports."""

import jax
import pytest
import sacrebleu

from transformer import sharding, trainer
from transformer.config import from_config_dict
from transformer.data.tasks import load_task
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


def test_empty_hypotheses_score_zero():
    assert tokenized_bleu(["", ""], ["Ein Hund läuft im Park.", "Eine Katze schläft."], "de") == 0.0
