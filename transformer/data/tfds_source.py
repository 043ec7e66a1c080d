"""Translation datasets from TensorFlow Datasets, e.g. `wmt14_translate/de-en`.

TFDS downloads and prepares a dataset on first use (into `data_dir`; corpora that must be
fetched by hand go in `manual_dir`), then reads it from disk. Only this module imports
TensorFlow, and it hides any GPU from TensorFlow so that JAX keeps the accelerator memory.
"""

from __future__ import annotations

from transformer.data.text_files import CorpusError


def read_tfds(
    name: str,
    source_lang: str,
    target_lang: str,
    split: str,
    data_dir: str | None,
    manual_dir: str | None,
    download: bool,
    shard_index: int = 0,
    shard_count: int = 1,
) -> list[tuple[str, str]]:
    """(source, target) pairs of `split` of the TFDS translation dataset `name`, in order;
    pairs with an empty side are skipped. With shard_count > 1, only the shard_index-th of
    shard_count even slices of the split is read (`tfds.even_splits`): one host's share.
    Raises CorpusError for a language the dataset lacks or a split it does not have."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")
    builder = tfds.builder(name, data_dir=data_dir)
    languages = _languages(builder.info.features)
    for key, lang in (("source_lang", source_lang), ("target_lang", target_lang)):
        if lang not in languages:
            raise CorpusError(
                f"TFDS dataset {name} has languages {sorted(languages)}; "
                f"data.tfds.{key}={lang!r} is not one of them."
            )
    if not builder.is_prepared():
        if not download or shard_count > 1:  # Several hosts would each prepare it.
            where = f"in data_dir {data_dir}" if data_dir else "in TFDS's default data_dir"
            raise CorpusError(
                f"TFDS dataset {name} is not prepared {where}, and "
                + ("data.tfds.download=False." if not download else "a multi-host run does not "
                   "download it on every host.")
                + " Prepare it once, on one machine: python prepare.py --config CONFIG "
                "--vocabulary PATH [--config.data.tfds.data_dir=DIR]; then train with "
                "--config.data.tfds.download=False --config.data.vocabulary=PATH."
            )  # fmt: skip
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder.download_and_prepare(download_config=config)
    if split not in builder.info.splits:
        raise CorpusError(
            f"TFDS dataset {name} has splits {sorted(builder.info.splits)}, not {split!r}."
        )
    if shard_count > 1:
        split = tfds.even_splits(split, n=shard_count)[shard_index]
    pairs = []
    for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        src = example[source_lang].decode("utf-8").strip()
        tgt = example[target_lang].decode("utf-8").strip()
        if src and tgt:
            pairs.append((src, tgt))
    if not pairs:
        raise CorpusError(f"TFDS dataset {name} split {split!r} has no non-empty pair.")
    return pairs


def _languages(features) -> set[str]:
    """Languages of a Translation feature dict (or of a plain {lang: Text} dict)."""
    languages = getattr(features, "languages", None)
    return set(languages) if languages else set(features.keys())
