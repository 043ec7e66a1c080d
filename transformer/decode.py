"""Greedy decoding, sampling and beam search with a key/value cache, each inside one jit.

The encoder runs once. The decoder then runs one token per step (`decode=True`): each layer
appends the new position's keys and values to its cache and attends over the cache, and the
encoder output's cross-attention keys and values are projected once, when the cache is made.
A step thus costs one position, not the whole output buffer; the cache itself grows through
static phases (16, 32, 64, ... positions, `cache_lengths`), so a step attends over only as
many positions as its phase holds. The loop stops as soon as every sentence has produced
EOS (greedy, sampling) or can no longer improve (beam search), or has reached its limit of
output tokens (section 6.1: its input length + 50).
Greedy decoding and sampling share that loop and differ only in how a step's logits become
a token: the argmax, or a draw from the temperature-scaled, top-k / top-p filtered softmax.

Beam search (section 6.1: beam 4, length penalty alpha = 0.6) runs `beam` hypotheses per
sentence as `batch * beam` decoder rows, so the cache is the greedy one with more rows,
reordered after every step to follow the hypotheses that survive; a sentence's hypotheses
share its one copy of the cross-attention keys and values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from transformer import cpu
from transformer.config import EXTRA_OUTPUT_TOKENS
from transformer.masks import row_lengths
from transformer.model import DecoderOnlyLM, EncoderDecoder
from transformer.special_tokens import BOS_ID, EOS_ID, PAD_ID

Array = jax.Array
Cache = Any  # The "cache" collection: a pytree of per-layer keys, values and indices.
# (token [batch, 1], position [batch, 1], cache) -> (logits [batch, vocab], cache)
StepFn = Callable[[Array, Array, Cache], tuple[Array, Cache]]
# (logits [batch, vocab], step int32 []) -> the chosen tokens [batch].
ChooseFn = Callable[[Array, Array], Array]


def init_cache(
    model: EncoderDecoder | DecoderOnlyLM,
    params: Any,
    batch: int,
    max_length: int,
    encoded: Array | None = None,
    inputs: Array | None = None,
) -> Cache:
    """An empty cache for `batch` rows of up to `max_length` decoded tokens.

    For an encoder-decoder it also holds what its decoder keeps of `encoded` [batch,
    src_len, d_model], whose padding `inputs` [batch, src_len] gives (the Transformer's
    cross-attention keys and values, the recurrent decoder's first states); both are then
    required. Under jit only those projections are computed: the pass that sizes the cache
    has no other output that is used.
    """
    dummy = jnp.full((batch, max_length), BOS_ID, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(max_length), dummy.shape)
    if isinstance(model, EncoderDecoder):
        if encoded is None or inputs is None:
            raise ValueError("An encoder-decoder's cache needs `encoded` and `inputs`.")
        args, method = (encoded, inputs, dummy, positions), EncoderDecoder.decode
    else:
        args, method = (dummy, positions), DecoderOnlyLM.decode
    _, state = model.apply({"params": params}, *args, decode=True, method=method, mutable=["cache"])
    return state["cache"]


def cache_lengths(max_length: int) -> list[int]:
    """The lengths the cache grows through while up to `max_length` tokens are decoded: 16,
    32, 64, ... while the next phase would be at least half as long, then `max_length`. Each
    phase of the loop reads, writes and (beam search) reorders only as many positions as its
    cache holds, not the whole output buffer: most outputs end long before their limit of
    input length + 50. (Every phase compiles the loop body once more.)"""
    lengths = [16]
    while lengths[-1] * 1.5 <= max_length:
        lengths.append(2 * lengths[-1])
    return [*lengths[:-1], max_length]


# The cache leaves with a position axis: the decoder's tokens so far (model.py) and
# self-attention's keys and values (layers.py), with the value that marks a slot unfilled.
_GROWING = {"cached_tokens": (1, PAD_ID), "cached_key": (2, 0), "cached_value": (2, 0)}


def grow_cache(cache: Cache, length: int) -> Cache:
    """`cache` with room for `length` positions: its position axes padded with unfilled slots
    (cross-attention's keys and values, over the source, stay as they are)."""

    def grow(path: tuple[Any, ...], x: Array) -> Array:
        name = getattr(path[-1], "key", None)
        if name not in _GROWING or _per_sentence(path, x) or x.shape[_GROWING[name][0]] == length:
            return x
        axis, fill = _GROWING[name]
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths, constant_values=fill)

    return jax.tree_util.tree_map_with_path(grow, cache)


def output_limits(inputs: Array, max_length: int, extra: int | None = EXTRA_OUTPUT_TOKENS) -> Array:
    """[batch] int32: how many tokens each row of `inputs` [batch, src_len] may produce, its
    input length (EOS included) plus `extra` (section 6.1: 50) but at most `max_length`, the
    output buffer; `max_length` for every row where `extra` is None."""
    if extra is None:
        return jnp.full(inputs.shape[:1], max_length, jnp.int32)
    if extra < 0:
        raise ValueError(f"extra must be >= 0 (tokens beyond the input length), got {extra}")
    return jnp.minimum(row_lengths(inputs) + extra, max_length)


def greedy_decode(
    model: EncoderDecoder,
    params: Any,
    inputs: Array,
    max_length: int,
    extra: int | None = EXTRA_OUTPUT_TOKENS,
    min_length: int = 0,
    no_repeat_ngram: int = 0,
) -> Array:
    """inputs: [batch, src_len] -> output ids [batch, max_length] int32, PAD after EOS; each
    row stops at EOS or after its `output_limits(inputs, max_length, extra)` tokens,
    produces at least `min_length` tokens before EOS and, for `no_repeat_ngram` n > 0, no
    n-gram twice (`no_repeated_ngrams`)."""
    encoded = model.apply({"params": params}, inputs, method=EncoderDecoder.encode)
    first = cache_lengths(max_length)[0]
    cache = init_cache(model, params, inputs.shape[0], first, encoded, inputs)
    step = _encoder_decoder_step(model, params, encoded, inputs)
    forced = jnp.full((inputs.shape[0], max_length), PAD_ID, jnp.int32)
    limits = output_limits(inputs, max_length, extra)

    def choose(logits: Array, i: Array) -> Array:
        return _argmax(no_eos_before(min_length, logits, i), i)

    return _decode_loop(step, cache, forced, choose, limits, no_repeat_ngram)


def no_eos_before(min_length: int, scores: Array, step: Array) -> Array:
    """`scores` [..., vocab] with EOS at -inf at output position `step` < `min_length`, so
    that an output has at least `min_length` tokens before its EOS."""
    if min_length <= 0:
        return scores
    eos = jnp.arange(scores.shape[-1]) == EOS_ID
    return jnp.where(eos & (step < min_length), -jnp.inf, scores)


def no_repeated_ngrams(scores: Array, history: Array, step: Array, n: int) -> Array:
    """`scores` [rows, vocab] with -inf for every token that would repeat an n-gram of
    `history` [rows, max_length], the rows' outputs so far (positions before `step`): a
    token that followed the last n - 1 outputs once already (Paulus et al. 2018, section
    2.5, with n = 3). n = 0 bans nothing."""
    if n <= 0:
        return scores
    rows, length = history.shape
    starts = length - n + 1  # Where an n-gram of the buffer may start.
    if starts <= 0:
        return scores
    last = lax.dynamic_slice_in_dim(history, jnp.maximum(step - (n - 1), 0), n - 1, axis=1)
    seen = jnp.arange(starts) + n <= step  # [starts]: the n-gram ends before `step`.
    repeats = jnp.broadcast_to(seen, (rows, starts))
    for k in range(n - 1):  # The n-gram's first n - 1 tokens are the last n - 1 outputs.
        repeats &= history[:, k : k + starts] == last[:, k : k + 1]
    banned = (
        jnp.zeros_like(scores)
        .at[jnp.arange(rows)[:, None], history[:, n - 1 :]]
        .min(jnp.where(repeats, -jnp.inf, 0.0).astype(scores.dtype))
    )
    return scores + banned


def _encoder_decoder_step(
    model: EncoderDecoder, params: Any, encoded: Array, inputs: Array
) -> StepFn:
    """One decoder step of `model` against `encoded` [rows, src_len, d_model], whose padding
    `inputs` [rows, src_len] gives, for a cache of the same rows."""
    return _cached_step(model, params, EncoderDecoder.decode, encoded, inputs)


def _cached_step(model: Any, params: Any, method: Callable, *context: Array) -> StepFn:
    """A StepFn calling `method(*context, token, position, decode=True)` over the cache."""

    def step(token: Array, position: Array, cache: Cache) -> tuple[Array, Cache]:
        logits, state = model.apply(
            {"params": params, "cache": cache},
            *context,
            token,
            position,
            decode=True,
            method=method,
            mutable=["cache"],
        )
        return logits[:, 0], state["cache"]

    return step


def greedy_decode_lm(model: DecoderOnlyLM, params: Any, prompt: Array, max_length: int) -> Array:
    """prompt: [batch, prompt_len <= max_length], PAD-padded at the end of each row ->
    [batch, max_length] int32: each row's prompt, then its greedy continuation, PAD after EOS.
    """
    return _decode_lm(model, params, prompt, max_length, _argmax)


def sample_lm(
    model: DecoderOnlyLM,
    params: Any,
    prompt: Array,
    max_length: int,
    rng: Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Array:
    """Samples a continuation of each row of `prompt` from the language model.

    prompt: [batch, prompt_len <= max_length], PAD-padded at the end of each row ->
    [batch, max_length] int32: each row's prompt, then its sampled continuation, PAD after EOS.

    Each step draws from softmax(filter_logits(logits / temperature, top_k, top_p)), every row
    independently, with the key jax.random.fold_in(rng, step) (step = output position), so a
    given `rng` always gives the same samples. temperature 0 is greedy decoding, exactly
    greedy_decode_lm; top_k 0 and top_p 1 turn those filters off. `temperature`, `top_k` and
    `top_p` are Python numbers, fixed when the function is traced.
    """
    _check_sampling_args(top_k, top_p, temperature)
    if temperature == 0:
        return _decode_lm(model, params, prompt, max_length, _argmax)

    def choose(logits: Array, step: Array) -> Array:
        # Temperature first, as is usual: the nucleus is that of the distribution sampled.
        logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

    return _decode_lm(model, params, prompt, max_length, choose)


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """logits [..., vocab] -> the same, with every token outside the top-k and the nucleus set
    to -inf; top_k 0 and top_p 1 turn those filters off.

    top_k keeps the `top_k` largest logits, exactly that many (ties go to the lower token id).
    top_p then keeps, of what is left, the smallest set of most likely tokens whose
    probability (softmax of the kept logits) reaches `top_p`: a token stays while the tokens
    more likely than it hold less than `top_p`, so the most likely token always stays.
    """
    _check_sampling_args(top_k, top_p)
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k > 0 else vocab
    if k == vocab and top_p >= 1:
        return logits
    flat = logits.reshape(-1, vocab)
    # One sort serves both filters: the nucleus is a prefix of the top k in descending order.
    values, index = lax.top_k(flat, k)  # [rows, k]
    keep = jnp.ones(values.shape, bool)
    if top_p < 1:
        probs = jax.nn.softmax(values.astype(jnp.float32), axis=-1)
        mass_before = jnp.pad(jnp.cumsum(probs[:, :-1], axis=-1), ((0, 0), (1, 0)))
        keep = mass_before < top_p
    rows = jnp.arange(flat.shape[0])[:, None]
    kept = jnp.zeros(flat.shape, bool).at[rows, index].set(keep)
    return jnp.where(kept, flat, -jnp.inf).reshape(logits.shape)


def _check_sampling_args(top_k: int, top_p: float, temperature: float = 0.0) -> None:
    # `not x >= 0` rather than `x < 0`, so that NaN is refused too.
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not top_k >= 0:
        raise ValueError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1: no nucleus filter), got {top_p}")


def _argmax(logits: Array, step: Array) -> Array:
    """Greedy decoding's ChooseFn."""
    del step
    return argmax(logits)


@cpu.faster(cpu.blocked_argmax)
def argmax(scores: Array) -> Array:
    """[..., n] -> [...] int32: the index of each row's largest score, the first of ties."""
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


@cpu.faster(cpu.blocked_top_k)
def top_k(scores: Array, k: int) -> tuple[Array, Array]:
    """[rows, n] -> the k largest scores of each row, largest first, and their indices
    [rows, k] int32 (ties: the lower index first), as lax.top_k."""
    return lax.top_k(scores, k)


def _decode_lm(
    model: DecoderOnlyLM, params: Any, prompt: Array, max_length: int, choose: ChooseFn
) -> Array:
    """Continues each row of `prompt` [batch, prompt_len], PAD-padded at the end, with the
    tokens `choose` picks -> [batch, max_length] int32, PAD after EOS."""
    batch, prompt_len = prompt.shape
    if prompt_len > max_length:
        raise ValueError(f"prompts of {prompt_len} tokens do not fit max_length {max_length}")
    cache = init_cache(model, params, batch, cache_lengths(max_length)[0])
    step = _cached_step(model, params, DecoderOnlyLM.decode)
    forced = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, max_length - prompt_len)))
    return _decode_loop(step, cache, forced, choose)


def _decode_loop(
    step: StepFn,
    cache: Cache,
    forced: Array,
    choose: ChooseFn,
    limits: Array | None = None,
    no_repeat_ngram: int = 0,
) -> Array:
    """Runs `step` from BOS at position 0 until every row has EOS or `forced` [batch,
    max_length] is full, turning each step's logits into tokens with `choose`, never one
    that repeats an n-gram of `no_repeat_ngram` tokens. Where `forced` is not PAD its token
    is taken instead (a prompt), so prompts of different lengths decode in one batch. A row
    with a `limits` [batch] entry stops after that many tokens."""
    batch, max_length = forced.shape
    limits = _limits_or(limits, batch, max_length)

    def cond(carry: tuple[Array, ...]) -> Array:
        i, _, _, done, _ = carry
        return (i < max_length) & ~jnp.all(done)

    def body(carry: tuple[Array, ...]) -> tuple[Array, ...]:
        i, token, tokens, done, cache = carry
        # Step i reads output i-1 (BOS at i = 0) at position i and predicts output i.
        position = jnp.full((batch, 1), i, jnp.int32)
        logits, cache = step(token[:, None], position, cache)  # [batch, vocab]
        logits = no_repeated_ngrams(logits, tokens, i, no_repeat_ngram)
        forced_i = forced[:, i]
        token = jnp.where(forced_i != PAD_ID, forced_i, choose(logits, i))
        token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, i, axis=1)
        return i + 1, token, tokens, done | (token == EOS_ID) | (i + 1 >= limits), cache

    carry = (
        jnp.int32(0),
        jnp.full((batch,), BOS_ID, jnp.int32),
        jnp.full((batch, max_length), PAD_ID, jnp.int32),
        limits <= 0,
        cache,
    )
    for length in cache_lengths(max_length):
        carry = (*carry[:4], grow_cache(carry[4], length))
        carry = jax.lax.while_loop(lambda c, n=length: cond(c) & (c[0] < n), body, carry)
    return carry[2]


class Search(NamedTuple):
    """How `search` looks for each input's output: greedily for beam_size 1, else by beam
    search with length penalty `alpha` (section 6.1: beam 4, alpha 0.6); at least
    `min_length` tokens before EOS; no n-gram of `no_repeat_ngram` pieces twice (0: off)."""

    beam_size: int = 1
    alpha: float = 0.6
    min_length: int = 0
    no_repeat_ngram: int = 0


def search(
    model: EncoderDecoder, params: Any, inputs: Array, max_length: int, how: Search
) -> Array:
    """inputs: [batch, src_len] -> output ids [batch, max_length] int32, PAD after EOS, by
    greedy decoding or beam search as `how` says; each stops at its input length + 50."""
    if how.beam_size == 1:
        return greedy_decode(
            model, params, inputs, max_length,
            min_length=how.min_length, no_repeat_ngram=how.no_repeat_ngram,
        )  # fmt: skip
    return beam_search(
        model, params, inputs, max_length, how.beam_size, how.alpha,
        min_length=how.min_length, no_repeat_ngram=how.no_repeat_ngram,
    )[0]  # fmt: skip


# ------------------------------------------------------------------------- beam search
class BeamState(NamedTuple):
    """The beam search loop's carry, for `batch` sentences of `beam` hypotheses each.

    Alive hypotheses have not produced EOS and are ranked by total log-probability; finished
    ones have, and are ranked by that log-probability over the length penalty. Both are kept
    best first, and an empty finished slot scores -inf.
    """

    step: Array  # int32 []: tokens decoded so far, which is also the next token's position.
    alive_tokens: Array  # [batch, beam, max_length] int32, PAD from `step` on.
    alive_logp: Array  # [batch, beam] float32.
    finished_tokens: Array  # [batch, beam, max_length] int32, PAD after EOS.
    finished_scores: Array  # [batch, beam] float32.
    cache: Cache  # Leaves [batch * beam, ...], rows in the order of `alive_tokens`.


def length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT's lp(Y) = ((5 + |Y|) / 6) ** alpha, |Y| counting EOS; a score is logp / lp."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(
    model: EncoderDecoder,
    params: Any,
    inputs: Array,
    max_length: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    extra: int | None = EXTRA_OUTPUT_TOKENS,
    min_length: int = 0,
    no_repeat_ngram: int = 0,
) -> tuple[Array, Array]:
    """Beam search for `inputs` [batch, src_len], each sentence's hypotheses at most its
    `output_limits(inputs, max_length, extra)` tokens long (section 6.1: input length + 50),
    at least `min_length` tokens before EOS and, for `no_repeat_ngram` n > 0, holding no
    n-gram twice (`no_repeated_ngrams`).

    Returns the best finished hypothesis of each sentence, tokens [batch, max_length] int32
    with PAD after EOS, and its score [batch] float32, log-probability / length_penalty. A
    sentence that finishes none within its limit gets its best alive hypothesis, scored
    with the penalty of its limit. With beam_size 1 and alpha 0 this is greedy decoding.

    The search stops once no sentence's best finished hypothesis can still be beaten, which
    the bound it uses guarantees only for alpha >= 0.
    """
    if not alpha >= 0:  # NaN too.
        raise ValueError(f"alpha must be >= 0 for the early-stopping bound, got {alpha}")
    batch = inputs.shape[0]
    encoded = model.apply({"params": params}, inputs, method=EncoderDecoder.encode)
    # All beams of a sentence start from its one cache, so it is built per sentence and tiled,
    # but for the keys and values of cross-attention, which they share (and never reorder).
    cache = init_cache(model, params, batch, cache_lengths(max_length)[0], encoded, inputs)
    cache = jax.tree_util.tree_map_with_path(
        lambda path, x: x if _per_sentence(path, x) else _tile_beams(x, beam_size), cache
    )
    step = _encoder_decoder_step(
        model, params, _tile_beams(encoded, beam_size), _tile_beams(inputs, beam_size)
    )
    limits = output_limits(inputs, max_length, extra)

    def cond(state: BeamState) -> Array:
        return (state.step < max_length) & ~jnp.all(_settled(state, alpha, limits))

    def body(state: BeamState) -> BeamState:
        return _beam_step(step, state, alpha, limits, min_length, no_repeat_ngram)

    state = _initial_state(batch, beam_size, max_length, cache)
    for length in cache_lengths(max_length):
        state = state._replace(cache=grow_cache(state.cache, length))
        state = lax.while_loop(lambda s, n=length: cond(s) & (s.step < n), body, state)
    return _best_hypotheses(state, alpha, limits)


def _initial_state(batch: int, beam: int, max_length: int, cache: Cache) -> BeamState:
    # The beams of a sentence are identical at first: only the first may grow, or the top
    # candidates of step 0 would be `beam` copies of the same few tokens.
    alive_logp = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf)
    return BeamState(
        step=jnp.int32(0),
        alive_tokens=jnp.full((batch, beam, max_length), PAD_ID, jnp.int32),
        alive_logp=jnp.broadcast_to(alive_logp, (batch, beam)).astype(jnp.float32),
        finished_tokens=jnp.full((batch, beam, max_length), PAD_ID, jnp.int32),
        finished_scores=jnp.full((batch, beam), -jnp.inf, jnp.float32),
        cache=cache,
    )


def _beam_step(
    step: StepFn,
    state: BeamState,
    alpha: float,
    limits: Array | None = None,
    min_length: int = 0,
    no_repeat_ngram: int = 0,
) -> BeamState:
    """Extends every alive hypothesis by one token and keeps the best of the results; a
    sentence that has reached its `limits` [batch] entry of tokens keeps its hypotheses."""
    batch, beam, max_length = state.alive_tokens.shape
    i = state.step
    previous = lax.dynamic_index_in_dim(
        state.alive_tokens, jnp.maximum(i - 1, 0), axis=2, keepdims=False
    )
    last = jnp.where(i == 0, BOS_ID, previous)  # [batch, beam]
    position = jnp.full((batch * beam, 1), i, jnp.int32)
    logits, cache = step(_flatten_beams(last)[:, None], position, state.cache)

    def allowed(scores: Array) -> Array:
        scores = no_eos_before(min_length, scores, i)
        return no_repeated_ngrams(scores, _flatten_beams(state.alive_tokens), i, no_repeat_ngram)

    # Each hypothesis ends at most once among the candidates (one EOS), so 2 * beam of them
    # always leave `beam` that go on.
    top_logp, parent, token = _best_extensions(logits, state.alive_logp, 2 * beam, allowed)
    tokens = _gather_beams(state.alive_tokens, parent)
    tokens = lax.dynamic_update_index_in_dim(tokens, token, i, axis=2)
    ended = token == EOS_ID

    alive_logp, keep = lax.top_k(jnp.where(ended, -jnp.inf, top_logp), beam)
    cache = _reorder_cache(cache, _gather_beams(parent, keep))

    # Only an EOS among the best `beam` candidates ends a hypothesis: one ranked lower would
    # not have been in a beam of `beam`. Taking all 2 * beam (as tensor2tensor does) would let
    # beam 1 end on a runner-up EOS, so it would no longer be greedy decoding.
    scores = jnp.where(ended, top_logp / length_penalty(i + 1, alpha), -jnp.inf)[:, :beam]
    finished_scores, best = lax.top_k(jnp.concatenate([state.finished_scores, scores], 1), beam)
    finished_tokens = jnp.concatenate([state.finished_tokens, tokens[:, :beam]], 1)
    # The batch goes on for the others; the rows of a sentence past its limit stay as they were.
    grows = i < _limits_or(limits, batch, max_length)  # [batch]

    def where_grows(new: Array, old: Array) -> Array:
        return jnp.where(grows.reshape((batch,) + (1,) * (new.ndim - 1)), new, old)

    return BeamState(
        step=i + 1,
        alive_tokens=where_grows(_gather_beams(tokens, keep), state.alive_tokens),
        alive_logp=where_grows(alive_logp, state.alive_logp),
        finished_tokens=where_grows(_gather_beams(finished_tokens, best), state.finished_tokens),
        finished_scores=where_grows(finished_scores, state.finished_scores),
        cache=cache,
    )


def _best_extensions(
    logits: Array, alive_logp: Array, count: int, allowed: Callable[[Array], Array]
) -> tuple[Array, Array, Array]:
    """The `count` best one-token extensions of each sentence's hypotheses: their
    log-probabilities [batch, count] (best first), parents and tokens [batch, count], among
    the tokens `allowed` leaves above -inf.

    logits: [batch * beam, vocab]; alive_logp: [batch, beam]. The same as top_k over
    alive_logp + log_softmax(logits), [batch, beam * vocab], ties included, without making
    that array: within a row the order of the logits is that of the scores, so only each
    row's best `count` can be among them (half the cost of a CPU beam step's bookkeeping)."""
    batch, beam = alive_logp.shape
    row_max = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    # log_softmax's normaliser, read off the logits as they are: subtracting the maximum
    # from the whole [rows, vocab] array first would write it once more.
    log_normalizer = jnp.log(jnp.sum(jnp.exp(logits - row_max), axis=-1, keepdims=True))
    per_row = min(count, logits.shape[-1])  # A whole row where the vocabulary is smaller.
    top, token = top_k(allowed(logits), per_row)  # [rows, per_row]
    scores = _unflatten_beams(top - row_max - log_normalizer, beam) + alive_logp[..., None]
    best, index = lax.top_k(scores.reshape(batch, -1), count)
    token = jnp.take_along_axis(_unflatten_beams(token, beam).reshape(batch, -1), index, axis=1)
    return best, index // per_row, token


def _limits_or(limits: Array | None, batch: int, max_length: int) -> Array:
    """`limits` [batch], or `max_length` for every sentence where it is None."""
    return jnp.full((batch,), max_length, jnp.int32) if limits is None else limits


def _settled(state: BeamState, alpha: float, limits: Array | None = None) -> Array:
    """[batch] bool: the sentence has reached its `limits` entry of tokens, or no alive
    hypothesis can still beat its best finished one (the one beam_search returns).

    A hypothesis' log-probability only falls as it grows, and for alpha >= 0 its penalty is
    largest at its limit L, so logp / lp(L) bounds whatever score it may finish with. An
    empty finished slot scores -inf, so a sentence settles that way only once one finished.
    """
    batch, _, max_length = state.alive_tokens.shape
    limits = _limits_or(limits, batch, max_length)
    best_possible = state.alive_logp[:, 0] / length_penalty(limits, alpha)
    return (state.step >= limits) | (best_possible < state.finished_scores[:, 0])


def _best_hypotheses(
    state: BeamState, alpha: float, limits: Array | None = None
) -> tuple[Array, Array]:
    """-> (tokens [batch, max_length], scores [batch]) of each sentence's best hypothesis,
    the best alive one, scored with the penalty of its limit, where none finished."""
    batch, _, max_length = state.alive_tokens.shape
    limits = _limits_or(limits, batch, max_length)
    finished = jnp.isfinite(state.finished_scores[:, 0])
    tokens = jnp.where(finished[:, None], state.finished_tokens[:, 0], state.alive_tokens[:, 0])
    alive_score = state.alive_logp[:, 0] / length_penalty(limits, alpha)
    return tokens, jnp.where(finished, state.finished_scores[:, 0], alive_score)


def _tile_beams(x: Array, beam: int) -> Array:
    """[batch, ...] -> [batch * beam, ...]: each row repeated `beam` times, consecutively."""
    return jnp.repeat(x, beam, axis=0)


def _flatten_beams(x: Array) -> Array:
    """[batch, beam, ...] -> [batch * beam, ...], the decoder's rows."""
    return x.reshape((x.shape[0] * x.shape[1], *x.shape[2:]))


def _unflatten_beams(x: Array, beam: int) -> Array:
    """[batch * beam, ...] -> [batch, beam, ...]."""
    return x.reshape((x.shape[0] // beam, beam, *x.shape[1:]))


def _gather_beams(x: Array, index: Array) -> Array:
    """x: [batch, n, ...]; index: [batch, m] into n -> [batch, m, ...], per sentence."""
    return jax.vmap(lambda rows, i: rows[i])(x, index)


def _reorder_cache(cache: Cache, parent: Array) -> Cache:
    """Rows [batch * beam, ...] of every cache leaf taken from the hypotheses `parent`
    [batch, beam] continue. The step counters (scalars) are shared by all rows."""
    beam = parent.shape[1]

    def reorder(path: tuple[Any, ...], x: Array) -> Array:
        if _per_sentence(path, x):
            return x
        return _flatten_beams(_gather_beams(_unflatten_beams(x, beam), parent))

    return jax.tree_util.tree_map_with_path(reorder, cache)


def _per_sentence(path: tuple[Any, ...], x: Array) -> bool:
    """Whether a cache leaf is one per sentence, shared by its hypotheses: the step counters
    (scalars) and cross-attention's keys and values (the encoder's, the same for every
    hypothesis; the layer attends each sentence's hypotheses to them together)."""
    return x.ndim == 0 or any(getattr(k, "key", None) == "cross_attention" for k in path)
