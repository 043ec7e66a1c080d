"""Table 3 of Vaswani et al. 2017: the variations of the base model, each a small override.

  python train.py --config configs/ablations.py:C_n2 --workdir /tmp/C_n2
  python train.py --config configs/ablations.py:C_n2,data=multi30k,scale=0.5 --workdir DIR

The part after ':' is `VARIANT[,data=CONFIG][,scale=FACTOR]`:

  VARIANT       a row of Table 3 (see VARIANTS), applied on top of configs/base.py.
  data=CONFIG   train on the corpus of configs/CONFIG.py with that file's training recipe
                (data section, batch size, steps, warmup, learning-rate scale, evaluation
                and checkpoint intervals, mesh) and its way of computing (model.dtype,
                attention, remat); the variant keeps its architecture and regularisation
                (the rest of `model`, `label_smoothing`). A row that trains longer than
                base and averages more checkpoints (big: 3x the steps, 20 checkpoints for
                5) scales the recipe's by the same ratios: big,data=wmt14 is
                configs/wmt14_big.py, 300K steps and 20 checkpoints.
  scale=FACTOR  multiply d_model, d_ff and any explicit d_k/d_v by FACTOR, keeping heads and
                layers, e.g. 0.5: base becomes d_model 256, d_ff 1024, 8 heads of 32.

Without `data=` the corpus is base's (the generated task). `python sweep.py` trains a list of
these and tabulates them beside PAPER.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from typing import Any

from ml_collections import ConfigDict

from configs import base, big
from transformer.config import COMPUTATION_KEYS, ConfigError

# One entry per row of Table 3: dotted config keys and their values, applied to base.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    # (A) Heads, with h * d_k = h * d_v = d_model kept at 512: same parameters as base.
    "A_h1": {"model.num_heads": 1, "model.d_k": 512, "model.d_v": 512},
    "A_h4": {"model.num_heads": 4, "model.d_k": 128, "model.d_v": 128},
    "A_h16": {"model.num_heads": 16, "model.d_k": 32, "model.d_v": 32},
    "A_h32": {"model.num_heads": 32, "model.d_k": 16, "model.d_v": 16},
    # (B) Smaller keys only: d_v stays 64.
    "B_dk16": {"model.d_k": 16},
    "B_dk32": {"model.d_k": 32},
    # (C) Model size. d_ff stays 2048 in the d_model rows, as in the table.
    "C_n2": {"model.num_encoder_layers": 2, "model.num_decoder_layers": 2},
    "C_n4": {"model.num_encoder_layers": 4, "model.num_decoder_layers": 4},
    "C_n8": {"model.num_encoder_layers": 8, "model.num_decoder_layers": 8},
    "C_dmodel256": {"model.d_model": 256, "model.d_k": 32, "model.d_v": 32},
    "C_dmodel1024": {"model.d_model": 1024, "model.d_k": 128, "model.d_v": 128},
    "C_dff1024": {"model.d_ff": 1024},
    "C_dff4096": {"model.d_ff": 4096},
    # (D) Regularisation: P_drop and epsilon_ls.
    "D_pdrop0": {"model.dropout_rate": 0.0},
    "D_pdrop02": {"model.dropout_rate": 0.2},
    "D_ls0": {"label_smoothing": 0.0},
    "D_ls02": {"label_smoothing": 0.2},
    # (E) Learned positional embedding instead of sinusoids.
    "E_learned": {"model.positional_encoding": "learned"},
    "big": big.OVERRIDES,
}


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """A row of Table 3: newstest2013 (dev) perplexity per wordpiece, BLEU, parameters."""

    ppl: float
    bleu: float
    params_millions: int  # A blank cell in the table repeats base's 65.


PAPER: dict[str, PaperRow] = {
    "base": PaperRow(4.92, 25.8, 65),
    "A_h1": PaperRow(5.29, 24.9, 65),
    "A_h4": PaperRow(5.00, 25.5, 65),
    "A_h16": PaperRow(4.91, 25.8, 65),
    "A_h32": PaperRow(5.01, 25.4, 65),
    "B_dk16": PaperRow(5.16, 25.1, 58),
    "B_dk32": PaperRow(5.01, 25.4, 60),
    "C_n2": PaperRow(6.11, 23.7, 36),
    "C_n4": PaperRow(5.19, 25.3, 50),
    "C_n8": PaperRow(4.88, 25.5, 80),
    "C_dmodel256": PaperRow(5.75, 24.5, 28),
    "C_dmodel1024": PaperRow(4.66, 26.0, 168),
    "C_dff1024": PaperRow(5.12, 25.4, 53),
    "C_dff4096": PaperRow(4.75, 26.2, 90),
    "D_pdrop0": PaperRow(5.77, 24.6, 65),
    "D_pdrop02": PaperRow(4.95, 25.5, 65),
    "D_ls0": PaperRow(4.67, 25.3, 65),
    "D_ls02": PaperRow(5.47, 25.7, 65),
    "E_learned": PaperRow(4.92, 25.7, 65),
    "big": PaperRow(4.33, 26.4, 213),
}

# Keys multiplied by `scale=`; d_k/d_v only where the variant sets them (None follows d_model).
SCALED_KEYS = ("d_model", "d_ff", "d_k", "d_v")


def get_config(spec: str = "base") -> ConfigDict:
    """The config of `spec` = VARIANT[,data=CONFIG][,scale=FACTOR] (see the module doc)."""
    name, options = parse_spec(spec)
    config = variant_config(name)
    if "scale" in options:
        config = scaled(config, options["scale"])
    if "data" in options:
        config = on_corpus(config, load_config(options["data"]), VARIANTS[name])
    return config


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """("C_n2", {"data": "multi30k", "scale": 0.5}) from "C_n2,data=multi30k,scale=0.5"."""
    name, *parts = [p.strip() for p in spec.split(",")]
    options: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in ("data", "scale") or key in options:
            raise ConfigError(
                f"Bad ablation option {part!r} in {spec!r}: expected "
                "VARIANT[,data=CONFIG][,scale=FACTOR], each option at most once."
            )
        if key == "scale":
            try:
                options[key] = float(value)
            except ValueError:
                raise ConfigError(f"scale={value!r} in {spec!r} is not a number.") from None
        else:
            options[key] = value
    return name, options


def variant_config(name: str) -> ConfigDict:
    """configs/base.py with the overrides of Table 3 row `name`."""
    if name not in VARIANTS:
        raise ConfigError(f"Unknown Table 3 variant {name!r}; valid names: {', '.join(VARIANTS)}.")
    config = base.get_config()
    config.update_from_flattened_dict(VARIANTS[name])
    return config


def scaled(config: ConfigDict, factor: float) -> ConfigDict:
    """`config` with d_model, d_ff and explicit d_k/d_v times `factor`; each must come out a
    whole number (ConfigError naming the key otherwise)."""
    if factor <= 0:
        raise ConfigError(f"scale={factor} must be positive.")
    config = copy.deepcopy(config)
    for key in SCALED_KEYS:
        value = config.model[key]
        if value is None:
            continue
        new = value * factor
        if abs(new - round(new)) > 1e-9 or round(new) < 1:
            raise ConfigError(
                f"scale={factor} makes model.{key}={value} into {new:g}, not a positive whole "
                "number; pick a factor that divides it."
            )
        config.model[key] = round(new)
    return config


def load_config(name: str) -> ConfigDict:
    """configs/NAME.py's config; ConfigError if there is no such file."""
    try:
        module = importlib.import_module(f"configs.{name}")
    except ModuleNotFoundError:
        raise ConfigError(f"data={name!r}: there is no configs/{name}.py.") from None
    return module.get_config()


# A row's keys for how long it trains and how many checkpoints it averages.
LENGTH_KEYS = ("num_train_steps", "keep_checkpoints")


def on_corpus(variant: ConfigDict, recipe: ConfigDict, row: dict[str, Any]) -> ConfigDict:
    """`recipe` (a corpus config such as configs/multi30k.py) with the variant's architecture
    and regularisation (its `model` section but the recipe's COMPUTATION_KEYS, and
    `label_smoothing`); the row's LENGTH_KEYS scale the recipe's by their ratio to base."""
    config = copy.deepcopy(recipe)
    config.model = copy.deepcopy(variant.model)
    for key in COMPUTATION_KEYS:  # How the recipe's hardware computes the same model.
        config.model[key] = recipe.model[key]
    config.label_smoothing = variant.label_smoothing
    paper = base.get_config()
    for key in LENGTH_KEYS:
        if key in row:
            config[key] = round(recipe[key] * row[key] / paper[key])
    return config


def describe(name: str, config: ConfigDict) -> str:
    """The keys row `name` changes, with their values in `config` (a variant's config, perhaps
    scaled), e.g. "num_heads=1, d_k=512, d_v=512"; "-" for base."""
    parts = []
    for key in VARIANTS[name]:
        node = config
        for part in key.split("."):
            node = node[part]
        parts.append(f"{key.rsplit('.', 1)[-1]}={node}")
    return ", ".join(parts) or "-"


def select(names: list[str]) -> list[str]:
    """Variant names from a list of names, row letters ("A" = every A_ row) or "all"."""
    chosen: list[str] = []
    for name in names:
        if name == "all":
            found = list(VARIANTS)
        elif len(name) == 1 and name.isalpha():
            found = [v for v in VARIANTS if v.startswith(name.upper() + "_")]
        else:
            found = [name] if name in VARIANTS else []
        if not found:
            raise ConfigError(
                f"Unknown Table 3 variant {name!r}; valid: a row letter A-E, 'all', or "
                f"{', '.join(VARIANTS)}."
            )
        chosen += [v for v in found if v not in chosen]
    return chosen
