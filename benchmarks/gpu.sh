#!/usr/bin/env bash
# The GPU speed tables of docs/speed.md in one run, sized to finish within 8 minutes on one H100:
#   1. the default config with its backbone's architecture (MiniLM-L6) and random weights, STEPS steps: the plain
#      fp32 loop, Trainer and the pipeline at its defaults (bf16, padded to a multiple of 64, cuDNN's fused attention
#      off), then the pipeline in fp32, with neither fix (PyTorch's choices), and with each fix alone;
#   2. base and large architectures with random weights (nothing is downloaded), LARGE_STEPS steps each after WARMUP
#      steps of a throwaway model, bf16: batch 16 at max_len 256 and batch 8 at max_len 512, each with and without
#      gradient checkpointing;
#   3. where the time goes, by PyTorch operator (torch.profiler): PROFILE_STEPS steps of each of PROFILE_ARCHS in
#      bf16 at the first shape, after WARMUP steps: the GPU's kernel time by kind (matmul, attention, ...).
# Every row gives samples/s, peak GPU memory and MFU against the card's measured bf16 (or fp32) matmul peak.
#
#   bash benchmarks/gpu.sh 2>&1 | tee gpu.log
#   STEPS=2 LARGE_STEPS=1 PROFILE_STEPS=1 WARMUP=1 ARCHS=tiny-deberta DEFAULT_ARCH=tiny-deberta \
#     SHAPES="train.batch_size=4 model.max_len=32" EVAL_ROWS=8 BENCH_ARGS=--in-process \
#     bash benchmarks/gpu.sh                                                            # a smoke run, on any machine
#
# Needs the competition data in input/ (make data) and the project's packages (make setup); on a machine that
# reaches no package index, docs/speed.md says what to bring. CONFIG and OVERRIDES (config overrides for every
# row) change what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
STEPS=${STEPS:-200}
LARGE_STEPS=${LARGE_STEPS:-30}
WARMUP=${WARMUP:-10}  # section 2: steps of a throwaway model first, so that MFU is the steady state's
ARCHS=${ARCHS:-deberta-v3-base deberta-v3-large}
SHAPES=${SHAPES:-"train.batch_size=16 model.max_len=256;train.batch_size=8 model.max_len=512"}  # ;-separated
PROFILE_STEPS=${PROFILE_STEPS:-10}
EVAL_ROWS=${EVAL_ROWS:-256}
CONFIG=${CONFIG:-configs/default.yaml}
DEFAULT_ARCH=${DEFAULT_ARCH:-minilm-l6}
PROFILE_ARCHS=${PROFILE_ARCHS:-"$DEFAULT_ARCH ${ARCHS##* }"}  # the default's and the last of ARCHS (the largest)
PROFILE_EVAL_ROWS=${PROFILE_EVAL_ROWS:-16}  # few: the pipeline's profile includes its one validation
TOKENIZER=${TOKENIZER:+--tokenizer $TOKENIZER}
OVERRIDES=${OVERRIDES:-}
BENCH_ARGS=${BENCH_ARGS:-}  # more arguments of benchmarks/throughput.py, e.g. --in-process for a smoke run
# shellcheck disable=SC2086  # OVERRIDES and BENCH_ARGS are lists
bench() { "$PYTHON" benchmarks/throughput.py --config "$CONFIG" --repeats 1 --eval-rows "$EVAL_ROWS" $TOKENIZER $BENCH_ARGS "$@" $OVERRIDES; }

git rev-parse --short HEAD 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU: a smoke run"
"$PYTHON" -c 'import torch, transformers, accelerate as a; print("torch", torch.__version__, "transformers",
transformers.__version__, "accelerate", a.__version__, "cuda", torch.version.cuda)'

echo "== 1. default config, $DEFAULT_ARCH with random weights, $STEPS steps"
bench --steps "$STEPS" --methods plain,trainer,pipeline --random-backbone "$DEFAULT_ARCH" \
  --variant train.mixed_precision=no \
  --variant "train.pad_to_multiple_of=1 train.cudnn_attention=null" \
  --variant train.pad_to_multiple_of=1 \
  --variant train.cudnn_attention=null
echo "(section 1: $SECONDS s)"

echo "== 2. big architectures, random weights, $LARGE_STEPS steps"
for arch in $ARCHS; do
  IFS=';' read -ra shapes <<<"$SHAPES"
  for shape in "${shapes[@]}"; do
    # shellcheck disable=SC2086  # the shape is two overrides
    bench --steps "$LARGE_STEPS" --warmup-steps "$WARMUP" --methods pipeline --random-backbone "$arch" \
      --variant train.gradient_checkpointing=true $shape train.mixed_precision=bf16
  done
done
echo "(sections 1 and 2: $SECONDS s)"

echo "== 3. where the time goes: $PROFILE_STEPS steps under torch.profiler"
IFS=';' read -ra shapes <<<"$SHAPES"
read -ra first_shape <<<"${shapes[0]}"
for arch in $PROFILE_ARCHS; do
  bench --steps "$PROFILE_STEPS" --warmup-steps "$WARMUP" --methods pipeline --random-backbone "$arch" --profile \
    --eval-rows "$PROFILE_EVAL_ROWS" "${first_shape[@]}" train.mixed_precision=bf16
done
echo "(all sections: $SECONDS s)"
