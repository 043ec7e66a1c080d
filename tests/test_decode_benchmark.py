"""benchmarks/decode.py's Hugging Face comparison decodes the workload it claims to."""

import dataclasses

import numpy as np
import pytest

from transformer.config import from_config_dict

from .model_configs import tiny_config


def test_hf_comparison_generates_exactly_length_tokens_per_sentence_with_its_kv_cache():
    pytest.importorskip("transformers")
    from benchmarks.decode import BEAM, hf_decoders

    config = dataclasses.replace(from_config_dict(tiny_config()).model, vocab_size=50)
    decoders, n_params = hf_decoders(config, length=7)
    inputs = np.array([[5, 6, 7, 1], [8, 9, 1, 0], [4, 1, 0, 0]], np.int32)
    for name in ("greedy", f"beam {BEAM}"):
        out = decoders[name](None, inputs)
        assert out.shape == (3, 7) and out.dtype == np.int32, name
        assert np.all(out != 1), name  # EOS (id 1) held off by min_new_tokens = length
    assert n_params > 0
