"""The learning-rate schedule and the label-smoothed loss against the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from transformer.config import from_config_dict
from transformer.loss import loss_and_metrics
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


def np_log_softmax(logits):
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_loss_and_its_gradient_match_the_smoothed_distribution_by_hand(eps):
    """The loss against H(q, p) with q built as a full distribution, and its gradient
    against softmax(logits) - q (the derivative of H(q, softmax(logits)))."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(1, 11, size=(3, 5))
    loss_sum, _ = loss_and_metrics(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), eps)
    assert float(loss_sum) == pytest.approx(np_smoothed_ce(logits, targets, eps).sum(), rel=1e-5)
    grad = jax.grad(lambda x: loss_and_metrics(x, jnp.asarray(targets), eps)[0])(
        jnp.asarray(logits, jnp.float32)
    )
    q = np.full(logits.shape, eps / 10)
    np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
    np.testing.assert_allclose(grad, np.exp(np_log_softmax(logits)) - q, rtol=1e-4, atol=1e-6)


def test_nll_is_minus_the_log_softmax_of_the_target():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, 4, 9)) * 2
    targets = np.array([[3, 4, 1, 0], [5, 1, 0, 0]])
    _, m = loss_and_metrics(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), 0.1)
    nll = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    assert float(m["nll_sum"]) == pytest.approx(nll[targets != 0].sum(), rel=1e-5)


def test_loss_sums_only_non_padding_tokens():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
    targets = jnp.array([[3, 4, 1, 0], [5, 1, 0, 0]])
    loss_sum, m = loss_and_metrics(logits, targets, 0.1)
    per_token = np_smoothed_ce(np.asarray(logits), np.asarray(targets), 0.1)
    mask = np.asarray(targets) != 0
    assert float(m["tokens"]) == 5
    assert float(loss_sum) == pytest.approx(per_token[mask].sum(), rel=1e-5)
    # Changing logits at padding leaves the loss untouched.
    loss2, _ = loss_and_metrics(logits.at[1, 3].add(100.0), targets, 0.1)
    assert float(loss2) == pytest.approx(float(loss_sum), rel=1e-6)


def test_correct_counts_non_padding_targets_whose_logit_is_the_largest():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(3, 5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, 11, (3, 5))).at[2, 3:].set(0)
    _, m = loss_and_metrics(logits, targets, 0.1)
    mask = np.asarray(targets) != 0
    hits = np.argmax(np.asarray(logits), axis=-1) == np.asarray(targets)
    assert float(m["correct"]) == hits[mask].sum()
    # Make every target the argmax: all non-padding tokens count, padding still does not.
    rows, cols = np.indices(targets.shape)
    best = logits.at[rows, cols, targets].set(100.0)
    assert float(loss_and_metrics(best, targets, 0.1)[1]["correct"]) == mask.sum()
    # A target tied with a lower token id for the largest logit is not the argmax (bf16
    # logits tie often): one tie of that kind per sentence takes 3 off.
    tied = best.at[:, 0, 0].set(100.0)
    assert float(loss_and_metrics(tied, targets, 0.1)[1]["correct"]) == mask.sum() - 3
