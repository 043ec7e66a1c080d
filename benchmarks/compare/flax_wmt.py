"""flax/examples/wmt's own train step on a benchmark workload, for `--compare flax`.

The example ships with Flax's source (not its wheel). Get the one matching the installed Flax:

  pip download "flax==$(python -c 'import flax; print(flax.__version__)')" \
      --no-binary :all: --no-deps -d /tmp/flax-src
  tar xzf /tmp/flax-src/flax-*.tar.gz -C /tmp/flax-src
  python benchmarks/train_step.py --compare flax \
      --flax_wmt /tmp/flax-src/flax-*/examples/wmt

Nothing of the example is copied here: its `models.Transformer`, `train.train_step`,
`train.TrainState` and learning-rate schedule run as its `train_and_evaluate` sets them up
(xavier-uniform kernels, Adam(W) with b1 0.9, b2 0.98, eps 1e-9, no weight decay, `jax.pmap`
with the state donated), here on one device. Its model is pre-LN with a final LayerNorm on
each stack and biases in the FFN only: the same FLOPs as ours, within 0.1% of the parameters.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils

from transformer.config import Config

# Its train.py imports its data pipeline, BLEU and logging at the top (TFDS, tensorflow_text,
# clu); the train step needs none of them, so only these definitions of that file are run.
STEP_DEFINITIONS = (
    "TrainState",
    "rsqrt_schedule",
    "create_learning_rate_schedule",
    "compute_weighted_cross_entropy",
    "compute_weighted_accuracy",
    "compute_metrics",
    "train_step",
)
EXAMPLE_LEARNING_RATE = 0.002  # Its configs/default.py; the step time does not depend on it.
SKIPPED_IMPORTS = (
    "absl",
    "bleu",
    "clu",
    "decode",
    "input_pipeline",
    "models",
    "orbax",
    "tensorflow",
)


def _imported_root(node: ast.Import | ast.ImportFrom) -> str:
    name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
    return (name or "").split(".")[0]


def load_example(directory: str | Path) -> tuple[ModuleType, ModuleType]:
    """(models, train): the example's model module and the train-step part of its train.py."""
    directory = Path(directory).expanduser().resolve()
    missing = [n for n in ("models.py", "train.py") if not (directory / n).is_file()]
    if missing:
        raise SystemExit(
            f"--flax_wmt {directory}: no {' or '.join(missing)} there; pass the examples/wmt "
            "folder of a Flax source tree (see benchmarks/compare/flax_wmt.py)."
        )
    spec = importlib.util.spec_from_file_location("flax_wmt_models", directory / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)

    path = directory / "train.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and _imported_root(node) not in SKIPPED_IMPORTS
    ]
    definitions = {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in STEP_DEFINITIONS
    }
    absent = [name for name in STEP_DEFINITIONS if name not in definitions]
    if absent:
        raise SystemExit(f"{path}: defines no {', '.join(absent)}; not a known flax/examples/wmt.")
    train = ModuleType("flax_wmt_train")
    train.__dict__["models"] = models
    body = imports + [definitions[name] for name in STEP_DEFINITIONS]
    exec(compile(ast.Module(body, type_ignores=[]), str(path), "exec"), train.__dict__)
    return models, train


def example_config(models: ModuleType, config: Config, deterministic: bool = False):
    """The example's TransformerConfig for our model config (the sizes it can express)."""
    m = config.model
    if m.kind != "encoder_decoder" or m.num_encoder_layers != m.num_decoder_layers:
        raise SystemExit("--compare flax needs an encoder-decoder with equal stack depths.")
    if not (m.share_embeddings and m.tie_output_embedding) or m.activation != "relu":
        raise SystemExit("--compare flax needs tied shared embeddings and ReLU.")
    if m.head_dim_k * m.num_heads != m.d_model or m.head_dim_v != m.head_dim_k:
        raise SystemExit("--compare flax needs heads x d_k = heads x d_v = d_model.")
    if m.positional_encoding != "sinusoidal":
        raise SystemExit("--compare flax needs sinusoidal positions.")
    return models.TransformerConfig(
        vocab_size=m.vocab_size,
        output_vocab_size=m.vocab_size,
        share_embeddings=True,
        logits_via_embedding=True,
        dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32,
        emb_dim=m.d_model,
        num_heads=m.num_heads,
        num_layers=m.num_encoder_layers,
        qkv_dim=m.d_model,
        mlp_dim=m.d_ff,
        max_len=m.max_len,
        dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        deterministic=deterministic,
        decode=False,
        kernel_init=jax.nn.initializers.xavier_uniform(),
        bias_init=jax.nn.initializers.normal(stddev=1e-6),
    )


def build_flax_wmt_step(
    config: Config, batch: dict[str, np.ndarray], directory: str | Path
) -> tuple[Callable[[], None], dict[str, Any]]:
    """(one blocking train step, {"parameters", "description"}) of flax/examples/wmt on
    `batch` (one device).

    batch: inputs, targets [rows, length] int32 with no padding (the example treats id 0 as
    padding and shifts the targets right itself).
    """
    models, train = load_example(directory)
    train_config = example_config(models, config)
    model = models.Transformer(example_config(models, config, deterministic=True))
    shape = batch["inputs"].shape
    params = jax.jit(model.init)(
        jax.random.key(config.seed), jnp.ones(shape, jnp.float32), jnp.ones(shape, jnp.float32)
    )["params"]
    learning_rate_fn = train.create_learning_rate_schedule(
        learning_rate=EXAMPLE_LEARNING_RATE, warmup_steps=config.warmup_steps
    )
    state = train.TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.adamw(
            learning_rate=learning_rate_fn,
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=config.adam_eps,
            weight_decay=0.0,
        ),
        dynamic_scale=None,
    )
    device = jax.devices()[:1]
    p_train_step = jax.pmap(
        functools.partial(
            train.train_step,
            config=train_config,
            learning_rate_fn=learning_rate_fn,
            label_smoothing=config.label_smoothing,
        ),
        axis_name="batch",
        donate_argnums=(0,),
        devices=device,
    )
    holder = [jax_utils.replicate(state, device)]
    device_batch = {k: v[None] for k, v in batch.items()}  # [1 device, rows, length]
    dropout_rngs = jax.random.split(jax.random.key(config.seed + 1), 1)

    def run() -> None:
        holder[0], metrics = p_train_step(holder[0], device_batch, dropout_rng=dropout_rngs)
        jax.block_until_ready((holder[0], metrics))

    info = {
        "parameters": sum(x.size for x in jax.tree.leaves(params)),
        "description": f"flax/examples/wmt (from {directory})",
    }
    return run, info
