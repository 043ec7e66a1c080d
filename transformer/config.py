"""Typed, validated views of an experiment's `ml_collections.ConfigDict`.

Config files in `configs/` are the single source of every hyperparameter; nothing here has a
default. `from_config_dict` checks that every key is known, present, of the right type and in
range, and raises `ConfigError` naming the offending key otherwise. Modules receive the frozen
dataclasses below, never the ConfigDict.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ml_collections import ConfigDict

from transformer.errors import UserError

# Section 6.1: "maximum output length to input length + 50".
EXTRA_OUTPUT_TOKENS = 50


class ConfigError(UserError):
    """An experiment config is malformed; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (Vaswani et al. 2017, Table 3 columns)."""

    # The Transformer, its decoder alone, or the recurrent baseline (transformer.recurrent),
    # which reads d_model, the layer counts, dropout and the embedding switches only.
    kind: Literal["encoder_decoder", "decoder_only", "rnn"]
    num_encoder_layers: int  # N (encoder); unused by a decoder-only model, must then be 0.
    num_decoder_layers: int  # N (decoder).
    d_model: int
    d_ff: int
    num_heads: int  # h
    d_k: int | None  # per-head query/key size; None: d_model // num_heads.
    d_v: int | None  # per-head value size; None: d_model // num_heads.
    dropout_rate: float  # P_drop: sublayer outputs and embeddings + positions.
    attention_dropout_rate: float  # On attention weights; the paper uses none.
    activation: Literal["relu", "gelu"]
    normalization: Literal["post", "pre"]  # post-LN as in the paper, or pre-LN + final LN.
    layer_norm_epsilon: float
    positional_encoding: Literal["sinusoidal", "learned"]
    share_embeddings: bool  # One embedding table for source and target.
    tie_output_embedding: bool  # Pre-softmax projection = target embedding transposed.
    # How the same parameters are computed (COMPUTATION_KEYS), for the hardware at hand:
    # bfloat16 compute with float32 parameters; `jax.nn.dot_product_attention`, which is
    # cuDNN's fused attention on a GPU in bfloat16 ("xla": plain einsums, the only path with
    # attention dropout); recomputing each layer ("block") or all but its matmul outputs
    # ("dots") in the backward pass instead of storing its activations.
    dtype: Literal["float32", "bfloat16"]
    attention: Literal["xla", "dot_product_attention"]
    remat: Literal["none", "block", "dots"]
    # Derived, not set in config files: the tokenizer's vocabulary (at run time), and the
    # longest position, data.max_length + EXTRA_OUTPUT_TOKENS (the longest output decoded).
    vocab_size: int = 0
    max_len: int = 0

    @property
    def has_encoder(self) -> bool:
        """Whether the model reads a source (the Transformer's or the recurrent encoder)."""
        return self.kind != "decoder_only"

    @property
    def head_dim_k(self) -> int:
        return self.d_k if self.d_k is not None else self.d_model // self.num_heads

    @property
    def head_dim_v(self) -> int:
        return self.d_v if self.d_v is not None else self.d_model // self.num_heads


# ModelConfig fields that change how the parameters are computed, not what they are.
COMPUTATION_KEYS = ("dtype", "attention", "remat")


@dataclasses.dataclass(frozen=True)
class GeneratedTaskConfig:
    """Sizes of the generated English -> German-like corpus (transformer.data.generated)."""

    corpus_seed: int
    num_train: int
    num_validation: int
    num_test: int


@dataclasses.dataclass(frozen=True)
class TextFilesConfig:
    """Aligned UTF-8 files `{directory}/{lang}.{split}.txt` (transformer.data.text_files)."""

    directory: str
    source_lang: str
    target_lang: str


@dataclasses.dataclass(frozen=True)
class TfdsConfig:
    """A TFDS translation dataset (transformer.data.tfds_source), e.g. wmt14_translate/de-en."""

    name: str
    source_lang: str
    target_lang: str
    data_dir: str  # "" for TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    manual_dir: str  # "" unless the dataset needs files fetched by hand.
    download: bool  # Download and prepare if not yet in data_dir.
    train_split: str
    validation_split: str
    test_split: str


@dataclasses.dataclass(frozen=True)
class JsonFilesConfig:
    """Records in `{directory}/{split}.json` or `.jsonl` (transformer.data.json_files): the
    source and target are fields of each record, e.g. SAMSum's "dialogue" and "summary"."""

    directory: str
    source_field: str
    target_field: str
    train_split: str  # The file name without .json / .jsonl: "train", "val", ...
    validation_split: str
    test_split: str


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where sentences come from, how they are tokenized, cut and batched.

    Exactly one source section (`generated`, `text_files`, `tfds`) is set: the one `source`
    names.
    """

    source: Literal["generated", "text_files", "tfds", "json_files"]
    tokenizer: Literal["word", "bpe", "unigram"]  # Whole words, or a SentencePiece model.
    vocab_size: int  # Shared source/target vocabulary (an upper bound for "word").
    # A vocabulary file made by prepare.py, copied into the workdir on first use instead of
    # training one there; "" trains it from the training split.
    vocabulary: str
    max_length: int  # Tokens per sentence including EOS (per row when packed).
    # Tokens per source including EOS where sources are much longer than targets (a
    # dialogue and its summary); None: max_length for both sides.
    max_source_length: int | None
    overlong: Literal["drop", "truncate"]  # Pairs with a side over max_length.
    # "sentences": batch_size pairs per step; "packed": batch_size rows of max_length tokens,
    # several pairs each; "tokens": about batch_size tokens per side, pairs of similar length
    # bucketed together.
    batching: Literal["sentences", "packed", "tokens"]
    # With "tokens": what batch_size counts. "padded" tokens fix a step's memory; "real" ones
    # are the paper's ~25K source and ~25K target tokens (padded batches grow up to 1.5x).
    token_count: Literal["padded", "real"]
    # What validation and test outputs are scored with: sacreBLEU and chrF (translation), or
    # ROUGE (summarisation, transformer.rouge).
    metric: Literal["bleu", "rouge"]
    generated: GeneratedTaskConfig | None = None
    text_files: TextFilesConfig | None = None
    tfds: TfdsConfig | None = None
    json_files: JsonFilesConfig | None = None

    @property
    def source_length(self) -> int:
        """The longest source, in tokens including EOS."""
        return self.max_length if self.max_source_length is None else self.max_source_length

    @property
    def target_lang(self) -> str:
        """The target language's code ("de" for the generated German-like task)."""
        section = self.text_files or self.tfds
        return section.target_lang if section is not None else "de"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; one axis may be -1 to take the remaining devices."""

    data: int
    fsdp: int
    tensor: int


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment: training hyperparameters at the top level."""

    seed: int
    num_train_steps: int
    batch_size: int  # Sequences per optimizer step, all hosts together (packed: rows).
    grad_accum_steps: int  # Micro-batches per step; batch_size must divide evenly.
    learning_rate_scale: float  # Multiplies the paper's schedule; 1.0 is the paper.
    warmup_steps: int
    adam_b1: float
    adam_b2: float
    adam_eps: float
    label_smoothing: float  # epsilon_ls
    grad_clip_norm: float  # Global-norm clipping; 0 disables it.
    # PRNG of the dropout masks: JAX's default threefry, or "rbg", which draws other masks
    # at the same rate from hardware-friendly bits (on an accelerator threefry's hashing is
    # integer work off the matrix units).
    dropout_rng: Literal["threefry", "rbg"]
    log_every_steps: int
    eval_every_steps: int  # Validation loss; 0 disables it.
    bleu_every_steps: int  # Validation BLEU or ROUGE (data.metric), greedy; 0 disables it
    # (and must, for a language model).
    eval_batch_size: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    # A step with a NaN/Inf loss, gradient or update is skipped (parameters and optimizer
    # state kept) and counted; "stop" also ends training after max_consecutive_nonfinite such
    # steps in a row, "skip" never does.
    nonfinite_policy: Literal["skip", "stop"]
    max_consecutive_nonfinite: int
    num_samples_to_print: int  # Test translations printed at the end of training.
    # One device's peak TFLOP/s for the MFU in the log; 0: the datasheet's for the device
    # (transformer/flops.py), none on a CPU.
    peak_tflops_per_device: float
    # Trace steps profile_skip_steps + 1 to + profile_num_steps (transformer/profiling.py);
    # profile_num_steps = 0 traces nothing.
    profile_skip_steps: int
    profile_num_steps: int
    mesh: MeshConfig
    logical_axis_rules: tuple[tuple[str, Any], ...]
    model: ModelConfig
    data: DataConfig

    def with_vocab_size(self, vocab_size: int) -> Config:
        """This config with the model's vocabulary set, from the tokenizer, at run time."""
        return dataclasses.replace(
            self, model=dataclasses.replace(self.model, vocab_size=vocab_size)
        )


# ----------------------------------------------------------------------------- parsing
def from_config_dict(config: ConfigDict) -> Config:
    """Validates `config` and returns its typed, frozen view. Raises ConfigError."""
    _refuse_renamed_keys(config)
    cfg = _build(Config, config, prefix="")
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, max_len=max_positions(cfg.data)),
    )
    _check_model(cfg.model)
    _check_data(cfg)
    _check_training(cfg)
    _check_mesh(cfg)
    return cfg


def max_positions(data: DataConfig) -> int:
    """The positional table's length: the longest sequence either side holds, plus the 50
    tokens an output may run past its input (section 6.1)."""
    return max(data.max_length, data.source_length) + EXTRA_OUTPUT_TOKENS


def _refuse_renamed_keys(config: ConfigDict) -> None:
    data = config.get("data") if isinstance(config, (ConfigDict, dict)) else None
    if not isinstance(data, (ConfigDict, dict)):
        return
    if data.get("source") == "embedded":
        raise ConfigError(
            "config.data.source='embedded' is now 'generated' (the generated corpus, not "
            "embeddings); its section data.embedded is now data.generated."
        )
    if "embedded" in data:
        raise ConfigError("config.data.embedded is now data.generated.")


def _build(cls: type, node: Any, prefix: str) -> Any:
    """Builds dataclass `cls` from ConfigDict `node`, checking keys and types."""
    if not isinstance(node, (ConfigDict, dict)):
        raise ConfigError(f"config.{prefix.rstrip('.')} must be a section, got {node!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    sections = {f.name for f in fields if f.default is None}  # Optional sections.
    names = required | sections  # Fields with other defaults are derived, not set.
    for key in node:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"Unknown config key '{prefix}{key}'{hint}.")
    values = {}
    for name in sorted(required | (sections & set(node.keys()))):
        if name not in node:
            raise ConfigError(f"Missing config key '{prefix}{name}'.")
        values[name] = _convert(hints[name], node[name], prefix + name)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Checks `value` against type `hint`; recurses into nested dataclasses."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config.{key}={value!r} must be one of {list(args)}.")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"config.{key} must be a sequence, got {value!r}.")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, bool, float, str) and not (
        isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    ):
        raise ConfigError(f"config.{key}={value!r} must be of type {hint.__name__}.")
    return value


# ------------------------------------------------------------------------------ checks
def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}={value!r}: {why}.")


def _check_model(m: ModelConfig) -> None:
    """Sizes positive, head sizes consistent, rates in range."""
    for key in ("d_model", "d_ff", "num_heads", "num_decoder_layers"):
        _require(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "must be positive")
    if m.has_encoder:
        why = "must be positive for an encoder-decoder model"
        _require(m.num_encoder_layers > 0, "model.num_encoder_layers", m.num_encoder_layers, why)
    else:
        why = "must be 0 for a decoder-only model"
        _require(m.num_encoder_layers == 0, "model.num_encoder_layers", m.num_encoder_layers, why)
    for key in ("d_k", "d_v"):
        value = getattr(m, key)
        if value is None:
            why = f"must divide model.d_model={m.d_model} while model.{key} is unset"
            _require(m.d_model % m.num_heads == 0, "model.num_heads", m.num_heads, why)
        else:
            _require(value > 0, f"model.{key}", value, "must be positive")
    for key in ("dropout_rate", "attention_dropout_rate"):
        value = getattr(m, key)
        _require(0.0 <= value < 1.0, f"model.{key}", value, "must be in [0, 1)")
    if m.attention == "dot_product_attention":
        why = f"needs d_k = d_v (here {m.head_dim_k} and {m.head_dim_v})"
        _require(m.head_dim_k == m.head_dim_v, "model.attention", m.attention, why)
        why = (
            f"jax.nn.dot_product_attention has no attention dropout; set "
            f"model.attention_dropout_rate=0 (now {m.attention_dropout_rate}) or attention='xla'"
        )
        _require(m.attention_dropout_rate == 0.0, "model.attention", m.attention, why)
    _require(m.layer_norm_epsilon > 0, "model.layer_norm_epsilon", m.layer_norm_epsilon,
             "must be positive")  # fmt: skip
    if m.kind == "rnn":
        why = "must be even: the bidirectional encoder's two directions have d_model / 2 each"
        _require(m.d_model % 2 == 0, "model.d_model", m.d_model, why)


def _check_data(cfg: Config) -> None:
    """One source section, the one `source` names; sizes and tokenizer that fit it."""
    d = cfg.data
    _require(d.vocab_size > 4, "data.vocab_size", d.vocab_size, "must exceed the 4 special tokens")
    _require(d.max_length > 1, "data.max_length", d.max_length, "must be at least 2")
    _require(d.source_length > 1, "data.max_source_length", d.max_source_length,
             "must be at least 2 (or None: data.max_length)")  # fmt: skip
    for section in ("generated", "text_files", "tfds", "json_files"):
        present = getattr(d, section) is not None
        if section == d.source:
            why = f"must be set when data.source={section!r}"
            _require(present, f"data.{section}", None, why)
        else:
            why = f"is unused with data.source={d.source!r}; remove it"
            _require(not present, f"data.{section}", "...", why)
    if d.generated is not None:
        for key in ("num_train", "num_validation", "num_test"):
            value = getattr(d.generated, key)
            _require(value > 0, f"data.generated.{key}", value, "must be positive")
    why = "use 'word' for the generated task and 'bpe' or 'unigram' for real corpora"
    _require((d.source == "generated") == (d.tokenizer == "word"), "data.tokenizer",
             d.tokenizer, why)  # fmt: skip
    if d.batching == "tokens":
        why = (
            f"with data.batching='tokens' it counts tokens and must hold one sequence of "
            f"the longest, {max(d.max_length, d.source_length)} tokens"
        )
        longest = max(d.max_length, d.source_length)
        _require(cfg.batch_size >= longest, "batch_size", cfg.batch_size, why)
    else:
        why = "counting real tokens is for data.batching='tokens'"
        _require(d.token_count == "padded", "data.token_count", d.token_count, why)
    if d.max_source_length is not None:
        why = "a source length of its own is for encoder-decoder models"
        _require(cfg.model.has_encoder, "data.max_source_length", d.max_source_length, why)
        why = "rows of packed pairs have one length for both sides"
        _require(d.batching != "packed", "data.max_source_length", d.max_source_length, why)
    if cfg.model.kind == "rnn":
        why = "the recurrent model reads one pair per row; use 'tokens' or 'sentences'"
        _require(d.batching != "packed", "data.batching", d.batching, why)


def _check_training(cfg: Config) -> None:
    """Step counts, intervals and optimizer settings."""
    positive = (
        "num_train_steps", "batch_size", "grad_accum_steps", "warmup_steps", "log_every_steps",
        "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
        "max_consecutive_nonfinite",
    )  # fmt: skip
    for key in positive:
        _require(getattr(cfg, key) > 0, key, getattr(cfg, key), "must be positive")
    for key in ("eval_every_steps", "bleu_every_steps", "num_samples_to_print", "grad_clip_norm",
                "peak_tflops_per_device", "profile_skip_steps", "profile_num_steps"):  # fmt: skip
        _require(getattr(cfg, key) >= 0, key, getattr(cfg, key), "must not be negative")
    why = f"must divide batch_size={cfg.batch_size}"
    _require(cfg.batch_size % cfg.grad_accum_steps == 0, "grad_accum_steps",
             cfg.grad_accum_steps, why)  # fmt: skip
    if cfg.model.kind == "decoder_only":
        why = "must be 0 for a decoder-only model, which does not translate"
        _require(cfg.bleu_every_steps == 0, "bleu_every_steps", cfg.bleu_every_steps, why)
    _require(cfg.learning_rate_scale > 0, "learning_rate_scale", cfg.learning_rate_scale,
             "must be positive")  # fmt: skip
    for key in ("label_smoothing", "adam_b1", "adam_b2"):
        _require(0.0 <= getattr(cfg, key) < 1.0, key, getattr(cfg, key), "must be in [0, 1)")
    _require(cfg.adam_eps > 0, "adam_eps", cfg.adam_eps, "must be positive")


def _check_mesh(cfg: Config) -> None:
    """At most one axis left to fill the devices; rules as (logical name, mesh axes) pairs."""
    sizes = dataclasses.asdict(cfg.mesh)
    _require(list(sizes.values()).count(-1) <= 1, "mesh", sizes, "at most one axis may be -1")
    for axis, size in sizes.items():
        _require(size == -1 or size > 0, f"mesh.{axis}", size, "must be positive or -1")
    for rule in cfg.logical_axis_rules:
        why = "each rule is a (logical_name, mesh_axes) pair"
        _require(len(rule) == 2 and isinstance(rule[0], str), "logical_axis_rules", rule, why)


# ------------------------------------------------------------------- files and overrides
def load_file(spec: str) -> ConfigDict:
    """The ConfigDict of "path/to/config.py[:ARG]": the file's `get_config()`, or
    `get_config(ARG)`. ConfigError if the file does not exist or defines no get_config."""
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        present = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if (
            os.path.isdir(folder)) else []  # fmt: skip
        raise ConfigError(
            f"--config {spec}: {path} does not exist"
            + (f"; {folder} has {', '.join(present)}." if present else ".")
        )
    name = os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(f"config_file_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # Where dataclasses and pickle look it up.
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"--config {spec}: {path} defines no get_config().")
    return module.get_config(arg) if sep else module.get_config()


OVERRIDE_PREFIX = "--config."


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the "KEY=VALUE" of every `--config.KEY=VALUE` in `argv`): the
    one override syntax of every entry point."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith(OVERRIDE_PREFIX):
            overrides.append(arg[len(OVERRIDE_PREFIX) :])
        else:
            rest.append(arg)
    return rest, overrides


def with_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """A copy of `config` with each "dotted.key=value" applied (values parsed as Python
    literals, else taken as strings: "none" is the string, "None" is None, booleans are True
    and False); ConfigError naming a key that does not exist or a value of the wrong type."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"Override {item!r} is not of the form KEY=VALUE.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ConfigDict) else None
        if not isinstance(node, ConfigDict) or leaf not in node:
            close = difflib.get_close_matches(leaf, list(node or ()), n=1)
            prefix = "".join(f"{p}." for p in parents)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"Override {item!r}: unknown config key '{key}'{hint}.")
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"Override {item!r}: {e}") from None
    return config


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, as "key: old -> new"."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found
