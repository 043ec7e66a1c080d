"""Transformer base (Vaswani et al. 2017, Table 3 row "base"; section 5).

  python train.py --config configs/base.py --workdir /tmp/transformer_base

Until the real-data pipeline lands, this trains on the embedded generated corpus; the model,
optimizer and regularisation are the paper's.
"""

from ml_collections import ConfigDict, config_dict

# Logical axis -> mesh axis. Flax takes the first rule whose mesh axis is still free.
LOGICAL_AXIS_RULES = (
    # Activations: batch over every data-parallel axis, model dims over "tensor".
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # Parameters: FSDP shards d_model, tensor parallelism shards heads, d_ff and vocabulary.
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("position", None),
)


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.num_train_steps = 100_000  # Section 5.2: base models train 100K steps.
    # Sentence pairs per step. The paper used ~25K source + ~25K target tokens, about 1K
    # WMT sentence pairs; token-budget batching comes with the real-data pipeline.
    config.batch_size = 1024
    config.grad_accum_steps = 1
    config.learning_rate_scale = 1.0  # Section 5.3: lr = d_model^-0.5 * min(...).
    config.warmup_steps = 4000  # Section 5.3.
    config.adam_b1 = 0.9  # Section 5.3.
    config.adam_b2 = 0.98
    config.adam_eps = 1e-9
    config.label_smoothing = 0.1  # Section 5.4, epsilon_ls.
    config.grad_clip_norm = 0.0  # The paper does not clip.
    # The projection fused into the loss, over 8 pieces of the target length: the same value
    # as "integer" and "one_hot" without storing the logits (ref-small: 1.92 against 2.26 s a
    # step on the 2-core EPYC, 0.82 against 1.15 GiB of temporaries).
    config.cross_entropy = "chunked"
    config.cross_entropy_chunks = 8
    # Dropout masks from threefry bits (JAX's default key, computed fused into the dropout):
    # the ref-small step took 2.16 s with it and 2.42 s with "rbg" on the 2-core EPYC CPU.
    config.dropout_rng = "threefry"
    # The step writes the new parameters and Adam moments over the old ones: without it
    # XLA holds both (ref-base's fp32 step: 4.04 instead of 3.55 GiB).
    config.donate_state = True
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.bleu_every_steps = 5000  # Greedy validation BLEU, logged like the loss.
    config.eval_batch_size = 256
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 5  # Section 6.1: base averages the last 5 checkpoints.
    # A NaN/Inf step is skipped and counted; 10 in a row stop training with an error.
    config.nonfinite_policy = "stop"
    config.max_consecutive_nonfinite = 10
    config.num_samples_to_print = 5

    config.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.logical_axis_rules = LOGICAL_AXIS_RULES

    config.model = model = ConfigDict()
    model.kind = "encoder_decoder"
    model.num_encoder_layers = 6  # N
    model.num_decoder_layers = 6  # N
    model.d_model = 512
    model.d_ff = 2048
    model.num_heads = 8  # h
    model.d_k = config_dict.placeholder(int)  # None: d_model / h = 64, as in the table.
    model.d_v = config_dict.placeholder(int)
    model.dropout_rate = 0.1  # P_drop
    model.attention_dropout_rate = 0.0  # The paper has none.
    model.activation = "relu"  # Section 3.3.
    model.normalization = "post"  # Section 3.1: LayerNorm(x + Sublayer(x)).
    model.layer_norm_epsilon = 1e-6
    model.positional_encoding = "sinusoidal"  # Section 3.5 (Table 3 row E: "learned").
    model.max_len = 256
    model.share_embeddings = True  # Section 3.4: one matrix for both embeddings ...
    model.tie_output_embedding = True  # ... and the pre-softmax projection.
    model.dtype = "float32"
    # Same math, other computation, chosen by benchmarks/train_step.py on ref-small (2-core
    # AMD EPYC CPU, one run, steps alternating; README "Performance"):
    model.fused_qkv = False  # 2.26 s/step fused vs 2.16 s: the slices cost more than it saves.
    # Plain einsums; "dot_product_attention" (cuDNN on GPU) has no attention dropout.
    model.attention = "xla"
    model.remat = "none"  # "dots" 2.25 s, "block" 2.51 s vs 2.16 s: memory for compute.

    config.data = data = ConfigDict()
    data.source = "embedded"
    data.tokenizer = "word"  # The paper: byte-pair encoding ("bpe") on WMT.
    data.vocab_size = 37_000  # Section 5.1: a shared source-target vocabulary of ~37K.
    data.max_length = 64
    data.overlong = "drop"
    data.batching = "sentences"
    data.embedded = ConfigDict(
        dict(corpus_seed=0, num_train=200_000, num_validation=1_000, num_test=1_000)
    )
    return config
