"""What the explorer shows for one input: the model's output and, for every attention module,
its weights and each head's queries, keys and values, as one JSON-ready dict.

Each module carries "attention_weights" [heads, q_len, kv_len], "queries" [heads, q_len, d_k],
"keys" [heads, kv_len, d_k] and "values" [heads, kv_len, d_v]. Arrays travel as base64
float32 (exact, 4 bytes a number), each with its shape; the page decodes them with
`Float32Array`.
"""

from __future__ import annotations

import base64
import functools
import threading
from typing import Any

import jax
import numpy as np

from transformer import trainer
from transformer.attention_readout import attention_readout
from transformer.data.tokenizer import SentencePieceTokenizer, content_ids
from transformer.decode import beam_search, greedy_decode, greedy_decode_lm
from transformer.errors import UserError
from transformer.evaluation import decode_length
from transformer.inference import Restored
from transformer.model import shift_right
from transformer.special_tokens import EOS_ID, NUM_SPECIAL, PAD_ID

MAX_INPUT_CHARS = 4_000  # Bounds the work of one request; no model here reads more.
MAX_BEAM_SIZE = 8
WIDTH_QUANTUM = 16  # Sources are padded to a multiple of this for decoding: few compiles.

TITLES = {
    "encoder/self_attention": "Encoder self-attention",
    "decoder/self_attention": "Decoder self-attention",
    "decoder/cross_attention": "Encoder-decoder attention",
}
# The tokens a module's keys come from. Its queries: the source in the encoder; in the
# decoder, the target token each step writes (its query comes from the token before).
KEY_TOKENS = {
    "encoder/self_attention": "source",
    "decoder/self_attention": "target_input",
    "decoder/cross_attention": "source",
}


class InputError(UserError):
    """An input the explorer cannot explain: empty, too long, or a bad decoding setting."""


def encoded_array(x: np.ndarray) -> dict[str, Any]:
    """{"shape": [...], "data": base64 of the little-endian float32 values}."""
    x = np.ascontiguousarray(x, dtype="<f4")
    return {"shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode("ascii")}


def heads_first(name: str, x: np.ndarray) -> np.ndarray:
    """Queries, keys and values [len, heads, d] as [heads, len, d]; weights as they are."""
    return x if name == "attention_weights" else np.moveaxis(x, 1, 0)


def word_starts(tokenizer: Any, ids: list[int]) -> list[bool]:
    """Whether each token begins a word: every word-level token and special token does; a
    SentencePiece piece does when it carries the word boundary mark "▁"."""
    if not isinstance(tokenizer, SentencePieceTokenizer):
        return [True] * len(ids)
    pieces = tokenizer.pieces(ids)
    return [
        i < NUM_SPECIAL or k == 0 or ids[k - 1] < NUM_SPECIAL or piece.startswith("▁")
        for k, (i, piece) in enumerate(zip(ids, pieces, strict=True))
    ]


class Explainer:
    """A restored model that decodes an input and reads out its attention; one request at a
    time (a lock), so memory does not grow with concurrent requests."""

    def __init__(self, restored: Restored):
        self.restored = restored
        self.config = restored.config
        self.kind = restored.config.model.kind
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """The model the page talks to: kind, sizes and limits."""
        model = self.config.model
        return {
            "kind": self.kind,
            "layers": {"encoder": model.num_encoder_layers, "decoder": model.num_decoder_layers},
            "heads": 1 if self.kind == "rnn" else model.num_heads,  # Luong's single attention.
            "d_model": model.d_model,
            "max_input_tokens": self._input_limit(),
            "max_input_chars": MAX_INPUT_CHARS,
            "max_beam_size": MAX_BEAM_SIZE if self.config.model.has_encoder else 1,
            "steps": list(self.restored.steps),
        }

    def explain(self, text: Any, beam_size: Any = 1, alpha: Any = 0.6) -> dict[str, Any]:
        """Decodes `text` (a source sentence, or a language model's prompt) and returns its
        tokens, the output and every attention module's arrays; an InputError for bad input."""
        ids = self._input_ids(text)
        beam_size, alpha = self._check_decoding(beam_size, alpha)
        # Mesh and axis rules are per thread: each request's thread enters them.
        with self._lock, trainer.mesh_context(self.restored.placed.mesh, self.config):
            if self.config.model.has_encoder:
                output = self._translate(ids, beam_size, alpha)
                readout = self._readout(source=ids, target=output)
            else:
                output = self._continue(ids)
                readout = self._readout(target=output)
        result = {
            "kind": self.kind,
            "input": text,
            "output": self.restored.tokenizer.decode(output),
            "prompt_length": len(ids) if self.kind == "decoder_only" else None,
            "decoding": "greedy" if beam_size == 1 else f"beam {beam_size}, alpha {alpha}",
        }
        return result | self._tokens(ids, output) | {"modules": _modules(readout)}

    def _input_limit(self) -> int:
        data = self.config.data
        return data.source_length if self.config.model.has_encoder else data.max_length - 1

    def _input_ids(self, text: Any) -> list[int]:
        """The input's ids (EOS-ended for a source, none for a prompt), or an InputError."""
        if not isinstance(text, str):
            raise InputError('The request\'s "text" must be a string.')
        if not text.strip():
            raise InputError("The input is empty: type a sentence.")
        if len(text) > MAX_INPUT_CHARS:
            raise InputError(f"The input has {len(text)} characters; at most "
                             f"{MAX_INPUT_CHARS} are explained.")  # fmt: skip
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # A lone surrogate, which JSON can spell.
            raise InputError(f"The input is not Unicode text (character {e.start}).") from None
        ids = self.restored.tokenizer.encode(text.strip())
        if self.kind == "decoder_only":
            ids = ids[:-1]  # A prompt is continued, not ended.
        limit = self._input_limit()
        if len(ids) > limit:
            raise InputError(f"The input has {len(ids)} tokens; this model takes at most {limit}.")
        return ids

    def _check_decoding(self, beam_size: Any, alpha: Any) -> tuple[int, float]:
        if isinstance(beam_size, bool) or not isinstance(beam_size, int):
            raise InputError(f"The beam size must be a whole number from 1 to {MAX_BEAM_SIZE}.")
        if not 1 <= beam_size <= MAX_BEAM_SIZE:
            raise InputError(f"The beam size must be a whole number from 1 to {MAX_BEAM_SIZE}.")
        if beam_size > 1 and not self.config.model.has_encoder:
            raise InputError("A language model is continued greedily here; use beam size 1.")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 2:
            raise InputError("The length penalty alpha must be a number from 0 to 2.")
        return beam_size, round(float(alpha), 1)  # Rounded: one compiled search per tenth.

    def _translate(self, ids: list[int], beam_size: int, alpha: float) -> list[int]:
        """The output ids up to and including EOS."""
        row = _padded(ids)
        length = decode_length(self.config, row.shape[1])
        decode = _compiled_decoder(self.restored.placed.model, length, beam_size, alpha)
        return _until_eos(np.asarray(decode(self.restored.params, row))[0])

    def _continue(self, prompt: list[int]) -> list[int]:
        """The prompt and its greedy continuation, up to and including EOS."""
        row = np.asarray([prompt], np.int32)
        decode = _compiled_lm(self.restored.placed.model, self.config.data.max_length)
        return _until_eos(np.asarray(decode(self.restored.params, row))[0])

    def _readout(self, **sequences: list[int]) -> dict[str, dict[str, np.ndarray]]:
        """`attention_readout` of the teacher-forced pass over `sequences` (source and target,
        or a language model's target), each padded to a multiple of WIDTH_QUANTUM for one
        compiled pass per padded size and cut back: padding is masked, so the real rows and
        columns are those of the unpadded pass."""
        rows = [_padded(seq) for seq in sequences.values()]
        readout = _compiled_readout(self.restored.placed.model)(self.restored.params, *rows)
        lengths = {"source": len(sequences.get("source", ())), "target": len(sequences["target"])}
        lengths["target_input"] = lengths["target"]
        cut = {}
        for name, arrays in readout.items():
            stack, _, kind = name.split("/")
            q = lengths["source" if stack == "encoder" else "target"]
            k = lengths[KEY_TOKENS[f"{stack}/{kind}"]]
            cut[name] = {
                "attention_weights": np.asarray(arrays["attention_weights"])[:, :q, :k],
                "queries": np.asarray(arrays["queries"])[:q],
                "keys": np.asarray(arrays["keys"])[:k],
                "values": np.asarray(arrays["values"])[:k],
            }
        return cut

    def _tokens(self, ids: list[int], output: list[int]) -> dict[str, Any]:
        """The pieces of every token sequence a module's queries or keys come from, and
        which of them begin a word."""
        decoder_input = shift_right(np.asarray([output]), np.arange(len(output))[None])
        sequences = {"target": output, "target_input": [int(i) for i in decoder_input[0]]}
        if self.config.model.has_encoder:
            sequences["source"] = ids
        tokenizer = self.restored.tokenizer
        return {
            "tokens": {name: tokenizer.pieces(seq) for name, seq in sequences.items()},
            "word_starts": {name: word_starts(tokenizer, seq) for name, seq in sequences.items()},
        }


def _modules(readout: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Each attention module: its name, title, layer, the token sequences of its queries and
    keys, and its arrays; encoder first, self- before cross-attention, layers in order."""
    modules = []
    for name in sorted(readout, key=_module_order):
        stack, layer, kind = name.split("/")
        arrays = {key: encoded_array(heads_first(key, x)) for key, x in readout[name].items()}
        modules.append({
            "name": name, "title": TITLES[f"{stack}/{kind}"],
            "layer": int(layer.removeprefix("layer_")),
            "query_tokens": "source" if stack == "encoder" else "target",
            "key_tokens": KEY_TOKENS[f"{stack}/{kind}"],
        } | arrays)  # fmt: skip
    return modules


def _module_order(name: str) -> tuple[bool, bool, int]:
    stack, layer, kind = name.split("/")
    return (stack != "encoder", kind == "cross_attention", int(layer.removeprefix("layer_")))


def _padded(ids: list[int]) -> np.ndarray:
    """[1, len(ids) rounded up to a multiple of WIDTH_QUANTUM] int32, PAD after the ids."""
    row = np.full((1, -(-len(ids) // WIDTH_QUANTUM) * WIDTH_QUANTUM), PAD_ID, np.int32)
    row[0, : len(ids)] = ids
    return row


def _until_eos(row: np.ndarray) -> list[int]:
    """A decoded row's ids up to and including its EOS (all of them if it has none)."""
    ids = content_ids(row)
    return [*ids, EOS_ID] if EOS_ID in row else ids


@functools.lru_cache(maxsize=32)  # Widths x beam sizes x alphas in use; bounded.
def _compiled_decoder(model: Any, length: int, beam_size: int, alpha: float):
    if beam_size == 1:
        return jax.jit(lambda params, x: greedy_decode(model, params, x, length))
    return jax.jit(lambda params, x: beam_search(model, params, x, length, beam_size, alpha)[0])


@functools.lru_cache(maxsize=4)
def _compiled_readout(model: Any):
    return jax.jit(lambda params, *rows: attention_readout(model, params, *rows))


@functools.lru_cache(maxsize=4)
def _compiled_lm(model: Any, max_length: int):
    return jax.jit(lambda params, x: greedy_decode_lm(model, params, x, max_length))
