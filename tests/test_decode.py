"""Incremental (key/value-cached) decoding against the full, non-cached model."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from transformer import sharding
from transformer.config import MeshConfig
from transformer.decode import (
    BeamState,
    _settled,
    beam_search,
    cache_lengths,
    filter_logits,
    greedy_decode,
    greedy_decode_lm,
    grow_cache,
    init_cache,
    length_penalty,
    no_repeated_ngrams,
    output_limits,
    sample_lm,
)
from transformer.layers import MultiHeadAttention
from transformer.masks import AttentionMask, causal_mask
from transformer.model import DecoderOnlyLM, Transformer, shift_right
from transformer.special_tokens import BOS_ID, EOS_ID, PAD_ID

from .model_configs import small_model_config

MAX_LENGTH = 12


def model_config(**overrides):
    # An untied output layer and a small vocabulary: a randomly initialised model then emits
    # varied tokens and EOS, instead of copying its input token as tied embeddings make it do.
    return small_model_config(**{"vocab_size": 8, "tie_output_embedding": False, **overrides})


def init(model, *args, **kwargs):
    return nn.meta.unbox(model.init(jax.random.key(0), *args, **kwargs))


def random_sources(vocab_size, lengths, seed=3):
    """[len(lengths), max(lengths)]: random words, EOS last, PAD after."""
    width = max(lengths)
    words = jax.random.randint(jax.random.key(seed), (len(lengths), width), 4, vocab_size)
    col, length = np.arange(width), np.asarray(lengths)[:, None]
    return jnp.asarray(np.where(col < length - 1, words, np.where(col == length - 1, EOS_ID, 0)))


SRC_LENGTHS = [7, 6, 5, 3, 2, 1, 7, 4]


def repeating_tokens(output, n):
    """The tokens that would repeat an n-gram of `output` (a list) if they came next."""
    if n <= 0 or len(output) < n:
        return set()
    last = output[len(output) - n + 1 :]
    return {output[j + n - 1] for j in range(len(output) - n + 1) if output[j : j + n - 1] == last}


def reference_greedy(model, variables, inputs, max_length, min_length=0, no_repeat_ngram=0):
    """Greedy decoding by re-running the whole model on every prefix (no cache); EOS is never
    chosen at a position under `min_length`, nor a token that repeats an n-gram of
    `no_repeat_ngram` tokens.

    Each prefix is given as the whole [batch, max_length] buffer, PAD after it: the causal
    mask keeps position i from seeing what follows it, and one shape compiles once."""
    batch = inputs.shape[0]
    tokens = np.full((batch, max_length), PAD_ID, np.int32)
    done = np.zeros(batch, bool)
    full_model = jax.jit(model.apply)
    for i in range(max_length):
        # Targets 0..i (the last a placeholder): shifted right, logits[:, i] predicts target i.
        logits = np.array(full_model(variables, inputs, jnp.asarray(tokens))[:, i])
        if i < min_length:
            logits[:, EOS_ID] = -np.inf
        for row in range(batch):
            logits[row, list(repeating_tokens(tokens[row, :i].tolist(), no_repeat_ngram))] = -np.inf
        next_token = np.where(done, PAD_ID, np.argmax(logits, axis=-1))
        tokens[:, i] = next_token
        done |= next_token == EOS_ID
        if done.all():
            break
    return tokens


def assert_pad_after_eos(tokens):
    for row in np.asarray(tokens):
        eos = np.flatnonzero(row == EOS_ID)
        if eos.size:
            assert np.all(row[eos[0] + 1 :] == PAD_ID), row


@pytest.mark.parametrize("normalization", ["post", "pre"])
def test_cached_greedy_decoding_matches_full_model_argmax(normalization):
    model = Transformer(model_config(normalization=normalization))
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    got = jax.jit(lambda p, x: greedy_decode(model, p, x, MAX_LENGTH))(variables["params"], src)
    assert got.shape == (len(SRC_LENGTHS), MAX_LENGTH) and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, reference_greedy(model, variables, src, MAX_LENGTH))
    assert len(np.unique(got)) > 3  # Not a degenerate model that repeats one token.


def test_decoding_across_the_caches_growth_phases_matches_the_full_model():
    # 48 tokens, EOS held off: every sentence runs through cache lengths 16, 32 and 48.
    length = 48
    assert cache_lengths(length) == [16, 32, 48]
    model = Transformer(model_config(max_len=64))
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    greedy = jax.jit(lambda p, x: greedy_decode(model, p, x, length, extra=None, min_length=length))
    got = greedy(variables["params"], src)
    want = reference_greedy(model, variables, src, length, min_length=length)
    np.testing.assert_array_equal(got, want)

    def beam(size):
        return jax.jit(
            lambda p, x: beam_search(model, p, x, length, size, 0.0, extra=None, min_length=length)
        )(variables["params"], src)

    np.testing.assert_array_equal(beam(1)[0], want)  # Beam 1 is greedy.
    # Beam 3 reorders its cache across the phases: its scores are the full model's
    # log-probabilities of the tokens it returns.
    tokens, scores = beam(3)
    logp, _ = sequence_logp(model, variables, src, tokens)
    np.testing.assert_allclose(scores, logp, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_min_length_keeps_eos_out_of_the_first_tokens_of_greedy_and_beam_search():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    params = variables["params"]
    free = np.asarray(greedy_decode(model, params, src, MAX_LENGTH))
    assert (free[:, :6] == EOS_ID).any()  # Some outputs end early when they may.
    got = jax.jit(lambda p, x: greedy_decode(model, p, x, MAX_LENGTH, min_length=6))(params, src)
    np.testing.assert_array_equal(got, reference_greedy(model, variables, src, MAX_LENGTH, 6))
    for beam_size in (1, 4):
        tokens, _ = jax.jit(
            lambda p, x, b=beam_size: beam_search(model, p, x, MAX_LENGTH, b, 0.0, min_length=6)
        )(params, src)
        assert not (np.asarray(tokens)[:, :6] == EOS_ID).any()
        if beam_size == 1:
            np.testing.assert_array_equal(tokens, got)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeated_ngrams_bans_exactly_the_tokens_that_would_repeat_an_ngram(n):
    rng = np.random.default_rng(n)
    rows, length, vocab = 64, 12, 6
    history = rng.integers(4, vocab, (rows, length)).astype(np.int32)  # Few tokens: many repeats.
    scores = rng.normal(size=(rows, vocab)).astype(np.float32)
    ban = jax.jit(no_repeated_ngrams, static_argnums=3)
    banned_somewhere = False
    for step in range(length + 1):
        # Outputs from `step` on are not yet decoded: whatever they hold must not count.
        got = np.asarray(ban(jnp.asarray(scores), jnp.asarray(history), jnp.int32(step), n))
        for row in range(rows):
            banned = repeating_tokens(history[row, :step].tolist(), n)
            want = scores[row].copy()
            want[list(banned)] = -np.inf
            np.testing.assert_array_equal(got[row], want)
            banned_somewhere |= bool(banned)
    assert banned_somewhere
    np.testing.assert_array_equal(ban(scores, history, jnp.int32(5), 0), scores)


@pytest.mark.parametrize("beam_size", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_greedy_and_beam_search_never_repeat_an_ngram_when_told(beam_size):
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    params = variables["params"]

    def repeats(tokens):
        outputs = [[t for t in row if t not in (PAD_ID, EOS_ID)] for row in np.asarray(tokens)]
        return sum(len(set(itertools.pairwise(o))) < len(o) - 1 for o in outputs)

    assert repeats(greedy_decode(model, params, src, MAX_LENGTH)) > 0  # Free, it repeats.
    got = jax.jit(lambda p, x: greedy_decode(model, p, x, MAX_LENGTH, no_repeat_ngram=2))(
        params, src
    )
    want = reference_greedy(model, variables, src, MAX_LENGTH, no_repeat_ngram=2)
    np.testing.assert_array_equal(got, want)
    assert repeats(got) == 0
    tokens, _ = jax.jit(
        lambda p, x: beam_search(model, p, x, MAX_LENGTH, beam_size, 0.0, no_repeat_ngram=2)
    )(params, src)
    assert repeats(tokens) == 0
    if beam_size == 1:
        np.testing.assert_array_equal(tokens, got)  # Beam 1 is greedy, under the rule too.


def test_after_eos_only_pad_and_unfinished_rows_fill_the_buffer():
    model = Transformer(model_config(normalization="pre"))
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    tokens = np.asarray(greedy_decode(model, variables["params"], src, MAX_LENGTH))
    finished = (tokens == EOS_ID).any(axis=1)
    # The seed gives rows that finish at different steps and at least one that never does.
    assert finished.any() and not finished.all()
    assert len({int(np.argmax(row == EOS_ID)) for row in tokens[finished]}) > 1
    assert_pad_after_eos(tokens)
    assert np.all(tokens[~finished] != PAD_ID)


def test_pad_emitted_before_eos_is_masked_as_in_the_full_model():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    # Make PAD a likely argmax, so the decoder has PAD tokens among its inputs.
    logits_kernel = variables["params"]["decoder"]["logits"]["kernel"]
    variables["params"]["decoder"]["logits"]["kernel"] = logits_kernel.at[:, PAD_ID].set(
        logits_kernel[:, 4]
    )
    got = np.asarray(greedy_decode(model, variables["params"], src, MAX_LENGTH))
    eos = np.where((got == EOS_ID).any(1), np.argmax(got == EOS_ID, 1), MAX_LENGTH)
    assert (got[np.arange(MAX_LENGTH) < eos[:, None]] == PAD_ID).any()
    np.testing.assert_array_equal(got, reference_greedy(model, variables, src, MAX_LENGTH))


TGT = jnp.array(
    [
        [5, 6, 7, 4, 5, 1, 0, 0, 0, 0],
        [4, 4, 1, 0, 0, 0, 0, 0, 0, 0],
        [7, 6, 5, 4, 7, 6, 5, 4, 7, 1],
    ]
)


def step_logits(model, params, cache, decoder_input, decode_args):
    """Feeds decoder_input [batch, length] one token per step; logits [batch, length, vocab]."""
    step = jax.jit(
        lambda cache, token, position: model.apply(
            {"params": params, "cache": cache},
            *decode_args,
            token,
            position,
            decode=True,
            method=type(model).decode,
            mutable=["cache"],
        )
    )
    out = []
    for i in range(decoder_input.shape[1]):
        position = jnp.full((decoder_input.shape[0], 1), i)
        logits, state = step(cache, decoder_input[:, i : i + 1], position)
        cache = state["cache"]
        out.append(logits)
    return jnp.concatenate(out, axis=1)


# Each value once in the default run; every combination in the slow one.
@pytest.mark.parametrize(
    "normalization, tied",
    [("post", False), ("pre", True), *(pytest.param(*c, marks=pytest.mark.slow)
                                     for c in (("post", True), ("pre", False)))],
)  # fmt: skip
def test_cached_step_logits_equal_full_model_logits(normalization, tied):
    model = Transformer(model_config(normalization=normalization, tie_output_embedding=tied))
    src = random_sources(8, SRC_LENGTHS[:3])
    variables = init(model, src, TGT)
    full = model.apply(variables, src, TGT)
    params = variables["params"]
    encoded = model.apply(variables, src, method=Transformer.encode)
    cache = init_cache(model, params, 3, MAX_LENGTH, encoded, src)
    decoder_input = shift_right(TGT, jnp.broadcast_to(jnp.arange(TGT.shape[1]), TGT.shape))
    cached = step_logits(model, params, cache, decoder_input, (encoded, src))
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["post", "pre"])
def test_language_model_cached_step_logits_equal_full_model_logits(normalization):
    model = DecoderOnlyLM(
        model_config(kind="decoder_only", num_encoder_layers=0, normalization=normalization)
    )
    variables = init(model, TGT)
    full = model.apply(variables, TGT)
    cache = init_cache(model, variables["params"], 3, MAX_LENGTH)
    decoder_input = jnp.pad(TGT, ((0, 0), (1, 0)), constant_values=BOS_ID)[:, :-1]
    cached = step_logits(model, variables["params"], cache, decoder_input, ())
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_language_model_greedy_continues_prompts_of_different_lengths():
    model = DecoderOnlyLM(model_config(kind="decoder_only", num_encoder_layers=0))
    variables = init(model, TGT)
    prompts = jnp.array([[5, 6, 7], [4, 0, 0], [0, 0, 0]])
    got = np.asarray(greedy_decode_lm(model, variables["params"], prompts, MAX_LENGTH))
    assert list(got[0, :3]) == [5, 6, 7] and got[1, 0] == 4
    assert_pad_after_eos(got)
    # Reference: after each row's prompt, the full model's argmax on the prefix so far.
    want = np.zeros_like(got)
    want[:, :3] = prompts
    done = np.zeros(3, bool)
    full_model = jax.jit(model.apply)  # Over the whole buffer: causal, as in reference_greedy.
    for i in range(MAX_LENGTH):
        logits = full_model(variables, jnp.asarray(want))
        prompted = (i < 3) & (want[:, i] != PAD_ID)
        want[:, i] = np.where(done, PAD_ID, np.where(prompted, want[:, i], logits[:, i].argmax(-1)))
        done |= want[:, i] == EOS_ID
    np.testing.assert_array_equal(got, want)


def test_cache_shapes_and_parameters_are_those_of_the_full_model():
    cfg = model_config(d_k=3, d_v=5)
    model = Transformer(cfg)
    src = random_sources(8, SRC_LENGTHS[:3])
    variables = init(model, src, TGT)
    encoded = model.apply(variables, src, method=Transformer.encode)
    cache = init_cache(model, variables["params"], 3, MAX_LENGTH, encoded, src)["decoder"]
    assert cache["cached_tokens"].shape == (3, MAX_LENGTH)
    layer = cache["layer_0"]
    assert layer["self_attention"]["cached_key"].shape == (3, cfg.num_heads, MAX_LENGTH, 3)
    assert layer["self_attention"]["cached_value"].shape == (3, cfg.num_heads, MAX_LENGTH, 5)
    assert layer["cross_attention"]["cached_value"].shape == (3, cfg.num_heads, src.shape[1], 5)
    assert layer["cross_attention"]["cached_key"].shape == (3, cfg.num_heads, src.shape[1], 3)
    # decode=True creates the same parameters, so a trained checkpoint decodes.
    lm = DecoderOnlyLM(model_config(kind="decoder_only", num_encoder_layers=0))
    positions = jnp.broadcast_to(jnp.arange(10), TGT.shape)
    decode_init = init(lm, TGT, positions, decode=True, method=DecoderOnlyLM.decode)
    plain = jax.tree.map(jnp.shape, init(lm, TGT)["params"])
    assert jax.tree.map(jnp.shape, decode_init["params"]) == plain


def test_the_cache_grows_through_doubling_lengths_to_the_output_buffer():
    assert cache_lengths(5) == [5] and cache_lengths(23) == [23]
    assert cache_lengths(24) == [16, 24] and cache_lengths(30) == [16, 30]
    assert cache_lengths(80) == [16, 32, 80] and cache_lengths(96) == [16, 32, 64, 96]
    cfg = model_config()
    model = Transformer(cfg)
    src = random_sources(8, SRC_LENGTHS[:3])
    variables = init(model, src, TGT)
    encoded = model.apply(variables, src, method=Transformer.encode)
    cache = init_cache(model, variables["params"], 3, 8, encoded, src)  # Grown to MAX_LENGTH.
    before = cache["decoder"]["layer_0"]
    written = jax.random.normal(jax.random.key(1), before["self_attention"]["cached_key"].shape)
    before["self_attention"]["cached_key"] = written
    grown = grow_cache(cache, MAX_LENGTH)["decoder"]
    keys, values = (grown["layer_0"]["self_attention"][k] for k in ("cached_key", "cached_value"))
    assert keys.shape[2] == values.shape[2] == MAX_LENGTH
    np.testing.assert_array_equal(keys[:, :, :8], written)  # What was cached stays, in place.
    np.testing.assert_array_equal(keys[:, :, 8:], 0.0)
    assert grown["cached_tokens"].shape == (3, MAX_LENGTH)
    np.testing.assert_array_equal(grown["cached_tokens"][:, 8:], PAD_ID)  # Unfilled slots.
    # Cross-attention's keys and values span the source, whatever the output length.
    cross = grown["layer_0"]["cross_attention"]
    assert jax.tree.map(jnp.shape, cross) == jax.tree.map(jnp.shape, before["cross_attention"])


def test_greedy_decoding_on_a_sharded_mesh_matches_a_single_device():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    params = init(model, src, src)["params"]
    single = greedy_decode(model, params, src, MAX_LENGTH)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = list(base.LOGICAL_AXIS_RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        decode = jax.jit(
            lambda p, x: greedy_decode(model, p, x, MAX_LENGTH),
            in_shardings=(None, sharding.batch_sharding(mesh, rules)),
        )
        np.testing.assert_array_equal(decode(params, src), single)


def test_self_attention_cache_alone_keeps_decoding_causal():
    cfg = model_config(d_k=3, d_v=5)
    module = MultiHeadAttention(cfg)
    x = jax.random.normal(jax.random.key(1), (2, 6, cfg.d_model))
    causal = AttentionMask(causal_mask(6))
    params = init(module, x, causal, True)["params"]
    full = module.apply({"params": params}, x, causal, True)
    # Sized by a [batch, max_length] call; later steps pass no mask of their own.
    _, state = module.apply({"params": params}, x, causal, True, True, mutable=["cache"])
    cache, steps = state["cache"], []
    for i in range(6):
        out, state = module.apply(
            {"params": params, "cache": cache},
            x[:, i : i + 1],
            AttentionMask(jnp.ones((2, 1, 1, 6), bool)),
            True,
            True,
            mutable=["cache"],
        )
        cache = state["cache"]
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- beam search
def sequence_logp(model, variables, src, tokens):
    """Full-model (non-cached) log-probability of each row of tokens [batch, length] up to and
    including its first EOS, or of the whole row without one: (logp [batch], length [batch])."""
    tokens = np.asarray(tokens)
    has_eos = (tokens == EOS_ID).any(1)
    length = np.where(has_eos, np.argmax(tokens == EOS_ID, 1) + 1, tokens.shape[1])
    logp = np.asarray(jax.nn.log_softmax(model.apply(variables, src, jnp.asarray(tokens))))
    token_logp = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    return np.where(np.arange(tokens.shape[1]) < length[:, None], token_logp, 0).sum(1), length


def penalised(logp, length, alpha):
    return logp / ((5 + length) / 6) ** alpha


def finished_outputs(vocab_size, max_length):
    """Every output that ends with EOS within max_length tokens, PAD after: [n, max_length]."""
    words = [t for t in range(vocab_size) if t != EOS_ID]
    return np.asarray(
        [
            [*prefix, EOS_ID] + [PAD_ID] * (max_length - n - 1)
            for n in range(max_length)
            for prefix in itertools.product(words, repeat=n)
        ]
    )


def brute_force(model, variables, src, max_length, alpha):
    """Each sentence's best EOS-terminated output, by scoring all of them with the full model:
    (tokens [batch, max_length], penalised scores [batch])."""
    outputs = finished_outputs(model.config.vocab_size, max_length)
    tokens, scores = [], []
    for sentence in np.asarray(src):
        sources = jnp.asarray(np.broadcast_to(sentence, (len(outputs), len(sentence))))
        score = penalised(*sequence_logp(model, variables, sources, outputs), alpha)
        tokens.append(outputs[np.argmax(score)])
        scores.append(score.max())
    return np.stack(tokens), np.asarray(scores)


def jit_beam_search(model, max_length, beam_size=4, alpha=0.6):
    return jax.jit(lambda p, x: beam_search(model, p, x, max_length, beam_size, alpha))


@pytest.mark.parametrize("normalization", ["post", "pre"])
def test_beam_of_one_without_length_penalty_is_greedy_decoding(normalization):
    model = Transformer(model_config(normalization=normalization))
    src = random_sources(8, SRC_LENGTHS)
    params = init(model, src, src)["params"]
    tokens, _ = jit_beam_search(model, MAX_LENGTH, beam_size=1, alpha=0.0)(params, src)
    greedy = greedy_decode(model, params, src, MAX_LENGTH)
    np.testing.assert_array_equal(tokens, greedy)
    # Sentences that finish and sentences that run to the end of the buffer.
    finished = (np.asarray(greedy) == EOS_ID).any(1)
    assert finished.any() and not finished.all()


def test_beam_of_one_is_greedy_also_over_a_large_vocabulary():
    model = Transformer(model_config(vocab_size=4200))
    src = random_sources(4200, SRC_LENGTHS)
    params = init(model, src, src)["params"]
    tokens, _ = jit_beam_search(model, MAX_LENGTH, beam_size=1, alpha=0.0)(params, src)
    np.testing.assert_array_equal(tokens, greedy_decode(model, params, src, MAX_LENGTH))


# Small enough to enumerate every output: 5 non-EOS tokens, so 1 + 5 + 25 + 125 of them.
# A beam that holds every candidate of the last step, 5**3 hypotheses x 6 tokens, is exact.
EXHAUSTIVE_VOCAB, EXHAUSTIVE_LENGTH = 6, 4
EXHAUSTIVE_BEAM = (EXHAUSTIVE_VOCAB - 1) ** (EXHAUSTIVE_LENGTH - 1) * EXHAUSTIVE_VOCAB


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.slow
def test_a_beam_wider_than_all_candidates_finds_the_brute_force_optimum(alpha):
    model = Transformer(model_config(vocab_size=EXHAUSTIVE_VOCAB))
    src = random_sources(EXHAUSTIVE_VOCAB, [5, 3, 6, 2], seed=1)
    variables = init(model, src, src)
    search = jit_beam_search(model, EXHAUSTIVE_LENGTH, EXHAUSTIVE_BEAM, alpha)
    tokens, scores = search(variables["params"], src)
    want_tokens, want_scores = brute_force(model, variables, src, EXHAUSTIVE_LENGTH, alpha)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    assert ((want_tokens == EOS_ID).argmax(1) > 0).any()  # Not only the empty output.


def test_beam_of_four_beats_greedy_and_finds_the_optimum_of_a_confident_model():
    model = Transformer(model_config(normalization="pre"))
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    # Sharper output distributions, as a trained model has: the best outputs then run past
    # a single EOS, and a greedy choice can cost a better continuation.
    variables["params"]["decoder"]["logits"]["kernel"] *= 3.0
    max_length = 5
    tokens, scores = jit_beam_search(model, max_length, alpha=0.0)(variables["params"], src)
    assert_pad_after_eos(tokens)
    optimum_tokens, optimum = brute_force(model, variables, src, max_length, alpha=0.0)
    greedy = greedy_decode(model, variables["params"], src, max_length)
    greedy_logp, _ = sequence_logp(model, variables, src, greedy)
    greedy_finished = (np.asarray(greedy) == EOS_ID).any(1)
    assert greedy_finished.sum() >= 2
    assert np.all(scores[greedy_finished] >= greedy_logp[greedy_finished] - 1e-5)
    assert np.any(scores[greedy_finished] > greedy_logp[greedy_finished] + 1e-3)
    assert np.all(scores <= optimum + 1e-5)
    found = np.isclose(scores, optimum, rtol=1e-5)
    longer_than_eos = (optimum_tokens != PAD_ID).sum(1) > 1
    assert (found & longer_than_eos).sum() >= 2
    np.testing.assert_array_equal(np.asarray(tokens)[found], optimum_tokens[found])


@pytest.mark.parametrize(
    "normalization, alpha",
    [("post", 0.0), ("pre", 0.6), ("post", 2.0),
     *(pytest.param(*c, marks=pytest.mark.slow)
       for c in (("pre", 0.0), ("post", 0.6), ("pre", 2.0)))],
)  # fmt: skip
def test_score_is_the_length_penalised_log_probability_of_the_tokens(normalization, alpha):
    model = Transformer(model_config(normalization=normalization))
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    tokens, scores = jit_beam_search(model, MAX_LENGTH, alpha=alpha)(variables["params"], src)
    assert tokens.shape == (len(SRC_LENGTHS), MAX_LENGTH) and tokens.dtype == jnp.int32
    assert scores.shape == (len(SRC_LENGTHS),) and scores.dtype == jnp.float32
    # Rows without EOS are the best alive hypotheses, of MAX_LENGTH tokens, scored as such.
    logp, length = sequence_logp(model, variables, src, tokens)
    want = logp / ((5 + length) / 6) ** alpha
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(length_penalty(length, alpha), ((5 + length) / 6) ** alpha, 1e-6)


@pytest.mark.slow
def test_a_larger_length_penalty_favours_longer_outputs():
    # Exact search makes this a theorem, not a tendency: maximising logp / lp(|Y|)**alpha,
    # i.e. minimising log(-logp) - alpha * log(lp(|Y|)), the optimal |Y| grows with alpha.
    model = Transformer(model_config(vocab_size=EXHAUSTIVE_VOCAB))
    src = random_sources(EXHAUSTIVE_VOCAB, [5, 3, 6, 2, 4, 6], seed=1)
    params = init(model, src, src)["params"]
    lengths = []
    for alpha in (0.0, 0.6, 3.0):
        search = jit_beam_search(model, EXHAUSTIVE_LENGTH, EXHAUSTIVE_BEAM, alpha)
        tokens = np.asarray(search(params, src)[0])
        lengths.append((tokens != PAD_ID).sum(1))
    assert np.all(lengths[1] >= lengths[0]) and np.all(lengths[2] >= lengths[1])
    assert np.any(lengths[2] > lengths[0])


def test_sentences_that_finish_at_different_steps_decode_as_they_would_alone():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    params = init(model, src, src)["params"]
    search = jit_beam_search(model, MAX_LENGTH)
    tokens, scores = (np.asarray(x) for x in search(params, src))
    assert_pad_after_eos(tokens)
    finished = (tokens == EOS_ID).any(1)
    assert len({int(np.argmax(row == EOS_ID)) for row in tokens[finished]}) > 1
    # The loop runs on until the last sentence settles: the others must not change meanwhile.
    for i in range(len(src)):
        alone_tokens, alone_score = search(params, src[i : i + 1])
        np.testing.assert_array_equal(alone_tokens[0], tokens[i])
        np.testing.assert_allclose(alone_score[0], scores[i], rtol=1e-5)


def test_a_sentence_settles_once_no_alive_hypothesis_can_beat_its_best_finished_one():
    def state(alive_logp, finished_scores):
        batch, beam = len(alive_logp), len(alive_logp[0])
        tokens = jnp.zeros((batch, beam, 10), jnp.int32)
        return BeamState(jnp.int32(3), tokens, jnp.asarray(alive_logp, jnp.float32), tokens,
                         jnp.asarray(finished_scores, jnp.float32), cache=None)  # fmt: skip

    # Alpha 0: a score is the log-probability, which only falls as a hypothesis grows. Row 0
    # can no longer reach -1.0 although it could still enter the finished (above -5.0); row 1
    # may still beat it; row 2 has finished nothing yet.
    rows = state([[-3.0, -4.0], [-0.5, -4.0], [-3.0, -4.0]],
                 [[-1.0, -5.0], [-1.0, -5.0], [-np.inf, -np.inf]])  # fmt: skip
    assert _settled(rows, 0.0).tolist() == [True, False, False]
    # With alpha > 0 the bound divides by the penalty at the limit: -3 / lp(10) > -1.5 here.
    assert float(-3.0 / length_penalty(10, 1.0)) > -1.5
    assert not _settled(state([[-3.0, -4.0]], [[-1.5, -5.0]]), 1.0)[0]


def test_a_sentence_that_finishes_no_hypothesis_returns_its_best_alive_one():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    variables = init(model, src, src)
    tokens, scores = jit_beam_search(model, MAX_LENGTH)(variables["params"], src)
    unfinished = ~(np.asarray(tokens) == EOS_ID).any(1)
    # The seed gives both kinds of sentence in one batch.
    assert unfinished.any() and not unfinished.all()
    logp, _ = sequence_logp(model, variables, src, tokens)
    want = penalised(logp, MAX_LENGTH, 0.6)
    np.testing.assert_allclose(scores[unfinished], want[unfinished], rtol=1e-5)


def test_beam_search_on_a_sharded_mesh_matches_a_single_device():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    params = init(model, src, src)["params"]
    single_tokens, single_scores = jit_beam_search(model, MAX_LENGTH)(params, src)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rules = list(base.LOGICAL_AXIS_RULES)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        search = jax.jit(
            lambda p, x: beam_search(model, p, x, MAX_LENGTH),
            in_shardings=(None, sharding.batch_sharding(mesh, rules)),
        )
        tokens, scores = search(params, src)
    np.testing.assert_array_equal(tokens, single_tokens)
    np.testing.assert_allclose(scores, single_scores, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("beam_size", [1, 4])
def test_each_sentence_stops_at_its_input_length_plus_extra(beam_size):
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS)
    params = init(model, src, src)["params"]
    extra = 3
    limits = np.minimum(np.asarray(SRC_LENGTHS) + extra, MAX_LENGTH)

    def decode(inputs, max_length, extra):
        if beam_size == 1:
            return greedy_decode(model, params, inputs, max_length, extra), None
        return beam_search(model, params, inputs, max_length, beam_size, 0.6, extra)

    tokens, scores = jax.jit(decode, static_argnums=(1, 2))(src, MAX_LENGTH, extra)
    tokens = np.asarray(tokens)
    lengths = np.sum(tokens != PAD_ID, axis=1)
    assert np.all(lengths <= limits), (lengths, limits)
    cut = ~(tokens == EOS_ID).any(1)  # Rows the limit ended, not EOS.
    assert cut.any() and not cut.all()
    np.testing.assert_array_equal(lengths[cut], limits[cut])
    # A sentence decodes as it would alone with its limit as the whole output buffer.
    for i in (0, 3, 5):
        alone, alone_score = decode(src[i : i + 1], int(limits[i]), None)
        np.testing.assert_array_equal(alone[0], tokens[i, : limits[i]])
        if scores is not None:
            np.testing.assert_allclose(alone_score[0], scores[i], rtol=1e-5)


def test_a_negative_extra_length_is_refused():
    with pytest.raises(ValueError, match="extra must be >= 0"):
        output_limits(random_sources(8, SRC_LENGTHS), MAX_LENGTH, -1)


def test_output_limits_are_each_input_length_plus_50_within_the_buffer():
    src = random_sources(8, SRC_LENGTHS)
    np.testing.assert_array_equal(output_limits(src, 256), np.asarray(SRC_LENGTHS) + 50)
    np.testing.assert_array_equal(output_limits(src, 256, 5), np.asarray(SRC_LENGTHS) + 5)
    np.testing.assert_array_equal(
        output_limits(src, 54), np.minimum(np.asarray(SRC_LENGTHS) + 50, 54)
    )
    np.testing.assert_array_equal(output_limits(src, 32, None), [32] * len(SRC_LENGTHS))


def test_a_negative_length_penalty_is_refused():
    model = Transformer(model_config())
    src = random_sources(8, SRC_LENGTHS[:2])
    params = init(model, src, src)["params"]
    with pytest.raises(ValueError, match="alpha"):
        beam_search(model, params, src, MAX_LENGTH, alpha=-0.5)


# ------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def language_model():
    """(model, variables) of a tiny decoder-only LM, initialised once for all sampling tests."""
    model = DecoderOnlyLM(model_config(kind="decoder_only", num_encoder_layers=0))
    return model, init(model, TGT)


def jit_sample(model, max_length, **kwargs):
    return jax.jit(lambda p, x, rng: sample_lm(model, p, x, max_length, rng, **kwargs))


# Rows of every prompt length, several with the same prompt, the last with none.
SAMPLE_PROMPTS = jnp.array([[5, 6, 7], [5, 6, 7], [5, 6, 7], [4, 0, 0], [4, 0, 0], [0, 0, 0]])


def probs_logits(*rows):
    """Logits [len(rows), vocab] whose softmax is each row of probabilities."""
    return jnp.log(jnp.asarray(rows, jnp.float32))


def kept(logits):
    """The token ids that filter_logits kept, per row."""
    return [set(np.flatnonzero(np.isfinite(row)).tolist()) for row in np.asarray(logits)]


def test_filter_logits_top_k_keeps_the_k_largest_logits_unchanged():
    logits = jax.random.normal(jax.random.key(0), (5, 11))
    for k in (1, 2, 5, 10, 11):
        filtered = np.asarray(filter_logits(logits, top_k=k))
        finite = np.isfinite(filtered)
        assert np.all(finite.sum(1) == k)
        np.testing.assert_array_equal(filtered[finite], np.asarray(logits)[finite])
        smallest_kept = np.where(finite, filtered, np.inf).min(1)
        largest_removed = np.where(finite, -np.inf, logits).max(1)
        assert np.all(smallest_kept > largest_removed)
    # Ties: still exactly k, the lower token ids first (so top_k=1 is the argmax).
    assert kept(filter_logits(jnp.array([[1.0, 3.0, 3.0, 0.0, 3.0]]), top_k=2)) == [{1, 2}]
    # No filter: top_k 0, or at least the vocabulary.
    np.testing.assert_array_equal(filter_logits(logits, top_k=0), logits)
    np.testing.assert_array_equal(filter_logits(logits, top_k=50), logits)


@pytest.mark.parametrize(
    ("top_p", "want"),
    [
        # Sorted: token 1 (0.5), 2 (0.25), 3 (0.15), 0 (0.1); mass before: 0, .5, .75, .9.
        (1e-6, [{1}, {0}]),  # Never empty: the most likely token always stays.
        (0.4, [{1}, {0}]),
        (0.6, [{1, 2}, {0}]),
        (0.8, [{1, 2, 3}, {0, 3}]),
        (0.85, [{1, 2, 3}, {0, 3}]),
        (0.95, [{0, 1, 2, 3}, {0, 3, 1}]),
        (1.0, [{0, 1, 2, 3}, {0, 1, 2, 3}]),
    ],
)
def test_filter_logits_top_p_keeps_the_smallest_nucleus_that_reaches_p(top_p, want):
    # Second row: token 0 (0.7), 3 (0.2), 1 (0.06), 2 (0.04); mass before: 0, .7, .9, .96.
    logits = probs_logits([0.1, 0.5, 0.25, 0.15], [0.7, 0.06, 0.04, 0.2])
    filtered = filter_logits(logits, top_p=top_p)
    assert kept(filtered) == want
    finite = np.isfinite(filtered)
    np.testing.assert_array_equal(np.asarray(filtered)[finite], np.asarray(logits)[finite])


def test_filter_logits_applies_top_k_then_top_p_on_the_renormalised_rest():
    logits = probs_logits([0.1, 0.5, 0.25, 0.15])
    # Top 2 renormalised: 2/3, 1/3; 0.6 is reached by token 1 alone (on the full
    # distribution it would take tokens 1 and 2).
    assert kept(filter_logits(logits, top_k=2, top_p=0.6)) == [{1}]
    # Top 3 renormalised: .556, .278, .167, mass before 0, .556, .833 (full: 0, .5, .75).
    assert kept(filter_logits(logits, top_k=3, top_p=0.8)) == [{1, 2}]
    assert kept(filter_logits(logits, top_k=3, top_p=0.9)) == [{1, 2, 3}]
    # Entries already at -inf stay there and carry no mass.
    masked = logits.at[0, 1].set(-jnp.inf)
    assert kept(filter_logits(masked, top_k=3, top_p=0.55)) == [{2, 3}]
    # Any leading shape: each row of [..., vocab] is filtered on its own.
    batched = jax.random.normal(jax.random.key(1), (2, 3, 9))
    np.testing.assert_array_equal(
        filter_logits(batched, 4, 0.7),
        filter_logits(batched.reshape(6, 9), 4, 0.7).reshape(2, 3, 9),
    )


def test_sampling_arguments_are_validated(language_model):
    model, variables = language_model
    params, key = variables["params"], jax.random.key(0)
    for kwargs, name in [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=name):
            sample_lm(model, params, SAMPLE_PROMPTS, MAX_LENGTH, key, **kwargs)
        if name != "temperature":
            with pytest.raises(ValueError, match=name):
                filter_logits(jnp.zeros((1, 8)), **kwargs)


def test_sampling_at_temperature_zero_is_greedy_decoding(language_model):
    model, variables = language_model
    params = variables["params"]
    greedy = np.asarray(greedy_decode_lm(model, params, SAMPLE_PROMPTS, MAX_LENGTH))
    sample = jit_sample(model, MAX_LENGTH, temperature=0.0, top_k=3, top_p=0.5)
    for seed in range(3):
        np.testing.assert_array_equal(sample(params, SAMPLE_PROMPTS, jax.random.key(seed)), greedy)


@pytest.mark.parametrize("temperature", [pytest.param(0.3, marks=pytest.mark.slow), 1.0, 5.0])
def test_sampling_from_the_top_token_alone_is_greedy_decoding(temperature, language_model):
    model, variables = language_model
    params = variables["params"]
    greedy = np.asarray(greedy_decode_lm(model, params, SAMPLE_PROMPTS, MAX_LENGTH))
    sample = jit_sample(model, MAX_LENGTH, temperature=temperature, top_k=1)
    np.testing.assert_array_equal(sample(params, SAMPLE_PROMPTS, jax.random.key(4)), greedy)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.5, 5, 0.8)]
)
def test_first_sampled_token_follows_the_full_models_filtered_softmax(
    temperature, top_k, top_p, language_model
):
    model, variables = language_model
    prompt = [5, 6, 7]
    rows = 4000
    # One sampled token after the prompt, in every row of one batch.
    sample = jit_sample(model, len(prompt) + 1, temperature=temperature, top_k=top_k, top_p=top_p)
    prompts = jnp.broadcast_to(jnp.array(prompt), (rows, len(prompt)))
    tokens = np.asarray(sample(variables["params"], prompts, jax.random.key(5)))
    np.testing.assert_array_equal(tokens[:, :3], prompts)
    # The full model's logits for the token after the prompt (the last input is a placeholder).
    logits = model.apply(variables, jnp.array([[*prompt, PAD_ID]]))[:, -1]
    want = np.asarray(jax.nn.softmax(filter_logits(logits / temperature, top_k, top_p)))[0]
    got = np.bincount(tokens[:, -1], minlength=len(want)) / rows
    assert 0.5 * np.abs(got - want).sum() < 0.05, (got, want)
    assert np.all(got[want == 0] == 0)  # Filtered tokens are never drawn.
    assert (want > 0.05).sum() >= 3  # A distribution worth sampling from.


def test_cached_sampling_matches_sampling_from_the_full_model_with_the_same_keys(language_model):
    model, variables = language_model
    rng, temperature, top_k, top_p = jax.random.key(6), 0.8, 6, 0.95
    sample = jit_sample(model, MAX_LENGTH, temperature=temperature, top_k=top_k, top_p=top_p)
    got = np.asarray(sample(variables["params"], SAMPLE_PROMPTS, rng))

    @jax.jit
    def draw(tokens, i):
        # The whole model on the buffer: causal, so logits[:, i] see only the tokens before i.
        logits = model.apply(variables, tokens)[:, i]
        filtered = filter_logits(logits / temperature, top_k, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)

    # Reference: without a cache, the draw that step i's key makes from the full model.
    batch, prompt_len = SAMPLE_PROMPTS.shape
    want = np.zeros((batch, MAX_LENGTH), np.int32)
    want[:, :prompt_len] = SAMPLE_PROMPTS
    done = np.zeros(batch, bool)
    for i in range(MAX_LENGTH):
        drawn = np.asarray(draw(jnp.asarray(want), i))
        prompted = (i < prompt_len) & (want[:, i] != PAD_ID)
        want[:, i] = np.where(done, PAD_ID, np.where(prompted, want[:, i], drawn))
        done |= want[:, i] == EOS_ID
    np.testing.assert_array_equal(got, want)
    assert len({tuple(row) for row in got[:3]}) > 1  # The same prompt, sampled apart.


def test_samples_are_reproducible_keep_prompts_and_pad_after_eos(language_model):
    model, variables = language_model
    params = variables["params"]
    prompts = jnp.tile(SAMPLE_PROMPTS, (4, 1))
    sample = jit_sample(model, MAX_LENGTH, temperature=1.0)
    a, b, c = (np.asarray(sample(params, prompts, jax.random.key(s))) for s in (7, 7, 8))
    assert a.shape == (len(prompts), MAX_LENGTH) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    for tokens in (a, c):
        prompted = np.asarray(prompts) != PAD_ID
        np.testing.assert_array_equal(tokens[:, :3][prompted], np.asarray(prompts)[prompted])
        assert_pad_after_eos(tokens)
        assert (tokens == EOS_ID).any()
    # Rows with the same prompt and key draw independently.
    same_prompt = a[np.all(np.asarray(prompts) == [5, 6, 7], axis=1)]
    assert len({tuple(row) for row in same_prompt}) > 1
