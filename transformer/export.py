"""A trained Transformer for the engines people serve with: a Hugging Face MarianMTModel with
its SentencePiece tokenizer, and that model converted by CTranslate2.

MarianMT is the paper's Transformer as Marian builds it: post-LN, sinusoidal positions, shared
embeddings scaled by sqrt(d_model) and tied to the pre-softmax projection, ReLU. It computes
the same function from our weights, with these differences by design:

- Marian's sinusoidal table holds the sines in the first half of each vector and the cosines in
  the second; ours interleaves them (section 3.5). The export reorders every d_model axis
  (`marian_order`): the model is invariant to a reordering of its features applied everywhere
  (LayerNorm statistics, residual sums and the tied logits x E^T do not depend on it).
- Marian's projections have biases, ours (the paper's) none: they are zero, as is its
  final_logits_bias.
- Marian's LayerNorm epsilon is fixed at 1e-5 (ours is model.layer_norm_epsilon, 1e-6 by
  default); CTranslate2 takes ours.
- The decoder starts from BOS (decoder_start_token_id), as ours. CTranslate2's Marian loader
  assumes Marian's own start (a zero embedding) and a trailing <pad> token to drop; the
  loader here keeps BOS and the whole vocabulary.
- MarianTokenizer normalises punctuation with sacremoses' MosesPunctNormalizer before
  SentencePiece, which ours does not: some texts get other ids (docs/export.md measures it).

torch, transformers and ctranslate2 come with `pip install -e '.[export]'` and are imported
here only, when an export runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from transformer.config import ModelConfig
from transformer.errors import UserError
from transformer.special_tokens import BOS_ID, EOS_ID, PAD_ID

MARIAN_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_pytorch_tanh"}  # Flax's gelu is tanh's.


class ExportError(UserError):
    """The model or vocabulary has no equivalent in the target format."""


def check_exportable(model: ModelConfig, tokenizer_kind: str) -> None:
    """Refuses, naming the setting, a model MarianMT cannot compute exactly."""
    needs = {
        "model.kind": (model.kind, "encoder_decoder"),
        "model.normalization": (model.normalization, "post"),
        "model.positional_encoding": (model.positional_encoding, "sinusoidal"),
        "model.share_embeddings": (model.share_embeddings, True),
        "model.tie_output_embedding": (model.tie_output_embedding, True),
    }
    for key, (value, needed) in needs.items():
        if value != needed:
            raise ExportError(f"MarianMT needs {key}={needed!r}; this model has {value!r}.")
    head_dim = model.d_model // model.num_heads
    if (model.head_dim_k, model.head_dim_v) != (head_dim, head_dim) or model.d_model % 2:
        raise ExportError(
            f"MarianMT needs d_k = d_v = d_model / num_heads and an even d_model; this model "
            f"has d_model {model.d_model}, {model.num_heads} heads, d_k {model.head_dim_k}, "
            f"d_v {model.head_dim_v}."
        )
    if tokenizer_kind == "word":
        raise ExportError(
            "The export writes a SentencePiece tokenizer; this workdir has a word vocabulary "
            "(data.tokenizer='word'). Train with data.tokenizer 'bpe' or 'unigram'."
        )


def check_installed(target: str) -> None:
    """Refuses an export whose packages (the `export` extra) are not installed."""
    needed = ["torch", "transformers"] + (["ctranslate2"] if target == "ct2" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"Exporting to {target} needs {', '.join(missing)}: pip install -e '.[export]'"
        )


def marian_order(d_model: int) -> np.ndarray:
    """[d_model]: our feature indices in Marian's order, the sine features (even) first."""
    return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def marian_config(model: ModelConfig) -> dict[str, Any]:
    """The MarianConfig arguments of `model` (sizes, special tokens, no dropout)."""
    return dict(
        vocab_size=model.vocab_size,
        d_model=model.d_model,
        encoder_layers=model.num_encoder_layers,
        decoder_layers=model.num_decoder_layers,
        encoder_attention_heads=model.num_heads,
        decoder_attention_heads=model.num_heads,
        encoder_ffn_dim=model.d_ff,
        decoder_ffn_dim=model.d_ff,
        max_position_embeddings=model.max_len,
        activation_function=MARIAN_ACTIVATIONS[model.activation],
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,  # Marian's default forces one at the length limit; ours not.
    )


def _attention(params: dict, order: np.ndarray) -> dict[str, np.ndarray]:
    """q/k/v/out_proj weights [out, in] and zero biases of one of our attention sublayers
    (query/key/value [d_model, heads, d], out [heads, d, d_model])."""
    tensors = {}
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        kernel = params[ours][order]  # Rows in Marian's feature order.
        tensors[f"{theirs}.weight"] = kernel.reshape(kernel.shape[0], -1).T
        tensors[f"{theirs}.bias"] = np.zeros(kernel.shape[1] * kernel.shape[2], np.float32)
    out = params["out"].reshape(-1, params["out"].shape[-1])[:, order]
    tensors["out_proj.weight"] = out.T
    tensors["out_proj.bias"] = np.zeros(out.shape[1], np.float32)
    return tensors


def _layer(params: dict, order: np.ndarray, cross: bool) -> dict[str, np.ndarray]:
    """One encoder or decoder layer's tensors, by Marian's names within the layer."""
    sublayers = [("self_attention", "self_attn")]
    if cross:
        sublayers.append(("cross_attention", "encoder_attn"))
    tensors = {}
    for ours, theirs in sublayers:
        for name, value in _attention(params[ours], order).items():
            tensors[f"{theirs}.{name}"] = value
        norm = params[f"{ours}_norm"]
        tensors[f"{theirs}_layer_norm.weight"] = norm["scale"][order]
        tensors[f"{theirs}_layer_norm.bias"] = norm["bias"][order]
    ffn, norm = params["ffn"], params["ffn_norm"]
    tensors["fc1.weight"] = ffn["wi"]["kernel"][order].T
    tensors["fc1.bias"] = ffn["wi"]["bias"]
    tensors["fc2.weight"] = ffn["wo"]["kernel"][:, order].T
    tensors["fc2.bias"] = ffn["wo"]["bias"][order]
    tensors["final_layer_norm.weight"] = norm["scale"][order]
    tensors["final_layer_norm.bias"] = norm["bias"][order]
    return tensors


def marian_state_dict(params: Any, model: ModelConfig) -> dict[str, np.ndarray]:
    """Our parameters as MarianMTModel's tensors (float32 numpy, torch's [out, in] layout),
    every d_model axis in Marian's feature order. Position tables are not among them: the
    tied embeddings appear once, as model.shared.weight."""
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    order = marian_order(model.d_model)
    tensors = {"model.shared.weight": params["embed"]["embedding"][:, order]}
    for stack, count in (
        ("encoder", model.num_encoder_layers),
        ("decoder", model.num_decoder_layers),
    ):
        for i in range(count):
            layer = _layer(params[stack][f"layer_{i}"], order, cross=stack == "decoder")
            for name, value in layer.items():
                tensors[f"model.{stack}.layers.{i}.{name}"] = value
    tensors["final_logits_bias"] = np.zeros((1, model.vocab_size), np.float32)
    return {name: np.array(value, np.float32, order="C") for name, value in tensors.items()}


def write_hf(params: Any, model: ModelConfig, spm_model: str, out_dir: str) -> None:
    """Writes MarianMTModel `out_dir` (config, safetensors weights, generation config) with a
    MarianTokenizer on the SentencePiece model `spm_model`. `out_dir` must not exist."""
    import torch
    import transformers
    from transformers import MarianConfig, MarianMTModel

    from transformer.layers import sinusoidal_table

    transformers.utils.logging.disable_progress_bar()  # One bar per file written, in every log.

    hf = MarianMTModel(MarianConfig(**marian_config(model))).eval()
    tensors = {k: torch.from_numpy(v) for k, v in marian_state_dict(params, model).items()}
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    # What is left is Marian's own: tied copies of the shared embedding and position tables.
    untied = [k for k in missing if not k.endswith(("embed_tokens.weight", "embed_positions.weight",
                                                   "lm_head.weight"))]  # fmt: skip
    if unexpected or untied:
        raise RuntimeError(f"MarianMTModel's tensors differ: {unexpected or untied}")
    positions = hf.model.encoder.embed_positions.weight.detach().numpy()
    ours = sinusoidal_table(model.max_len, model.d_model)[:, marian_order(model.d_model)]
    if not np.allclose(positions, ours, atol=1e-6):
        raise RuntimeError("MarianMTModel's sinusoidal table is not ours reordered.")
    hf.generation_config.update(max_length=model.max_len + 1, forced_eos_token_id=None)
    hf.save_pretrained(out_dir)
    _write_tokenizer(spm_model, out_dir)


def _write_tokenizer(spm_model: str, out_dir: str) -> None:
    """MarianTokenizer's files: the SentencePiece model for both sides and vocab.json."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    for name in ("source.spm", "target.spm"):
        shutil.copyfile(spm_model, os.path.join(out_dir, name))
    processor = spm.SentencePieceProcessor(model_file=spm_model)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
    tokenizer = MarianTokenizer(
        os.path.join(out_dir, "source.spm"), os.path.join(out_dir, "target.spm"),
        os.path.join(out_dir, "vocab.json"), model_max_length=1_000_000,
    )  # fmt: skip
    tokenizer.save_pretrained(out_dir)


def convert_ct2(hf_dir: str, out_dir: str, layer_norm_epsilon: float) -> None:
    """Converts the MarianMTModel `hf_dir` (from `write_hf`) to CTranslate2 model `out_dir`
    with CTranslate2's Marian loader, keeping our decoder start and vocabulary and setting
    our LayerNorm epsilon (module docstring)."""
    import ctranslate2
    import transformers
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader
    from transformers import MarianMTModel, MarianTokenizer

    transformers.utils.logging.disable_progress_bar()

    class BosStartLoader(MarianMTLoader):
        def get_model_spec(self, model):  # Marian's, without dropping the last token.
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)

        def set_config(self, config, model, tokenizer):
            BartLoader.set_config(self, config, model, tokenizer)
            config.bos_token = tokenizer.convert_ids_to_tokens(BOS_ID)
            config.layer_norm_epsilon = layer_norm_epsilon

        def set_decoder(self, spec, decoder):  # From BOS's embedding, not a zero one.
            BartLoader.set_decoder(self, spec, decoder)

        def get_vocabulary(self, model, tokenizer):
            return BartLoader.get_vocabulary(self, model, tokenizer)

    class Converter(ctranslate2.converters.Converter):
        def _load(self):
            model = MarianMTModel.from_pretrained(hf_dir)
            return BosStartLoader()(model, MarianTokenizer.from_pretrained(hf_dir))

    Converter().convert(out_dir)
