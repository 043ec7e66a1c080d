"""Decoding speed: the KV-cached greedy decoding and beam search against re-running the decoder.

  python benchmarks/decode.py --workdir /tmp/quickstart [--length 50] [--batch_size 64]
      [--compare_sentences 128] [--repeats 3]
  python benchmarks/decode.py --workload ref-small [--data_dir ../shared/data/multi30k]
      [--compare hf] [--devices 2]

Default mode (`--workdir`, a trained workdir such as the quickstart's): restores its newest
checkpoint (transformer.inference.restore), takes the test split's sources (load_task) in
batches of `--batch_size` (each padded to its longest source, rounded up to 8) and prints
sentences/s and generated tokens/s for:

1. the library as evaluate.py runs it: `greedy_decode` and `beam_search` (beam 4, alpha 0.6)
   over the whole test split, with evaluate.py's output limits (each sentence its length +
   50, in a buffer of the batch's width + 50), stopping at EOS. Generated tokens are those of
   the returned translations, EOS included.
2. exactly `--length` output tokens per sentence (EOS and PAD disabled by setting their logits
   to -inf, and loops of a fixed `--length` steps, so nothing stops early), on the first
   `--compare_sentences` test sentences, greedy and beam 4, each
   - with the KV cache: the library's own step (init_cache, then Transformer.decode with
     decode=True one position at a time, the cache tiled and reordered for beams) and, for
     beam 4, the library's own beam bookkeeping (transformer.decode._beam_step), in a
     `lax.fori_loop` of `--length` steps instead of the library's early-stopping while loop;
   - WITHOUT a cache (the baselines, defined below): the same loops, but each step re-runs
     the whole decoder (Transformer.decode, decode=False) over the [rows, length] buffer of
     tokens so far and keeps the logits of the current position; for beam 4 the buffer's
     rows are reordered with the surviving hypotheses, [batch * 4, length] per step.
   and the speed-up of the cache. Tokens/s counts `--length` tokens per sentence (the best
   hypothesis, for beam 4).

`--workload ref-small`: a fixed workload to compare with other toolkits: 3 + 3 layers of
d_model 256, 4 heads, d_ff 1024, post-LN, tied shared embeddings, fp32, RANDOM weights
(model.init, seed 0), a shared SentencePiece BPE vocabulary of 8,000 trained on both sides of
the Multi30k training split, the 1,000 English sentences of en.test.txt in batches of 64 (the
last one of 40), exactly 30 target tokens per sentence (as above: EOS disabled, fixed-length
loops over the library's cached step), greedy and beam 4. It prints sentences/s next to
figures measured on a 2-core AMD EPYC CPU for CTranslate2 and for Hugging Face transformers
`generate` (PyTorch, eager), and the ratio of ours to each. Those ratios hold only on such a
CPU; `--compare hf` (needs `pip install -e '.[bench]'`) measures the second one here, side by
side: a Hugging Face MarianMTModel of the same sizes (post-LN, sinusoidal positions, tied shared
embeddings, random weights; it has attention biases, ours has none), `generate` with its KV
cache, greedy and beam 4 with length penalty 0.6, min_new_tokens = max_new_tokens = 30, on the
same token ids and batches, taking turns with ours pass by pass. It runs in a process of its
own (benchmarks/hf_generate.py, through benchmarks/worker.py), so that PyTorch's threads and
the heap it keeps do not share ours.

`--devices N` (ref-small) splits the CPU into N JAX devices (`jax_num_cpu_devices`), and each
decodes its own batch of 64 at the same time (`transformer.sharding.map_rows`, as evaluate.py
and translate.py decode on several devices): global batches of 64 x N, the last one filled up
to a multiple of N rows with copies of its last sentence (not counted). A decode step of 64
rows is many small ops that one core runs one after another; two batches at once keep both
cores busy. With `--compare hf`, Hugging Face gets the same: N processes of cores / N threads,
each given its part of every batch at once.

Every figure is the median of `--repeats` passes over all of its batches, each pass ended by
jax.block_until_ready, after one untimed call per distinct batch shape (compilation and
warm-up); the decoders compared in a table take turns, pass by pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.hf_generate import ALPHA, BEAM
from benchmarks.machine import describe_machine
from benchmarks.worker import StepWorker
from configs import multi30k
from transformer import sharding
from transformer.config import from_config_dict
from transformer.data import text_files
from transformer.data.tasks import load_task
from transformer.data.tokenizer import SentencePieceTokenizer
from transformer.decode import (
    _beam_step,
    _best_hypotheses,
    _initial_state,
    _tile_beams,
    _transformer_step,
    argmax,
    beam_search,
    greedy_decode,
    init_cache,
)
from transformer.evaluation import decode_length
from transformer.inference import restore
from transformer.model import Transformer, build_model
from transformer.special_tokens import BOS_ID, EOS_ID, PAD_ID

Array = jax.Array
StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]
Decoder = Callable[[Any, Array], Array]  # (params, inputs [batch, src_len]) -> [batch, length]


# Sentences/s on the ref-small workload, measured on a 2-core AMD EPYC CPU of this kind.
REFERENCES = {
    "CTranslate2": {"greedy": 241.0, "beam 4": 74.0},
    "HF transformers generate (PyTorch eager)": {"greedy": 117.0, "beam 4": 35.0},
}


# ------------------------------------------------------------------------------ timing
def make_batches(
    sequences: Sequence[np.ndarray], batch_size: int, cap: int, rows_multiple: int = 1
) -> list[Array]:
    """Consecutive batches of `batch_size` sentences (the last may be smaller, its rows made
    a multiple of `rows_multiple` by repeating its last sentence, so that it splits evenly
    over devices), each padded to its longest source rounded up to a multiple of 8 (at most
    `cap`): few shapes to compile, little padding."""
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = [s[:cap] for s in sequences[start : start + batch_size]]
        chunk += chunk[-1:] * (-len(chunk) % rows_multiple)
        width = min(cap, -(-max(len(s) for s in chunk) // 8) * 8)
        rows = np.full((len(chunk), width), PAD_ID, np.int32)
        for row, seq in enumerate(chunk):
            rows[row, : len(seq)] = seq
        batches.append(jnp.asarray(rows))
    return batches


def time_decoders(
    decoders: dict[str, Decoder], params: Any, batches: list[Array], repeats: int
) -> dict[str, tuple[float, np.ndarray]]:
    """name -> (median seconds to decode every batch once, the outputs [sentences, length]).

    Each decoder is first called once per distinct batch shape, untimed (compilation and
    warm-up); then the decoders take turns, one pass each per repeat, so that noise from
    other work on the machine hits them alike."""
    for decode in decoders.values():
        for shape in dict.fromkeys(batch.shape for batch in batches):
            jax.block_until_ready(decode(params, next(b for b in batches if b.shape == shape)))
    times, outputs = {name: [] for name in decoders}, {}
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            outputs[name] = jax.block_until_ready([decode(params, batch) for batch in batches])
            times[name].append(time.perf_counter() - start)
    return {
        name: (statistics.median(times[name]), np.concatenate([np.asarray(o) for o in out]))
        for name, out in outputs.items()
    }


# ------------------------------------------------------------- fixed-length decoding
def without_eos(step: StepFn) -> StepFn:
    """`step` with EOS and PAD never chosen, so every sentence gets exactly the loop's
    number of real tokens and no hypothesis finishes early."""

    def masked(token: Array, position: Array, state: Any) -> tuple[Array, Any]:
        logits, state = step(token, position, state)
        return logits.at[:, jnp.array([PAD_ID, EOS_ID])].set(-jnp.inf), state

    return masked


def cached_step(
    model: Transformer, params: Any, inputs: Array, length: int, beam: int
) -> tuple[StepFn, Any]:
    """The library's KV-cached decoder step and its empty cache for `beam` rows per
    sentence, built as transformer.decode.beam_search builds them: the encoder once, the
    cache (cross-attention keys and values projected once) per sentence, then tiled."""
    encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
    cache = init_cache(model, params, inputs.shape[0], length, encoded, inputs)
    cache = jax.tree.map(lambda x: x if x.ndim == 0 else _tile_beams(x, beam), cache)
    step = _transformer_step(model, params, _tile_beams(encoded, beam), _tile_beams(inputs, beam))
    return step, cache


def uncached_step(
    model: Transformer, params: Any, inputs: Array, length: int, beam: int
) -> tuple[StepFn, Any]:
    """BASELINE, no cache: a step that re-runs the whole decoder over the output buffer.

    Its state is the decoder input so far, {"decoder_input": [rows, length]}, BOS and the
    outputs, PAD where not fed yet (masked, as the cached step masks unwritten slots). Each
    step writes the newest token at its position, runs Transformer.decode (decode=False,
    causal mask) over all `length` positions, and returns the logits of that position. The
    beam loop reorders the buffer's rows with the hypotheses as it does a cache (every leaf
    of the state), so both variants share the loop and differ only in the decoder work.
    The encoder still runs once."""
    encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
    encoded, inputs = _tile_beams(encoded, beam), _tile_beams(inputs, beam)

    def step(token: Array, position: Array, state: Any) -> tuple[Array, Any]:
        i = position[0, 0]
        decoder_input = lax.dynamic_update_slice_in_dim(state["decoder_input"], token, i, axis=1)
        logits = model.apply(
            {"params": params}, encoded, inputs, decoder_input, method=Transformer.decode
        )  # [rows, length, vocab]: every position recomputed
        return lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), {
            "decoder_input": decoder_input
        }

    return step, {"decoder_input": jnp.full((inputs.shape[0], length), PAD_ID, jnp.int32)}


def fixed_greedy(
    model: Transformer, length: int, cached: bool, rows: NamedSharding | None = None
) -> Decoder:
    """Greedy decoding of exactly `length` tokens: a fori_loop of `length` steps, no EOS.
    With `rows`, every device decodes its own rows of the batch (`sharding.map_rows`)."""
    make_step = cached_step if cached else uncached_step

    def decode(params: Any, inputs: Array) -> Array:
        batch = inputs.shape[0]
        step, state = make_step(model, params, inputs, length, beam=1)
        step = without_eos(step)

        def body(i: Array, carry: tuple[Array, Array, Any]) -> tuple[Array, Array, Any]:
            token, tokens, state = carry
            position = jnp.full((batch, 1), i, jnp.int32)
            logits, state = step(token[:, None], position, state)
            token = argmax(logits)
            return token, lax.dynamic_update_index_in_dim(tokens, token, i, axis=1), state

        carry = (
            jnp.full((batch,), BOS_ID, jnp.int32),
            jnp.full((batch, length), PAD_ID, jnp.int32),
            state,
        )
        return lax.fori_loop(0, length, body, carry)[1]

    return sharding.map_rows(decode, rows) if rows else jax.jit(decode)


def fixed_beam(
    model: Transformer,
    length: int,
    cached: bool,
    beam: int = BEAM,
    rows: NamedSharding | None = None,
) -> Decoder:
    """Beam search of exactly `length` tokens: the library's beam step (top-k over beam x
    vocabulary, state reordered by parent) in a fori_loop of `length` steps, no EOS. With
    `rows`, every device decodes its own rows of the batch (`sharding.map_rows`)."""
    make_step = cached_step if cached else uncached_step

    def decode(params: Any, inputs: Array) -> Array:
        step, state = make_step(model, params, inputs, length, beam)
        step = without_eos(step)
        beams = _initial_state(inputs.shape[0], beam, length, state)
        beams = lax.fori_loop(0, length, lambda _, s: _beam_step(step, s, ALPHA), beams)
        return _best_hypotheses(beams, ALPHA)[0]

    return sharding.map_rows(decode, rows) if rows else jax.jit(decode)


# ------------------------------------------------------------------ Hugging Face
def threads_per_process(processes: int) -> int:
    """The cores each of `processes` PyTorch processes gets (at least one)."""
    return max(1, (os.cpu_count() or 1) // processes)


def hf_process_decoders(
    config: Any, length: int, processes: int
) -> tuple[dict[str, Decoder], dict[str, Any], list[StepWorker]]:
    """(decoders, the workers' info, the workers) of `hf_generate.hf_decoders` run by
    `processes` worker processes of cores / processes threads each, the same weights in each
    (seed 0): every batch is split into that many equal parts, one per process, decoded at
    once, and joined again, as ours splits it over its devices. Even one process keeps
    PyTorch's threads and heap out of ours (see benchmarks/worker.py). Close the workers when
    done."""
    threads = threads_per_process(processes)
    builder = "benchmarks.hf_generate:build_hf_decoder"
    workers: list[StepWorker] = []
    try:
        for i in range(processes):
            workers.append(StepWorker(f"Hugging Face {i}", builder, config, length, threads))
    except BaseException:
        for worker in workers:
            worker.close()
        raise

    def make(name: str) -> Decoder:
        def decode(_params: Any, inputs: Array) -> np.ndarray:
            for worker, part in zip(workers, np.split(np.asarray(inputs), processes), strict=True):
                worker.submit(name, part)
            return np.concatenate([worker.result() for worker in workers])

        return decode

    decoders = {"greedy": make("greedy"), f"beam {BEAM}": make(f"beam {BEAM}")}
    return decoders, {**workers[0].info, "threads": threads}, workers


# ------------------------------------------------------------------------------ modes
def num_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def workdir_mode(args: argparse.Namespace) -> None:
    restored = restore(args.workdir)
    config, model, params = restored.config, restored.setup.model, restored.params
    if args.length > config.model.max_len:
        raise SystemExit(f"--length {args.length} exceeds the model's max_len.")
    task = load_task(config.data, args.workdir)
    inputs = task.splits["test"].inputs
    sources = [inputs[i] for i in range(len(inputs.lengths))]
    print(
        f"Model: {args.workdir} step {restored.steps[-1]}, {num_params(params):,} parameters, "
        f"vocabulary {restored.tokenizer.vocab_size}; {config.model.dtype}; "
        f"batches of {args.batch_size}; median of {args.repeats}"
    )

    # 1. The library, as evaluate.py runs it.
    batches = make_batches(sources, args.batch_size, config.data.max_length)
    print(
        "\nLibrary decoding as evaluate.py runs it (each sentence stops at EOS or its length + "
        f"50; output buffer: the batch's width + 50), {len(sources):,} test sentences:"
    )
    library = {  # Shapes are static under jit: one buffer per batch width.
        "greedy  greedy_decode": jax.jit(
            lambda p, x: greedy_decode(model, p, x, decode_length(config, x.shape[1]))
        ),
        f"beam {BEAM}  beam_search, alpha {ALPHA}": jax.jit(
            lambda p, x: beam_search(model, p, x, decode_length(config, x.shape[1]), BEAM, ALPHA)[0]
        ),
    }
    for name, (seconds, outputs) in time_decoders(library, params, batches, args.repeats).items():
        tokens = int(np.sum(outputs != PAD_ID))  # EOS included, PAD after it not
        print(
            f"  {name:31s} {len(sources) / seconds:9.1f} sentences/s {tokens / seconds:10.0f} "
            f"tokens/s  ({tokens / len(sources):.1f} tokens/sentence)"
        )

    # 2. Fixed length: the KV cache against re-running the decoder over the whole buffer.
    n = min(args.compare_sentences, len(sources))
    batches = make_batches(sources[:n], args.batch_size, config.data.max_length)
    print(
        f"\nExactly {args.length} output tokens per sentence (EOS disabled, fixed-length loops), "
        f"first {n:,} test sentences:"
    )
    print(f"  {'':8s}{'KV cache':38s}{'no cache (whole decoder every step)':38s}speed-up")
    agreement = []
    for name, make in (("greedy", fixed_greedy), (f"beam {BEAM}", fixed_beam)):
        decoders = {
            "cached": make(model, args.length, True),
            "uncached": make(model, args.length, False),
        }
        results = time_decoders(decoders, params, batches, args.repeats)
        (cached_s, cached_out), (uncached_s, uncached_out) = results["cached"], results["uncached"]
        cells = [
            f"{n / s:8.1f} sentences/s {n * args.length / s:7.0f} tok/s"
            for s in (cached_s, uncached_s)
        ]
        print(f"  {name:8s}{cells[0]:38s}{cells[1]:38s}{uncached_s / cached_s:6.1f}x")
        same = int(np.sum(np.all(cached_out == uncached_out, axis=1)))
        agreement.append(f"{name} {same}/{n}")
    print(f"  Cached and uncached outputs identical: {', '.join(agreement)} sentences.")


def ref_small_mode(args: argparse.Namespace) -> None:
    length, batch_size, vocab_size = 30, 64, 8_000
    train = text_files.read_parallel(args.data_dir, "en", "de", "train")
    start = time.perf_counter()
    tokenizer = SentencePieceTokenizer.train([s for pair in train for s in pair], vocab_size, "bpe")
    vocab_seconds = time.perf_counter() - start
    with open(os.path.join(args.data_dir, "en.test.txt"), encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f]

    config = from_config_dict(multi30k.get_config()).model
    config = dataclasses.replace(
        config,
        kind="encoder_decoder",
        num_encoder_layers=3,
        num_decoder_layers=3,
        d_model=256,
        num_heads=4,
        d_ff=1024,
        d_k=None,
        d_v=None,
        normalization="post",
        share_embeddings=True,
        tie_output_embedding=True,
        dtype="float32",
        vocab_size=tokenizer.vocab_size,
    )
    model = build_model(config)
    dummy = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, dummy, dummy)["params"]))(
        jax.random.key(0)
    )
    devices = args.devices
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    row_sharding = NamedSharding(mesh, PartitionSpec("data"))
    sources = tokenizer.encode_batch(sentences)
    batches = make_batches(sources, batch_size * devices, config.max_len, devices)
    batches = [jax.device_put(b, row_sharding) for b in batches]  # Rows split over the devices.
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    print(
        f"ref-small: {config.num_encoder_layers} + {config.num_decoder_layers} layers, d_model "
        f"{config.d_model}, {config.num_heads} heads, d_ff {config.d_ff}, post-LN, tied shared "
        f"embeddings, fp32, random weights; {num_params(params):,} parameters"
    )
    print(
        f"Vocabulary: SentencePiece BPE {tokenizer.vocab_size:,}, trained on both sides of "
        f"{args.data_dir} train ({len(train):,} pairs) in {vocab_seconds:.1f} s"
    )
    print(
        f"{len(sentences):,} sentences of en.test.txt in batches of {batch_size}, exactly "
        f"{length} target tokens each (EOS disabled); KV-cached; median of {args.repeats}"
    )
    if devices > 1:
        print(
            f"{devices} devices ({jax.devices()[0].platform}), each decoding its own batch of "
            f"{batch_size} at the same time (global batches of {batch_size * devices}, the last "
            f"filled up to a multiple of {devices} rows)"
        )
    print()
    many = row_sharding if devices > 1 else None
    decoders = {
        "greedy": fixed_greedy(model, length, True, many),
        f"beam {BEAM}": fixed_beam(model, length, True, rows=many),
    }
    workers: list[StepWorker] = []
    if args.compare == "hf":
        hf, info, workers = hf_process_decoders(config, length, devices)
        per_process = info["threads"]
        threads = f"{per_process} thread{'s' * (per_process > 1)}"
        decoders.update({f"hf {name}": decode for name, decode in hf.items()})
        print(
            f"{info['description']}, {devices} process{'es' * (devices > 1)} of {threads} "
            f"beside ours: {info['parameters']:,} parameters besides its position tables\n"
        )
    try:
        results = time_decoders(decoders, params, batches, args.repeats)
    finally:
        for worker in workers:
            worker.close()
    speeds = {}
    for name, (seconds, outputs) in results.items():
        assert outputs.shape[0] >= len(sentences) and outputs.shape[1] == length, name
        speeds[name] = len(sentences) / seconds  # Padding rows of the last batch not counted.
    assert np.all(results["greedy"][1] > EOS_ID) and np.all(results[f"beam {BEAM}"][1] > EOS_ID)
    ours = {k: v for k, v in speeds.items() if not k.startswith("hf ")}
    rows = {f"{toolkit} (AMD EPYC figure)": figures for toolkit, figures in REFERENCES.items()}
    if args.compare == "hf":
        here = "HF transformers generate (PyTorch eager), measured here"
        if devices > 1:
            here += f", {devices} processes"
        rows = {here: {k: speeds[f"hf {k}"] for k in ours}, **rows}
    width = max(len(row) for row in rows) + 2
    print(f"  {'sentences/s':{width}s}{'greedy':>18s}{'beam ' + str(BEAM):>18s}")
    print(f"  {'ours (JAX, KV cache)':{width}s}" + "".join(f"{v:18.1f}" for v in ours.values()))
    for row, figures in rows.items():
        cells = (f"{figures[k]:.1f} (ours {v / figures[k]:.2f}x)" for k, v in ours.items())
        print(f"  {row:{width}s}" + "".join(f"{c:>18s}" for c in cells))
    print(f"  (ours in tokens/s: {', '.join(f'{k} {v * length:.0f}' for k, v in ours.items())})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="A trained workdir (default mode).")
    parser.add_argument("--workload", choices=["ref-small"], help="A fixed workload instead.")
    parser.add_argument("--data_dir", default="../shared/data/multi30k", help="For ref-small.")
    parser.add_argument("--length", type=int, default=50, help="Output tokens, fixed-length.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--compare_sentences",
        type=int,
        default=128,
        help="Test sentences of the cached/uncached comparison (the uncached loops are slow).",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="ref-small: split the CPU into this many JAX devices (one per core at most), each "
        "decoding its own batch of 64 at once; with --compare hf, as many PyTorch processes.",
    )
    parser.add_argument(
        "--compare", choices=["hf"], help="ref-small: time Hugging Face generate here too."
    )
    args = parser.parse_args()
    if (args.workdir is None) == (args.workload is None):
        parser.error("give exactly one of --workdir and --workload")
    if args.compare and args.workload != "ref-small":
        parser.error("--compare hf goes with --workload ref-small")
    if args.devices != 1 and args.workload != "ref-small":
        parser.error("--devices goes with --workload ref-small")
    if args.devices > 1:  # Before JAX starts its CPU backend.
        jax.config.update("jax_num_cpu_devices", args.devices)
    if args.devices < 1 or len(jax.devices()) < args.devices:
        parser.error(f"--devices {args.devices}: this machine has {len(jax.devices())} devices")
    print(f"Device: {describe_machine()}")
    if args.workload == "ref-small":
        ref_small_mode(args)
    else:
        workdir_mode(args)


if __name__ == "__main__":
    main()
