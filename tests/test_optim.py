"""The learning-rate schedule and the label-smoothed loss against the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from transformer.config import from_config_dict
from transformer.loss import chunked_loss_and_metrics, loss_and_metrics, smoothed_cross_entropy
from transformer.optim import make_optimizer, paper_schedule


@pytest.mark.parametrize("step", [1, 100, 3999, 4000, 4001, 10_000, 100_000])
def test_schedule_matches_the_papers_formula(step):
    schedule = paper_schedule(d_model=512, warmup_steps=4000)
    expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
    assert float(schedule(step - 1)) == pytest.approx(expected, rel=1e-5)


def test_schedule_peaks_at_the_end_of_warmup():
    schedule = paper_schedule(d_model=512, warmup_steps=4000, scale=2.0)
    values = np.asarray(jax.vmap(schedule)(jnp.arange(8000)))
    assert np.argmax(values) == 3999  # update 3999 is step 4000
    assert values.max() == pytest.approx(2 * 512**-0.5 * 4000**-0.5, rel=1e-4)


def test_optimizer_is_adam_with_the_configured_betas():
    cfg = from_config_dict(base.get_config())
    tx, schedule = make_optimizer(cfg)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    grads = {"w": jnp.array([1.0, -2.0, 0.0])}
    updates, _ = tx.update(grads, state, params)
    # First Adam step: m_hat/sqrt(v_hat) = sign(g) (eps=1e-9 aside), scaled by -lr(1).
    np.testing.assert_allclose(updates["w"], -schedule(0) * np.array([1, -1, 0]), rtol=1e-5)


def np_smoothed_ce(logits, targets, eps):
    v = logits.shape[-1]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    q = np.full(logits.shape, eps / (v - 1))
    np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
    return -(q * logp).sum(-1)


@pytest.mark.parametrize("formulation", ["one_hot", "integer"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_cross_entropy_matches_reference(formulation, eps):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    got = smoothed_cross_entropy(
        jnp.asarray(logits, jnp.float32), jnp.asarray(targets), eps, formulation
    )
    np.testing.assert_allclose(got, np_smoothed_ce(logits, targets, eps), rtol=1e-5, atol=1e-5)


def test_loss_sums_only_non_padding_tokens():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
    targets = jnp.array([[3, 4, 1, 0], [5, 1, 0, 0]])
    loss_sum, m = loss_and_metrics(logits, targets, 0.1, "integer")
    per_token = np_smoothed_ce(np.asarray(logits), np.asarray(targets), 0.1)
    mask = np.asarray(targets) != 0
    assert float(m["tokens"]) == 5
    assert float(loss_sum) == pytest.approx(per_token[mask].sum(), rel=1e-5)
    # Changing logits at padding leaves the loss untouched.
    loss2, _ = loss_and_metrics(logits.at[1, 3].add(100.0), targets, 0.1, "integer")
    assert float(loss2) == pytest.approx(float(loss_sum), rel=1e-6)


def test_correct_counts_non_padding_targets_whose_logit_is_the_largest():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(3, 5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, 11, (3, 5))).at[2, 3:].set(0)
    _, m = loss_and_metrics(logits, targets, 0.1, "integer")
    mask = np.asarray(targets) != 0
    hits = np.argmax(np.asarray(logits), axis=-1) == np.asarray(targets)
    assert float(m["correct"]) == hits[mask].sum()
    # Make every target the argmax: all non-padding tokens count, padding still does not.
    rows, cols = np.indices(targets.shape)
    best = logits.at[rows, cols, targets].set(100.0)
    assert float(loss_and_metrics(best, targets, 0.1, "integer")[1]["correct"]) == mask.sum()
    # A target tied with a lower token id for the largest logit is not the argmax (bf16
    # logits tie often): one tie of that kind per sentence takes 3 off.
    tied = best.at[:, 0, 0].set(100.0)
    assert float(loss_and_metrics(tied, targets, 0.1, "integer")[1]["correct"]) == mask.sum() - 3


def test_one_hot_and_integer_gradients_agree():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(2, 3, 13)), jnp.float32)
    targets = jnp.array([[1, 2, 3], [4, 5, 0]])
    grads = [
        jax.grad(lambda x, f=f: loss_and_metrics(x, targets, 0.1, f)[0])(logits)
        for f in ("one_hot", "integer")
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------- the chunked (fused) loss
def plain_projected(hidden, weight, targets, eps):
    logits = jnp.einsum("bld,vd->blv", hidden, weight, preferred_element_type=jnp.float32)
    return loss_and_metrics(logits, targets, eps, "integer")


@pytest.mark.parametrize("chunks", [1, 4, 5, 12, 50])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_chunked_loss_gives_the_plain_loss_metrics_and_gradients(chunks, eps):
    """Chunk counts that do not divide the length 12 (5, 50) fall back to a divisor."""
    rng = np.random.default_rng(4)
    hidden = jnp.asarray(rng.normal(size=(3, 12, 8)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(29, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, 29, (3, 12))).at[1, 7:].set(0).at[2, 2:].set(0)
    # Some targets are the argmax, so that "correct" counts something.
    targets = targets.at[0, :6].set(jnp.argmax(jnp.einsum("ld,vd->lv", hidden[0, :6], weight), -1))

    def chunked(h, w):
        return chunked_loss_and_metrics(h, w, targets, eps, chunks)

    def plain(h, w):
        return plain_projected(h, w, targets, eps)

    want_sum, want = plain(hidden, weight)
    got_sum, got = jax.jit(chunked)(hidden, weight)  # Not differentiated: no gradient products.
    assert float(want["correct"]) >= 6
    assert float(got_sum) == pytest.approx(float(want_sum), rel=1e-6)
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5), key
    (_, got_aux), got_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
        hidden, weight
    )
    (_, _), want_grads = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, weight)
    for key in want:
        assert float(got_aux[key]) == pytest.approx(float(want[key]), rel=1e-5), key
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # Padding rows get no gradient.
    np.testing.assert_array_equal(got_grads[0][2, 2:], 0.0)


def test_chunked_loss_gradient_scales_with_the_cotangent_and_keeps_dtypes():
    rng = np.random.default_rng(5)
    hidden = jnp.asarray(rng.normal(size=(2, 8, 4)), jnp.bfloat16)
    weight = jnp.asarray(rng.normal(size=(11, 4)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, 11, (2, 8)))

    def loss(h, w, scale):
        return scale * chunked_loss_and_metrics(h, w, targets, 0.1, 2)[0]

    one = jax.grad(loss, argnums=(0, 1))(hidden, weight, 1.0)
    three = jax.grad(loss, argnums=(0, 1))(hidden, weight, 3.0)
    assert one[0].dtype == jnp.bfloat16 and one[1].dtype == jnp.float32
    np.testing.assert_allclose(three[1], 3 * one[1], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(three[0], np.float32), 3 * np.asarray(one[0], np.float32), rtol=1e-2
    )
