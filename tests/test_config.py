"""Experiment configs: the paper's sizes, and clear errors for bad keys and values."""

import dataclasses
import importlib
import pathlib

import pytest

from configs import ablations, base
from transformer.config import ConfigError, from_config_dict, with_overrides

from .model_configs import abstract_parameter_count

CONFIG_NAMES = sorted(
    p.stem
    for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
    if p.stem != "__init__"
)


@pytest.mark.parametrize("name, millions", [("base", 65), ("big", 213)])
def test_parameter_counts_match_table_3(name, millions):
    config = importlib.import_module(f"configs.{name}").get_config()
    count = abstract_parameter_count(config, vocab_size=37_000)
    assert abs(count / 1e6 - millions) / millions < 0.04, count


def test_base_and_big_carry_the_papers_hyperparameters():
    b = from_config_dict(base.get_config())
    m = b.model
    assert (m.num_encoder_layers, m.d_model, m.d_ff, m.num_heads) == (6, 512, 2048, 8)
    assert (m.head_dim_k, m.head_dim_v, m.dropout_rate, b.label_smoothing) == (64, 64, 0.1, 0.1)
    assert (b.warmup_steps, b.adam_b1, b.adam_b2, b.adam_eps) == (4000, 0.9, 0.98, 1e-9)
    big = from_config_dict(importlib.import_module("configs.big").get_config())
    m = big.model
    assert (m.num_decoder_layers, m.d_model, m.d_ff, m.num_heads) == (6, 1024, 4096, 16)
    assert (m.head_dim_k, m.head_dim_v, m.dropout_rate) == (64, 64, 0.3)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_file_validates(name):
    from_config_dict(importlib.import_module(f"configs.{name}").get_config())


def with_change(path: str, value):
    config = base.get_config()
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value
    return config


def test_unknown_key_is_named_with_a_suggestion():
    config = base.get_config()
    config.model.num_layer = 2
    with pytest.raises(
        ConfigError,
        match=r"model\.num_layer'.*model\.num_decoder_layers|"
        r"model\.num_layer'.*model\.num_encoder_layers",
    ):
        from_config_dict(config)


def test_missing_key_is_named():
    config = base.get_config()
    del config.model["d_ff"]
    with pytest.raises(ConfigError, match=r"Missing config key 'model\.d_ff'"):
        from_config_dict(config)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("model.num_heads", 3, r"model\.num_heads=3: must divide model\.d_model=512"),
        ("model.dropout_rate", -0.1, r"model\.dropout_rate=-0\.1: must be in \[0, 1\)"),
        ("model.attention_dropout_rate", 1.0, r"model\.attention_dropout_rate"),
        ("label_smoothing", -0.5, r"label_smoothing=-0\.5"),
        ("model.d_model", 0, r"model\.d_model=0: must be positive"),
        ("model.activation", "swish", r"model\.activation='swish' must be one of"),
        ("model.normalization", "sandwich", r"model\.normalization"),
        ("model.num_encoder_layers", "6", r"model\.num_encoder_layers='6' must be of type int"),
        ("batch_size", 100, r"grad_accum_steps=1|batch_size"),
        ("grad_accum_steps", 3, r"grad_accum_steps=3: must divide batch_size=1024"),
        ("warmup_steps", -1, r"warmup_steps=-1"),
        ("mesh.data", 0, r"mesh\.data=0"),
        ("adam_b2", 1.5, r"adam_b2=1\.5"),
    ],
)
def test_bad_values_raise_an_error_naming_the_key(path, value, message):
    config = with_change(path, value)
    if path == "batch_size":
        config.grad_accum_steps = 8  # 100 is not divisible by 8.
    with pytest.raises(ConfigError, match=message):
        from_config_dict(config)


def test_explicit_head_sizes_need_not_divide_d_model():
    config = with_change("model.num_heads", 3)
    config.model.d_k = 32
    config.model.d_v = 64
    cfg = from_config_dict(config)
    assert (cfg.model.head_dim_k, cfg.model.head_dim_v) == (32, 64)


def test_decoder_only_model_must_not_declare_encoder_layers():
    config = with_change("model.kind", "decoder_only")
    with pytest.raises(ConfigError, match=r"model\.num_encoder_layers=6: must be 0"):
        from_config_dict(config)


def test_a_language_model_cannot_ask_for_bleu():
    config = with_change("model.kind", "decoder_only")
    config.model.num_encoder_layers = 0
    with pytest.raises(ConfigError, match=r"bleu_every_steps=5000: must be 0 for a decoder-only"):
        from_config_dict(config)


def test_a_workdir_config_of_an_earlier_version_reads_without_its_removed_switches(tmp_path):
    import json

    from transformer.workdir import read_config

    saved = base.get_config().to_dict()
    saved.update(cross_entropy="integer", cross_entropy_chunks=8, donate_state=True)
    saved["model"].update(fused_qkv=False, max_len=256)
    saved["data"]["source"] = "embedded"
    saved["data"]["embedded"] = saved["data"].pop("generated")
    del saved["data"]["max_source_length"], saved["data"]["metric"]  # Added with summaries.
    del saved["data"]["token_count"]  # Added with real-token batches.
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = from_config_dict(read_config(str(tmp_path)))
    assert config.data.source == "generated" and config.data.generated.num_train == 200_000
    assert config.model.max_len == config.data.max_length + 50
    assert (config.data.source_length, config.data.metric) == (config.data.max_length, "bleu")
    assert config.data.token_count == "padded"


def test_the_generated_task_is_named_so_and_its_old_name_is_refused_naming_the_new():
    config = base.get_config()
    config.data.source = "embedded"
    with pytest.raises(ConfigError, match=r"data\.source='embedded' is now 'generated'"):
        from_config_dict(config)
    config = base.get_config()
    config.data.embedded = config.data.generated
    with pytest.raises(ConfigError, match=r"data\.embedded is now data\.generated"):
        from_config_dict(config)


def test_the_longest_position_is_derived_from_the_longest_sentence():
    config = from_config_dict(base.get_config())
    assert config.model.max_len == config.data.max_length + 50  # Section 6.1's output limit.
    with_max_len = base.get_config()
    with_max_len.model.max_len = 256
    with pytest.raises(ConfigError, match=r"Unknown config key 'model\.max_len'"):
        from_config_dict(with_max_len)


def test_a_summariser_has_a_source_limit_of_its_own_that_sets_the_positions():
    samsum = importlib.import_module("configs.samsum")
    config = from_config_dict(samsum.get_config())
    assert (config.data.source_length, config.data.max_length) == (256, 128)
    assert config.model.max_len == 256 + 50 and config.data.metric == "rouge"
    gpu = from_config_dict(samsum.get_config("gpu"))
    m = gpu.model
    assert (m.d_model, m.num_encoder_layers, m.dtype, m.max_len) == (512, 6, "bfloat16", 562)
    assert gpu.batch_size > config.batch_size
    assert dataclasses.replace(gpu.data, max_source_length=256) == config.data
    with pytest.raises(ConfigError, match=r"samsum.py:tpu: the sizes are 'cpu' and 'gpu'"):
        samsum.get_config("tpu")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data.max_source_length": 1}, r"max_source_length=1: must be at least 2"),
        ({"data.max_source_length": 256, "data.batching": "packed"}, r"packed pairs have one"),
        ({"data.max_source_length": 256, "batch_size": 100, "data.batching": "tokens"},
         r"batch_size=100: .* one sequence of the longest, 256 tokens"),
        ({"data.metric": "meteor"}, r"data\.metric='meteor' must be one of \['bleu', 'rouge'\]"),
        ({"data.token_count": "real"}, r"token_count='real': counting real tokens is for "
         r"data\.batching='tokens'"),
        ({"data.token_count": "words", "data.batching": "tokens"},
         r"token_count='words' must be one of \['padded', 'real'\]"),
    ],
)  # fmt: skip
def test_bad_summarisation_settings_are_named(changes, message):
    config = base.get_config()
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        with node.ignore_type():
            node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        from_config_dict(config)
    samsum = importlib.import_module("configs.samsum").get_config()
    del samsum.data["json_files"]
    with pytest.raises(ConfigError, match=r"data\.json_files=None: must be set when"):
        from_config_dict(samsum)


def test_overrides_parse_python_literals_and_name_unknown_keys():
    original = ablations.get_config("base")
    config = with_overrides(
        original, ["num_train_steps=7", "model.dropout_rate=0.25", "model.activation=gelu"]
    )
    assert (config.num_train_steps, config.model.dropout_rate) == (7, 0.25)
    assert config.model.activation == "gelu"
    # "none" is a string, as the Literal keys spell it; "None" is None.
    config = with_overrides(original, ["model.remat=none", "model.d_k=None"])
    assert (config.model.remat, config.model.d_k) == ("none", None)
    assert original.to_dict() == ablations.get_config("base").to_dict()  # A copy was changed.
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.num_layers'"):
        with_overrides(ablations.get_config("base"), ["model.num_layers=2"])
    with pytest.raises(ConfigError, match="not of the form KEY=VALUE"):
        with_overrides(ablations.get_config("base"), ["num_train_steps"])
    with pytest.raises(ConfigError, match="num_train_steps=many"):
        with_overrides(ablations.get_config("base"), ["num_train_steps=many"])
