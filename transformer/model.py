"""The Transformer of "Attention Is All You Need": encoder-decoder and decoder-only models.

Both are built from the same layers (transformer.layers). Each sublayer is wrapped as the
paper's post-LN `LayerNorm(x + Dropout(Sublayer(x)))` (section 3.1, 5.4), or as pre-LN
`x + Dropout(Sublayer(LayerNorm(x)))` with a final LayerNorm after each stack
(`config.normalization`). The models return next-token logits [batch, length, vocab] float32.

Padding (PAD_ID) ends a row, as every pipeline here makes rows. Packed rows carry
`*_segmentation` ids (0 = padding), which keep attention inside a segment, and `*_positions`
that restart at 0 for every segment.

Incremental decoding: `decode(..., decode=True)` runs the decoder one token at a time over a
"cache" collection of keys and values (transformer.decode). The parameters are the same in
both modes, so any checkpoint decodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from transformer import cpu
from transformer.config import ModelConfig
from transformer.layers import (
    BATCH,
    EMBED,
    LENGTH,
    VOCAB,
    AttentionMask,
    Dropout,
    FeedForward,
    MultiHeadAttention,
    PositionalEncoding,
    attention_mask,
    constrain,
    dense,
    embed,
    layer_norm,
    padding_mask,
    tied_logits,
    token_embedding,
)
from transformer.special_tokens import BOS_ID, PAD_ID

Array = jax.Array


def shift_right(targets: Array, positions: Array) -> Array:
    """Decoder input: targets moved one step right, BOS at the start of every segment.

    targets, positions: [batch, length] -> [batch, length].
    """
    shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=BOS_ID)[:, :-1]
    return jnp.where(positions == 0, BOS_ID, shifted)


def default_positions(tokens: Array) -> Array:
    """[batch, length]: 0, 1, 2, ... in every row (an unpacked batch)."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def residual(
    config: ModelConfig,
    name: str,
    x: Array,
    sublayer: Callable[[Array], Array],
    deterministic: bool,
) -> Array:
    """Sublayer `name` with its residual connection, dropout and LayerNorm (section 3.1):
    post-LN LayerNorm(x + Dropout(Sublayer(x))), or pre-LN x + Dropout(Sublayer(LayerNorm(x)))."""
    norm = layer_norm(config, f"{name}_norm")
    drop = Dropout(config.dropout_rate)
    if config.normalization == "pre":
        return x + drop(sublayer(norm(x)), deterministic)
    return norm(x + drop(sublayer(x), deterministic))


def rematerialized(layer: type[nn.Module], config: ModelConfig, static_argnums: tuple[int, ...]):
    """`layer` under `config.remat`: "block" keeps only the layer's inputs for the backward
    pass and recomputes the rest; "dots" also keeps the outputs of matmuls without batch
    dimensions (projections, FFN). Called like the layer class; static_argnums count `self`
    as 0 (the Python values: deterministic, decode)."""
    if config.remat == "none":
        return layer
    policy = None
    if config.remat == "dots":
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return checkpointed(layer, policy, static_argnums)


@cpu.faster(cpu.recomputed_after_cotangent)
def checkpointed(layer: type[nn.Module], policy, static_argnums: tuple[int, ...]):
    return nn.remat(layer, policy=policy, static_argnums=static_argnums)


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network (section 3.1)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mask: AttentionMask, deterministic: bool) -> Array:
        """x: [batch, length, d_model]; mask: [batch, 1, length, length] -> same as x."""
        cfg = self.config
        attend_self = MultiHeadAttention(cfg, name="self_attention")
        x = residual(
            cfg, "self_attention", x, lambda h: attend_self(h, mask, deterministic), deterministic
        )
        x = residual(cfg, "ffn", x, FeedForward(cfg, name="ffn"), deterministic)
        return constrain(x, (BATCH, LENGTH, EMBED))


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention (not in a decoder-only model), then
    the feed-forward network (section 3.1)."""

    config: ModelConfig
    cross_attention: bool

    @nn.compact
    def __call__(
        self,
        x: Array,
        self_mask: Array | AttentionMask,
        encoded: Array | None,
        cross_mask: AttentionMask | None,
        deterministic: bool,
        decode: bool = False,
    ) -> Array:
        """x: [batch, length, d_model]; encoded: [batch, src_len, d_model] -> same as x."""
        cfg = self.config
        attend_self = MultiHeadAttention(cfg, name="self_attention")
        x = residual(
            cfg, "self_attention", x,
            lambda h: attend_self(h, self_mask, deterministic, decode), deterministic,
        )  # fmt: skip
        if self.cross_attention:
            attend_source = MultiHeadAttention(cfg, cross=True, name="cross_attention")
            x = residual(
                cfg, "cross_attention", x,
                lambda h: attend_source(h, cross_mask, deterministic, decode, encoded),
                deterministic,
            )  # fmt: skip
        x = residual(cfg, "ffn", x, FeedForward(cfg, name="ffn"), deterministic)
        return constrain(x, (BATCH, LENGTH, EMBED))


class Encoder(nn.Module):
    """Embedding x sqrt(d_model) + positions, dropout, N encoder layers."""

    config: ModelConfig
    embedding: nn.Embed

    @nn.compact
    def __call__(
        self, tokens: Array, positions: Array, segmentation: Array | None, deterministic: bool
    ) -> Array:
        """tokens, positions, segmentation: [batch, length] -> [batch, length, d_model]."""
        cfg = self.config
        x = embed(cfg, self.embedding, tokens) + PositionalEncoding(cfg, name="positions")(
            positions
        )
        x = constrain(Dropout(cfg.dropout_rate)(x, deterministic), (BATCH, LENGTH, EMBED))
        mask = attention_mask(tokens, tokens, segmentation, segmentation)
        layer = rematerialized(EncoderLayer, cfg, static_argnums=(3,))  # deterministic
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layer_{i}")(x, mask, deterministic)
        return layer_norm(cfg, "final_norm")(x) if cfg.normalization == "pre" else x


class Decoder(nn.Module):
    """Embedding x sqrt(d_model) + positions, dropout, N decoder layers, then the
    pre-softmax projection (the embedding transposed, or a projection of its own)."""

    config: ModelConfig
    embedding: nn.Embed

    @nn.compact
    def __call__(
        self,
        decoder_input: Array,
        positions: Array,
        segmentation: Array | None,
        encoded: Array | None,
        cross_mask: AttentionMask | None,
        deterministic: bool,
        decode: bool = False,
    ) -> Array:
        """decoder_input, positions, segmentation: [batch, length]; encoded: [batch, src_len,
        d_model] or None (decoder-only). Returns logits [batch, length, vocab] float32.

        decode=True: after the call that creates the cache, each call is one step, length 1
        (the newest token and its position), on unpacked rows."""
        cfg = self.config
        x = embed(cfg, self.embedding, decoder_input)
        x = x + PositionalEncoding(cfg, name="positions")(positions)
        x = constrain(Dropout(cfg.dropout_rate)(x, deterministic), (BATCH, LENGTH, EMBED))
        if decode:
            self_mask = self._decode_self_mask(decoder_input)
        else:
            self_mask = attention_mask(
                decoder_input, decoder_input, segmentation, segmentation, causal=True
            )
        # Decoding has no backward pass to save memory for.
        static = (5, 6)  # deterministic, decode
        layer = DecoderLayer if decode else rematerialized(DecoderLayer, cfg, static)
        for i in range(cfg.num_decoder_layers):
            x = layer(cfg, cross_attention=encoded is not None, name=f"layer_{i}")(
                x, self_mask, encoded, cross_mask, deterministic, decode
            )
        if cfg.normalization == "pre":
            x = layer_norm(cfg, "final_norm")(x)
        if cfg.tie_output_embedding:
            logits = tied_logits(x, self.embedding)
        else:
            logits = dense(cfg, cfg.vocab_size, ("embed", "vocab"), use_bias=False, name="logits")(
                x
            )
        return constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))

    def _decode_self_mask(self, decoder_input: Array) -> Array | AttentionMask:
        """A decode step's self-attention mask [batch, 1, 1, max_length]: the new token
        against every token fed so far. Caching the tokens too masks PAD queries and keys
        exactly as the full model does. The call that creates the cache gets the full
        model's mask for its [batch, max_length] input."""
        created = self.has_variable("cache", "cached_tokens")
        tokens = self.variable(
            "cache", "cached_tokens", jnp.full, decoder_input.shape, PAD_ID, jnp.int32
        )
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not created:
            return attention_mask(decoder_input, decoder_input, causal=True)
        tokens.value = lax.dynamic_update_slice_in_dim(
            tokens.value, decoder_input.astype(jnp.int32), index.value, axis=1
        )
        index.value += 1
        # Slots not fed yet still hold PAD, so the padding mask is also the causal one.
        return padding_mask(decoder_input, tokens.value)


class Transformer(nn.Module):
    """The encoder-decoder: source tokens -> next-token logits of the target."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        if cfg.share_embeddings:  # Section 3.4: one matrix for both embeddings.
            self.embed = token_embedding(cfg)
            source, target = self.embed, self.embed
        else:
            self.source_embed = token_embedding(cfg)
            self.target_embed = token_embedding(cfg)
            source, target = self.source_embed, self.target_embed
        self.encoder = Encoder(cfg, source)
        self.decoder = Decoder(cfg, target)

    def encode(
        self,
        inputs: Array,
        inputs_positions: Array | None = None,
        inputs_segmentation: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """inputs: [batch, src_len] -> [batch, src_len, d_model]."""
        if inputs_positions is None:
            inputs_positions = default_positions(inputs)
        return self.encoder(inputs, inputs_positions, inputs_segmentation, deterministic)

    def decode(
        self,
        encoded: Array,
        inputs: Array,
        decoder_input: Array,
        targets_positions: Array | None = None,
        inputs_segmentation: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """encoded: [batch, src_len, d_model]; inputs: [batch, src_len] (for its padding);
        decoder_input: [batch, tgt_len], shifted right. Returns logits [batch, tgt_len, vocab].

        decode=True (the "cache" collection mutable): the first call creates the cache from a
        [batch, max_length] decoder_input and projects `encoded` for cross-attention; each
        later call feeds one token and its position, [batch, 1] each."""
        if targets_positions is None:
            if decode:
                raise ValueError("Decode steps need targets_positions, the new token's position.")
            targets_positions = default_positions(decoder_input)
        cross_mask = attention_mask(
            decoder_input, inputs, targets_segmentation, inputs_segmentation
        )
        return self.decoder(
            decoder_input, targets_positions, targets_segmentation, encoded, cross_mask,
            deterministic, decode,
        )  # fmt: skip

    def __call__(
        self,
        inputs: Array,
        targets: Array,
        inputs_positions: Array | None = None,
        targets_positions: Array | None = None,
        inputs_segmentation: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """inputs: [batch, src_len]; targets: [batch, tgt_len] (teacher forcing). Returns
        logits [batch, tgt_len, vocab] float32: position i predicts targets[:, i]."""
        if targets_positions is None:
            targets_positions = default_positions(targets)
        encoded = self.encode(inputs, inputs_positions, inputs_segmentation, deterministic)
        return self.decode(
            encoded, inputs, shift_right(targets, targets_positions), targets_positions,
            inputs_segmentation, targets_segmentation, deterministic,
        )  # fmt: skip


class DecoderOnlyLM(nn.Module):
    """A GPT-style language model: the decoder stack without encoder-decoder attention."""

    config: ModelConfig

    def setup(self) -> None:
        self.embed = token_embedding(self.config)
        self.decoder = Decoder(self.config, self.embed)

    def __call__(
        self,
        targets: Array,
        targets_positions: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """targets: [batch, length] -> logits [batch, length, vocab] predicting them."""
        if targets_positions is None:
            targets_positions = default_positions(targets)
        decoder_input = shift_right(targets, targets_positions)
        return self.decode(decoder_input, targets_positions, targets_segmentation, deterministic)

    def decode(
        self,
        decoder_input: Array,
        targets_positions: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        """decoder_input: [batch, length], shifted right (BOS first) -> logits [batch,
        length, vocab]. decode=True: incremental decoding as in `Transformer.decode`."""
        if targets_positions is None:
            if decode:
                raise ValueError("Decode steps need targets_positions, the new token's position.")
            targets_positions = default_positions(decoder_input)
        return self.decoder(
            decoder_input, targets_positions, targets_segmentation, None, None, deterministic,
            decode,
        )  # fmt: skip


def count_parameters(params: Any) -> int:
    """The number of parameters in a tree of arrays (or of their shapes)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def build_model(config: ModelConfig) -> Transformer | DecoderOnlyLM:
    """The model that `config.kind` names."""
    if config.vocab_size <= 0:
        raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) first.")
    return Transformer(config) if config.kind == "encoder_decoder" else DecoderOnlyLM(config)
