"""Attention maps: which tokens each position attends to, per layer and head, as PNG heatmaps.

One teacher-forced pass over a (source, target) pair collects every layer's self- and
cross-attention (transformer.attention_readout).
"""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
import matplotlib.pyplot as plt
import numpy as np

from transformer.attention_readout import attention_weights
from transformer.model import Transformer, shift_right


def plot_heads(
    weights: np.ndarray, query_labels: list[str], key_labels: list[str], title: str, path: str
) -> None:
    """One heatmap per head ([heads, queries, keys]) in a grid, tokens on both axes."""
    heads = weights.shape[0]
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    cell = 0.28  # inches per token
    width = max(3.0, cell * len(key_labels) + 1.2)
    height = max(3.0, cell * len(query_labels) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(len(key_labels)), key_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(query_labels)), query_labels, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_attention_maps(
    model: Transformer,
    params: Any,
    source_ids: list[int],
    target_ids: list[int],
    pieces,
    output_dir: str,
) -> list[str]:
    """PNG files of every layer's encoder self-, decoder self- and cross-attention for one
    pair of EOS-ended id lists; `pieces` maps ids to display strings. Returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    inputs = np.asarray([source_ids], np.int32)
    targets = np.asarray([target_ids], np.int32)
    weights = attention_weights(model, params, inputs, targets)
    source = pieces(source_ids)
    outputs = pieces(target_ids)
    decoder_inputs = pieces(np.asarray(shift_right(targets, np.arange(len(target_ids))[None]))[0])
    axes = {
        "encoder/self_attention": (source, source, "encoder self-attention"),
        "decoder/self_attention": (outputs, decoder_inputs, "decoder self-attention (masked)"),
        "decoder/cross_attention": (outputs, source, "encoder-decoder attention"),
    }
    paths = []
    for name, value in sorted(weights.items()):
        stack, layer, kind = name.split("/")
        queries, keys, title = axes[f"{stack}/{kind}"]
        path = os.path.join(output_dir, f"{stack}_{kind}_{layer}.png")
        plot_heads(value, queries, keys, f"{title}, {layer.replace('_', ' ')}", path)
        paths.append(path)
    return paths
