"""The Transformer of "Attention Is All You Need": encoder-decoder and decoder-only models.

Both are assembled from the same layers. Sublayers follow the paper's post-LN order,
`LayerNorm(x + Dropout(Sublayer(x)))`, or pre-LN, `x + Dropout(Sublayer(LayerNorm(x)))` with a
final LayerNorm after each stack, chosen by `config.normalization`.

Padding (PAD_ID) comes at the end of a row, as every pipeline here makes rows: an unpacked
row's attention mask is also given as its length (`layers.AttentionMask`), which the fused
attention reads instead of the mask. Packed batches: optional `*_segmentation` ids
(0 = padding) keep attention inside a segment, and `*_positions` restart at 0 for every
segment.

Incremental decoding: the models' `decode` methods take `decode=True` to run the decoder one
token at a time over a "cache" collection of keys and values (see `transformer.decode`). The
parameters are the same in both modes, so any checkpoint decodes.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from transformer.config import ModelConfig
from transformer.layers import (
    BATCH,
    EMBED,
    LENGTH,
    AttentionMask,
    Dropout,
    Embed,
    FeedForward,
    MultiHeadAttention,
    PositionalEncoding,
    causal_mask,
    compute_dtype,
    constrain,
    dense_dot_general,
    layer_norm,
    padding_mask,
    segment_mask,
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


def lengths(tokens: Array) -> Array:
    """[batch, length] -> [batch] int32: the tokens before each row's padding (every pipeline
    here pads at the end of a row)."""
    # Sharded as the rows are: a fused attention shard reads its own rows' lengths.
    return constrain(jnp.sum(tokens != PAD_ID, axis=1, dtype=jnp.int32), (BATCH,))


def self_attention_mask(tokens: Array, segmentation: Array | None, causal: bool) -> AttentionMask:
    """The mask [batch, 1, length, length] for self-attention over `tokens` [batch, length],
    with its lengths where the rows are unpacked (`segmentation` None)."""
    mask = padding_mask(tokens, tokens, PAD_ID)
    if causal:
        mask &= causal_mask(tokens.shape[1])
    if segmentation is not None:
        return AttentionMask(mask & segment_mask(segmentation, segmentation))
    n = lengths(tokens)
    return AttentionMask(mask, n, n, causal)


def rematerialized(layer: type[nn.Module], config: ModelConfig, static_argnums: tuple[int, ...]):
    """`layer` under `config.remat`: "block" keeps only its inputs for the backward pass and
    recomputes the rest; "dots" also keeps the outputs of matmuls without batch dimensions
    (projections, FFN), recomputing attention scores, softmax, dropout and norms. Parameters
    and values are those of the plain layer. static_argnums count `self` as 0.

    Called like the layer class: `rematerialized(...)(config, name=...)(*args)`."""
    if config.remat == "none":
        return layer
    policy = (
        None
        if config.remat == "block"
        else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    )
    checkpointed = nn.remat(layer, static_argnums=static_argnums, policy=policy)
    if jax.default_backend() != "cpu":
        return checkpointed

    def build(*module_args, **module_kwargs):
        module = checkpointed(*module_args, **module_kwargs)
        return functools.partial(recompute_after_cotangent(static_argnums), module)

    return build


def recompute_after_cotangent(static_argnums: tuple[int, ...]):
    """`module(*args)` whose backward pass recomputes the checkpointed forward only once the
    output's cotangent exists.

    JAX ties a checkpointed layer's recomputation to its cotangent with an optimization
    barrier, but XLA's CPU compiler removes barriers before it schedules, and its scheduler
    then recomputes every layer at the start of the backward pass: all the activations that
    remat was to drop are live at once (ref-small: 0.80 GiB of temporaries without remat,
    0.72 with it). Here the residuals (the layer's inputs and parameters) each gain a zero
    computed from one element of the cotangent, a data dependence no pass removes; values
    and gradients are unchanged. static_argnums count the module as 0."""

    def forward(module: nn.Module, *args):
        def apply(m: nn.Module, *dynamic):
            rest = iter(dynamic)
            return m(*(a if i in static_argnums else next(rest) for i, a in enumerate(args, 1)))

        dynamic = [a for i, a in enumerate(args, 1) if i not in static_argnums]
        # vjp_fn is a pytree whose leaves are the residuals: the checkpointed layer's inputs.
        return nn.vjp(apply, module, *dynamic)

    def backward(*static_residuals_cotangent):
        *_, vjp_fn, cotangent = static_residuals_cotangent
        element = cotangent.reshape(-1)[0]
        zero = jnp.where(jnp.isfinite(element), element, 0) * 0

        def tie(residual):
            if jnp.issubdtype(residual.dtype, jnp.floating):
                return residual + zero.astype(residual.dtype)
            return residual

        return jax.tree.map(tie, vjp_fn)(cotangent)

    return nn.custom_vjp(
        lambda module, *args: module(*args),
        forward_fn=forward,
        backward_fn=backward,
        nondiff_argnums=static_argnums,
    )


def _pre(config: ModelConfig, norm: nn.LayerNorm, x: Array) -> Array:
    return norm(x) if config.normalization == "pre" else x


def _post(config: ModelConfig, norm: nn.LayerNorm, x: Array) -> Array:
    return norm(x) if config.normalization == "post" else x


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward sublayers (section 3.1)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, mask: AttentionMask, deterministic: bool) -> Array:
        """x: [batch, length, d_model]; mask: an `AttentionMask` of [batch, 1, length,
        length] -> same as x."""
        cfg = self.config
        dropout = functools.partial(Dropout(cfg.dropout_rate), deterministic=deterministic)
        norm = layer_norm(cfg, "self_attention_norm")
        h = _pre(cfg, norm, x)
        h = MultiHeadAttention(cfg, name="self_attention")(h, h, mask, deterministic)
        x = _post(cfg, norm, x + dropout(h))

        norm = layer_norm(cfg, "ffn_norm")
        h = FeedForward(cfg, name="ffn")(_pre(cfg, norm, x))
        x = _post(cfg, norm, x + dropout(h))
        return constrain(x, (BATCH, LENGTH, EMBED))


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention (skipped in a decoder-only model)
    and feed-forward sublayers (section 3.1)."""

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
        """x: [batch, length, d_model]; encoded: [batch, src_len, d_model] -> same as x.
        decode: incremental decoding, see `MultiHeadAttention`."""
        cfg = self.config
        dropout = functools.partial(Dropout(cfg.dropout_rate), deterministic=deterministic)
        norm = layer_norm(cfg, "self_attention_norm")
        h = _pre(cfg, norm, x)
        h = MultiHeadAttention(cfg, name="self_attention")(h, h, self_mask, deterministic, decode)
        x = _post(cfg, norm, x + dropout(h))

        if self.cross_attention:
            norm = layer_norm(cfg, "cross_attention_norm")
            h = MultiHeadAttention(cfg, static_kv=True, name="cross_attention")(
                _pre(cfg, norm, x), encoded, cross_mask, deterministic, decode
            )
            x = _post(cfg, norm, x + dropout(h))

        norm = layer_norm(cfg, "ffn_norm")
        h = FeedForward(cfg, name="ffn")(_pre(cfg, norm, x))
        x = _post(cfg, norm, x + dropout(h))
        return constrain(x, (BATCH, LENGTH, EMBED))


class Encoder(nn.Module):
    """Embedding + positions + N encoder layers."""

    config: ModelConfig
    embed: Embed

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segmentation: Array | None,
        deterministic: bool,
    ) -> Array:
        """tokens, positions, segmentation: [batch, length] -> [batch, length, d_model]."""
        cfg = self.config
        x = self.embed(tokens) + PositionalEncoding(cfg, name="positions")(positions)
        x = Dropout(cfg.dropout_rate)(x, deterministic)
        x = constrain(x, (BATCH, LENGTH, EMBED))
        mask = self_attention_mask(tokens, segmentation, causal=False)
        layer = rematerialized(EncoderLayer, cfg, static_argnums=(3,))  # deterministic
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layer_{i}")(x, mask, deterministic)
        if cfg.normalization == "pre":
            x = layer_norm(cfg, "final_norm")(x)
        return x


class OutputProjection(nn.Module):
    """The untied pre-softmax projection, x [..., d_model] -> logits [..., vocab] float32,
    computed as `nn.Dense` without bias computes it (its kernel, [d_model, vocab], has the
    same name and initialisation); `kernel` is also what the chunked loss multiplies by."""

    config: ModelConfig

    def setup(self) -> None:
        self.kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "vocab")),
            (self.config.d_model, self.config.vocab_size),
            jnp.float32,
        )

    def __call__(self, x: Array) -> Array:
        dtype = compute_dtype(self.config)
        return dense_dot_general(
            x.astype(dtype), self.kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ()))
        ).astype(jnp.float32)


class Decoder(nn.Module):
    """Embedding + positions + N decoder layers + pre-softmax projection."""

    config: ModelConfig
    embed: Embed

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
        output: str = "logits",
    ) -> Array | tuple[Array, Array]:
        """decoder_input, positions, segmentation: [batch, length];
        encoded: [batch, src_len, d_model] or None (decoder-only).
        Returns logits [batch, length, vocab] in float32; with output="hidden" instead
        (hidden [batch, length, d_model], weight [vocab, d_model]) such that the logits are
        hidden @ weight^T (for `loss.chunked_loss_and_metrics`).

        decode=True: after the call that creates the cache, each call is one step with length 1
        (the newest token and its position) on unpacked rows (segmentation None)."""
        cfg = self.config
        x = self.embed(decoder_input) + PositionalEncoding(cfg, name="positions")(positions)
        x = Dropout(cfg.dropout_rate)(x, deterministic)
        x = constrain(x, (BATCH, LENGTH, EMBED))
        if decode:
            if segmentation is not None:
                raise ValueError("Incremental decoding takes unpacked rows: no segmentation.")
            self_mask = self._decode_self_mask(decoder_input)
        else:
            self_mask = self_attention_mask(decoder_input, segmentation, causal=True)
        # Decoding has no backward pass to save memory for.
        layer = DecoderLayer if decode else rematerialized(DecoderLayer, cfg, (5, 6))
        for i in range(cfg.num_decoder_layers):
            x = layer(cfg, cross_attention=encoded is not None, name=f"layer_{i}")(
                x, self_mask, encoded, cross_mask, deterministic, decode
            )
        if cfg.normalization == "pre":
            x = layer_norm(cfg, "final_norm")(x)
        if output not in ("logits", "hidden"):
            raise ValueError(f'output must be "logits" or "hidden", not {output!r}.')
        projection = None if cfg.tie_output_embedding else OutputProjection(cfg, name="logits")
        if output == "hidden":
            weight = self.embed.embedding if projection is None else projection.kernel.T
            return x, weight
        logits = self.embed.attend(x) if projection is None else projection(x)
        return constrain(logits, (BATCH, LENGTH, "activation_vocab"))

    def _decode_self_mask(self, decoder_input: Array) -> Array | AttentionMask:
        """Self-attention mask of one decode step, [batch, 1, 1, max_length]: the new token
        [batch, 1] against every token fed so far.

        The attention cache alone would make it causal; caching the tokens too masks PAD
        queries and keys exactly as the full model does, so both give the same logits. The
        call that creates the cache gets the full model's mask for its [batch, max_length]."""
        is_initialized = self.has_variable("cache", "cached_tokens")
        tokens = self.variable(
            "cache", "cached_tokens", jnp.full, decoder_input.shape, PAD_ID, jnp.int32
        )
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not is_initialized:
            return self_attention_mask(decoder_input, None, causal=True)
        tokens.value = lax.dynamic_update_slice_in_dim(
            tokens.value, decoder_input.astype(jnp.int32), cache_index.value, axis=1
        )
        cache_index.value += 1
        # Slots not fed yet still hold PAD, so the padding mask is also the causal one.
        return padding_mask(decoder_input, tokens.value, PAD_ID)


class Transformer(nn.Module):
    """Encoder-decoder for translation: source tokens -> next-token logits for the target."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        if cfg.share_embeddings:
            self.embed = Embed(cfg.vocab_size, cfg)
            source_embed = target_embed = self.embed
        else:
            self.source_embed = Embed(cfg.vocab_size, cfg)
            self.target_embed = Embed(cfg.vocab_size, cfg)
            source_embed, target_embed = self.source_embed, self.target_embed
        self.encoder = Encoder(cfg, source_embed)
        self.decoder = Decoder(cfg, target_embed)

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
        output: str = "logits",
    ) -> Array | tuple[Array, Array]:
        """encoded: [batch, src_len, d_model]; inputs: [batch, src_len] (for its padding);
        decoder_input: [batch, tgt_len]. Returns logits [batch, tgt_len, vocab] float32, or
        with output="hidden" (hidden, weight) as `Decoder` does.

        decode=True: incremental decoding with the "cache" collection mutable. The first call
        creates the cache from a [batch, max_length] decoder_input (and projects `encoded` for
        cross-attention); each later call feeds one token, decoder_input and targets_positions
        [batch, 1], and returns its logits [batch, 1, vocab]."""
        if targets_positions is None:
            if decode:
                raise ValueError("Decode steps need targets_positions, the new token's position.")
            targets_positions = default_positions(decoder_input)
        cross_mask = padding_mask(decoder_input, inputs, PAD_ID)
        if targets_segmentation is not None and inputs_segmentation is not None:
            cross_mask = AttentionMask(
                cross_mask & segment_mask(targets_segmentation, inputs_segmentation)
            )
        else:
            cross_mask = AttentionMask(cross_mask, lengths(decoder_input), lengths(inputs))
        return self.decoder(
            decoder_input,
            targets_positions,
            targets_segmentation,
            encoded,
            cross_mask,
            deterministic,
            decode,
            output,
        )

    def __call__(
        self,
        inputs: Array,
        targets: Array,
        inputs_positions: Array | None = None,
        targets_positions: Array | None = None,
        inputs_segmentation: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
        output: str = "logits",
    ) -> Array | tuple[Array, Array]:
        """inputs: [batch, src_len]; targets: [batch, tgt_len] (teacher forcing).
        Returns logits [batch, tgt_len, vocab] float32 predicting `targets` (output="hidden":
        the decoder's (hidden, weight), as `Decoder` returns them)."""
        if targets_positions is None:
            targets_positions = default_positions(targets)
        encoded = self.encode(inputs, inputs_positions, inputs_segmentation, deterministic)
        return self.decode(
            encoded,
            inputs,
            shift_right(targets, targets_positions),
            targets_positions,
            inputs_segmentation,
            targets_segmentation,
            deterministic,
            output=output,
        )


class DecoderOnlyLM(nn.Module):
    """GPT-style language model: the decoder stack without encoder-decoder attention."""

    config: ModelConfig

    def setup(self) -> None:
        self.embed = Embed(self.config.vocab_size, self.config)
        self.decoder = Decoder(self.config, self.embed)

    def __call__(
        self,
        targets: Array,
        targets_positions: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
        output: str = "logits",
    ) -> Array | tuple[Array, Array]:
        """targets: [batch, length]. Returns logits [batch, length, vocab] predicting them
        (output="hidden": the decoder's (hidden, weight), as `Decoder` returns them)."""
        if targets_positions is None:
            targets_positions = default_positions(targets)
        return self.decode(
            shift_right(targets, targets_positions),
            targets_positions,
            targets_segmentation,
            deterministic,
            output=output,
        )

    def decode(
        self,
        decoder_input: Array,
        targets_positions: Array | None = None,
        targets_segmentation: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        output: str = "logits",
    ) -> Array | tuple[Array, Array]:
        """decoder_input: [batch, length], already shifted right (BOS first).
        Returns logits [batch, length, vocab] float32 (or (hidden, weight), as `Decoder`).

        decode=True: incremental decoding as in `Transformer.decode`, without an encoder."""
        if targets_positions is None:
            if decode:
                raise ValueError("Decode steps need targets_positions, the new token's position.")
            targets_positions = default_positions(decoder_input)
        return self.decoder(
            decoder_input,
            targets_positions,
            targets_segmentation,
            None,
            None,
            deterministic,
            decode,
            output,
        )


def build_model(config: ModelConfig) -> nn.Module:
    """The model that `config.kind` names."""
    if config.vocab_size <= 0:
        raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) first.")
    return Transformer(config) if config.kind == "encoder_decoder" else DecoderOnlyLM(config)
