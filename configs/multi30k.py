"""A small Transformer on Multi30k English -> German (29K caption pairs), read from local files.

  python train.py --config configs/multi30k.py --workdir /tmp/multi30k \
      [--config.data.text_files.directory=/path/to/multi30k]

The directory holds aligned `{en,de}.{train,validation,test}.txt`; relative paths are taken
from the current directory (the default is the corpus beside this repository). The test split
is the 2016 Flickr test set, so the final BLEU compares with published Multi30k results.
"""

from ml_collections import ConfigDict

from configs import base


def get_config() -> ConfigDict:
    config = base.get_config()
    config.num_train_steps = 8_000
    config.batch_size = 4_096  # Tokens per side per step (padded), in length buckets.
    config.warmup_steps = 1_000
    config.log_every_steps = 100
    config.eval_every_steps = 1_000
    config.bleu_every_steps = 2_000
    config.eval_batch_size = 200
    config.checkpoint_every_steps = 1_000

    # The "ref-small" sizes: 3 + 3 layers of d_model 256.
    config.model.num_encoder_layers = 3
    config.model.num_decoder_layers = 3
    config.model.d_model = 256
    config.model.d_ff = 1024
    config.model.num_heads = 4
    config.model.max_len = 128

    config.data.source = "text_files"
    del config.data["embedded"]
    config.data.text_files = ConfigDict(
        dict(directory="../shared/data/multi30k", source_lang="en", target_lang="de")
    )
    config.data.tokenizer = "bpe"
    config.data.vocab_size = 8_000  # Shared by English and German.
    config.data.max_length = 64  # The longest training caption has under 64 pieces.
    config.data.batching = "tokens"
    return config
