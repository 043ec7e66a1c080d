"""Configs for tests: a small ModelConfig at toy sizes, and configs/tiny.py with overrides."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from configs import base, tiny
from transformer.config import ModelConfig, from_config_dict
from transformer.model import build_model, count_parameters


def small_model_config(**overrides) -> ModelConfig:
    """2+2 layers, d_model 16, 2 heads, vocabulary 40, no dropout; `overrides` replace fields."""
    cfg = from_config_dict(base.get_config()).model
    small = dict(
        num_encoder_layers=2,
        num_decoder_layers=2,
        d_model=16,
        d_ff=32,
        num_heads=2,
        vocab_size=40,
        max_len=32,
        dropout_rate=0.0,
    )
    return dataclasses.replace(cfg, **{**small, **overrides})


def with_overrides(config: ConfigDict, overrides: dict[str, Any]) -> ConfigDict:
    """`config` with each dotted key ("model.d_model") of `overrides` set, in place."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def tiny_config(**overrides: Any) -> ConfigDict:
    """configs/tiny.py (the smoke run) with dotted-key overrides."""
    return with_overrides(tiny.get_config(), overrides)


def abstract_parameter_count(config: ConfigDict, vocab_size: int) -> int:
    """Parameters of the config's model with `vocab_size` tokens, from abstract shapes
    (nothing is allocated)."""
    cfg = from_config_dict(config)
    model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab_size))
    tokens = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))
    return count_parameters(shapes["params"])
