"""Trains Table 3 variants one after another and tabulates them beside the paper.

  python sweep.py --variants A,C --workdir /tmp/table3 --data multi30k --scale 0.5 \
      [--config.num_train_steps=3000 ...]

Each variant trains in WORKDIR/<variant> exactly as
`train.py --config configs/ablations.py:<variant>,data=<data>,scale=<scale>` would, with the
--config.KEY=VALUE overrides on top (the same for every variant). Then its validation
perplexity and greedy BLEU go into WORKDIR/results.md, results.csv and results.png. Running
again resumes: recorded variants are skipped and a half-trained one continues from its newest
checkpoint.
"""

from absl import app, flags

from configs import ablations
from transformer import sweep
from transformer.config import split_overrides, with_overrides
from transformer.errors import cli_main

_VARIANTS = flags.DEFINE_list(
    "variants", None, "Table 3 rows: names (C_n2), row letters (A) or 'all'.", required=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "One subdirectory per variant.", required=True)
_DATA = flags.DEFINE_string(
    "data", "", "A corpus config in configs/ (e.g. multi30k) whose data section and training "
    "recipe every variant uses; empty: base's embedded task."
)  # fmt: skip
_SCALE = flags.DEFINE_float(
    "scale", 1.0, "Multiplies d_model, d_ff and d_k/d_v of every variant (heads kept)."
)
OVERRIDES: list[str] = []  # The --config.KEY=VALUE arguments, taken out before absl parses.


def parse_flags(argv: list[str]) -> list[str]:
    rest, OVERRIDES[:] = split_overrides(argv)
    return app.parse_flags_with_usage(rest)


def spec(name: str) -> str:
    """The configs/ablations.py argument of variant `name` under the flags."""
    return (
        name
        + (f",data={_DATA.value}" if _DATA.value else "")
        + (f",scale={_SCALE.value:g}" if _SCALE.value != 1.0 else "")
    )


def main() -> None:
    variants = []
    for name in ablations.select(_VARIANTS.value):
        paper = ablations.PAPER[name]
        config = with_overrides(ablations.get_config(spec(name)), OVERRIDES)
        variants.append(
            sweep.Variant(
                name, config, ablations.describe(name, config),
                paper.params_millions, paper.ppl, paper.bleu,
            )
        )  # fmt: skip
    setting = ", ".join(
        [f"data {_DATA.value or 'generated (base)'}", f"scale {_SCALE.value:g}", *OVERRIDES]
    )
    sweep.run_sweep(variants, _WORKDIR.value, f"Table 3 variants ({setting})")
    print(f"Results: {_WORKDIR.value}/results.md, results.csv, results.png")


if __name__ == "__main__":
    app.run(cli_main(main), flags_parser=parse_flags)
