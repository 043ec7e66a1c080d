"""Transformer big on WMT14 English -> German (section 6.1, Table 3 "big"): configs/wmt14.py's
data, batches and compute settings with configs/big.py's model, steps and checkpoints.

  python train.py --config configs/wmt14_big.py --workdir /tmp/wmt14_big
  python evaluate.py --workdir /tmp/wmt14_big --average_last 20     # section 6.1

d_model 1,024, d_ff 4,096, 16 heads, dropout 0.3, 300K steps, the newest 20 checkpoints kept
for averaging. The mesh stays data parallel: big's 214M parameters with their float32 Adam
state take 2.4 GiB per device, a small part of a current GPU's memory; where activations do
not fit, `--config.mesh.fsdp=8` shards the state over the devices (train.py --dry_run tells).
`configs/ablations.py:big,data=wmt14` is this config.
"""

from ml_collections import ConfigDict

from configs import ablations


def get_config() -> ConfigDict:
    return ablations.get_config("big,data=wmt14")
