"""ROUGE of the extractive baselines of Gliwa et al. (2019) on a dialogue corpus, scored exactly
as evaluate.py scores a summariser (transformer.rouge), so a model's figures compare with them
row for row:

  python benchmarks/summary_baselines.py [--directory ../shared/data/samsum] [--split test]

LEAD-n: the first n utterances; LONGEST-n: the n longest (in words), in the order they were
said. An utterance is one line of the dialogue, its speaker's name included.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformer import rouge
from transformer.data import json_files


def lead(dialogue: str, n: int) -> str:
    return "\n".join(dialogue.splitlines()[:n])


def longest(dialogue: str, n: int) -> str:
    lines = [line for line in dialogue.splitlines() if line.strip()]
    keep = sorted(sorted(range(len(lines)), key=lambda i: -len(lines[i].split()))[:n])
    return "\n".join(lines[i] for i in keep)


BASELINES = {"LEAD-3": lambda d: lead(d, 3), "LONGEST-3": lambda d: longest(d, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", default="../shared/data/samsum")
    parser.add_argument("--split", default="test", help="The file name without .json(l).")
    parser.add_argument("--source_field", default="dialogue")
    parser.add_argument("--target_field", default="summary")
    args = parser.parse_args(argv)
    pairs = json_files.read_pairs(args.directory, args.source_field, args.target_field, args.split)
    references = [summary for _, summary in pairs]
    print(f"{args.split}: {len(pairs)} dialogues; {rouge.signature(len(pairs))}")
    for name, summarise in BASELINES.items():
        scores = rouge.rouge([summarise(d) for d, _ in pairs], references)
        print(f"{name:10s} " + "  ".join(f"{k} {v:6.2f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
