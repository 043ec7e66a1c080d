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
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ml_collections import ConfigDict


class ConfigError(ValueError):
    """An experiment config is malformed; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (Vaswani et al. 2017, Table 3 columns)."""

    kind: Literal["encoder_decoder", "decoder_only"]
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
    max_len: int  # Longest position the positional encoding covers.
    share_embeddings: bool  # One embedding table for source and target.
    tie_output_embedding: bool  # Pre-softmax projection = target embedding transposed.
    dtype: Literal["float32", "bfloat16"]  # Compute dtype; parameters stay float32.
    # How the same math is computed (tests/test_switches.py checks each against the plain
    # path): one [d_model, 3, heads, d_k] query/key/value kernel (key/value for
    # cross-attention) instead of three; plain einsums ("xla") or jax.nn.dot_product_attention
    # (cuDNN on GPU in bfloat16); recomputing each layer in the backward pass ("block") or all
    # but its matmul outputs ("dots") instead of storing its activations ("none").
    fused_qkv: bool
    attention: Literal["xla", "dot_product_attention"]
    remat: Literal["none", "block", "dots"]
    vocab_size: int = 0  # Set from the tokenizer at run time, not from the config file.

    @property
    def head_dim_k(self) -> int:
        return self.d_k if self.d_k is not None else self.d_model // self.num_heads

    @property
    def head_dim_v(self) -> int:
        return self.d_v if self.d_v is not None else self.d_model // self.num_heads


@dataclasses.dataclass(frozen=True)
class EmbeddedTaskConfig:
    """Sizes of the generated English -> German-like corpus (transformer.data.embedded)."""

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
class DataConfig:
    """Where sentences come from, how they are tokenized, cut and batched.

    Exactly one source section (`embedded`, `text_files`, `tfds`) is set: the one `source`
    names.
    """

    source: Literal["embedded", "text_files", "tfds"]
    tokenizer: Literal["word", "bpe", "unigram"]  # Whole words, or a SentencePiece model.
    vocab_size: int  # Shared source/target vocabulary (an upper bound for "word").
    max_length: int  # Tokens per sentence including EOS (per row when packed).
    overlong: Literal["drop", "truncate"]  # Pairs with a side over max_length.
    # "sentences": batch_size pairs per step; "packed": batch_size rows of max_length tokens,
    # several pairs each; "tokens": about batch_size tokens per side, pairs of similar length
    # bucketed together.
    batching: Literal["sentences", "packed", "tokens"]
    embedded: EmbeddedTaskConfig | None = None
    text_files: TextFilesConfig | None = None
    tfds: TfdsConfig | None = None

    @property
    def target_lang(self) -> str:
        """The target language's code ("de" for the embedded German-like task)."""
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
    # "chunked": the pre-softmax projection fused into the loss, over cross_entropy_chunks
    # pieces of the target length (the full logits never stored; see loss.py).
    cross_entropy: Literal["one_hot", "integer", "chunked"]
    cross_entropy_chunks: int  # Used by "chunked"; a length it does not divide takes a divisor.
    dropout_rng: Literal["threefry", "rbg"]  # PRNG implementation of the dropout key.
    # The train step consumes the state it is given, writing the new one into its buffers;
    # False keeps the old state readable after the step (debugging), at a second copy.
    donate_state: bool
    log_every_steps: int
    eval_every_steps: int  # Validation loss; 0 disables it.
    bleu_every_steps: int  # Validation BLEU (greedy); 0 disables it (and must, for an LM).
    eval_batch_size: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    # A step with a NaN/Inf loss, gradient or update is skipped (parameters and optimizer
    # state kept) and counted; "stop" also ends training after max_consecutive_nonfinite such
    # steps in a row, "skip" never does.
    nonfinite_policy: Literal["skip", "stop"]
    max_consecutive_nonfinite: int
    num_samples_to_print: int  # Test translations printed at the end of training.
    mesh: MeshConfig
    logical_axis_rules: tuple[tuple[str, Any], ...]
    model: ModelConfig
    data: DataConfig

    def with_vocab_size(self, vocab_size: int) -> Config:
        """This config with the model's vocabulary set, from the tokenizer, at run time."""
        return dataclasses.replace(
            self, model=dataclasses.replace(self.model, vocab_size=vocab_size)
        )


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


def with_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """A copy of `config` with each "dotted.key=value" applied (values parsed as Python
    literals, else taken as strings: "none" is the string, "None" is None); ConfigError naming
    a key that does not exist or a value of the wrong type."""
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
            raise ConfigError(f"Override {item!r}: unknown config key '{key}'.")
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"Override {item!r}: {e}") from None
    return config


def from_config_dict(config: ConfigDict) -> Config:
    """Validates `config` and returns its typed, frozen view. Raises ConfigError."""
    cfg = _build(Config, config, prefix="")
    _check_values(cfg)
    return cfg


def _build(cls: type, node: Any, prefix: str) -> Any:
    """Builds dataclass `cls` from ConfigDict `node`, checking keys and types."""
    if not isinstance(node, (ConfigDict, dict)):
        raise ConfigError(f"config.{prefix.rstrip('.')} must be a section, got {node!r}")
    hints = typing.get_type_hints(cls)
    # Fields with a default are set at run time (vocab_size), or optional sections (None).
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    sections = {f.name for f in dataclasses.fields(cls) if f.default is None}
    names = required | sections
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


def _check_values(cfg: Config) -> None:
    """Range and consistency checks that types alone cannot express."""

    def require(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise ConfigError(f"config.{key}={value!r}: {why}.")

    require(
        cfg.cross_entropy_chunks > 0,
        "cross_entropy_chunks",
        cfg.cross_entropy_chunks,
        "must be positive",
    )
    m = cfg.model
    for key in ("d_model", "d_ff", "num_heads", "num_decoder_layers", "max_len"):
        require(getattr(m, key) > 0, f"model.{key}", getattr(m, key), "must be positive")
    if m.kind == "encoder_decoder":
        require(
            m.num_encoder_layers > 0,
            "model.num_encoder_layers",
            m.num_encoder_layers,
            "must be positive for an encoder-decoder model",
        )
    else:
        require(
            m.num_encoder_layers == 0,
            "model.num_encoder_layers",
            m.num_encoder_layers,
            "must be 0 for a decoder-only model",
        )
    for key in ("d_k", "d_v"):
        value = getattr(m, key)
        if value is None:
            require(
                m.d_model % m.num_heads == 0,
                "model.num_heads",
                m.num_heads,
                f"must divide model.d_model={m.d_model} while model.{key} is unset",
            )
        else:
            require(value > 0, f"model.{key}", value, "must be positive")
    for key in ("dropout_rate", "attention_dropout_rate"):
        value = getattr(m, key)
        require(0.0 <= value < 1.0, f"model.{key}", value, "must be in [0, 1)")
    if m.head_dim_k != m.head_dim_v:
        for key, value in (("fused_qkv", m.fused_qkv), ("attention", m.attention)):
            require(
                value in (False, "xla"),
                f"model.{key}",
                value,
                f"needs d_k = d_v (here {m.head_dim_k} and {m.head_dim_v}): keys and values "
                "share one kernel / one head size",
            )
    require(
        m.attention != "dot_product_attention" or m.attention_dropout_rate == 0.0,
        "model.attention",
        m.attention,
        f"jax.nn.dot_product_attention has no attention dropout; set "
        f"model.attention_dropout_rate=0 (now {m.attention_dropout_rate}) or attention='xla'",
    )
    require(
        m.layer_norm_epsilon > 0,
        "model.layer_norm_epsilon",
        m.layer_norm_epsilon,
        "must be positive",
    )
    require(
        cfg.data.max_length <= m.max_len,
        "data.max_length",
        cfg.data.max_length,
        f"exceeds model.max_len={m.max_len}, the longest position the model encodes",
    )

    d = cfg.data
    require(d.vocab_size > 4, "data.vocab_size", d.vocab_size, "must exceed the 4 special tokens")
    require(d.max_length > 1, "data.max_length", d.max_length, "must be at least 2")
    if m.kind == "decoder_only":
        require(
            cfg.bleu_every_steps == 0,
            "bleu_every_steps",
            cfg.bleu_every_steps,
            "must be 0 for a decoder-only model, which does not translate",
        )
    for section in ("embedded", "text_files", "tfds"):
        present = getattr(d, section) is not None
        if section == d.source:
            require(present, f"data.{section}", None, f"must be set when data.source={section!r}")
        else:
            require(
                not present,
                f"data.{section}",
                "...",
                f"is unused with data.source={d.source!r}; remove it",
            )
    if d.embedded is not None:
        for key in ("num_train", "num_validation", "num_test"):
            value = getattr(d.embedded, key)
            require(value > 0, f"data.embedded.{key}", value, "must be positive")
    require(
        (d.source == "embedded") == (d.tokenizer == "word"),
        "data.tokenizer",
        d.tokenizer,
        "use 'word' for the embedded task and 'bpe' or 'unigram' for real corpora",
    )
    if d.batching == "tokens":
        require(
            cfg.batch_size >= d.max_length,
            "batch_size",
            cfg.batch_size,
            f"with data.batching='tokens' it counts tokens and must hold one "
            f"data.max_length={d.max_length} sentence",
        )

    for key in (
        "num_train_steps",
        "batch_size",
        "grad_accum_steps",
        "warmup_steps",
        "log_every_steps",
        "eval_batch_size",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "max_consecutive_nonfinite",
    ):
        require(getattr(cfg, key) > 0, key, getattr(cfg, key), "must be positive")
    for key in ("eval_every_steps", "bleu_every_steps", "num_samples_to_print", "grad_clip_norm"):
        require(getattr(cfg, key) >= 0, key, getattr(cfg, key), "must not be negative")
    require(
        cfg.batch_size % cfg.grad_accum_steps == 0,
        "grad_accum_steps",
        cfg.grad_accum_steps,
        f"must divide batch_size={cfg.batch_size}",
    )
    require(
        cfg.learning_rate_scale > 0,
        "learning_rate_scale",
        cfg.learning_rate_scale,
        "must be positive",
    )
    require(
        0.0 <= cfg.label_smoothing < 1.0,
        "label_smoothing",
        cfg.label_smoothing,
        "must be in [0, 1)",
    )
    for key in ("adam_b1", "adam_b2"):
        require(0.0 <= getattr(cfg, key) < 1.0, key, getattr(cfg, key), "must be in [0, 1)")
    require(cfg.adam_eps > 0, "adam_eps", cfg.adam_eps, "must be positive")

    sizes = dataclasses.asdict(cfg.mesh)
    require(list(sizes.values()).count(-1) <= 1, "mesh", sizes, "at most one axis may be -1")
    for axis, size in sizes.items():
        require(size == -1 or size > 0, f"mesh.{axis}", size, "must be positive or -1")
    for rule in cfg.logical_axis_rules:
        require(
            len(rule) == 2 and isinstance(rule[0], str),
            "logical_axis_rules",
            rule,
            "each rule is a (logical_name, mesh_axes) pair",
        )
