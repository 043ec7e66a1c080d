"""Validation loss, perplexity and accuracy (trainer.evaluate_loss) against NumPy on the
model's own logits."""

import dataclasses

import jax
import numpy as np
import pytest

from transformer import sharding, trainer
from transformer.config import MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.special_tokens import PAD_ID

from .model_configs import tiny_config


def np_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder_only"])
def test_perplexity_and_accuracy_are_those_of_the_logits(tmp_path, kind):
    overrides = {"model.kind": kind}
    if kind == "decoder_only":
        overrides |= {"model.num_encoder_layers": 0, "bleu_every_steps": 0}
    config = from_config_dict(tiny_config(**overrides))
    task = load_task(config.data, str(tmp_path))
    config = dataclasses.replace(config, mesh=MeshConfig(1, 1, 1))
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    placed = trainer.build(config, mesh)
    with trainer.mesh_context(mesh, config):
        params = placed.init(jax.random.key(1)).params
        got = trainer.evaluate_loss(placed, params, task, "validation")
        nll, correct, tokens = 0.0, 0, 0
        for batch in task.eval_batches("validation", config.eval_batch_size):
            inputs = batch if kind == "encoder_decoder" else {"targets": batch["targets"]}
            logits = np.asarray(placed.model.apply({"params": params}, **inputs), np.float64)
            targets = batch["targets"]
            real = targets != PAD_ID
            log_p = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
            nll -= log_p[real].sum()
            correct += (logits.argmax(-1) == targets)[real].sum()
            tokens += real.sum()
    assert tokens == task.splits["validation"].targets.lengths.sum()  # Every token, once.
    assert got["nll"] == pytest.approx(nll / tokens, rel=1e-5)
    assert got["perplexity"] == pytest.approx(np.exp(nll / tokens), rel=1e-5)
    assert got["accuracy"] == pytest.approx(correct / tokens, abs=1e-9)
