"""The Hugging Face side of `benchmarks/decode.py --compare hf`: `generate` on our model
exported as a MarianMTModel, in worker processes of its own (benchmarks/compare/worker.py). Needs
`pip install -e '.[export]'`; the builder imports no JAX, so a worker holds only PyTorch's
threads and heap.

The model is ours, exported by transformer/export.py (the same weights; its attention biases
are zero). `generate` with its KV cache, greedy and beam search with our alpha (HF divides by
length ** alpha, a rule that ranks hypotheses of one length alike), min_new_tokens =
max_new_tokens = the benchmark's length.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.compare.worker import StepWorker
from transformer.special_tokens import PAD_ID

# (ignored params, inputs [batch, src_len] with PAD_ID padding) -> numpy [batch, length]
Decoder = Callable[[Any, Any], np.ndarray]


def hf_decoders(
    model_dir: str, length: int, beam: int, alpha: float, threads: int | None = None
) -> tuple[dict[str, Decoder], int]:
    """({"greedy", "beam N"} -> decoder, parameter count) of Hugging Face `generate` on the
    MarianMTModel `model_dir` (ours, as export.py writes it), producing exactly `length`
    tokens, in `threads` PyTorch threads (default: all cores).

    The decoders take (ignored params, inputs [batch, src_len] with PAD_ID padding) and return
    numpy [batch, length], as ours do, so the benchmark times them in turns with ours."""
    import torch
    import transformers
    from transformers import MarianMTModel

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    model = MarianMTModel.from_pretrained(model_dir).eval()
    # The sinusoidal tables are stored as weights there; ours computes them. Tied weights
    # are counted once, as ours are.
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_positions" not in n)

    def make(beams: int) -> Decoder:
        def decode(_params: Any, inputs: Any) -> np.ndarray:
            ids = torch.from_numpy(np.asarray(inputs, np.int64))
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=ids != PAD_ID,
                    num_beams=beams,
                    do_sample=False,
                    **({"length_penalty": alpha} if beams > 1 else {}),
                    min_new_tokens=length,
                    max_new_tokens=length,
                    max_length=None,  # The export's default (max_len + 1) yields to the above.
                )
            return out[:, 1:].numpy().astype(np.int32)  # Drops the decoder start token.

        return decode

    return {"greedy": make(1), f"beam {beam}": make(beam)}, n_params


def build_hf_decoder(
    model_dir: str, length: int, beam: int, alpha: float, threads: int
) -> tuple[Callable[[str, np.ndarray], np.ndarray], dict[str, Any]]:
    """A worker's builder: (decode(name, inputs) with the decoder `name` of `hf_decoders`,
    {"parameters", "description"})."""
    import torch
    import transformers

    decoders, n_params = hf_decoders(model_dir, length, beam, alpha, threads)
    description = (
        f"Hugging Face transformers {transformers.__version__} MarianMTModel, PyTorch "
        f"{torch.__version__} eager"
    )

    def decode(name: str, inputs: np.ndarray) -> np.ndarray:
        return decoders[name](None, inputs)

    return decode, {"parameters": n_params, "description": description}


def threads_per_process(processes: int) -> int:
    """The cores each of `processes` PyTorch processes gets (at least one)."""
    return max(1, (os.cpu_count() or 1) // processes)


def hf_process_decoders(
    model_dir: str, length: int, beam: int, alpha: float, processes: int
) -> tuple[dict[str, Decoder], dict[str, Any], list[StepWorker]]:
    """(decoders, the workers' info, the workers) of `hf_decoders` run by `processes` worker
    processes of cores / processes threads each, the same weights in each: every
    batch is split into that many equal parts, one per process, decoded at once, and joined
    again, as ours splits it over its devices. Even one process keeps PyTorch's threads and
    heap out of ours. Close the workers when done."""
    threads = threads_per_process(processes)
    builder = "benchmarks.compare.hf_generate:build_hf_decoder"
    workers: list[StepWorker] = []
    try:
        for i in range(processes):
            args = (model_dir, length, beam, alpha, threads)
            workers.append(StepWorker(f"Hugging Face {i}", builder, *args))
    except BaseException:
        for worker in workers:
            worker.close()
        raise

    def make(name: str) -> Decoder:
        def decode(_params: Any, inputs: Any) -> np.ndarray:
            for worker, part in zip(workers, np.split(np.asarray(inputs), processes), strict=True):
                worker.submit(name, part)
            return np.concatenate([worker.result() for worker in workers])

        return decode

    decoders = {"greedy": make("greedy"), f"beam {beam}": make(f"beam {beam}")}
    return decoders, {**workers[0].info, "threads": threads}, workers
