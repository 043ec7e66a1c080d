"""The PyTorch reference of `benchmarks/train_step.py --compare torch`: the same model and
step in PyTorch eager, and PyTorch's matmul peak. Needs `pip install -e '.[bench]'`.

The model is `nn.TransformerEncoder/DecoderLayer`, post-LN, without attention biases so that
the parameter counts match ours, dropout in the same places, a tied output projection,
`F.cross_entropy(label_smoothing=...)` and `torch.optim.Adam`, in float32 with
`torch.set_num_threads(cores)`. The benchmark runs it in a process of its own
(benchmarks/compare/worker.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.machine import fastest_flops
from transformer.config import Config, ModelConfig
from transformer.layers import sinusoidal_table
from transformer.special_tokens import BOS_ID


def refuse_inexpressible(m: ModelConfig) -> None:
    """SystemExit naming what PyTorch's nn.Transformer layers cannot express of `m`."""
    if m.kind != "encoder_decoder" or m.normalization != "post" or m.activation != "relu":
        raise SystemExit("--compare torch covers post-LN ReLU encoder-decoder models only.")
    if not (m.share_embeddings and m.tie_output_embedding) or m.head_dim_k != m.head_dim_v:
        raise SystemExit("--compare torch needs tied shared embeddings and d_k = d_v.")
    if m.positional_encoding != "sinusoidal" or m.dtype != "float32":
        raise SystemExit("--compare torch needs sinusoidal positions and float32.")
    if m.head_dim_k * m.num_heads != m.d_model:
        raise SystemExit("--compare torch needs heads x d_k = d_model (nn.MultiheadAttention).")


def torch_layer(cls: type, m: ModelConfig) -> Any:
    """An nn.TransformerEncoderLayer or DecoderLayer with our dropout and no attention biases
    (ours has none, Q W^Q ...: removing them makes the parameter counts equal)."""
    from torch import nn

    block = cls(
        m.d_model,
        m.num_heads,
        m.d_ff,
        m.dropout_rate,
        layer_norm_eps=m.layer_norm_epsilon,
        batch_first=True,
    )
    block.dropout = nn.Identity()  # PyTorch drops inside the FFN too; ours does not.
    for name in ("self_attn", "multihead_attn"):
        if hasattr(block, name):
            attention = getattr(block, name)
            attention.register_parameter("in_proj_bias", None)
            attention.out_proj.register_parameter("bias", None)
            attention.dropout = m.attention_dropout_rate
    return block


def torch_transformer(m: ModelConfig) -> Any:
    """Our model as a PyTorch nn.Module: (inputs, decoder_input) -> logits."""
    import torch
    from torch import nn

    class TorchTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(m.vocab_size, m.d_model)
            nn.init.normal_(self.embed.weight, std=m.d_model**-0.5)
            table = torch.from_numpy(sinusoidal_table(m.max_len, m.d_model))
            self.register_buffer("positions", table)
            self.dropout = nn.Dropout(m.dropout_rate)
            self.encoder = nn.TransformerEncoder(
                torch_layer(nn.TransformerEncoderLayer, m),
                m.num_encoder_layers,
                norm=None,
                enable_nested_tensor=False,
            )
            self.decoder = nn.TransformerDecoder(
                torch_layer(nn.TransformerDecoderLayer, m), m.num_decoder_layers, norm=None
            )

        def embed_and_position(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens) * math.sqrt(m.d_model) + self.positions[: tokens.shape[1]]
            return self.dropout(x)

        def forward(self, inputs: torch.Tensor, decoder_input: torch.Tensor) -> torch.Tensor:
            length = decoder_input.shape[1]
            causal = nn.Transformer.generate_square_subsequent_mask(length)
            memory = self.encoder(self.embed_and_position(inputs))
            x = self.decoder(
                self.embed_and_position(decoder_input), memory, tgt_mask=causal, tgt_is_causal=True
            )
            return x @ self.embed.weight.T  # tied pre-softmax projection

    return TorchTransformer()


def build_torch_step(
    config: Config, batch: dict[str, np.ndarray]
) -> tuple[Callable[[], None], dict[str, Any]]:
    """(one blocking train step, {"parameters", "description"}) of the equivalent PyTorch
    eager model."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    m = config.model
    refuse_inexpressible(m)
    model = torch_transformer(m)
    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-4, betas=(config.adam_b1, config.adam_b2), eps=config.adam_eps
    )
    inputs = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()
    decoder_input = torch.cat([torch.full_like(targets[:, :1], BOS_ID), targets[:, :-1]], dim=1)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs, decoder_input)
        loss = F.cross_entropy(
            logits.reshape(-1, m.vocab_size),
            targets.reshape(-1),
            label_smoothing=config.label_smoothing,
            reduction="sum",
        )
        (loss / targets.numel()).backward()
        optimizer.step()

    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "description": f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads",
    }
    return run, info


def measured_torch_peak_flops(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of PyTorch's float32 n x n matmul (its BLAS): the fastest of `repeats`."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return fastest_flops(lambda: a @ b, 2 * n**3, repeats)
