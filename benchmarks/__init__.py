"""Benchmarks: scripts that time the library and print figures measured side by side.

  train_step.py      the train step: tokens/s, MFU, memory; variants (config keys, CPU forms)
  decode.py          greedy decoding and beam search, with and without the KV cache
  input_pipeline.py  how fast the host builds batches, against the train step
  scaling_sweep.py   the train step over sequence lengths and batch sizes (CSV and plot)
  gpu.sh             the GPU runs of train_step.py in one call

workloads.py, steps.py, machine.py and max_batch.py are what the scripts share; compare/ holds
the comparisons with other libraries (`--compare`).
"""
