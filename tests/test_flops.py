"""transformer/flops.py: the model FLOPs of a train step and the datasheet peaks."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from transformer.config import from_config_dict
from transformer.flops import peak_tflops, train_step_flops
from transformer.model import build_model

from .model_configs import tiny_config


def step_flops(kind, rows, source, target, **model):
    overrides = {"model.kind": kind, "data.batching": "sentences"}
    if kind == "decoder_only":
        overrides |= {"model.num_encoder_layers": 0, "bleu_every_steps": 0}
    config = from_config_dict(tiny_config(**overrides)).with_vocab_size(100)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **model))
    tokens = jnp.ones((1, 8), jnp.int32)
    args = (tokens,) if kind == "decoder_only" else (tokens, tokens)
    params = jax.eval_shape(lambda: build_model(config.model).init(jax.random.key(0), *args))
    return config, train_step_flops(config, params["params"], rows, source, target)


@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder_only", "rnn"])
def test_step_flops_are_three_forward_passes_of_their_terms(kind):
    config, flops = step_flops(kind, 8, 20, 10)
    assert flops["total"] == flops["dense"] + flops["output"] + flops["attention"]
    m = config.model
    assert flops["output"] == 3 * 2 * m.d_model * 100 * 8 * 10  # The tied projection.
    # Dense matmuls grow with the rows, attention's scores with source x target.
    _, twice = step_flops(kind, 16, 20, 10)
    assert twice["dense"] == 2 * flops["dense"] and twice["attention"] == 2 * flops["attention"]


def test_the_recurrent_models_one_attention_does_not_grow_with_its_layers():
    config, flops = step_flops("rnn", 8, 20, 10)
    # One head of d_model: Q K^T and weights x V, each 2 * d per (query, key), x 3 for the step.
    assert flops["attention"] == 3 * 2 * 8 * 2 * config.model.d_model * 10 * 20
    _, deeper = step_flops("rnn", 8, 20, 10, num_decoder_layers=3, num_encoder_layers=3)
    assert deeper["attention"] == flops["attention"] and deeper["dense"] > flops["dense"]


def test_peaks_come_from_the_datasheet_table_or_the_config():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "float32") == 156.0
    assert peak_tflops("TPU v5 lite", "bfloat16") == 197.0
    assert peak_tflops("TPU v5p", "bfloat16") == 459.0
    assert peak_tflops("cpu", "float32") is None  # No MFU on a CPU unless a peak is given,
    assert peak_tflops("cpu", "float32", given=0.3) == 0.3  # as the config's key gives it.
    assert peak_tflops("TPU v4", "float32") is None  # No float32 datasheet figure.
