"""The recurrent baseline the paper argues against: a bidirectional LSTM encoder and an LSTM
decoder with global attention over the encoder states (Luong, Pham and Manning 2015,
"Effective Approaches to Attention-based Neural Machine Translation", section 3.1).

    encoder:  h̄_s = [LSTM→(x_1..s); LSTM←(x_s..n)]        (d_model/2 each way, N layers)
    decoder:  h_t = LSTM(y_t-1, h_t-1)                      (d_model, N layers)
              a_t = softmax(score(h_t, h̄_s)),  c_t = Σ_s a_t(s) h̄_s
              h̃_t = tanh(W_c [c_t; h_t]),      p(y_t) = softmax(E h̃_t)

The score is Luong's "general" h_t^T W_a h̄_s, divided by sqrt(d_model) as the Transformer's
dot products are (a rescaling of W_a that keeps the first scores near 1). Without Luong's
input feeding (section 3.3), the attention sits above the recurrence, so a training step runs
the decoder's LSTMs over all target positions first and then attends for all of them at once.
The decoder's first state is tanh(W h̄←_1), the backward encoder's state at the first source
token (Bahdanau et al. 2015, appendix A.2.2), one projection per layer.

Everything else is the Transformer's: the shared, sqrt(d_model)-scaled embedding and tied
output projection (section 3.4, no positional encoding: the recurrence gives order), dropout
between layers, the loss and the decoding API. `encode` and `decode` take the Transformer's
arguments; with `decode=True` the cache is each decoder layer's LSTM state (c, h).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.config import ModelConfig
from transformer.layers import (
    Dropout,
    compute_dtype,
    dense,
    dot_product_attention,
    tied_logits,
)
from transformer.masks import AttentionMask, row_lengths
from transformer.sharding import BATCH, EMBED, LENGTH, VOCAB, constrain

Array = jax.Array
Carry = tuple[Array, Array]  # An LSTM's (c, h), each [batch, hidden].


def lstm(config: ModelConfig, hidden: int, name: str, reverse: bool = False) -> nn.RNN:
    """An LSTM layer over [batch, length, features] (Flax's fused-gate cell, scanned). Its
    kernels are split over "mlp" (tensor) only: with their input axis over fsdp as well, XLA
    computed wrong gradients inside the scan on a data x fsdp x tensor mesh (tested)."""
    names = (None, "mlp")
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names)
    recurrent_init = nn.with_logical_partitioning(nn.initializers.orthogonal(), names)
    cell = nn.OptimizedLSTMCell(
        hidden,
        dtype=compute_dtype(config),
        kernel_init=init,
        recurrent_kernel_init=recurrent_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
        name=name,  # The cell holds the parameters; nn.RNN scans it and holds none.
    )
    return nn.RNN(cell, reverse=reverse, keep_order=True)


def scaled_embedding(config: ModelConfig, table: nn.Embed, tokens: Array) -> Array:
    """tokens [batch, length] -> embedding * sqrt(d_model) [batch, length, d_model]."""
    x = table(tokens) * jnp.asarray(math.sqrt(config.d_model), compute_dtype(config))
    return constrain(x, (BATCH, LENGTH, EMBED))


class RecurrentEncoder(nn.Module):
    """Embedding, then N bidirectional LSTM layers with dropout on each layer's input."""

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
        """tokens [batch, src_len] (PAD at the end) -> states h̄ [batch, src_len, d_model]:
        the forward half read left to right, the backward half right to left from each
        row's last real token. `positions` are unused (the recurrence counts)."""
        cfg = self.config
        refuse_packed(segmentation)
        x = scaled_embedding(cfg, self.embedding, tokens)
        lengths = row_lengths(tokens)
        for i in range(cfg.num_encoder_layers):
            x = Dropout(cfg.dropout_rate)(x, deterministic)
            x = BidirectionalLayer(cfg, name=f"layer_{i}")(x, lengths)
        return Dropout(cfg.dropout_rate)(x, deterministic)


class BidirectionalLayer(nn.Module):
    """Two LSTMs of d_model / 2, one reading each way, their states concatenated."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, lengths: Array) -> Array:
        """x [batch, length, features], lengths [batch] -> [batch, length, d_model]."""
        half = self.config.d_model // 2
        forward = lstm(self.config, half, "forward")
        backward = lstm(self.config, half, "backward", reverse=True)
        both = nn.Bidirectional(forward, backward)(x, seq_lengths=lengths)
        return constrain(both, (BATCH, LENGTH, EMBED))


class GlobalAttention(nn.Module):
    """Luong's global attention with the "general" score, as one head of the Transformer's
    scaled dot product: queries h_t W_a, keys and values the encoder states h̄_s."""

    config: ModelConfig

    @nn.compact
    def __call__(self, states: Array, encoded: Array, mask: Array) -> Array:
        """states h_t [batch, tgt_len, d_model]; encoded h̄ [batch, src_len, d_model]; mask
        [batch, 1, tgt_len, src_len] -> attentional states h̃_t [batch, tgt_len, d_model]."""
        cfg = self.config
        query = dense(cfg, cfg.d_model, ("embed", "kv"), use_bias=False, name="query")(states)
        # One head: [batch, length, 1, d_model], the layout the Transformer's heads use.
        query, key = query[:, :, None], encoded[:, :, None].astype(query.dtype)
        context, weights = dot_product_attention(query, key, key, mask)
        # For attention maps and the explorer, as MultiHeadAttention sows them.
        self.sow("intermediates", "attention_weights", weights)
        for name, vectors in (("queries", query), ("keys", key), ("values", key)):
            self.sow("intermediates", name, vectors)
        both = jnp.concatenate([context[:, :, 0], states.astype(query.dtype)], axis=-1)
        mixed = dense(cfg, cfg.d_model, ("mlp", "embed"), use_bias=False, name="output")(both)
        return constrain(jnp.tanh(mixed), (BATCH, LENGTH, EMBED))


class RecurrentDecoderLayer(nn.Module):
    """Dropout, one LSTM layer and, on the top layer, the global attention."""

    config: ModelConfig
    top: bool

    @nn.compact
    def __call__(
        self, x: Array, carry: Carry, encoded: Array, cross_mask: Array, deterministic: bool
    ) -> tuple[Carry, Array]:
        """x [batch, tgt_len, d_model] from the state `carry` -> (the state after the last
        position, [batch, tgt_len, d_model])."""
        cfg = self.config
        x = Dropout(cfg.dropout_rate)(x, deterministic)
        carry, x = lstm(cfg, cfg.d_model, "lstm")(x, initial_carry=carry, return_carry=True)
        if self.top:
            x = GlobalAttention(cfg, name="cross_attention")(x, encoded, cross_mask)
        return carry, constrain(x, (BATCH, LENGTH, EMBED))


class RecurrentDecoder(nn.Module):
    """Embedding, N LSTM layers, global attention, dropout, the pre-softmax projection."""

    config: ModelConfig
    embedding: nn.Embed

    @nn.compact
    def __call__(
        self,
        decoder_input: Array,
        positions: Array | None,
        segmentation: Array | None,
        encoded: Array,
        cross_mask: AttentionMask,
        deterministic: bool,
        decode: bool = False,
    ) -> Array:
        """decoder_input [batch, tgt_len], shifted right; encoded [batch, src_len, d_model]
        -> logits [batch, tgt_len, vocab] float32. `positions` are unused (the recurrence
        counts). decode=True: the call that creates the cache starts every layer's state
        from `encoded`; each later call feeds one token [batch, 1] and advances them."""
        cfg = self.config
        refuse_packed(segmentation)
        stepping = decode and self.has_variable("cache", "carries")
        carries = self.get_variable("cache", "carries") if stepping else self.first_states(encoded)
        x = scaled_embedding(cfg, self.embedding, decoder_input)
        last = []
        for i in range(cfg.num_decoder_layers):
            layer = RecurrentDecoderLayer(
                cfg, top=i == cfg.num_decoder_layers - 1, name=f"layer_{i}"
            )
            carry, x = layer(x, carries[i], encoded, cross_mask.dense, deterministic)
            last.append(carry)
        if decode:  # The creating call stores the first states, a step the ones after it.
            self.put_variable("cache", "carries", tuple(last) if stepping else carries)
        x = Dropout(cfg.dropout_rate)(x, deterministic)
        if cfg.tie_output_embedding:
            logits = tied_logits(x, self.embedding)
        else:
            project = dense(cfg, cfg.vocab_size, ("embed", "vocab"), use_bias=False, name="logits")
            logits = project(x)
        return constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))

    def first_states(self, encoded: Array) -> tuple[Carry, ...]:
        """Each layer's (c, h) before the first target token: c = 0, h = tanh(W h̄←_1), from
        the backward encoder's state at the first source token [batch, d_model / 2]."""
        cfg = self.config
        first = encoded[:, 0, cfg.d_model // 2 :]
        states = []
        for i in range(cfg.num_decoder_layers):
            project = dense(cfg, cfg.d_model, ("kv", "embed"), name=f"initial_state_{i}")
            h = constrain(jnp.tanh(project(first)), (BATCH, EMBED))
            states.append((jnp.zeros_like(h), h))
        return tuple(states)


def refuse_packed(segmentation: Array | None) -> None:
    """A recurrence would carry its state from one packed pair into the next."""
    if segmentation is not None:
        raise ValueError(
            "The recurrent model reads one pair per row; packed rows (data.batching='packed') "
            "would carry its state across pairs."
        )
