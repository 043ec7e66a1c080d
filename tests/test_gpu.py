"""The paths that only a GPU takes: cuDNN's fused attention in bfloat16 (asked for by
`model.attention = "dot_product_attention"`) and the device's memory statistics.

On a GPU host (benchmarks/gpu.sh runs this file before it measures anything):

    JAX_PLATFORMS=cuda python -m pytest -n 0 tests/test_gpu.py

Everywhere else the tests that need cuDNN skip; the bfloat16 comparisons still run, through
the XLA implementation that `fused_attention` falls back to, and the train step
that gpu.sh times is lowered for CUDA (not compiled), which shows where cuDNN is called.
"""

import collections
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.workloads import file_config, random_batch
from transformer import sharding, trainer
from transformer.config import MeshConfig
from transformer.layers import dot_product_attention, fused_attention
from transformer.loss import loss_and_metrics
from transformer.masks import (
    AttentionMask,
    attention_mask,
    causal_mask,
    padding_mask,
    row_lengths,
    segment_mask,
)
from transformer.model import Transformer

from .model_configs import small_model_config
from .test_switches import init

Array = jax.Array
ROOT = Path(__file__).resolve().parent.parent
ON_GPU = jax.default_backend() == "gpu"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU (JAX_PLATFORMS=cuda)")


def tokens(sizes: list[int], length: int) -> np.ndarray:
    """[len(sizes), length] int32 rows of `sizes` non-PAD ids followed by PAD (0)."""
    out = np.zeros((len(sizes), length), np.int32)
    for row, n in enumerate(sizes):
        out[row, :n] = 3 + np.arange(n) % 7
    return out


def masks() -> dict[str, tuple[Array | AttentionMask, int, int]]:
    """name -> (mask, q_len, kv_len) for each way the models mask: dense [batch, 1, q_len,
    kv_len] bool, or as the models give unpacked rows' masks, with lengths."""
    src, tgt = tokens([64, 50, 1, 0], 64), tokens([64, 37, 64, 2], 64)
    # Cross-attention: rows with some keys of 40 (two), a PAD query row, a row with no key.
    short, source = tokens([24, 9, 0, 17], 24), tokens([33, 12, 5, 0], 40)
    segments = np.array([[1] * 30 + [2] * 20 + [0] * 14] * 4)
    return {
        "encoder padding": (AttentionMask(padding_mask(src, src)), 64, 64),
        "decoder causal and padding": (
            AttentionMask(padding_mask(tgt, tgt) & causal_mask(64)),
            64,
            64,
        ),
        "cross attention, other lengths": (AttentionMask(padding_mask(short, source)), 24, 40),
        "packed segments": (
            AttentionMask(
                padding_mask(src, src) & segment_mask(segments, segments) & causal_mask(64)
            ),
            64,
            64,
        ),
        "encoder padding as lengths": (attention_mask(src, src), 64, 64),
        "decoder causal and padding as lengths": (
            attention_mask(tgt, tgt, causal=True),
            64,
            64,
        ),
        "cross attention as lengths": (
            AttentionMask(padding_mask(short, source), row_lengths(short), row_lengths(source)),
            24,
            40,
        ),
    }


def qkv(q_len: int, kv_len: int, heads: int = 4, d: int = 64) -> tuple[jax.Array, ...]:
    """bfloat16 normal query [4, q_len, heads, d], key and value [4, kv_len, heads, d]."""
    rng = np.random.default_rng(q_len * 1000 + kv_len)
    return tuple(
        jnp.asarray(rng.normal(size=(4, n, heads, d)), jnp.bfloat16)
        for n in (q_len, kv_len, kv_len)
    )


def max_error(actual: jax.Array, expected: jax.Array) -> float:
    """max |actual - expected| as a fraction of max |expected|."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-6))


@pytest.mark.parametrize("name", list(masks()))
def test_fused_bfloat16_attention_matches_float32_attention_and_its_gradients(name):
    """Output and the gradients of q, k and v against the plain path in float32 on the same
    bfloat16-rounded inputs, within bfloat16's rounding (a few 2^-8)."""
    mask, q_len, kv_len = masks()[name]
    q, k, v = qkv(q_len, kv_len)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def fused(q, k, v):
        return jnp.sum(fused_attention(q, k, v, mask).astype(jnp.float32) * cotangent)

    def reference(q, k, v):  # float32 throughout (no TF32 on a GPU either).
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        with jax.default_matmul_precision("highest"):
            return dot_product_attention(*f32, mask.dense)[0]

    def plain(q, k, v):
        return jnp.sum(reference(q, k, v) * cotangent)

    out = jax.jit(fused_attention)(q, k, v, mask)
    assert out.dtype == jnp.bfloat16
    assert max_error(out, jax.jit(reference)(q, k, v)) < 0.02
    # A query row with no key to attend to (a PAD query) gives zeros, as the plain path does.
    dead = ~np.asarray(mask.dense).any(-1)[:, 0]  # [batch, q_len]
    assert dead.any()
    assert np.all(np.asarray(out, np.float32)[dead] == 0)

    grads = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(plain, argnums=(0, 1, 2)))(q, k, v)
    for which, got, want in zip("qkv", grads, expected, strict=True):
        assert np.all(np.isfinite(np.asarray(got, np.float32))), which
        assert max_error(got, want) < 0.03, which


@needs_gpu
@pytest.mark.parametrize("name", ["decoder causal and padding", "cross attention as lengths"])
def test_bfloat16_attention_asks_for_cudnn_and_float32_does_not(name):
    mask, q_len, kv_len = masks()[name]
    q, k, v = qkv(q_len, kv_len)
    lowered = jax.jit(fused_attention).lower(q, k, v, mask).as_text()
    assert "cudnn" in lowered.lower()  # JAX's custom call for cuDNN's fused attention.
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    assert "cudnn" not in jax.jit(fused_attention).lower(*f32, mask).as_text()


# On CPU, where this is XLA against XLA, both cases wait for the slow run.
ON_GPU_OR_SLOW = () if ON_GPU else pytest.mark.slow


@pytest.mark.parametrize(
    "remat", [pytest.param(r, marks=ON_GPU_OR_SLOW) for r in ("none", "block")]
)
def test_bfloat16_model_with_fused_attention_trains_like_xla_attention(remat):
    """A bfloat16 Transformer (d_k 64, as base and big have) with the mask shapes the model
    builds: loss and gradients through `dot_product_attention` (cuDNN on GPU) against the
    plain einsums with the same parameters."""
    sizes = dict(d_model=128, d_ff=256, num_heads=2, dtype="bfloat16", remat=remat)
    plain = Transformer(small_model_config(**sizes))
    fused = Transformer(small_model_config(**sizes, attention="dot_product_attention"))
    src, tgt = jnp.asarray(tokens([20, 7, 16], 24)), jnp.asarray(tokens([16, 24, 3], 24))
    params = init(plain, src, tgt)

    def loss(model, params):
        logits = model.apply({"params": params}, src, tgt)
        return loss_and_metrics(logits, tgt, 0.1)[0]

    fused_step = jax.jit(jax.value_and_grad(lambda p: loss(fused, p)))
    if ON_GPU:  # The model takes the fused path, forward and backward.
        assert "cudnn" in fused_step.lower(params).as_text().lower()
    value, grads = fused_step(params)
    want_value, want_grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
    assert abs(float(value) - float(want_value)) < 0.01 * float(want_value)
    got, want = (
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (grads, want_grads)
    )
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - want) < 0.05 * np.linalg.norm(want)


@pytest.fixture
def cuda_lowering(monkeypatch):
    """Without a GPU: JAX lowers cuDNN's fused attention for CUDA as for a Hopper GPU with
    cuDNN 9.10, and the model takes its GPU paths (`jax.default_backend()` says "gpu").

    JAX asks the CUDA plugin for cuDNN's version and the device's compute capability while
    it traces; only those probes are answered here. Nothing is compiled or run. On a GPU the
    tests above check the compiled step itself, and gpu.sh's choice of attention rests on
    them alone, not on the names of JAX's custom calls that this one counts."""
    if ON_GPU:
        pytest.skip("a CPU check: on a GPU the compiled step is tested above")
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    probes = ("check_cudnn_version", "check_compute_capability", "is_cuda_compute_capability_equal")
    if not all(hasattr(fused, name) for name in probes):
        pytest.skip("this JAX probes for cuDNN otherwise than the stand-ins here answer")
    version = lambda capability: tuple(int(x) for x in capability.split("."))  # noqa: E731
    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fused, "check_compute_capability", lambda c: version(c) <= (9, 0))
    monkeypatch.setattr(fused, "is_cuda_compute_capability_equal", lambda c: version(c) == (9, 0))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


@pytest.mark.parametrize(
    "batch, remat, forward, backward, masks",
    [
        # Unpacked rows: each row's lengths and causality, no [batch, 1, L, L] bias.
        ("unpacked", "none", "fmhaSoftmax", "fmhaSoftmaxBackward", {"PADDING", "PADDING_CAUSAL"}),
        pytest.param(
            "unpacked",
            "block",
            "fmhaSoftmax",
            "fmhaSoftmaxBackward",
            {"PADDING", "PADDING_CAUSAL"},
            marks=ON_GPU_OR_SLOW,  # remat's second forward; on CPU, the slow run.
        ),
        # Packed rows: the dense mask, as cuDNN's bias.
        ("packed", "none", "fmhaScaleBiasSoftmax", "fmhaScaleBiasSoftmaxBackward", {"NO_MASK"}),
    ],
)
def test_base_bfloat16_train_step_calls_cudnn_in_every_attention_sublayer(
    cuda_lowering, batch, remat, forward, backward, masks
):
    """The step that benchmarks/gpu.sh times (configs/base.py, bfloat16, fused attention),
    lowered for CUDA: one cuDNN attention forward and backward per attention sublayer (6
    encoder self, 6 decoder self, 6 cross), none left to XLA; remat=block runs each forward
    twice."""
    overrides = [
        "model.dtype=bfloat16",
        "model.attention=dot_product_attention",
        "model.attention_dropout_rate=0.0",
        f"model.remat={remat}",
    ]
    config = file_config(str(ROOT / "configs" / "base.py"), overrides)
    arrays = random_batch(config)
    if batch == "packed":
        rows, length = arrays["inputs"].shape
        ids = np.repeat(np.arange(1, 5), length // 4)[None].repeat(rows, 0).astype(np.int32)
        positions = np.tile(np.arange(length // 4, dtype=np.int32), 4)[None].repeat(rows, 0)
        for side in ("inputs", "targets"):
            arrays |= {f"{side}_segmentation": ids, f"{side}_positions": positions}
    mesh = sharding.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    setup = trainer.build(config, mesh)
    with trainer.mesh_context(mesh, config):
        state = jax.eval_shape(setup.init, jax.random.key(0))
        shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in arrays.items()}
        traced = setup.train_step.trace(state, shapes)
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
    assert "cudnn" in text.lower(), "the step asks no cuDNN kernel"
    calls = collections.Counter(re.findall(r"custom_call @__cudnn\$(\w+)\(", text))
    if not calls:
        pytest.skip("this JAX names its cuDNN attention calls otherwise than __cudnn$fmha*")
    sublayers = config.model.num_encoder_layers + 2 * config.model.num_decoder_layers
    assert calls == {forward: sublayers * (2 if remat == "block" else 1), backward: sublayers}
    assert set(re.findall(r"mask_type\\22: \\22(\w+)\\22", text)) == masks


@needs_gpu
def test_peak_memory_is_the_devices_own_count():
    from benchmarks.machine import peak_memory

    x = jax.jit(lambda a: a @ a)(jnp.ones((2048, 2048), jnp.float32)).block_until_ready()
    what, peak = peak_memory()
    assert what == "device peak_bytes_in_use"
    assert peak >= x.nbytes
