"""Transformer base on WMT14 English -> German through TensorFlow Datasets (section 6.1),
set for a host of 8 GPUs (or a TPU slice); configs/wmt14_big.py is big.

  python train.py --config configs/wmt14.py --workdir /tmp/wmt14 \
      [--config.data.tfds.data_dir=/big/disk/tensorflow_datasets]

The first run downloads and prepares wmt14_translate/de-en (about 4.5M pairs; several GB)
and trains a shared 37K BPE vocabulary on it. validation is newstest2013, test newstest2014.

How it is computed, for accelerators: bfloat16 matmuls with float32 parameters and Adam
state, and jax.nn.dot_product_attention (cuDNN's fused attention on a GPU; XLA's elsewhere).
The mesh is data parallel over every device: base's 63M parameters and their Adam state
(0.7 GiB) fit each device many times over, so sharding them (fsdp) would only add
communication. docs/accelerators.md has the expected time per run.
"""

from ml_collections import ConfigDict

from configs import base


def get_config() -> ConfigDict:
    config = base.get_config()
    config.batch_size = 25_000  # Section 5.1: ~25K source and ~25K target tokens per step.
    config.model.dtype = "bfloat16"
    config.model.attention = "dot_product_attention"
    config.mesh.data = -1  # Every device; base fits on one (see above).
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
    config.data.token_count = "real"  # 25K real tokens, not padding (up to 1.5x padded).
    return config
