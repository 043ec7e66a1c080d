"""Transformer base on WMT14 English -> German through TensorFlow Datasets (section 6.1).

  python train.py --config configs/wmt14.py --workdir /tmp/wmt14 \
      [--config.data.tfds.data_dir=/big/disk/tensorflow_datasets]

The first run downloads and prepares wmt14_translate/de-en (about 4.5M pairs; several GB)
and trains a shared 37K BPE vocabulary on it. validation is newstest2013, test newstest2014.
For the big model, add the overrides of configs/big.py (d_model 1024, d_ff 4096, 16 heads,
dropout 0.3) on the command line.
"""

from ml_collections import ConfigDict

from configs import base


def get_config() -> ConfigDict:
    config = base.get_config()
    config.batch_size = 25_000  # Section 5.1: ~25K source and ~25K target tokens per step.
    config.eval_batch_size = 128
    config.data.source = "tfds"
    del config.data["generated"]
    config.data.tfds = ConfigDict(
        dict(
            name="wmt14_translate/de-en",
            source_lang="en",
            target_lang="de",
            data_dir="",
            manual_dir="",
            download=True,
            train_split="train",
            validation_split="validation",
            test_split="test",
        )
    )
    config.data.tokenizer = "bpe"  # Section 5.1: byte-pair encoding, shared vocabulary.
    config.data.max_length = 256
    config.data.batching = "tokens"
    return config
