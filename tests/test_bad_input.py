"""The bad-input catalogue (docs/troubleshooting.md): each mistake stops with a message that
names its cause, and the checkpoints already in the workdir are left byte for byte as they
were. Real workdirs, real CLIs, a real file-size limit, real damaged files."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from configs import multi30k, tiny
from transformer import trainer
from transformer.checkpoint import CheckpointMismatchError, CheckpointReadError, _first_line
from transformer.data.generated import generate_splits
from transformer.data.text_files import CorpusError
from transformer.workdir import WorkdirError

from . import model_configs
from .model_configs import with_overrides
from .xla_flags import one_device_env

REPO = pathlib.Path(__file__).resolve().parent.parent
SMALL_RUN = {
    "num_train_steps": 20,
    "checkpoint_every_steps": 10,
    "keep_checkpoints": 5,
    "eval_every_steps": 0,
    "bleu_every_steps": 0,
    "num_samples_to_print": 0,
}


def tiny_config(**overrides):
    return model_configs.tiny_config(**{**SMALL_RUN, **overrides})


def digests(directory):
    """Relative path -> sha256 of every file below `directory`."""
    directory = pathlib.Path(directory)
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_cli(script, *args, launcher=()):
    return subprocess.run(
        [*launcher, sys.executable, script, *args], cwd=REPO, capture_output=True, text=True,
        timeout=600, env=one_device_env(),
    )  # fmt: skip


def cli_flags(workdir, overrides=SMALL_RUN):
    return ["--config", "configs/tiny.py", "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in overrides.items()
    ]


def assert_user_error(out, *fragments, library_logs=False):
    """A failed CLI run whose last line is `error: ...` with every fragment, and no traceback.
    With `library_logs`, Orbax and TensorStore may log the failed write (with tracebacks)
    before and after that line."""
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors, out.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[-1], errors[-1]
    if not library_logs:
        assert lines[-1] == errors[-1] and "Traceback" not in out.stderr, out.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny workdir trained in this process: checkpoints 10 and 20."""
    workdir = tmp_path_factory.mktemp("trained")
    trainer.run(tiny_config(), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    return workdir


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the trained workdir to break, and the digests of its checkpoints."""
    copy = tmp_path / "workdir"
    shutil.copytree(trained, copy)
    return copy, digests(copy / "checkpoints")


# --- Config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, fragments",
    [
        ("--config.model.num_layer=3", ["unknown config key 'model.num_layer'"]),
        # Each case runs the CLI twice; the default run keeps the one above.
        pytest.param(
            "--config.model.num_heads=3",
            ["model.num_heads=3: must divide model.d_model=32"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "--config.model.num_heads=abc",
            ["Override 'model.num_heads=abc'", "cannot be casted to type <class 'int'>"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "--config.nonfinite_policy=sometimes",
            ["nonfinite_policy='sometimes'", "'skip'"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "--config.max_consecutive_nonfinite=0",
            ["max_consecutive_nonfinite=0: must be pos"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_bad_config_keys_and_values_are_named_and_touch_nothing(
    trained_copy, tmp_path, flag, fragments
):
    workdir, before = trained_copy
    config_json = (workdir / "config.json").read_bytes()
    out = run_cli("train.py", *cli_flags(workdir), flag)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert all(f in out.stderr for f in fragments), out.stderr[-2000:]
    assert digests(workdir / "checkpoints") == before
    assert (workdir / "config.json").read_bytes() == config_json
    fresh = tmp_path / "fresh"
    out = run_cli("train.py", *cli_flags(fresh), flag)
    assert out.returncode != 0 and not fresh.exists()  # Checked before anything is written.


def test_a_mesh_larger_than_the_devices_stops_before_the_workdir_is_made(tmp_path):
    # one_device_env: the CLI sees one CPU device, as a GPU host without JAX's CUDA build.
    fresh = tmp_path / "fresh"
    out = run_cli("train.py", *cli_flags(fresh), "--config.mesh.data=8")
    assert_user_error(out, "needs 8 devices; 1 are available", "They are cpu devices",
                      "pip install -e '.[gpu]'")  # fmt: skip
    assert not fresh.exists()


def test_changed_model_settings_on_resume_are_refused(trained_copy):
    workdir, before = trained_copy
    with pytest.raises(WorkdirError, match=r"was created with different model .*model\.d_model"):
        trainer.run(tiny_config(**{"model.d_model": 64}), str(workdir))
    assert digests(workdir / "checkpoints") == before


# --- Checkpoints of another model, vocabularies -------------------------------------------


def test_a_checkpoint_of_another_model_shape_is_refused_naming_the_difference(trained, tmp_path):
    workdir = tmp_path / "other"  # A new run, given checkpoints copied from another one.
    shutil.copytree(trained / "checkpoints", workdir / "checkpoints")
    before = digests(workdir / "checkpoints")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"checkpoints/20 belongs to a different model.*\n  model\.d_model: 32 -> 64",
    ):
        trainer.run(tiny_config(**{"model.d_model": 64}), str(workdir))
    assert digests(workdir / "checkpoints") == before


def test_a_vocabulary_larger_than_the_config_allows_is_refused(trained_copy):
    workdir, before = trained_copy
    words = (workdir / "vocab.txt").read_text().splitlines()
    extra = [f"extra{i}" for i in range(1024 - len(words) + 1)]
    (workdir / "vocab.txt").write_text("\n".join(words + extra) + "\n")
    with pytest.raises(WorkdirError, match=r"holds 1025 tokens but data\.vocab_size"):
        trainer.run(tiny_config(), str(workdir))
    assert digests(workdir / "checkpoints") == before


def test_a_replaced_vocabulary_does_not_fit_the_checkpoints(trained_copy):
    workdir, before = trained_copy
    words = (workdir / "vocab.txt").read_text().splitlines()
    (workdir / "vocab.txt").write_text("\n".join(words[:-10]) + "\n")
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"model\.vocab_size: {len(words)} -> {len(words) - 10}",
    ):
        trainer.run(tiny_config(), str(workdir))
    assert digests(workdir / "checkpoints") == before


# --- The workdir and the disk -------------------------------------------------------------


def test_a_workdir_below_a_file_is_reported_by_the_cli(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    out = run_cli("train.py", *cli_flags(tmp_path / "file" / "workdir"))
    assert_user_error(out, f"Cannot write to --workdir {tmp_path}/file/workdir", "Not a directory")


def as_bound_by_permissions():
    """A launcher under which the CLI is bound by file permissions: none where this process
    is not root; as root (CI), setpriv drops the capabilities that let root write and read
    through them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so that the bits decide as for any
    user. Files root owns stay readable: the repository, the environment, pytest's tmp."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    assert setpriv, "As root this test needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE."
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--")


def test_a_workdir_without_write_permission_is_reported(trained_copy):
    workdir, before = trained_copy
    workdir.chmod(0o555)
    try:
        flags = cli_flags(workdir, {**SMALL_RUN, "num_train_steps": 30})
        out = run_cli("train.py", *flags, launcher=as_bound_by_permissions())
    finally:
        workdir.chmod(0o755)
    assert_user_error(out, f"Cannot write to --workdir {workdir}: Permission denied")
    assert digests(workdir / "checkpoints") == before


# Files may not grow past 100 kB, as on a full disk: with SIGXFSZ ignored a write past the
# limit fails with EFBIG. A tiny checkpoint's largest data file is about 280 kB. The limit is
# set in a Python that then becomes the CLI (no fork of this multithreaded process).
FULL_DISK = (
    sys.executable, "-c",
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)  # fmt: skip


def fill_the_disk_during_a_save(workdir, before):
    """Runs the trained copy on to step 30 under the 100 kB limit: the save of step 30 fails,
    and is reported; checkpoints 10 and 20 are as they were. Returns the command's flags."""
    flags = cli_flags(workdir, {**SMALL_RUN, "num_train_steps": 30})
    out = run_cli("train.py", *flags, launcher=FULL_DISK)
    assert_user_error(
        out,
        f"Writing checkpoint {workdir}/checkpoints/30 failed",
        "File too large",
        "Is the disk full",
        "The checkpoints written before it ([10, 20]) are untouched",
        "resume from step 20",
        library_logs=True,
    )
    assert digests(workdir / "checkpoints" / "10") == before_of(before, "10")
    assert digests(workdir / "checkpoints" / "20") == before_of(before, "20")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30.orbax-checkpoint-tmp"]
    return flags


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_is_reported_and_earlier_checkpoints_survive(trained_copy):
    fill_the_disk_during_a_save(*trained_copy)


@pytest.mark.slow
def test_after_a_full_disk_the_same_command_resumes_from_the_last_checkpoint(trained_copy):
    workdir, before = trained_copy
    flags = fill_the_disk_during_a_save(workdir, before)
    out = run_cli("train.py", *flags)  # Space again: the same command resumes.
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {workdir}/checkpoints/20." in out.stdout
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20", "30"]


def test_an_os_error_in_the_middle_of_a_long_library_message_is_still_named():
    # TensorStore puts its spec, pages of it, on either side of the OS error at times.
    spec = '{"driver": "zarr", "kvstore": ' * 40
    error = ValueError(f"OUT_OF_RANGE: {spec} [OS error: File too large] {spec}")
    message = _first_line(error)
    assert len(message) < 500 and " ... " in message and message.endswith("[File too large]")
    try:
        try:
            raise OSError(28, os.strerror(28))
        except OSError as full:
            raise RuntimeError("Writing failed") from full
    except RuntimeError as wrapped:
        assert _first_line(wrapped) == "RuntimeError: Writing failed [No space left on device]"


def before_of(all_digests, step):
    return {k[len(step) + 1 :]: v for k, v in all_digests.items() if k.startswith(f"{step}/")}


# --- Damaged checkpoints ------------------------------------------------------------------


def data_files(checkpoint):
    """Every OCDBT data file of the state: b-tree nodes and the values they hold or point to.

    After a save Orbax merges each process's database into the top-level one; whether a value
    ends up inline in a top-level node or in a process's file varies from save to save, so the
    damage below is done to all of them."""
    state = checkpoint / "state"
    files = [*state.glob("d/*"), *state.glob("ocdbt.process_*/d/*")]
    assert files, f"no OCDBT data files below {state}"
    return files


def flip_bytes(checkpoint):
    """Bit rot: a byte in every 4 kB of every data file inverted; sizes stay the same."""
    for path in data_files(checkpoint):
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 2, len(data), 4096):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))


def truncate(checkpoint):
    """An interrupted copy: every data file cut to half its length."""
    for path in data_files(checkpoint):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble_metadata(checkpoint):
    path = checkpoint / "state" / "_METADATA"
    path.write_bytes(path.read_bytes()[:100])


def change_a_stored_value(checkpoint):
    """One bit of one stored weight flipped, the files left well-formed: only the checksum
    saved with the checkpoint can tell. Written through TensorStore, which Orbax reads with."""
    import numpy as np
    import tensorstore as ts

    spec = {
        "driver": "zarr",
        "kvstore": {
            "driver": "ocdbt",
            "base": f"file://{checkpoint / 'state'}/",
            "path": "params.decoder.layer_0.cross_attention.key/",
        },
    }
    array = ts.open(spec).result()
    bits = array.read().result().view(np.uint32).copy()
    bits.flat[7] ^= 1 << 12
    array.write(bits.view(np.float32)).result()


@pytest.mark.parametrize(
    "damage, cause",
    [
        (change_a_stored_value, "its arrays do not match the checksum saved with them"),
        pytest.param(flip_bytes, "", marks=pytest.mark.slow),  # Whatever TensorStore reports.
        pytest.param(truncate, "", marks=pytest.mark.slow),
        pytest.param(garble_metadata, "JSONDecodeError", marks=pytest.mark.slow),
    ],
    ids=["changed-value", "flipped-bytes", "truncated-data", "cut-metadata"],
)
def test_training_resumes_from_the_newest_readable_checkpoint_and_keeps_the_damaged_one(
    trained_copy, damage, cause, capfd
):
    workdir, _ = trained_copy
    damage(workdir / "checkpoints" / "20")
    damaged = digests(workdir / "checkpoints" / "20")
    trainer.run(tiny_config(num_train_steps=30), str(workdir))
    err = capfd.readouterr().err
    assert f"warning: Checkpoint {workdir}/checkpoints/20 cannot be read: " in err
    assert cause in err and "Traceback" not in err
    aside = workdir / "checkpoints.damaged" / "20"
    assert f"moved to {aside.parent}); using step 10" in err
    assert digests(aside) == damaged  # Kept byte for byte, out of the way of new saves.
    assert {"20", "30"} <= set(os.listdir(workdir / "checkpoints"))


def test_evaluate_falls_back_past_a_damaged_checkpoint_with_one_clean_warning(trained_copy):
    workdir, _ = trained_copy
    truncate(workdir / "checkpoints" / "20")
    damaged = digests(workdir / "checkpoints")
    out = run_cli("evaluate.py", "--workdir", str(workdir), "--beam_size", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test: 64 sentences, step 10, beam 1" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings[0].startswith(f"warning: Checkpoint {workdir}/checkpoints/20 cannot be read")
    assert "using step 10, the newest that can" in warnings[1]
    # The warnings are all there is: no traceback, no library noise from the failed reads.
    assert out.stderr.strip().splitlines() == warnings, out.stderr[-3000:]
    assert digests(workdir / "checkpoints") == damaged  # Left in place.


def test_a_damaged_checkpoint_asked_for_by_step_is_an_error_naming_it(trained_copy):
    workdir, _ = trained_copy
    flip_bytes(workdir / "checkpoints" / "20")
    out = run_cli("evaluate.py", "--workdir", str(workdir), "--beam_size", "1", "--step", "20")
    assert_user_error(out, f"Checkpoint {workdir}/checkpoints/20 cannot be read", "--step")


def test_no_readable_checkpoint_is_an_error_and_deletes_nothing(trained_copy):
    workdir, _ = trained_copy
    for step in ("10", "20"):
        flip_bytes(workdir / "checkpoints" / step)
    damaged = digests(workdir / "checkpoints")
    with pytest.raises(
        CheckpointReadError, match=r"No checkpoint in .* can be read \(\[20, 10\]\)"
    ):
        trainer.run(tiny_config(num_train_steps=30), str(workdir))
    assert digests(workdir / "checkpoints") == damaged


# --- Corpora ------------------------------------------------------------------------------


def write_corpus(directory):
    for split, pairs in generate_splits(0, 400, 40, 40).items():
        for side, lang in enumerate(("en", "de")):
            text = "".join(pair[side] + "\n" for pair in pairs)
            (directory / f"{lang}.{split}.txt").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def text_files_run(tmp_path_factory):
    """A tiny model trained 2 steps on a local text corpus with a BPE vocabulary."""
    corpus, workdir = tmp_path_factory.mktemp("corpus"), tmp_path_factory.mktemp("text_run")
    write_corpus(corpus)
    config = with_overrides(
        multi30k.get_config(),
        {
            **{k: v for k, v in tiny.get_config().items() if k not in ("data", "model", "mesh")},
            **SMALL_RUN,
            "num_train_steps": 2,
            "checkpoint_every_steps": 1,
            "model.num_encoder_layers": 1,
            "model.num_decoder_layers": 1,
            "model.d_model": 32,
            "model.d_ff": 64,
            "model.num_heads": 2,
            "data.text_files.directory": str(corpus),
            "data.vocab_size": 150,
            "data.max_length": 32,
            "data.batching": "sentences",
        },
    )
    trainer.run(config, str(workdir))
    return config, corpus, workdir


def drop_a_line(path):
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:6] + lines[7:]))


def break_utf8(path):
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6][:3] + b"\xff\xfe" + lines[6][3:]
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (break_utf8, r"de\.train\.txt:7: invalid UTF-8 at byte 3"),
        (drop_a_line, r"en\.train\.txt has 400 lines but .*de\.train\.txt has 399"),
    ],
    ids=["invalid-utf8", "missing-line"],
)
def test_a_corpus_with_broken_lines_is_named_by_file_and_line(
    text_files_run, tmp_path, breakage, message
):
    config, corpus, trained_dir = text_files_run
    workdir = tmp_path / "workdir"
    shutil.copytree(trained_dir, workdir)
    before = digests(workdir / "checkpoints")
    target = corpus / "de.train.txt"
    good = target.read_bytes()
    breakage(target)  # In place: the workdir's config.json names this folder.
    try:
        with pytest.raises(CorpusError, match=message):
            trainer.run(config, str(workdir))
    finally:
        target.write_bytes(good)
    assert digests(workdir / "checkpoints") == before
