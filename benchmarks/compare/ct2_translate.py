"""The CTranslate2 side of `benchmarks/decode.py --compare ct2`: a Translator on our model as
export.py converts it (the same weights), in a worker process of its own
(benchmarks/compare/worker.py), with a given thread layout. Needs `pip install -e '.[export]'`.

Each batch is split into chunks of our per-device batch size, in order, one CTranslate2 batch
each (`asynchronous=True`, so `inter_threads` of them run at once), as ours decodes them one
per device: the same batches, not CTranslate2's own regrouping by length. Greedy and beam
search with EOS held off for exactly the benchmark's length (min = max decoding length).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.compare.worker import StepWorker
from transformer.special_tokens import PAD_ID

# (ignored params, inputs [batch, src_len] with PAD_ID padding) -> numpy [batch, length]
Decoder = Callable[[Any, Any], np.ndarray]


def thread_layouts(cores: int) -> list[tuple[int, int]]:
    """Every (inter_threads, intra_threads) that uses exactly `cores` threads."""
    return [(inter, cores // inter) for inter in range(1, cores + 1) if cores % inter == 0]


def build_ct2_decoder(
    model_dir: str, length: int, beam: int, chunk: int, inter_threads: int, intra_threads: int
) -> tuple[Callable[[str, np.ndarray], np.ndarray], dict[str, Any]]:
    """A worker's builder: (decode(name, inputs) for "greedy" or "beam N", {"description"})."""
    import ctranslate2

    translator = ctranslate2.Translator(
        model_dir, device="cpu", inter_threads=inter_threads, intra_threads=intra_threads
    )
    with open(os.path.join(model_dir, "shared_vocabulary.json"), encoding="utf-8") as f:
        pieces = json.load(f)
    ids = {piece: i for i, piece in enumerate(pieces)}

    def decode(name: str, inputs: np.ndarray) -> np.ndarray:
        sources = [[pieces[i] for i in row if i != PAD_ID] for row in inputs]
        pending = [
            translator.translate_batch(
                sources[start : start + chunk],
                asynchronous=True,
                beam_size=1 if name == "greedy" else beam,
                min_decoding_length=length,
                max_decoding_length=length,
            )
            for start in range(0, len(sources), chunk)
        ]
        results = [r.result().hypotheses[0] for batch in pending for r in batch]
        return np.array([[ids[p] for p in tokens] for tokens in results], np.int32)

    description = (
        f"CTranslate2 {ctranslate2.__version__}, inter_threads {inter_threads} x "
        f"intra_threads {intra_threads}"
    )
    return decode, {"description": description}


def ct2_process_decoders(
    model_dir: str, length: int, beam: int, chunk: int, layout: tuple[int, int]
) -> tuple[dict[str, Decoder], str, StepWorker]:
    """({"greedy", "beam N"} -> decoder, description, the worker) of `build_ct2_decoder` in a
    worker process with thread layout (inter, intra). Close the worker when done."""
    builder = "benchmarks.compare.ct2_translate:build_ct2_decoder"
    worker = StepWorker(f"CTranslate2 {layout}", builder, model_dir, length, beam, chunk, *layout)

    def make(name: str) -> Decoder:
        return lambda _params, inputs: worker.run(name, np.asarray(inputs))

    decoders = {"greedy": make("greedy"), f"beam {beam}": make(f"beam {beam}")}
    return decoders, worker.info["description"], worker
