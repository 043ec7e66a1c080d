"""A run's directory, and whether a config continues the run that made it.

A workdir holds `config.json` (the resolved config), the vocabulary (`vocab.txt` or
`spm.model`), `checkpoints/`, `metrics.jsonl` and `tensorboard/`. A config continues a run when
it has the run's identity: the same model architecture (every model setting except how the
parameters are computed, `config.COMPUTATION_KEYS`) and the same data. Training settings such
as the learning rate or the number of steps may change between runs of one workdir. The
config.json, each checkpoint and the vocabulary are checked against it here, and a mismatch
is refused with the settings that differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import jax
from ml_collections import ConfigDict

from transformer.config import COMPUTATION_KEYS, Config, DataConfig, differences
from transformer.config import from_config_dict as parse_config
from transformer.data.tokenizer import SentencePieceTokenizer, Tokenizer, WordTokenizer
from transformer.errors import UserError
from transformer.files import write_atomically

CONFIG_FILE = "config.json"
VOCABULARY_FILES = {"word": "vocab.txt", "bpe": "spm.model", "unigram": "spm.model"}
REMEDY = "Use a new --workdir, or the config that made this one."


class WorkdirError(UserError):
    """The workdir cannot be written, or belongs to another run."""


def architecture(config: Config) -> dict[str, Any]:
    """The model settings the parameters depend on, by name."""
    model = dataclasses.asdict(config.model)
    return {k: v for k, v in model.items() if k not in COMPUTATION_KEYS}


# Where the data and the vocabulary are fetched from, not what they are: a run may resume
# with a prepared copy (prepare.py) instead of downloading.
TFDS_FETCH_KEYS = ("data_dir", "manual_dir", "download")


def identity(config: Config) -> dict[str, Any]:
    """What a config must share with a workdir's run to continue it."""
    data = dataclasses.asdict(config.data)
    data.pop("vocabulary")
    for key in TFDS_FETCH_KEYS:
        (data["tfds"] or {}).pop(key, None)
    return {"model": architecture(config), "data": data}


def checkpoint_meta(config: Config) -> dict[str, Any]:
    """What every checkpoint records, and is checked against on restore."""
    return {"model": architecture(config)}


def prepare(workdir: str) -> None:
    """Creates `workdir` and checks that this process can write there."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
            pass
    except OSError as e:
        raise WorkdirError(
            f"Cannot write to --workdir {workdir}: {e.strerror or e} ({e.filename}). Choose a "
            "directory you can write to, or fix its permissions."
        ) from e


def write_config(config_dict: ConfigDict, config: Config, workdir: str) -> None:
    """Writes config.json; refuses a workdir whose run has another identity. `config` is
    `config_dict` parsed, before the vocabulary sets its size."""
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        saved = parse_config(read_config(workdir))
        changed = differences(identity(saved), identity(config))
        if changed:
            raise WorkdirError(
                f"--workdir {workdir} was created with different model or data settings "
                f"({'; '.join(changed)}). {REMEDY}"
            )
    if jax.process_index() == 0:
        resolved = json.loads(config_dict.to_json_best_effort())
        write_atomically(path, json.dumps(resolved, indent=2, sort_keys=True))


# Keys of config files written before the current names, and what they became (None: gone).
_RENAMED_KEYS = {
    "fused_qkv": None,
    "cross_entropy": None,
    "cross_entropy_chunks": None,
    "donate_state": None,
    "max_len": None,
    "embedded": "generated",
}


def read_config(workdir: str) -> ConfigDict:
    """The workdir's config.json as a ConfigDict, with the keys of earlier versions renamed
    or dropped (switches since removed: their runs computed the same values)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise WorkdirError(f"{path} does not exist: {workdir} is not a trained workdir.")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("data", {}).get("source") == "embedded":
        saved["data"]["source"] = "generated"
    # Written before summaries: max_length was both sides' limit, BLEU the only metric.
    saved.get("data", {}).setdefault("max_source_length", None)
    saved.get("data", {}).setdefault("metric", "bleu")
    saved.get("data", {}).setdefault("vocabulary", "")
    saved.get("data", {}).setdefault("token_count", "padded")  # Before real-token batches.
    for key, default in (
        ("peak_tflops_per_device", 0.0),
        ("profile_skip_steps", 10),
        ("profile_num_steps", 0),
    ):  # Written before they existed.
        saved.setdefault(key, default)  # fmt: skip
    for section in (saved, saved.get("model", {}), saved.get("data", {})):
        for old, new in _RENAMED_KEYS.items():
            if old in section:
                value = section.pop(old)
                if new is not None:
                    section[new] = value
    return ConfigDict(saved)


def vocabulary_path(config: DataConfig, workdir: str) -> str:
    """Where the vocabulary of `config` lives in `workdir`; refuses a workdir that holds a
    vocabulary of another kind."""
    path = os.path.join(workdir, VOCABULARY_FILES[config.tokenizer])
    other = [
        f
        for f in set(VOCABULARY_FILES.values()) - {VOCABULARY_FILES[config.tokenizer]}
        if os.path.exists(os.path.join(workdir, f))
    ]
    if other:
        raise WorkdirError(
            f"{workdir} holds a {other[0]} vocabulary but data.tokenizer is "
            f"{config.tokenizer!r}. {REMEDY}"
        )
    return path


def load_vocabulary(config: DataConfig, workdir: str) -> Tokenizer:
    """The workdir's vocabulary, checked against the data settings."""
    path = vocabulary_path(config, workdir)
    if not os.path.exists(path):
        raise WorkdirError(
            f"{workdir} has no vocabulary ({path}). Train first; on several hosts the "
            "workdir must be on a filesystem that every host sees."
        )
    if config.tokenizer == "word":
        tokenizer = WordTokenizer.load(path)
        if tokenizer.vocab_size > config.vocab_size:
            raise WorkdirError(
                f"{path} holds {tokenizer.vocab_size} tokens but data.vocab_size is "
                f"{config.vocab_size}. {REMEDY}"
            )
        return tokenizer
    tokenizer = SentencePieceTokenizer.load(path)
    found = (tokenizer.model_type, tokenizer.vocab_size)
    if found != (config.tokenizer, config.vocab_size):
        raise WorkdirError(
            f"{path} is a {found[0]} model of {found[1]} pieces but the config asks for "
            f"data.tokenizer={config.tokenizer!r}, data.vocab_size={config.vocab_size}. {REMEDY}"
        )
    return tokenizer
