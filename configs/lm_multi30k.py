"""A decoder-only language model of the German side of Multi30k (29K image captions).

  python train.py --config configs/lm_multi30k.py --workdir /tmp/lm_multi30k

The training loop, checkpoints and evaluation are train.py's; a language model reads only the
target side of each pair, so both sides name the German files: every "pair" is a caption
twice, the SentencePiece vocabulary is German only, and packing fills rows by the German
length. At the end it prints the test perplexity (per BPE piece, teacher-forced) and greedy
continuations of the first 3 pieces of test captions.
"""

from ml_collections import ConfigDict

from configs import multi30k


def get_config() -> ConfigDict:
    config = multi30k.get_config()
    # 32 packed rows of 64 pieces: ~2,000 tokens per step, an epoch (~460K pieces) in ~230
    # steps; 3,000 steps are ~13 epochs, about 20 minutes on an idle 2-core CPU (estimate).
    config.num_train_steps = 3_000
    config.batch_size = 32
    config.learning_rate_scale = 1.0  # Peak 128^-0.5 * 1000^-0.5 = 2.8e-3 at step 1000.
    config.warmup_steps = 1_000
    config.eval_every_steps = 500
    config.bleu_every_steps = 0  # A language model does not translate.
    config.eval_batch_size = 200
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    config.num_samples_to_print = 8

    config.model.kind = "decoder_only"
    config.model.num_encoder_layers = 0
    config.model.num_decoder_layers = 4
    config.model.d_model = 128
    config.model.d_ff = 512
    config.model.num_heads = 4
    config.model.dropout_rate = 0.2

    config.data.text_files.source_lang = "de"
    config.data.text_files.target_lang = "de"
    config.data.vocab_size = 6_000  # German only.
    config.data.batching = "packed"
    return config
