"""A Transformer that summarises chat dialogues: SAMSum (14,732 dialogues with human-written
summaries), read in place from its JSON files and scored with ROUGE.

  python train.py --config configs/samsum.py --workdir /tmp/samsum \
      [--config.data.json_files.directory=/path/to/samsum]
  python evaluate.py --workdir /tmp/samsum --average_last 5 --beam_size 4 --alpha 1.2 \
      --min_length 16 --no_repeat_ngram 3
  python summarize.py --workdir /tmp/samsum --input dialogues.json --average_last 5 \
      --beam_size 4 --alpha 1.2 --min_length 16 --no_repeat_ngram 3

The same encoder-decoder as translation, fed long sources and short targets: dialogues of up
to 256 pieces (longer ones, about 1 in 7, keep their first 255), summaries of up to 128;
token batches bucket each side by its own length. A newline is whitespace to SentencePiece,
so turns stay marked by their "Name:" prefixes. The search above (beam 4, α 1.2, at least 16
pieces, no trigram twice, the last 5 checkpoints averaged) was chosen on validation.

Sized for an hour of training on a 2-core CPU (`get_config()`: 3,000 steps took 60
minutes); `get_config("gpu")` is the same recipe at the paper's base size, with dropout and a
larger batch, for one accelerator. As measured, the CPU recipe with that search scores test
ROUGE-1/2/L/Lsum 32.1 / 9.3 / 25.2 / 29.4: above the LONGEST-3 baseline on ROUGE-1 and
ROUGE-L, below it on ROUGE-2 and ROUGE-Lsum (31.9 / 10.2 / 24.2 / 29.9):
docs/summarisation.md.
"""

from ml_collections import ConfigDict

from configs import base
from transformer.config import ConfigError


def get_config(size: str = "cpu") -> ConfigDict:
    config = base.get_config()
    config.num_train_steps = 3_000  # What an hour on two cores holds.
    config.batch_size = 6_144  # Source tokens per step (padded), in (source, target) buckets.
    # Chosen on validation: at 0.5 the decoder learned a language model of summaries and
    # ignored the dialogues; at 0.25 it reads them.
    config.learning_rate_scale = 0.25
    config.warmup_steps = 500
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    config.eval_every_steps = 400
    config.bleu_every_steps = 1_000  # Validation ROUGE (greedy) of 818 dialogues.
    config.eval_batch_size = 128
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 5
    config.num_samples_to_print = 3

    config.model.num_encoder_layers = 3
    config.model.num_decoder_layers = 3
    config.model.d_model = 256
    config.model.d_ff = 1_024
    config.model.num_heads = 4  # d_k = d_v = 64.
    # Chosen on validation: eight epochs leave the model short of fitting its data, where
    # dropout 0.1 only slowed it (perplexity 117 against 86 at step 1,200).
    config.model.dropout_rate = 0.0

    config.data.source = "json_files"
    del config.data["generated"]
    config.data.json_files = ConfigDict(
        dict(
            directory="../shared/data/samsum",
            source_field="dialogue",
            target_field="summary",
            train_split="train",
            validation_split="val",
            test_split="test",
        )
    )
    config.data.tokenizer = "bpe"
    config.data.vocab_size = 8_000  # English only; names, slang and emoji among the pieces.
    # Half the compute of 512 per dialogue: twice the steps in the hour, for 14% cut short.
    config.data.max_source_length = 256
    config.data.max_length = 128  # The longest summary has about 90 pieces.
    config.data.overlong = "truncate"  # A long dialogue keeps its first 255 pieces.
    config.data.batching = "tokens"
    config.data.metric = "rouge"
    if size == "gpu":
        config.num_train_steps = 20_000
        config.batch_size = 32_768
        config.learning_rate_scale = 1.0
        config.data.max_source_length = 512  # 1 dialogue in 300 is longer.
        config.warmup_steps = 4_000  # Section 5.3.
        config.eval_batch_size = 512
        config.bleu_every_steps = 2_000
        config.checkpoint_every_steps = 1_000
        config.model.num_encoder_layers = 6
        config.model.num_decoder_layers = 6
        config.model.d_model = 512
        config.model.d_ff = 2_048
        config.model.num_heads = 8
        config.model.dropout_rate = 0.1  # Section 5.4: hundreds of epochs need it.
        config.model.dtype = "bfloat16"
        config.model.attention = "dot_product_attention"
    elif size != "cpu":
        raise ConfigError(f"configs/samsum.py:{size}: the sizes are 'cpu' and 'gpu'.")
    return config
