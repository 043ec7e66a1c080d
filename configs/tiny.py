"""A seconds-long smoke run on the generated task: the configuration the tests train.

python train.py --config configs/tiny.py --workdir /tmp/tiny
"""

from ml_collections import ConfigDict

from configs import quickstart


def get_config() -> ConfigDict:
    config = quickstart.get_config()
    config.num_train_steps = 40
    config.batch_size = 32
    config.warmup_steps = 20
    config.learning_rate_scale = 1.0
    config.log_every_steps = 10
    config.eval_every_steps = 20
    config.bleu_every_steps = 40
    config.checkpoint_every_steps = 20
    config.num_samples_to_print = 1
    config.eval_batch_size = 64
    config.model.num_encoder_layers = 1
    config.model.num_decoder_layers = 1
    config.model.d_model = 32
    config.model.d_ff = 64
    config.model.num_heads = 2
    config.data.max_length = 24
    config.data.generated.num_train = 2_000
    config.data.generated.num_validation = 64
    config.data.generated.num_test = 64
    return config
