"""export.py: a small trained model exported to Hugging Face MarianMT and CTranslate2 computes
our logits, and both engines decode our tokens from the same ids, greedy and beam 4: an
independent check of our decoder and beam search. Skipped where the `export` extra
(torch, transformers, ctranslate2) is not installed.

Where the engines differ by design (transformer/export.py): HF and CTranslate2 divide a beam
score by length ** alpha, we by GNMT's ((5 + length) / 6) ** alpha, so beams are compared at
alpha 0 (raw log-probability), where the rules coincide; CTranslate2 by default never ends a
sentence at its first token (min_decoding_length 1; ours and HF's min 0, so it is set to 0
here: at alpha 0 a lone EOS is often the likeliest output); HF runs LayerNorm with epsilon 1e-5,
ours 1e-6; MarianTokenizer normalises punctuation (Moses) before SentencePiece.
"""

import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from transformer import export, inference, workdir
from transformer.data.tasks import load_task, read_pairs
from transformer.decode import beam_search, greedy_decode, output_limits
from transformer.special_tokens import EOS_ID, PAD_ID

from .explorer_workdirs import train_workdirs
from .model_configs import small_model_config

torch = pytest.importorskip("torch", reason="needs the export extra: pip install -e '.[export]'")
transformers = pytest.importorskip("transformers", reason="needs the export extra")
ctranslate2 = pytest.importorskip("ctranslate2", reason="needs the export extra")

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(restored model, test sources [n, width] padded, HF dir, CTranslate2 dir) of a tiny
    SentencePiece translation model, exported by the library."""
    path = train_workdirs(tmp_path_factory, (("translation", "encoder_decoder"),))["translation"]
    restored = inference.restore(str(path))
    data, model = restored.config.data, restored.config.model
    spm_model = workdir.vocabulary_path(data, str(path))
    out = tmp_path_factory.mktemp("exported")
    export.write_hf(restored.params, model, spm_model, str(out / "hf"))
    export.convert_ct2(str(out / "hf"), str(out / "ct2"), model.layer_norm_epsilon)
    shutil.copyfile(spm_model, out / "ct2" / "spm.model")
    inputs = load_task(data, str(path), splits=("test",)).splits["test"].inputs
    sources = [np.asarray(inputs[i]) for i in range(len(inputs.lengths))]
    batch = np.zeros((len(sources), max(map(len, sources))), np.int32)
    for row, ids in enumerate(sources):
        batch[row, : len(ids)] = ids
    return restored, batch, out / "hf", out / "ct2", path


def up_to_eos(row) -> list[int]:
    """A decoded row's tokens through its EOS (all of them where it has none), PAD dropped."""
    tokens = [int(t) for t in row if t != PAD_ID]
    return tokens[: tokens.index(EOS_ID) + 1] if EOS_ID in tokens else tokens


def test_exported_marian_model_computes_our_logits(exported):
    restored, batch, hf_dir, *_ = exported
    targets = np.roll(batch, 1, axis=0)  # Any target ids: teacher forcing.
    ours = np.asarray(restored.placed.model.apply({"params": restored.params}, batch, targets))
    hf = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    decoder_input = np.concatenate([np.full((len(batch), 1), 2), targets[:, :-1]], axis=1)
    with torch.inference_mode():
        theirs = hf(
            input_ids=torch.from_numpy(batch.astype(np.int64)),
            attention_mask=torch.from_numpy(batch != PAD_ID),
            decoder_input_ids=torch.from_numpy(decoder_input.astype(np.int64)),
        ).logits.numpy()
    real = targets != PAD_ID  # Positions after a target's padding are not compared.
    assert np.abs(ours - theirs)[real].max() < 2e-3  # LayerNorm epsilon 1e-5 vs 1e-6.


def our_outputs(restored, batch, beam: int) -> list[list[int]]:
    model, max_len = restored.placed.model, restored.config.model.max_len
    if beam == 1:
        out = jax.jit(lambda p, x: greedy_decode(model, p, x, max_len))(restored.params, batch)
    else:
        decode = jax.jit(lambda p, x: beam_search(model, p, x, max_len, beam, alpha=0.0)[0])
        out = decode(restored.params, batch)
    return [up_to_eos(row) for row in np.asarray(out)]


@pytest.mark.parametrize("beam", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_hf_generate_decodes_our_tokens(exported, beam):
    restored, batch, hf_dir, *_ = exported
    hf = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    limits = np.asarray(output_limits(jnp.asarray(batch), restored.config.model.max_len))
    theirs = []
    for row, limit in zip(batch, limits, strict=True):  # One at a time: each its own limit.
        ids = torch.from_numpy(row[row != PAD_ID][None].astype(np.int64))
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids, num_beams=beam, do_sample=False, length_penalty=0.0,
                max_new_tokens=int(limit), max_length=None,
            )  # fmt: skip
        theirs.append(up_to_eos(out[0, 1:].tolist()))  # After the decoder start (BOS).
    assert theirs == our_outputs(restored, batch, beam)


@pytest.mark.parametrize("beam", [1, 4])
def test_ctranslate2_decodes_our_tokens(exported, beam):
    restored, batch, _, ct2_dir, _ = exported
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(ct2_dir / "spm.model"))
    translator = ctranslate2.Translator(str(ct2_dir), intra_threads=1)
    limits = np.asarray(output_limits(jnp.asarray(batch), restored.config.model.max_len))
    theirs = []
    for row, limit in zip(batch, limits, strict=True):  # Batches of one, as HF above.
        source = [pieces.id_to_piece(int(i)) for i in row[row != PAD_ID]]
        result = translator.translate_batch(
            [source], beam_size=beam, length_penalty=0.0, max_decoding_length=int(limit),
            min_decoding_length=0, return_end_token=True,  # CTranslate2's default min is 1.
        )[0]  # fmt: skip
        theirs.append([pieces.piece_to_id(p) for p in result.hypotheses[0]])
    assert theirs == our_outputs(restored, batch, beam)


def test_exported_tokenizer_encodes_as_ours(exported):
    restored, _, hf_dir, *_ = exported
    data = restored.config.data
    texts = [source for source, _ in read_pairs(data, wanted=("test",))["test"]]
    hf = transformers.MarianTokenizer.from_pretrained(hf_dir)
    assert hf(texts)["input_ids"] == restored.tokenizer.encode_batch(texts)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"normalization": "pre"}, "model.normalization='post'"),
        ({"positional_encoding": "learned"}, "model.positional_encoding='sinusoidal'"),
        ({"kind": "rnn"}, "model.kind='encoder_decoder'"),
        ({"share_embeddings": False}, "model.share_embeddings=True"),
        ({"d_k": 4}, "d_k = d_v = d_model / num_heads"),
    ],
)
def test_a_model_marian_cannot_compute_is_refused_by_name(override, message):
    with pytest.raises(export.ExportError, match=re.escape(message)):
        export.check_exportable(small_model_config(**override), "bpe")


def test_a_word_vocabulary_is_refused():
    with pytest.raises(export.ExportError, match="SentencePiece tokenizer"):
        export.check_exportable(small_model_config(), "word")


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "export.py"), *args], capture_output=True, text=True, cwd=REPO
    )


@pytest.mark.slow  # 14 s: the library calls it makes run in the fixture above.
def test_export_cli_writes_a_ctranslate2_model_and_refuses_an_existing_output(exported, tmp_path):
    *_, path = exported
    out = tmp_path / "ct2"
    done = run_export("--workdir", str(path), "--to", "ct2", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.bin", "shared_vocabulary.json", "spm.model"
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["ct2"]  # No staging directory left.
    before = sorted(p.name for p in out.iterdir())
    again = run_export("--workdir", str(path), "--to", "hf", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr.splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == before
