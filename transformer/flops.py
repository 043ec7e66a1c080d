"""Model FLOPs of a train step and the accelerators' datasheet peaks: the throughput, TFLOP/s
per device and MFU that training logs and the benchmarks print come from here.

Model FLOPs per step (analytic, multiply-add = 2 FLOPs; the full L x L attention matrix is
counted also where it is causal), with N_src, N_tgt the source and target token slots of the
batch (padding included: it is computed):
  forward = 2 * (P_enc * N_src + P_dec * N_tgt)      non-embedding parameters x tokens
          + 2 * d_model * vocab * N_tgt              the (tied) output projection
          + sum over attention sublayers of 2 * batch * L_q * L_kv * heads * (d_k + d_v)
                                                      scores Q K^T and weights x V
  step    = 3 * forward                              backward = 2 x forward
P_enc: encoder parameters; P_dec: decoder parameters, with the cross-attention key/value
projections (which act on the source) counted with N_src. Embeddings and positions cost no
FLOPs. The recurrent baseline has one attention, of one d_model-wide head, on its top
decoder layer, and its LSTM kernels count as parameters x tokens.
"""

from __future__ import annotations

import math
from typing import Any

import jax

from transformer.config import Config

# Dense matmul peaks per chip from the datasheets, TFLOP/s: bfloat16, and float32 as XLA
# runs it by default on the chip (TF32 tensor cores on NVIDIA Ampere and later). Matched
# against jax.Device.device_kind, first match wins.
PEAK_TFLOPS = (
    ("H200", {"bfloat16": 989.0, "float32": 494.7}),
    ("H100", {"bfloat16": 989.0, "float32": 494.7}),  # SXM; PCIe and NVL are lower.
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
    ("TPU v6", {"bfloat16": 918.0}),
    ("TPU v5p", {"bfloat16": 459.0}),
    ("TPU v5", {"bfloat16": 197.0}),  # v5e ("TPU v5 lite").
    ("TPU v4", {"bfloat16": 275.0}),
)


def peak_tflops(device_kind: str, dtype: str, given: float = 0.0) -> float | None:
    """The peak TFLOP/s of one device: `given` where positive, else the datasheet's for
    `device_kind` in `dtype`, or None (a CPU, or a chip not in PEAK_TFLOPS)."""
    if given > 0:
        return given
    for name, peaks in PEAK_TFLOPS:
        if name in device_kind:
            return peaks.get(dtype)
    return None


def train_step_flops(
    config: Config, params: Any, rows: int, source: int, target: int
) -> dict[str, float]:
    """Analytic FLOPs of one train step on `rows` pairs of `source` and `target` tokens (see
    the module docstring), by term and in total. `params`: the tree, arrays or shapes."""
    m = config.model
    n_src, n_tgt = rows * source, rows * target
    p_enc, p_dec, p_cross_kv = _parameters_by_stack(params)
    dense = 2 * (p_enc * n_src + p_dec * n_tgt + p_cross_kv * n_src)
    output = 2 * m.d_model * m.vocab_size * n_tgt
    if m.kind == "rnn":  # One head of d_model, scores and mix, from the top layer.
        attention = 2 * rows * 2 * m.d_model * target * source
    else:
        per_pair = 2 * rows * m.num_heads * (m.head_dim_k + m.head_dim_v)
        attention = per_pair * target * target * m.num_decoder_layers  # decoder self
        if m.kind == "encoder_decoder":  # Encoder self-attention, cross-attention.
            attention += (
                per_pair * source * (source * m.num_encoder_layers + target * m.num_decoder_layers)
            )
    forward = dense + output + attention
    return {
        "dense": 3 * dense,
        "output": 3 * output,
        "attention": 3 * attention,
        "total": 3 * forward,
        "non_embedding_params": p_enc + p_dec + p_cross_kv,
    }


def _parameters_by_stack(params: Any) -> tuple[int, int, int]:
    """(encoder, decoder, cross-attention key/value) parameters, embeddings, positions and
    an untied output projection left out."""
    p_enc = p_dec = p_cross_kv = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", k)) for k in path if not hasattr(k, "name")]
        size = math.prod(leaf.shape)
        if "positions" in names or names[-1] == "embedding" or "logits" in names[:-1]:
            continue
        if names[0] == "encoder":
            p_enc += size
        elif "cross_attention" in names and names[-1] in ("key", "value", "key_value"):
            p_cross_kv += size
        elif names[0] == "decoder":
            p_dec += size
    return p_enc, p_dec, p_cross_kv
