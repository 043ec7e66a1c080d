"""Configs for tests: a small ModelConfig at toy sizes, and configs/tiny.py with overrides."""

import dataclasses
from typing import Any

from ml_collections import ConfigDict

from configs import base, tiny
from transformer.config import ModelConfig, from_config_dict


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
