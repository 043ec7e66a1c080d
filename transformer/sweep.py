"""A sweep: several configs trained one after another, then tabulated against published rows.

Each variant trains in `workdir/<name>` through `trainer.run` (so it is exactly a train.py
run), then its newest checkpoint is restored and scored on the validation split: perplexity
(teacher-forced, per target token) and greedy sacreBLEU. `workdir/results.csv`,
`results.md` and `results.png` are rewritten after every variant.

Resuming: a variant recorded in results.csv at its configured step count is skipped; one
whose final checkpoint exists is only evaluated; one stopped half-way resumes from its newest
checkpoint through the trainer's own resume. SIGTERM or Ctrl-C during training stops the
trainer at a checkpoint (see transformer.preemption) and the sweep with it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import textwrap
from collections.abc import Mapping, Sequence

from ml_collections import ConfigDict

from transformer import checkpoint, inference, trainer
from transformer import workdir as workdir_files
from transformer.config import ConfigError, from_config_dict
from transformer.data.tasks import load_task, read_pairs, train_vocabulary
from transformer.evaluation import evaluate_split
from transformer.files import write_atomically
from transformer.model import count_parameters

COLUMNS = (
    "variant",
    "change",
    "params",
    "steps",
    "dev_ppl",
    "dev_bleu",
    "paper_params_millions",
    "paper_ppl",
    "paper_bleu",
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One config of a sweep and the published row it is compared with."""

    name: str  # Also the name of its workdir under the sweep's.
    config: ConfigDict
    change: str  # What differs from the reference row, e.g. "num_heads=1, d_k=512".
    paper_params_millions: float | None = None
    paper_ppl: float | None = None
    paper_bleu: float | None = None


def run_sweep(variants: Sequence[Variant], workdir: str, title: str) -> list[dict[str, str]]:
    """Trains and evaluates every variant not yet recorded in workdir/results.csv; writes the
    results table (Markdown, CSV) and plot. Returns the table's rows, in sweep order."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"Variant names repeat: {names}.")
    for v in variants:  # Every config and existing workdir is checked before anything trains.
        try:
            from_config_dict(v.config)
        except ConfigError as e:
            raise ConfigError(f"variant {v.name}: {e}") from None
        directory = os.path.join(workdir, v.name)
        if os.path.exists(os.path.join(directory, "config.json")):
            # Refuses a workdir trained with another model or corpus, finished or not.
            workdir_files.write_config(v.config, from_config_dict(v.config), directory)
    os.makedirs(workdir, exist_ok=True)
    share_vocabularies(variants, workdir)
    recorded = read_results(os.path.join(workdir, "results.csv"))
    for i, v in enumerate(variants, start=1):
        steps = v.config.num_train_steps
        directory = os.path.join(workdir, v.name)
        row = recorded.get(v.name)
        if row is not None and int(row["steps"]) == steps:
            print(f"[{i}/{len(variants)}] {v.name}: recorded at step {steps}; not retrained.")
            continue
        if final_step(directory) == steps:
            print(f"[{i}/{len(variants)}] {v.name}: trained to step {steps}; evaluating.")
        else:
            print(f"[{i}/{len(variants)}] {v.name}: training in {directory}.")
            if not trainer.run(v.config, directory):  # {}: SIGTERM or Ctrl-C stopped it.
                print(f"Sweep stopped during {v.name}; run the same command to resume.")
                break
        recorded[v.name] = {**_paper_columns(v), **evaluate_workdir(directory)}
        write_results(workdir, title, _ordered(variants, recorded))
    rows = _ordered(variants, recorded)
    write_results(workdir, title, rows)
    return rows


def share_vocabularies(variants: Sequence[Variant], workdir: str) -> None:
    """One vocabulary per corpus and vocabulary setting, trained once into
    workdir/vocabularies/<n>/ and set as each variant's data.vocabulary (where none is)."""
    shared: dict[str, str] = {}
    for v in variants:
        data = from_config_dict(v.config).data
        if data.vocabulary:
            continue
        key = json.dumps(v.config.data.to_dict(), sort_keys=True, default=str)
        if key not in shared:
            directory = os.path.join(workdir, "vocabularies", str(len(shared)))
            os.makedirs(directory, exist_ok=True)
            path = workdir_files.vocabulary_path(data, directory)
            if not os.path.exists(path):
                print(f"Training the vocabulary of {v.name}'s corpus for the sweep: {path}.")
                train_vocabulary(data, read_pairs(data, wanted=("train",))["train"]).save(path)
            shared[key] = path
        v.config.data.vocabulary = shared[key]


def final_step(directory: str) -> int | None:
    """The newest checkpoint step in directory/checkpoints, or None."""
    path = os.path.join(directory, "checkpoints")
    if not os.path.isdir(path):
        return None
    ckpt = checkpoint.Checkpointer(path, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def evaluate_workdir(directory: str) -> dict[str, str]:
    """params, steps, dev_ppl and (for translation) greedy dev_bleu of the newest checkpoint."""
    restored = inference.restore(directory)
    config, placed = restored.config, restored.placed
    task = load_task(config.data, directory, splits=("validation",))
    with trainer.mesh_context(placed.mesh, config):
        loss = trainer.evaluate_loss(placed, restored.params, task, "validation")
        bleu = ""
        if config.model.has_encoder:
            scores, _, _ = evaluate_split(
                config, placed.model, restored.params, task, "validation", placed.batch_sharding
            )
            # A summariser's sweep ranks by ROUGE-L in the same column.
            bleu = repr(scores["bleu"] if "bleu" in scores else scores["rougeL"])
    return {
        "params": str(count_parameters(restored.params)),
        "steps": str(restored.steps[-1]),
        "dev_ppl": repr(loss["perplexity"]),
        "dev_bleu": bleu,
    }


def _paper_columns(v: Variant) -> dict[str, str]:
    def text(x: float | None) -> str:
        return "" if x is None else repr(x)

    return {
        "variant": v.name,
        "change": v.change,
        "paper_params_millions": text(v.paper_params_millions),
        "paper_ppl": text(v.paper_ppl),
        "paper_bleu": text(v.paper_bleu),
    }


def _ordered(
    variants: Sequence[Variant], recorded: Mapping[str, dict[str, str]]
) -> list[dict[str, str]]:
    """This sweep's rows in its order, then rows recorded by earlier sweeps in the workdir."""
    names = [v.name for v in variants if v.name in recorded]
    names += [n for n in recorded if n not in names]
    return [recorded[n] for n in names]


def read_results(path: str) -> dict[str, dict[str, str]]:
    """Rows of a results.csv by variant name ({} if there is none yet)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ConfigError(
                f"{path} has columns {reader.fieldnames}, not {list(COLUMNS)}; it was not "
                "written by this sweep runner. Use a new --workdir."
            )
        return {row["variant"]: row for row in reader}


def write_results(workdir: str, title: str, rows: Sequence[Mapping[str, str]]) -> None:
    """results.csv, results.md and results.png in `workdir`, each replaced atomically."""
    write_atomically(os.path.join(workdir, "results.csv"), _csv(rows))
    write_atomically(os.path.join(workdir, "results.md"), markdown(title, rows))
    if rows:
        plot(rows, title, os.path.join(workdir, "results.png"))


def _csv(rows: Sequence[Mapping[str, str]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _fmt(text: str, spec: str) -> str:
    return format(float(text), spec) if text else "-"


def markdown(title: str, rows: Sequence[Mapping[str, str]]) -> str:
    """The results as a Markdown table beside the published figures."""
    lines = [
        f"# {title}",
        "",
        "Ours: the corpus's validation split, the newest checkpoint, greedy decoding. "
        "Paper: Table 3 of Vaswani et al. 2017 (newstest2013, beam 4, no checkpoint averaging).",
        "",
        "| variant | change | params (M) | steps | dev PPL | dev BLEU "
        "| paper params (M) | paper PPL | paper BLEU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['change']} | {int(r['params']) / 1e6:.2f} | {r['steps']} "
            f"| {_fmt(r['dev_ppl'], '.2f')} | {_fmt(r['dev_bleu'], '.2f')} "
            f"| {_fmt(r['paper_params_millions'], 'g')} | {_fmt(r['paper_ppl'], '.2f')} "
            f"| {_fmt(r['paper_bleu'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


_PLOT_DPI = 100


def plot(rows: Sequence[Mapping[str, str]], title: str, path: str) -> None:
    """Dev BLEU and dev perplexity per variant (bars), the paper's on a second axis (dots)."""
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display.
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    x = range(len(names))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.7 * len(names) + 2), 7), sharex=True)
    for ax, ours, paper, label in (
        (axes[0], "dev_bleu", "paper_bleu", "dev BLEU"),
        (axes[1], "dev_ppl", "paper_ppl", "dev perplexity"),
    ):
        ax.bar(x, [float(r[ours]) if r[ours] else 0.0 for r in rows], color="tab:blue")
        ax.set_ylabel(f"{label} (ours, bars)", color="tab:blue")
        published = [(i, float(r[paper])) for i, r in zip(x, rows, strict=True) if r[paper]]
        if published:
            twin = ax.twinx()
            twin.plot(*zip(*published, strict=True), "o", color="black")
            twin.set_ylabel(f"{label} (paper, dots)")
    axes[1].set_xticks(list(x), names, rotation=45, ha="right")
    # The title lists the overrides, which can be far wider than the figure: wrap it at about
    # 7 pixels per character of font size 9.
    width_chars = int(fig.get_figwidth() * _PLOT_DPI / 7)
    axes[0].set_title("\n".join(textwrap.wrap(title, width_chars)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=_PLOT_DPI)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
