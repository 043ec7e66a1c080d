"""evaluate.py, translate.py, average_checkpoints.py, attention_maps.py and generate.py on
real trained workdirs, each checked against a computation done here: parameter arrays read
back with Orbax's own reader and averaged with NumPy, sacreBLEU and sacremoses run on the
files the CLIs write, the library's decoders run on the parameters of the chosen steps."""

import filecmp
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sacrebleu
import sacremoses

from configs import tiny
from transformer import inference, trainer, workdir
from transformer.attention_readout import attention_weights
from transformer.config import from_config_dict
from transformer.data.tasks import load_task
from transformer.decode import Search, greedy_decode_lm
from transformer.evaluation import continue_prompts, translate_ids
from transformer.model import Transformer

from .model_configs import small_model_config
from .xla_flags import one_device_env

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = [100, 150, 200]  # The checkpoints both trained workdirs keep.


def trained_config():
    """configs/tiny.py trained long enough (200 steps at 0.3 of its learning rate) that its
    greedy translations are varied sentences, not one repeated word, and change from one
    kept checkpoint (every 50 steps, the last 3) to the next. Validation has fewer sentences
    than test, so a hypotheses file's length tells the splits apart."""
    config = tiny.get_config()
    config.num_train_steps = 200
    config.learning_rate_scale = 0.3
    config.checkpoint_every_steps = 50
    config.keep_checkpoints = 3
    config.eval_every_steps = 0
    config.bleu_every_steps = 0
    config.num_samples_to_print = 0
    config.data.generated.num_validation = 48
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny translation model trained on 8 devices (the CLIs below run on 1)."""
    path = tmp_path_factory.mktemp("trained")
    results = trainer.run(trained_config(), str(path))
    return path, results


@pytest.fixture(scope="module")
def task(trained):
    """The trained workdir's corpus: the source and reference sentences of each split."""
    path, _ = trained
    return load_task(from_config_dict(workdir.read_config(str(path))).data, str(path))


def run(script, *args, stdin=None):
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        input=stdin, env=one_device_env(),
    )  # fmt: skip


def lines_of(path):
    """The lines of a file the CLIs wrote, one per sentence, each ended by a newline."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def printed_scores(stdout):
    """The three figures evaluate.py prints, as printed."""
    return {
        "bleu": re.search(r"^BLEU (\S+)  \(", stdout, re.M).group(1),
        "chrf": re.search(r"^chrF (\S+)$", stdout, re.M).group(1),
        "tok_bleu": re.search(r"^Tokenized lowercased BLEU (\S+)  \(", stdout, re.M).group(1),
    }


def moses_prepared(lines, lang="de"):
    """lowercase | normalize-punctuation.perl -l lang | tokenizer.perl -l lang, by sacremoses:
    the preparation of the *.lc.norm.tok files Multi30k papers score."""
    normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
    tokenizer = sacremoses.MosesTokenizer(lang=lang)
    return [
        tokenizer.tokenize(normalizer.normalize(line.lower()), escape=False, return_str=True)
        for line in lines
    ]


def expected_scores(hypotheses, references):
    """sacreBLEU, chrF and BLEU of the Moses-prepared text, computed here from the lines."""
    tokenized = sacrebleu.corpus_bleu(
        moses_prepared(hypotheses), [moses_prepared(references)], tokenize="none", force=True
    )
    return {
        "bleu": f"{sacrebleu.corpus_bleu(hypotheses, [references]).score:.2f}",
        "chrf": f"{sacrebleu.corpus_chrf(hypotheses, [references]).score:.2f}",
        "tok_bleu": f"{tokenized.score:.2f}",
    }


def saved_state(checkpoints, step):
    """The train state of checkpoint `step` as NumPy arrays, read with Orbax's own PyTree
    reader from <checkpoints>/<step>/state: neither transformer.checkpoint nor inference."""
    path = pathlib.Path(checkpoints) / str(step) / "state"
    reader = ocp.PyTreeCheckpointer()
    tree = reader.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return reader.restore(path, restore_args=as_numpy)


def numpy_mean(trees):
    """The elementwise float32 mean, summed in step order as the library sums."""
    total = trees[0]
    for tree in trees[1:]:
        total = jax.tree.map(np.add, total, tree)
    return jax.tree.map(lambda x: x / np.float32(len(trees)), total)


def assert_trees_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == e.dtype == np.float32
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-6, atol=1e-8)


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), e)


def digest(directory):
    """Every file under `directory` by relative path, with the hash of its bytes."""
    root = pathlib.Path(directory)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def evaluation(path, hypotheses_file, *flags):
    """evaluate.py on the workdir `path` with `flags`: (stdout, the lines of the hypotheses
    file it writes, translations/`hypotheses_file`)."""
    out = run("evaluate.py", "--workdir", str(path), *flags)
    assert out.returncode == 0, out.stderr
    return out.stdout, lines_of(path / "translations" / hypotheses_file)


@pytest.fixture(scope="module")
def greedy_evaluation(trained):
    """evaluate.py's greedy run of the test split."""
    return evaluation(trained[0], "test-step200-beam1.txt", "--beam_size", "1")


def overlong_sentence(task):
    """Three test sources in one line: longer than data.max_length, so it is cut."""
    sentence = " ".join(task.splits["test"].sources[:3])
    assert len(task.tokenizer.encode(sentence)) > task.config.max_length
    return sentence


@pytest.fixture(scope="module")
def greedy_translations(trained, task, tmp_path_factory):
    """translate.py --beam_size 1 of the test split's sources, then an over-long line."""
    path, _ = trained
    directory = tmp_path_factory.mktemp("greedy")
    sources = [*task.splits["test"].sources, overlong_sentence(task)]
    source_file = write_lines(directory / "sources.txt", sources)
    output = directory / "translations.txt"
    out = run("translate.py", "--workdir", str(path), "--beam_size", "1",
              "--input", str(source_file), "--output", str(output))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"warning: line {len(sources)} has " in out.stderr
    return lines_of(output)


def test_greedy_evaluation_prints_the_scores_of_the_hypotheses_it_writes(
    trained, task, greedy_evaluation
):
    _, results = trained
    stdout, hypotheses = greedy_evaluation
    references = list(task.splits["test"].references)
    assert len(hypotheses) == len(references) == 64
    assert "test: 64 sentences, step 200, beam 1, alpha 0.6" in stdout
    expected = expected_scores(hypotheses, references)
    # Varied sentences, some of them right: figures a wrong reference or file would change.
    assert len(set(hypotheses)) > 32 and float(expected["bleu"]) > 1.0
    assert printed_scores(stdout) == expected
    assert expected["chrf"] != expected["bleu"]
    # The training run's own final test BLEU, decoded on 8 devices, is the same figure.
    assert expected["bleu"] == f"{results['bleu']:.2f}"
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in stdout


@pytest.fixture(scope="module")
def beam_validation(trained):
    """evaluate.py on the validation split with the paper's beam 4 and alpha 0.6."""
    return evaluation(trained[0], "validation-step200-beam4-alpha0.6.txt", "--split", "validation")


def test_evaluating_the_validation_split_writes_and_scores_that_split(task, beam_validation):
    stdout, hypotheses = beam_validation
    references = list(task.splits["validation"].references)
    assert len(hypotheses) == len(references) == 48  # The test split has 64.
    assert "validation: 48 sentences, step 200, beam 4, alpha 0.6" in stdout
    expected = expected_scores(hypotheses, references)
    assert float(expected["bleu"]) > 1.0
    assert printed_scores(stdout) == expected


def test_translate_gives_evaluates_greedy_hypotheses(greedy_evaluation, greedy_translations):
    _, hypotheses = greedy_evaluation
    assert greedy_translations[: len(hypotheses)] == hypotheses


def test_translate_gives_evaluates_beam_hypotheses(trained, task, beam_validation, tmp_path):
    path, _ = trained
    _, hypotheses = beam_validation
    sources = write_lines(tmp_path / "sources.txt", task.splits["validation"].sources)
    out = run("translate.py", "--workdir", str(path), "--input", str(sources),
              "--output", str(tmp_path / "out.txt"))  # fmt: skip  # beam 4, alpha 0.6
    assert out.returncode == 0, out.stderr
    assert lines_of(tmp_path / "out.txt") == hypotheses


def library_translations(restored, params, sentences, beam_size=1):
    """translate_ids on `params` with the model and mesh of `restored`."""
    ids = restored.tokenizer.encode_batch(list(sentences))
    placed = restored.placed
    with trainer.mesh_context(placed.mesh, restored.config):
        return translate_ids(
            restored.config, placed.model, params, restored.tokenizer, ids,
            placed.batch_sharding, Search(beam_size),
        )  # fmt: skip


@pytest.mark.slow
def test_translate_step_and_average_last_choose_the_checkpoints(
    trained, task, greedy_evaluation, tmp_path
):
    path, _ = trained
    sources = task.splits["test"].sources
    out = run("translate.py", "--workdir", str(path), "--step", "150", "--average_last", "2",
              "--beam_size", "1", "--input", str(write_lines(tmp_path / "in.txt", sources)),
              "--output", str(tmp_path / "out.txt"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    averaged = inference.restore(str(path), step=150, average_last=2)
    assert averaged.steps == (100, 150)
    expected = library_translations(averaged, averaged.params, sources)
    assert lines_of(tmp_path / "out.txt") == expected
    # Neither the newest checkpoint nor step 150 alone translates so.
    _, newest = greedy_evaluation
    alone = library_translations(averaged, inference.restore(str(path), step=150).params, sources)
    assert expected != newest and expected != alone


def test_averaged_parameters_are_the_mean_of_the_saved_arrays(trained):
    path, _ = trained
    checkpoints = path / "checkpoints"
    before = digest(checkpoints)
    saved = {step: saved_state(checkpoints, step) for step in STEPS}
    mean = numpy_mean([saved[step]["params"] for step in STEPS])

    restored = inference.restore(str(path), average_last=3)
    assert restored.steps == tuple(STEPS)
    assert_trees_close(restored.params, mean)

    out = run("average_checkpoints.py", "--workdir", str(path), "--last", "3")
    assert out.returncode == 0, out.stderr
    assert f"Averaged steps 100, 150, 200 into {path}/averaged/200." in out.stdout
    assert sorted(os.listdir(path / "averaged")) == ["200"]
    written = saved_state(path / "averaged", 200)
    assert_trees_close(written["params"], mean)
    # The newest step's counter and optimizer state, unchanged.
    assert int(written["step"]) == 200
    assert_trees_equal(written["opt_state"], saved[200]["opt_state"])
    # A wrong average is not within the tolerance: the checkpoints differ by far more.
    with pytest.raises(AssertionError):
        assert_trees_close(written["params"], saved[200]["params"])
    assert digest(checkpoints) == before


@pytest.mark.slow
def test_average_checkpoints_writes_an_older_step_beside_what_the_directory_holds(
    trained, tmp_path
):
    path, _ = trained
    output = tmp_path / "custom"
    shutil.copytree(path / "checkpoints" / "200", output / "200")  # Already there.
    kept = digest(output / "200")
    args = ["--workdir", str(path), "--last", "2", "--step", "150", "--output_dir", str(output)]
    out = run("average_checkpoints.py", *args)
    assert out.returncode == 0, out.stderr
    assert f"Averaged steps 100, 150 into {output}/150." in out.stdout
    assert sorted(os.listdir(output)) == ["150", "200"] and digest(output / "200") == kept
    older = [saved_state(path / "checkpoints", step) for step in (100, 150)]
    written = saved_state(output, 150)
    assert_trees_close(written["params"], numpy_mean([s["params"] for s in older]))
    assert int(written["step"]) == 150
    assert_trees_equal(written["opt_state"], older[1]["opt_state"])
    assert not (path / "averaged" / "150").exists()

    everything = digest(output)
    again = run("average_checkpoints.py", *args)
    assert again.returncode == 1, again.stderr[-3000:]
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {output}/150 exists already; choose another --output_dir."
    )
    assert digest(output) == everything


@pytest.mark.slow
def test_evaluating_the_written_average_translates_as_averaging_in_memory(trained):
    path, _ = trained
    avg = run("evaluate.py", "--workdir", str(path), "--average_last", "3", "--beam_size", "1")
    assert avg.returncode == 0, avg.stderr
    assert "average of steps 100, 150, 200" in avg.stdout
    averaged = path / "averaged"
    if not averaged.exists():
        out = run("average_checkpoints.py", "--workdir", str(path), "--last", "3")
        assert out.returncode == 0, out.stderr
    written = run("evaluate.py", "--workdir", str(path), "--checkpoint_dir", str(averaged),
                  "--beam_size", "1")  # fmt: skip
    assert written.returncode == 0, written.stderr
    # Each went to its own file, neither over the plain step 200's; they say the same.
    translations = path / "translations"
    in_memory = translations / "test-step200-avg3-beam1.txt"
    from_disk = translations / "test-step200-averaged-beam1.txt"
    assert filecmp.cmp(in_memory, from_disk, shallow=False)
    assert printed_scores(avg.stdout) == printed_scores(written.stdout)


def test_translate_reads_stdin_and_reports_empty_and_overlong_lines(trained):
    path, _ = trained
    long_line = " ".join(["the man sees the dog ,"] * 10)
    text = f"the man sees the dog.\n\n{long_line}\nthe woman opens the door.\n"
    out = run("translate.py", "--workdir", str(path), "--beam_size", "2", stdin=text)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[4] == ""
    assert "line 2 is empty" in out.stderr and "line 3 has 61 tokens" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step", "7"], r"has no step 7; it has \[100, 150, 200\]"),
        (["--average_last", "4"], r"Averaging the last 4 checkpoints .* needs that many"),
        (["--alpha", "nan"], r"--alpha must be >= 0"),
    ],
)
def test_bad_requests_are_clear_errors(trained, args, message):
    path, _ = trained
    out = run("evaluate.py", "--workdir", str(path), "--beam_size", "1", *args)
    assert out.returncode != 0 and re.search(message, out.stderr), out.stderr
    assert "Traceback" not in out.stderr


def test_help_lists_the_shared_checkpoint_and_search_flags():
    """transformer/command_line.py defines them; each command's --help lists them as its own."""
    out = run("translate.py", "--help")  # absl prints the help and exits with status 1.
    for flag in ("--step", "--average_last", "--checkpoint_dir", "--beam_size", "--alpha",
                 "--min_length", "--no_repeat_ngram"):  # fmt: skip
        assert f"  {flag}:" in out.stdout, out.stdout


def test_workdirs_without_checkpoints_or_config_are_clear_errors(tmp_path, trained):
    out = run("evaluate.py", "--workdir", str(tmp_path))
    assert out.returncode != 0 and "is not a trained workdir" in out.stderr
    path, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("config.json", "vocab.txt"):
        (empty / name).write_bytes((path / name).read_bytes())
    out = run("translate.py", "--workdir", str(empty), stdin="the man sleeps.\n")
    assert out.returncode != 0 and "does not exist; train first" in out.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the man sleeps.\nthe \xff dog.\n")
    out = run("translate.py", "--workdir", str(path), "--input", str(bad))
    assert out.returncode != 0 and "bad.txt:2: invalid UTF-8" in out.stderr


ATTENTION_MAPS = [
    "decoder_cross_attention_layer_0.png",
    "decoder_self_attention_layer_0.png",
    "encoder_self_attention_layer_0.png",
]


@pytest.mark.slow
def test_attention_maps_of_a_given_target_are_drawn_for_every_layer_and_kind(trained, tmp_path):
    path, _ = trained
    out = run("attention_maps.py", "--workdir", str(path), "--source", "the man sleeps.",
              "--target", "der Mann schläft.", "--output_dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "target: der Mann schläft.\n" in out.stdout
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ATTENTION_MAPS
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_attention_maps_without_a_target_draw_translates_greedy_translation(
    trained, task, greedy_translations, tmp_path
):
    """An over-long source too: cut as translate.py cuts it, its EOS kept."""
    path, _ = trained
    source = overlong_sentence(task)
    out = run("attention_maps.py", "--workdir", str(path), "--source", source,
              "--output_dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "warning: the source has " in out.stderr
    target = re.search(r"^target: (.*)$", out.stdout, re.M).group(1)
    assert target == greedy_translations[-1] != ""
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ATTENTION_MAPS
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_attention_weights_are_distributions_over_the_right_tokens():
    model = Transformer(small_model_config(num_heads=2))
    src, tgt = np.array([[5, 6, 7, 1]]), np.array([[8, 9, 1]])
    params = nn.meta.unbox(model.init(jax.random.key(0), src, tgt))["params"]
    weights = attention_weights(model, params, src, tgt)
    assert weights["encoder/layer_1/self_attention"].shape == (2, 4, 4)
    assert weights["decoder/layer_0/cross_attention"].shape == (2, 3, 4)
    causal = weights["decoder/layer_0/self_attention"]
    np.testing.assert_allclose(causal.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(causal[0], k=1) == 0)  # nothing from the future


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    """A tiny decoder-only model trained on the generated task's German side, as long as the
    translation model above, keeping checkpoints 100, 150 and 200."""
    path = tmp_path_factory.mktemp("lm")
    config = trained_config()
    config.model.kind = "decoder_only"
    config.model.num_encoder_layers = 0
    trainer.run(config, str(path))
    return path


PROMPTS = ["der Mann", "", "die Frau hat"]


greedy_lm = jax.jit(greedy_decode_lm, static_argnums=(0, 3))


def library_continuations(restored, params, prompts):
    """Greedy continuations by greedy_decode_lm of `params`, prompts PAD-padded."""
    ids = [seq[:-1] for seq in restored.tokenizer.encode_batch(prompts)]
    rows = np.zeros((len(prompts), max(1, *map(len, ids))), np.int32)
    for row, seq in zip(rows, ids, strict=True):
        row[: len(seq)] = seq
    out = greedy_lm(restored.placed.model, params, rows, restored.config.data.max_length)
    return [restored.tokenizer.decode(e) for e in np.asarray(out)]


def test_generate_greedy_continues_prompts_as_the_library_decodes(language_model):
    restored = inference.restore(str(language_model))
    prompts = ["der Mann", ""]
    out = run("generate.py", "--workdir", str(language_model), "--temperature", "0",
              "--prompt", prompts[0], "--prompt", prompts[1])  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == library_continuations(restored, restored.params, prompts)
    assert out.stdout.startswith("der Mann ")


def test_generate_step_and_average_last_choose_the_checkpoints(language_model):
    path = str(language_model)
    args = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    out = run("generate.py", "--workdir", path, "--temperature", "0", "--step", "150",
              "--average_last", "2", *args)  # fmt: skip
    assert out.returncode == 0, out.stderr
    averaged = inference.restore(path, step=150, average_last=2)
    assert averaged.steps == (100, 150)
    expected = library_continuations(averaged, averaged.params, PROMPTS)
    assert out.stdout.splitlines() == expected
    # Neither the newest checkpoint nor step 150 alone continues so.
    newest = library_continuations(averaged, inference.restore(path).params, PROMPTS)
    alone = library_continuations(averaged, inference.restore(path, step=150).params, PROMPTS)
    assert expected != newest and expected != alone


@pytest.mark.slow
def test_generate_samples_are_reproducible_by_seed_and_vary_between_rows(language_model):
    args = ["--workdir", str(language_model), "--num_samples", "4", "--temperature", "1.5",
            "--top_p", "0.95", "--top_k", "50", "--seed", "3"]  # fmt: skip
    first = run("generate.py", *args, stdin="der Mann\n")
    again = run("generate.py", *args, stdin="der Mann\n")
    assert first.returncode == 0, first.stderr
    samples = first.stdout.splitlines()
    assert samples == again.stdout.splitlines() and len(samples) == 4
    assert all(s.startswith("der Mann") for s in samples) and len(set(samples)) > 1


@pytest.mark.slow
def test_generate_and_translate_refuse_the_other_kind_of_model(trained, language_model):
    out = run("generate.py", "--workdir", str(trained[0]), "--prompt", "der Mann")
    assert out.returncode != 0 and "generate.py needs a language model" in out.stderr
    out = run("translate.py", "--workdir", str(language_model), stdin="the man sleeps.\n")
    assert out.returncode != 0 and "translate.py needs a translator" in out.stderr
    out = run("generate.py", "--workdir", str(language_model), "--prompt", "der Mann " * 40)
    assert out.returncode != 0 and re.search(r"Prompt 1 has \d+ pieces", out.stderr)
    assert "Traceback" not in out.stderr
    out = run("generate.py", "--workdir", str(language_model), "--temperature", "inf")
    assert out.returncode != 0 and "--temperature must be finite and >= 0" in out.stderr


def test_sample_continuations_stop_at_the_end_of_a_short_split(language_model):
    restored = inference.restore(str(language_model))
    task = load_task(restored.config.data, str(language_model))
    sentences = len(task.splits["test"])
    samples = continue_prompts(
        restored.config, restored.placed.model, restored.params, task, "test", sentences + 3
    )
    assert len(samples) == sentences
