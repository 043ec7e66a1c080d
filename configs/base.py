"""Transformer base (Vaswani et al. 2017, Table 3 row "base"; section 5).

  python train.py --config configs/base.py --workdir /tmp/transformer_base

The model, optimizer and regularisation are the paper's. The data is the generated
English -> German-like corpus, which needs no download; configs/wmt14.py trains this model on
the paper's WMT14 English -> German, and every other config starts from this one.
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
    # Sentence pairs per step: about the paper's ~25K source + ~25K target tokens in WMT
    # sentences (configs/wmt14.py batches by tokens, as the paper did).
    config.batch_size = 1024
    config.grad_accum_steps = 1
    config.learning_rate_scale = 1.0  # Section 5.3: lr = d_model^-0.5 * min(...).
    config.warmup_steps = 4000  # Section 5.3.
    config.adam_b1 = 0.9  # Section 5.3.
    config.adam_b2 = 0.98
    config.adam_eps = 1e-9
    config.label_smoothing = 0.1  # Section 5.4, epsilon_ls.
    config.grad_clip_norm = 0.0  # The paper does not clip.
    # Dropout masks from JAX's default threefry PRNG; "rbg" draws other masks at the same
    # rate from bits that are cheaper to make on an accelerator.
    config.dropout_rng = "threefry"
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
    # MFU in the log divides by this peak (TFLOP/s per device); 0 takes the datasheet's for
    # the GPU or TPU (transformer/flops.py). On a CPU, MFU is logged only where it is set.
    config.peak_tflops_per_device = 0.0
    # A profile of steps 11 to 15 for TensorBoard and Perfetto: profile_num_steps = 5.
    config.profile_skip_steps = 10
    config.profile_num_steps = 0

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
    model.share_embeddings = True  # Section 3.4: one matrix for both embeddings ...
    model.tie_output_embedding = True  # ... and the pre-softmax projection.
    # How the parameters are computed, chosen for the hardware (the config module says what
    # each value does): float32 here; bfloat16 with dot_product_attention (cuDNN's fused
    # attention) on a GPU; remat ("block" or "dots") where activations do not fit.
    model.dtype = "float32"
    model.attention = "xla"
    model.remat = "none"

    config.data = data = ConfigDict()
    data.source = "generated"
    data.tokenizer = "word"  # The paper: byte-pair encoding ("bpe") on WMT.
    data.vocab_size = 37_000  # Section 5.1: a shared source-target vocabulary of ~37K.
    data.vocabulary = ""  # A file from prepare.py, or "": trained in the workdir.
    data.max_length = 64
    data.max_source_length = config_dict.placeholder(int)  # None: max_length for both sides.
    data.overlong = "drop"
    data.batching = "sentences"
    data.token_count = "padded"  # With "tokens" batching: "real" counts no padding.
    data.metric = "bleu"  # "rouge" for summaries.
    data.generated = ConfigDict(
        dict(corpus_seed=0, num_train=200_000, num_validation=1_000, num_test=1_000)
    )
    return config
