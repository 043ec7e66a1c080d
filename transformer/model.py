"""The Transformer of "Attention Is All You Need": encoder-decoder and decoder-only models,
built from the same layers (transformer.layers). They return next-token logits [batch,
length, vocab] float32. The recurrent baseline of the paper's comparison (transformer.recurrent)
is an encoder-decoder of the same embedding, interface and decoding, with LSTM stacks.

Padding (PAD_ID) ends a row, as every pipeline here makes rows. Packed rows carry
`*_segmentation` ids (0 = padding), which keep attention inside a segment, and `*_positions`
that restart at 0 for every segment. `decode(..., decode=True)` runs the decoder one token at
a time over a "cache" of keys and values (transformer.decode), with the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from transformer import cpu
from transformer.config import ModelConfig
from transformer.layers import (
    Dropout,
    FeedForward,
    MultiHeadAttention,
    dense,
    embed_with_positions,
    layer_norm,
    tied_logits,
    token_embedding,
)
from transformer.masks import AttentionMask, attention_mask, padding_mask
from transformer.recurrent import RecurrentDecoder, RecurrentEncoder
from transformer.sharding import BATCH, EMBED, LENGTH, VOCAB, constrain
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


class Layer(nn.Module):
    """An encoder or decoder layer (section 3.1): self-attention, then encoder-decoder
    attention (decoder layers of the encoder-decoder), then the feed-forward network. The
    decoder's self-attention is masked by `self_mask` (causal), the encoder's is not."""

    config: ModelConfig
    cross_attention: bool

    @nn.compact
    def __call__(
        self,
        x: Array,
        self_mask: AttentionMask,
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
        self,
        tokens: Array,
        positions: Array | None,
        segmentation: Array | None,
        deterministic: bool,
    ) -> Array:
        """tokens, positions (default 0, 1, ...), segmentation: [batch, length] -> [batch,
        length, d_model]."""
        cfg = self.config
        positions = default_positions(tokens) if positions is None else positions
        x = embed_with_positions(cfg, self.embedding, tokens, positions, deterministic)
        mask = attention_mask(tokens, tokens, segmentation, segmentation)
        layer = rematerialized(Layer, cfg, static_argnums=(5, 6))  # deterministic, decode
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, cross_attention=False, name=f"layer_{i}")(
                x, mask, None, None, deterministic, False
            )
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
        positions: Array | None,
        segmentation: Array | None,
        encoded: Array | None,
        cross_mask: AttentionMask | None,
        deterministic: bool,
        decode: bool = False,
    ) -> Array:
        """decoder_input, positions (default 0, 1, ...), segmentation: [batch, length];
        encoded: [batch, src_len, d_model] or None (decoder-only) -> logits [batch, length,
        vocab]. decode=True: after the call that creates the cache, each call is one step."""
        cfg = self.config
        if positions is None:
            if decode:
                raise ValueError("Decode steps need the positions of their tokens.")
            positions = default_positions(decoder_input)
        x = embed_with_positions(cfg, self.embedding, decoder_input, positions, deterministic)
        if decode:
            self_mask = self._decode_self_mask(decoder_input)
        else:
            self_mask = attention_mask(
                decoder_input, decoder_input, segmentation, segmentation, causal=True
            )
        # Decoding has no backward pass to save memory for.
        layer = Layer if decode else rematerialized(Layer, cfg, (5, 6))  # deterministic, decode
        for i in range(cfg.num_decoder_layers):
            x = layer(cfg, cross_attention=encoded is not None, name=f"layer_{i}")(
                x, self_mask, encoded, cross_mask, deterministic, decode
            )
        if cfg.normalization == "pre":
            x = layer_norm(cfg, "final_norm")(x)
        if cfg.tie_output_embedding:
            logits = tied_logits(x, self.embedding)
        else:
            project = dense(cfg, cfg.vocab_size, ("embed", "vocab"), use_bias=False, name="logits")
            logits = project(x)
        return constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))

    def _decode_self_mask(self, decoder_input: Array) -> AttentionMask:
        """A decode step's self-attention mask [batch, 1, 1, max_length]: the new token
        against the tokens fed so far, which are cached so that PAD queries and keys are
        masked as in the full model (the full model's mask on the call that creates it)."""
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
        return AttentionMask(padding_mask(decoder_input, tokens.value))


class EncoderDecoder(nn.Module):
    """Source tokens -> next-token logits of the target: an encoder stack and a decoder stack
    that share one embedding (section 3.4). Its subclasses name the two stacks."""

    config: ModelConfig
    stacks: ClassVar[tuple[type[nn.Module], type[nn.Module]]]

    def setup(self) -> None:
        cfg = self.config
        if cfg.share_embeddings:  # Section 3.4: one matrix for both embeddings.
            self.embed = token_embedding(cfg)
            source, target = self.embed, self.embed
        else:
            self.source_embed = token_embedding(cfg)
            self.target_embed = token_embedding(cfg)
            source, target = self.source_embed, self.target_embed
        encoder, decoder = self.stacks
        self.encoder = encoder(cfg, source)
        self.decoder = decoder(cfg, target)

    def encode(
        self,
        inputs: Array,
        inputs_positions: Array | None = None,
        inputs_segmentation: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """inputs: [batch, src_len] -> [batch, src_len, d_model]."""
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
        decoder_input: [batch, tgt_len], shifted right -> logits [batch, tgt_len, vocab].
        decode=True: the call that creates the "cache" has decoder_input [batch, max_length];
        each later one feeds one token and its position, [batch, 1]."""
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


class Transformer(EncoderDecoder):
    """The Transformer: self-attention encoder and decoder layers (section 3.1)."""

    stacks = (Encoder, Decoder)


class RecurrentEncoderDecoder(EncoderDecoder):
    """The recurrent baseline: bidirectional LSTM encoder, LSTM decoder with global
    attention (transformer.recurrent), trained and decoded as the Transformer is."""

    stacks = (RecurrentEncoder, RecurrentDecoder)


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
        length, vocab]. decode=True: incremental decoding as in `EncoderDecoder.decode`."""
        return self.decoder(
            decoder_input, targets_positions, targets_segmentation, None, None, deterministic,
            decode,
        )  # fmt: skip


def count_parameters(params: Any) -> int:
    """The number of parameters in a tree of arrays (or of their shapes)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


MODELS: dict[str, type[nn.Module]] = {
    "encoder_decoder": Transformer,
    "decoder_only": DecoderOnlyLM,
    "rnn": RecurrentEncoderDecoder,
}


def build_model(config: ModelConfig) -> EncoderDecoder | DecoderOnlyLM:
    """The model that `config.kind` names."""
    if config.vocab_size <= 0:
        raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) first.")
    return MODELS[config.kind](config)
