"""Comparisons with other libraries, run only when a benchmark's `--compare` asks for them.

  train_step.py  `benchmarks/train_step.py --compare torch flax`: the steps and their report
  torch_step.py  the same model and train step in PyTorch eager, and PyTorch's matmul peak
  flax_wmt.py    flax/examples/wmt's own train step, loaded from a Flax source tree
  hf_generate.py `benchmarks/decode.py --compare hf`: Hugging Face `generate` (MarianMTModel)
  worker.py      each compared library in a process of its own, stepping on command
  matmul.py      a script: XLA's and PyTorch's float32 matmuls on a train step's shapes

Every comparison runs the other library on the same batch, in the same run, taking turns
with ours, so the printed ratios are between figures measured side by side.
"""
