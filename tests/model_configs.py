"""A small ModelConfig for model-level tests: base.py's settings at toy sizes."""

import dataclasses

from configs import base
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
