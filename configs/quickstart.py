"""A small Transformer on the generated English -> German-like task: minutes on a laptop CPU.

python train.py --config configs/quickstart.py --workdir /tmp/quickstart
"""

from ml_collections import ConfigDict

from configs import base


def get_config() -> ConfigDict:
    config = base.get_config()
    config.num_train_steps = 1000
    config.batch_size = 16  # Packed rows of 64 tokens: about 80 sentence pairs.
    # The paper's schedule peaks at d_model^-0.5 * warmup^-0.5, 6e-3 here; 0.4 of that trains
    # this small post-LN model stably.
    config.learning_rate_scale = 0.4
    config.warmup_steps = 200
    config.log_every_steps = 50
    config.eval_every_steps = 250
    config.bleu_every_steps = 500
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = 2

    config.model.num_encoder_layers = 2
    config.model.num_decoder_layers = 2
    config.model.d_model = 128
    config.model.d_ff = 512
    config.model.num_heads = 4

    config.data.vocab_size = 1024  # The corpus has about 700 word types.
    config.data.max_length = 64
    config.data.batching = "packed"
    config.data.generated.num_train = 50_000
    config.data.generated.num_validation = 500
    config.data.generated.num_test = 1_000
    return config
