"""Decoding speed: KV-cached greedy decoding and beam search, against re-running the decoder.

  python benchmarks/decode.py --workdir /tmp/quickstart [--length 50] [--batch_size 64]
      [--compare_sentences 128] [--repeats 3]
  python benchmarks/decode.py --workload ref-small [--data_dir ../shared/data/multi30k]
      [--devices 2] [--compare hf]

`--workdir` (a trained workdir such as the quickstart's) restores its newest checkpoint
(transformer.inference.restore), takes the test split's sources in batches of `--batch_size`
(each padded to its longest source, rounded up to 8) and prints sentences/s and generated
tokens/s for:

1. the library as evaluate.py runs it: `greedy_decode` and `beam_search` (beam 4, alpha 0.6)
   over the whole test split, each sentence stopping at EOS or its length + 50, in a buffer
   of the batch's width + 50. Generated tokens are those of the returned translations, EOS
   included.
2. exactly `--length` output tokens per sentence, on the first `--compare_sentences` test
   sentences, greedy and beam 4, each
   - with the KV cache: `greedy_decode` and `beam_search` with `min_length` = `max_length` =
     `--length` and no per-sentence limit (`extra=None`), so EOS never ends a sentence;
   - WITHOUT a cache (the baselines, written here): each step re-runs the whole decoder
     (`Transformer.decode`, decode=False) over the [rows, length] buffer of tokens so far and
     keeps the logits of the current position, EOS held off the same way. Beam 4's baseline
     keeps only what a search without EOS needs (the best `beam` of beam x vocabulary
     candidates, the buffer's rows reordered by parent), a little less bookkeeping than the
     library's search, so its speed-up is if anything understated.
   and the cache's speed-up, and how many sentences the two decode identically. Tokens/s
   counts `--length` tokens per sentence (the best hypothesis, for beam 4).

`--workload ref-small` is a fixed workload to compare decoders with: the ref-small model of
benchmarks/workloads.py (3 + 3 layers of d_model 256, 4 heads, d_ff 1024, post-LN, tied shared
embeddings, fp32) with RANDOM weights (seed 0), a SentencePiece BPE vocabulary of 8,000 trained
on both sides of the Multi30k training split, the 1,000 English sentences of en.test.txt in
batches of 64 (the last one of 40), exactly 30 target tokens per sentence (as above), greedy
and beam 4. `--devices N` splits the CPU into N JAX devices (`jax_num_cpu_devices`), each
decoding its own batch of 64 at the same time (`transformer.sharding.map_rows`, as evaluate.py
decodes on several devices): global batches of 64 x N, the last one filled up to a multiple of
N rows with copies of its last sentence (not counted).

`--compare ct2 hf` (needs `pip install -e '.[export]'`) exports these weights with
transformer/export.py and also times, on the same token ids and batches, each in processes of
its own (benchmarks/compare/):
- `ct2`: CTranslate2 in every thread layout inter_threads x intra_threads = cores, each batch
  of 64 x N cut into CTranslate2 batches of 64 that its inter_threads decode at once;
- `hf`: Hugging Face `generate` in N processes of cores / N threads, the batch split evenly.
It prints ours / each engine's best and how many sentences each decodes as ours does.

Every figure is the median of `--repeats` passes over all of its batches, each pass ended by
jax.block_until_ready, after one untimed call per distinct batch shape (compilation and
warm-up); the decoders of a table take turns, pass by pass, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
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

from benchmarks.machine import describe_machine
from benchmarks.workloads import workload_config
from transformer import sharding
from transformer.data import text_files
from transformer.data.tasks import load_task
from transformer.data.tokenizer import SentencePieceTokenizer
from transformer.decode import beam_search, greedy_decode
from transformer.evaluation import decode_length
from transformer.inference import restore
from transformer.model import Transformer, build_model, count_parameters
from transformer.special_tokens import BOS_ID, EOS_ID, PAD_ID

Array = jax.Array
Decoder = Callable[[Any, Array], Array]  # (params, inputs [batch, src_len]) -> [batch, length]
BEAM, ALPHA = 4, 0.6  # Section 6.1, as evaluate.py decodes.


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
    """name -> (median seconds to decode every batch once, the outputs [sentences, width]).

    Each decoder is first called once per distinct batch shape, untimed (compilation and
    warm-up); then the decoders take turns, one pass each per repeat."""
    for decode in decoders.values():
        for shape in dict.fromkeys(batch.shape for batch in batches):
            jax.block_until_ready(decode(params, next(b for b in batches if b.shape == shape)))
    times, outputs = {name: [] for name in decoders}, {}
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            outputs[name] = jax.block_until_ready([decode(params, batch) for batch in batches])
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), joined(out)) for name, out in outputs.items()}


def joined(outputs: list[Array]) -> np.ndarray:
    """Batches' outputs [rows, width] as one array, the narrower ones padded with PAD."""
    width = max(o.shape[1] for o in outputs)
    return np.concatenate(
        [np.pad(np.asarray(o), ((0, 0), (0, width - o.shape[1])), constant_values=PAD_ID)
         for o in outputs]
    )  # fmt: skip


# ------------------------------------------------------------- fixed-length decoding
def fixed_length(model: Transformer, length: int, rows: NamedSharding | None = None) -> dict:
    """{"greedy", "beam 4"} -> the library's cached decoder of exactly `length` tokens per
    sentence. With `rows`, every device decodes its own rows of the batch."""

    def greedy(params: Any, inputs: Array) -> Array:
        return greedy_decode(model, params, inputs, length, extra=None, min_length=length)

    def beam(params: Any, inputs: Array) -> Array:
        return beam_search(
            model, params, inputs, length, BEAM, ALPHA, extra=None, min_length=length
        )[0]

    compile_ = (lambda f: sharding.map_rows(f, rows)) if rows else jax.jit
    return {"greedy": compile_(greedy), f"beam {BEAM}": compile_(beam)}


def whole_decoder_logits(
    model: Transformer, params: Any, encoded: Array, inputs: Array, tokens: Array, i: Array
) -> Array:
    """BASELINE step: the logits [rows, vocab] of output position `i`, from the whole decoder
    run over `tokens` [rows, length] (the outputs so far, shifted right behind BOS)."""
    decoder_input = jnp.concatenate([jnp.full_like(tokens[:, :1], BOS_ID), tokens[:, :-1]], axis=1)
    logits = model.apply(
        {"params": params}, encoded, inputs, decoder_input, method=Transformer.decode
    )  # [rows, length, vocab]: every position recomputed
    logits = lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
    return logits.at[:, EOS_ID].set(-jnp.inf)  # As min_length holds EOS off.


def uncached_greedy(model: Transformer, length: int) -> Decoder:
    """BASELINE: greedy decoding of exactly `length` tokens without a cache."""

    def decode(params: Any, inputs: Array) -> Array:
        encoded = model.apply({"params": params}, inputs, method=Transformer.encode)

        def body(i: Array, tokens: Array) -> Array:
            logits = whole_decoder_logits(model, params, encoded, inputs, tokens, i)
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return lax.dynamic_update_index_in_dim(tokens, token, i, axis=1)

        tokens = jnp.full((inputs.shape[0], length), PAD_ID, jnp.int32)
        return lax.fori_loop(0, length, body, tokens)

    return jax.jit(decode)


def uncached_beam(model: Transformer, length: int, beam: int = BEAM) -> Decoder:
    """BASELINE: beam search of exactly `length` tokens without a cache. Without EOS no
    hypothesis finishes, all have the same length and so the same length penalty: the best
    is the one of highest log-probability."""

    def decode(params: Any, inputs: Array) -> Array:
        batch = inputs.shape[0]
        encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
        encoded, inputs = jnp.repeat(encoded, beam, axis=0), jnp.repeat(inputs, beam, axis=0)

        def body(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
            tokens, logp = carry  # [batch, beam, length], [batch, beam]
            rows = tokens.reshape(batch * beam, length)
            logits = whole_decoder_logits(model, params, encoded, inputs, rows, i)
            scores = jax.nn.log_softmax(logits).reshape(batch, beam, -1) + logp[..., None]
            logp, index = lax.top_k(scores.reshape(batch, -1), beam)
            parent, token = jnp.divmod(index, scores.shape[-1])
            tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1)
            return lax.dynamic_update_index_in_dim(tokens, token, i, axis=2), logp

        tokens = jnp.full((batch, beam, length), PAD_ID, jnp.int32)
        logp = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf)  # One hypothesis at first.
        logp = jnp.broadcast_to(logp, (batch, beam)).astype(jnp.float32)
        return lax.fori_loop(0, length, body, (tokens, logp))[0][:, 0]

    return jax.jit(decode)


# ------------------------------------------------------------------------------ modes
def workdir_mode(args: argparse.Namespace) -> None:
    restored = restore(args.workdir)
    config, model, params = restored.config, restored.placed.model, restored.params
    if args.length > config.model.max_len:
        raise SystemExit(f"--length {args.length} exceeds the model's max_len.")
    inputs = load_task(config.data, args.workdir, splits=("test",)).splits["test"].inputs
    sources = [inputs[i] for i in range(len(inputs.lengths))]
    print(
        f"Model: {args.workdir} step {restored.steps[-1]}, {count_parameters(params):,} "
        f"parameters, vocabulary {restored.tokenizer.vocab_size}; {config.model.dtype}; "
        f"batches of {args.batch_size}; median of {args.repeats}"
    )
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
    batches = make_batches(sources, args.batch_size, config.data.max_length)
    for name, (seconds, outputs) in time_decoders(library, params, batches, args.repeats).items():
        tokens = int(np.sum(outputs != PAD_ID))  # EOS included, PAD after it not
        print(
            f"  {name:31s} {len(sources) / seconds:9.1f} sentences/s {tokens / seconds:10.0f} "
            f"tokens/s  ({tokens / len(sources):.1f} tokens/sentence)"
        )
    cache_speedup(model, params, sources, config.data.max_length, args)


def cache_speedup(model: Transformer, params: Any, sources: list, cap: int, args) -> None:
    """Fixed-length decoding with the KV cache against the baselines (module docstring)."""
    n = min(args.compare_sentences, len(sources))
    batches = make_batches(sources[:n], args.batch_size, cap)
    print(
        f"\nExactly {args.length} output tokens per sentence (EOS held off), first {n:,} test "
        "sentences:"
    )
    print(f"  {'':8s}{'KV cache':38s}{'no cache (whole decoder every step)':38s}speed-up")
    cached = fixed_length(model, args.length)
    agreement = []
    for name, uncached in (("greedy", uncached_greedy), (f"beam {BEAM}", uncached_beam)):
        decoders = {"cached": cached[name], "uncached": uncached(model, args.length)}
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


def ref_small_setup(
    args: argparse.Namespace,
) -> tuple[Any, Transformer, Any, list, SentencePieceTokenizer]:
    """(model config, model, random parameters, the test sentences' token ids, the
    vocabulary) of ref-small; prints how the vocabulary was made."""
    train = text_files.read_parallel(args.data_dir, "en", "de", "train")
    start = time.perf_counter()
    tokenizer = SentencePieceTokenizer.train([s for pair in train for s in pair], 8_000, "bpe")
    print(
        f"Vocabulary: SentencePiece BPE {tokenizer.vocab_size:,}, trained on both sides of "
        f"{args.data_dir} train ({len(train):,} pairs) in {time.perf_counter() - start:.1f} s"
    )
    with open(os.path.join(args.data_dir, "en.test.txt"), encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f]
    config = workload_config("ref-small").with_vocab_size(tokenizer.vocab_size).model
    model = build_model(config)
    dummy = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, dummy, dummy)["params"]))
    return config, model, init(jax.random.key(0)), tokenizer.encode_batch(sentences), tokenizer


def ref_small_mode(args: argparse.Namespace) -> None:
    length, batch_size, devices = 30, 64, args.devices
    config, model, params, sources, tokenizer = ref_small_setup(args)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    row_sharding = NamedSharding(mesh, PartitionSpec("data"))
    batches = make_batches(sources, batch_size * devices, config.max_len, devices)
    batches = [jax.device_put(b, row_sharding) for b in batches]  # Rows split over the devices.
    print(
        f"ref-small: {config.num_encoder_layers} + {config.num_decoder_layers} layers, d_model "
        f"{config.d_model}, {config.num_heads} heads, d_ff {config.d_ff}, post-LN, tied shared "
        f"embeddings, fp32, random weights; {count_parameters(params):,} parameters\n"
        f"{len(sources):,} sentences of en.test.txt in batches of {batch_size}, exactly "
        f"{length} target tokens each (EOS held off); KV-cached; median of {args.repeats}"
    )
    if devices > 1:
        print(
            f"{devices} devices ({jax.devices()[0].platform}), each decoding its own batch of "
            f"{batch_size} at the same time (global batches of {batch_size * devices}, the last "
            f"filled up to a multiple of {devices} rows)"
        )
    decoders = {
        f"ours {k}": v
        for k, v in fixed_length(model, length, row_sharding if devices > 1 else None).items()
    }
    engines, workers = {"ours": "ours (JAX, KV cache)"}, []
    with tempfile.TemporaryDirectory() as exported:
        if args.compare:
            compared, workers = compared_engines(
                args, config, params, tokenizer, exported, decoders, (length, batch_size, devices)
            )
            engines |= compared
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        try:
            results = time_decoders(decoders, params, batches, args.repeats)
        finally:
            for worker in workers:
                worker.close()
    print_ref_small(results, engines, len(sources), length)


def compared_engines(
    args, config, params, tokenizer, directory: str, decoders: dict, sizes: tuple[int, int, int]
) -> tuple[dict[str, str], list]:
    """Exports `params` into `directory` and adds each --compare engine's decoders to
    `decoders` as "{engine} {greedy | beam 4}"; returns ({engine: description}, the workers)."""
    from benchmarks.compare.ct2_translate import ct2_process_decoders, thread_layouts
    from benchmarks.compare.hf_generate import hf_process_decoders
    from transformer import export

    length, batch_size, devices = sizes
    spm_model, hf_dir = os.path.join(directory, "spm.model"), os.path.join(directory, "hf")
    tokenizer.save(spm_model)
    export.write_hf(params, config, spm_model, hf_dir)
    engines, workers = {}, []
    try:
        if "ct2" in args.compare:
            ct2_dir = os.path.join(directory, "ct2")
            export.convert_ct2(hf_dir, ct2_dir, config.layer_norm_epsilon)
            for layout in thread_layouts(os.cpu_count() or 1):
                found, description, worker = ct2_process_decoders(
                    ct2_dir, length, BEAM, batch_size, layout
                )
                workers.append(worker)
                engines[f"ct2 {layout[0]}x{layout[1]}"] = description
                decoders.update({f"ct2 {layout[0]}x{layout[1]} {k}": v for k, v in found.items()})
        if "hf" in args.compare:
            found, info, hf_workers = hf_process_decoders(hf_dir, length, BEAM, ALPHA, devices)
            workers += hf_workers
            threads = f"{info['threads']} thread{'s' * (info['threads'] > 1)}"
            engines["hf"] = f"{info['description']}, {devices} x {threads}"
            decoders.update({f"hf {k}": v for k, v in found.items()})
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return engines, workers


def print_ref_small(results: dict, engines: dict[str, str], sentences: int, length: int) -> None:
    """The sentences/s table of every engine, ours / each compared engine's best, and how
    many sentences each decodes as ours does."""
    speeds, outputs = {}, {}
    for name, (seconds, out) in results.items():
        if out.shape[0] < sentences or out.shape[1] != length or EOS_ID in out:
            raise SystemExit(f"{name}: not exactly {length} tokens per sentence.")
        speeds[name] = sentences / seconds  # Filler rows of the last batch not counted.
        outputs[name] = out[:sentences]
    modes = [name.removeprefix("ours ") for name in results if name.startswith("ours ")]
    width = max(len(d) for d in engines.values()) + 2
    print(f"\n  {'sentences/s':{width}s}" + "".join(f"{m:>12s}" for m in modes))
    for engine, description in engines.items():
        row = "".join(f"{speeds[f'{engine} {m}']:12.2f}" for m in modes)
        print(f"  {description:{width}s}{row}")
    for family, label in (("ct2", "CTranslate2 (its best layout)"), ("hf", "HF generate")):
        rivals = [e for e in engines if e.split()[0] == family]
        if rivals:
            best = {m: max(speeds[f"{e} {m}"] for e in rivals) for m in modes}
            ratios = "".join(f"{speeds['ours ' + m] / best[m]:11.2f}x" for m in modes)
            print(f"  {'ours / ' + label:{width}s}{ratios}")
    same = [
        f"{engine} {m} {int(np.sum(np.all(outputs[f'{engine} {m}'] == outputs[f'ours {m}'], 1)))}"
        for engine in engines if engine != "ours" for m in modes
    ]  # fmt: skip
    if same:
        print(f"  Sentences decoded exactly as ours (of {sentences}): {', '.join(same)}")
    ours = ", ".join(f"{m} {speeds[f'ours {m}'] * length:.0f}" for m in modes)
    print(f"  (ours in tokens/s: {ours})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="A trained workdir (default mode).")
    parser.add_argument("--workload", choices=["ref-small"], help="A fixed workload instead.")
    parser.add_argument("--data_dir", default="../shared/data/multi30k", help="For ref-small.")
    parser.add_argument("--length", type=int, default=50, help="Output tokens, fixed-length.")
    parser.add_argument("--batch_size", type=int, default=64)
    compare_help = "Test sentences of the cache comparison (the uncached loops are slow)."
    parser.add_argument("--compare_sentences", type=int, default=128, help=compare_help)
    parser.add_argument("--repeats", type=int, default=3)
    devices_help = "ref-small: split the CPU into this many JAX devices, each decoding its own"
    parser.add_argument("--devices", type=int, default=1, help=devices_help + " batch at once.")
    compare_help = "ref-small: also time these engines on the exported weights."
    parser.add_argument("--compare", nargs="+", choices=["ct2", "hf"], help=compare_help)
    args = parser.parse_args()
    if (args.workdir is None) == (args.workload is None):
        parser.error("give exactly one of --workdir and --workload")
    if (args.compare or args.devices != 1) and args.workload != "ref-small":
        parser.error("--compare and --devices go with --workload ref-small")
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
