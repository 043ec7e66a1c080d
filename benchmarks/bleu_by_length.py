"""sacreBLEU by source-length bucket, for systems translating the same test set: where
each model gains or loses as sentences grow.

  python benchmarks/bleu_by_length.py --sources ../shared/data/multi30k/en.test.txt \
      --references ../shared/data/multi30k/de.test.txt \
      --hypotheses transformer=/tmp/multi30k/translations/test-step3000-avg10-beam5-alpha1.4.txt \
                   rnn=/tmp/rnn_multi30k/translations/test-step3000-avg10-beam5-alpha1.4.txt \
      [--buckets 5] [--out /tmp/bleu_by_length]

Buckets are quantiles of the source length in words (whitespace-separated), so each holds
about the same number of sentences; each bucket's score is corpus BLEU over its sentences
(sacreBLEU's defaults, as evaluate.py). Writes bleu_by_length.csv and bleu_by_length.png.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sacrebleu


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def bucket_edges(lengths: np.ndarray, buckets: int) -> list[int]:
    """Upper bounds (inclusive) of `buckets` length buckets at the quantiles of `lengths`,
    without repeats; the last is the longest length."""
    quantiles = np.quantile(lengths, np.linspace(0, 1, buckets + 1)[1:], method="lower")
    return sorted({int(q) for q in quantiles} | {int(lengths.max())})


def scores_by_bucket(
    sources: list[str], references: list[str], systems: dict[str, list[str]], buckets: int
) -> list[dict]:
    """One row per (system, bucket): its length range, sentence count and BLEU."""
    lengths = np.asarray([len(s.split()) for s in sources])
    rows, low = [], 1
    for high in bucket_edges(lengths, buckets):
        chosen = np.flatnonzero((lengths >= low) & (lengths <= high))
        for name, hypotheses in systems.items():
            bleu = sacrebleu.corpus_bleu(
                [hypotheses[i] for i in chosen], [[references[i] for i in chosen]]
            )
            rows.append({"system": name, "words": f"{low}-{high}", "sentences": len(chosen),
                         "bleu": round(bleu.score, 2)})  # fmt: skip
        low = high + 1
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Bars of BLEU per bucket, one colour per system."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    buckets = list(dict.fromkeys(r["words"] for r in rows))
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(systems):
        values = [next(r["bleu"] for r in rows if r["system"] == name and r["words"] == b)
                  for b in buckets]  # fmt: skip
        ax.bar(np.arange(len(buckets)) + i * width, values, width, label=name)
    counts = [next(r["sentences"] for r in rows if r["words"] == b) for b in buckets]
    labels = [f"{b}\n({n})" for b, n in zip(buckets, counts, strict=True)]
    ax.set_xticks(np.arange(len(buckets)) + width * (len(systems) - 1) / 2, labels)
    ax.set_xlabel("source length in words (sentences)")
    ax.set_ylabel("sacreBLEU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", required=True)
    parser.add_argument("--references", required=True)
    parser.add_argument("--hypotheses", nargs="+", required=True, metavar="NAME=FILE")
    parser.add_argument("--buckets", type=int, default=5)
    parser.add_argument("--out", default="/tmp/bleu_by_length")
    args = parser.parse_args(argv)
    if any("=" not in spec for spec in args.hypotheses):
        parser.error("--hypotheses takes NAME=FILE pairs.")
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    sources, references = read_lines(args.sources), read_lines(args.references)
    systems = {}
    for spec in args.hypotheses:
        name, path = spec.split("=", 1)
        systems[name] = read_lines(path)
        if len(systems[name]) != len(sources) or len(references) != len(sources):
            counts = f"{len(systems[name])}, {len(references)} and {len(sources)} lines"
            sys.exit(f"{path}, {args.references}, {args.sources}: {counts}; they must match.")
    rows = scores_by_bucket(sources, references, systems, args.buckets)
    for row in rows:
        print(f"  {row['system']:12s} {row['words']:>7s} words ({row['sentences']:4d}): "
              f"BLEU {row['bleu']:6.2f}")  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bleu_by_length.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(args.out, "bleu_by_length.png"))
    print(f"Wrote {args.out}/bleu_by_length.csv and .png")


if __name__ == "__main__":
    main()
