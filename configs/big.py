"""Transformer big (Vaswani et al. 2017, Table 3 row "big").

python train.py --config configs/big.py --workdir /tmp/transformer_big
"""

from ml_collections import ConfigDict

from configs import base

# big's differences from base, by dotted key; configs/ablations.py's "big" row is this too.
OVERRIDES = {
    "model.d_model": 1024,
    "model.d_ff": 4096,
    "model.num_heads": 16,  # d_k = d_v = 64.
    "model.dropout_rate": 0.3,  # Table 3, big (section 6.1 uses 0.1 for EN-FR).
    "num_train_steps": 300_000,  # Section 5.2: big models train 300K steps.
    "keep_checkpoints": 20,  # Section 6.1: big averages the last 20 checkpoints.
}


def get_config() -> ConfigDict:
    config = base.get_config()
    config.update_from_flattened_dict(OVERRIDES)
    return config
