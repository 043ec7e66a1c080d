#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one call, on an H100/H200:
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (logs: OUT_DIR, else $OUT, else /tmp/gpu)
#   bash benchmarks/gpu.sh --check [OUT_DIR]  (any machine: builds each run's configs and
#                                              prints their models and FLOPs per step, through
#                                              train_step.py --check; nothing compiles or runs)
#
# 0. tests/test_gpu.py, the paths only a GPU takes (cuDNN's fused attention against the plain
#    path, the device's memory count); where the attention fails them, the runs below use
#    XLA's attention;
# 1. the big model's train step in bfloat16 with cuDNN's fused attention: MFU against the
#    dense bf16 peak (PEAK_FLOPS, default 989e12: H100 and H200 SXM);
# 2. the same for base, and base with the rbg dropout PRNG beside it;
# 3. base's largest batch in bfloat16, without remat and with remat=block (--max_batch).
# Each run has its own time limit (then 10 s to end after SIGTERM), so the whole script ends
# within about 9.5 minutes however a run goes: a 15-minute GPU slot with the machine's start
# included. It refuses to run without a GPU, or where a Python package the runs need is
# missing (the tests' pytest is optional): a machine that cannot reach a package index gets them as wheels (for Python 3.12 here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       ml_collections sacremoses tensorboardX
# then pip install --no-index --no-deps --target /tmp/site .whl/*.whl and
# PYTHONPATH=/tmp/site there).
set -uo pipefail
check=()
if [ "${1:-}" = --check ]; then
    check=(--check)
    shift
fi
out="$(realpath -m "${1:-${OUT:-/tmp/gpu}}")"  # Before the cd: relative to the caller.
cd "$(dirname "$0")/.." || exit 2
peak="${PEAK_FLOPS:-989e12}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$out"

missing="$("$python" - <<'EOF'
import importlib.util

needed = ["jax", "flax", "optax", "orbax", "ml_collections", "sentencepiece", "sacrebleu",
          "sacremoses", "tensorboardX", "matplotlib", "tqdm", "numpy"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
EOF
)"
if [ -n "$missing" ]; then
    echo "benchmarks/gpu.sh: missing Python packages: $missing (see the top of this file)." >&2
    exit 2
fi
if [ ${#check[@]} = 0 ]; then
    errors="$(mktemp)"
    backend="$("$python" -c 'import jax; print(jax.default_backend())' 2>"$errors")"
    if [ "$backend" != gpu ]; then
        echo "benchmarks/gpu.sh: JAX's backend is '${backend:-unknown}', not gpu: nothing to measure." >&2
        tail -n 5 "$errors" >&2  # A CUDA plugin that failed to load says why here.
        rm -f "$errors"
        exit 3
    fi
    rm -f "$errors"
    { nvidia-smi; "$python" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)'; } \
        >"$out/machine.txt" 2>&1
    cat "$out/machine.txt"
fi

status=0
run() {  # name, seconds, benchmark arguments...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most $limit s): benchmarks/train_step.py $*"
    timeout -k 10 "$limit" "$python" benchmarks/train_step.py "$@" "${check[@]}" 2>&1 \
        | tee "$out/$name.txt"
    local code=${PIPESTATUS[0]}
    echo "=== $name: exit $code"
    [ "$code" = 0 ] || status=1
}

attention=dot_product_attention
echo "=== gpu_tests (at most 90 s): tests/test_gpu.py"
if [ ${#check[@]} != 0 ]; then
    echo "=== gpu_tests: not with --check"
elif "$python" -c 'import pytest' 2>/dev/null; then
    # tests/conftest.py puts tests on the CPU unless JAX_PLATFORMS says otherwise; `-o
    # addopts=` drops pyproject's pytest options, which need pytest-xdist.
    JAX_PLATFORMS=cuda timeout -k 10 90 "$python" -m pytest -o addopts= -p no:cacheprovider -q \
        tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
    code=${PIPESTATUS[0]}
    echo "=== gpu_tests: exit $code"
    [ "$code" = 0 ] || status=1
    if [ "$code" = 124 ] || [ "$code" = 137 ]; then
        echo "=== the GPU tests ran out of time: the runs below keep the fused attention"
    elif [ "$code" != 0 ] && ! grep -q "passed" "$out/gpu_tests.txt" \
        || grep -q "^\(FAILED\|ERROR\).*attention" "$out/gpu_tests.txt"; then
        attention=xla
        echo "=== the fused attention failed its tests: the runs below use model.attention=xla"
    fi
else
    echo "=== gpu_tests: pytest is missing, so the GPU paths go unchecked"
fi

bf16=(--config.model.dtype=bfloat16 "--config.model.attention=$attention"
      --config.model.attention_dropout_rate=0.0)
run big 160 --config configs/big.py "${bf16[@]}" --peak_flops "$peak" --steps 10
# The dropout PRNG was chosen on CPU (threefry); on a GPU its hash costs tensor-core-free
# integer work, so base is also timed with rbg, in turn with threefry.
run base 140 --config configs/base.py "${bf16[@]}" --peak_flops "$peak" --steps 10 \
    --variant dropout_rng=rbg
run base_max_batch 130 --config configs/base.py "${bf16[@]}" --max_batch
exit $status
