#!/usr/bin/env bash
# The accuracy table of docs/results.md in one run on one GPU:
#   1. the MPNet-base teacher (configs/experiment/mpnet_base.yaml), its five folds side by side on the one GPU;
#   2. beside it, the MiniLM rows: the default and the default with EMA (each for every seed of SEEDS), masked-LM
#      pretraining then the default on its backbone, and the TF-IDF ridge member;
#   3. once the teacher is done, the MiniLM student of it (configs/experiment/minilm_distilled.yaml);
#   4. the ensemble of them all (configs/ensemble/accuracy.yaml) and the table of every run (src/report.py).
#
#   bash benchmarks/accuracy.sh 2>&1 | tee accuracy.log
#
# Needs the data (make data) and the MPNet backbone (make backbone NAME=mpnet-base). MINILM: a MiniLM folder, for a
# machine without the MiniLM package (model.backbone of the MiniLM rows and of the pretraining); OVERRIDES: config
# overrides for every training run (for example train.threads=2, as the H200 runs of docs/results.md had); SEEDS:
# seeds of the default and EMA rows; FOLDS: the teacher's folds; PRETRAIN_OVERRIDES: overrides of the pretraining.
# Each run's log is in outputs/accuracy-logs/.
#
# The runs keep their real experiment names (outputs/mpnet-base, outputs/minilm-default, ...), and OVERRIDES are
# part of each run's config (train.threads too; only the run keys of src/textreg/config.py's RUN_KEYS, such as
# tracking.mode, are not): a folder already trained with other overrides is refused, and one finished with the same
# is kept. A smoke run would leave its tiny runs and its pretrained backbone (input/backbones/minilm-commonlit-mlm)
# under those names, so make it in a scratch clone, with the data and the MPNet folder copied in:
#   git clone . /tmp/acc-smoke && mkdir -p /tmp/acc-smoke/input/backbones && cp -r input/commonlitreadabilityprize \
#     /tmp/acc-smoke/input/ && cp -r input/backbones/all-mpnet-base-v2 /tmp/acc-smoke/input/backbones/ && \
#   cd /tmp/acc-smoke && PYTHON=$OLDPWD/.venv/bin/python FOLDS="0 1" SEEDS=42 \
#     OVERRIDES="data.subset=96 cv.n_folds=2 train.max_steps=2 model.max_len=32" \
#     PRETRAIN_OVERRIDES="pretrain.epochs=1 pretrain.max_len=32" bash benchmarks/accuracy.sh    # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
SEEDS=${SEEDS:-42 1}
FOLDS=${FOLDS:-0 1 2 3 4}
PRETRAIN_OVERRIDES=${PRETRAIN_OVERRIDES:-}
MINILM=${MINILM:+model.backbone=$MINILM}
OVERRIDES=${OVERRIDES:-}
LOGS=outputs/accuracy-logs
mkdir -p "$LOGS"
start=$SECONDS

# run NAME COMMAND...: the command's output to NAME's log; on failure, the log's end and a non-zero status
run() {
  local name=$1
  shift
  if "$@" >"$LOGS/$name.log" 2>&1; then
    echo "$(( SECONDS - start )) s: $name done: $(grep -E '^CV |nothing to do|written' "$LOGS/$name.log" | tail -1)"
  else
    echo "$(( SECONDS - start )) s: $name FAILED"; tail -20 "$LOGS/$name.log"; return 1
  fi
}
# shellcheck disable=SC2086  # OVERRIDES and MINILM are lists of overrides
train() { local name=$1; shift; run "$name" "$PYTHON" src/train.py "$@" $OVERRIDES; }
# shellcheck disable=SC2086
minilm() { local name=$1; shift; train "$name" "$@" $MINILM; }

git rev-parse --short HEAD 2>/dev/null || true
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU"

teacher=()
for fold in $FOLDS; do
  train "mpnet-base-fold$fold" --config configs/experiment/mpnet_base.yaml "folds=[$fold]" &
  teacher+=($!)
done
others=()
for seed in $SEEDS; do
  suffix=$([ "$seed" = 42 ] || echo "-seed$seed")
  minilm "minilm-default$suffix" --config configs/default.yaml "experiment=minilm-default$suffix" "seed=$seed" &
  others+=($!)
  minilm "minilm-ema$suffix" --config configs/experiment/minilm_ema.yaml "experiment=minilm-ema$suffix" "seed=$seed" &
  others+=($!)
done
# shellcheck disable=SC2086
{ run minilm-pretrain "$PYTHON" src/pretrain_mlm.py --config configs/pretrain/minilm_mlm.yaml $MINILM $PRETRAIN_OVERRIDES &&
  train minilm-mlm --config configs/experiment/minilm_mlm.yaml; } &
others+=($!)
train tfidf-ridge --config configs/experiment/tfidf_ridge.yaml &
others+=($!)

failed=0
for pid in "${teacher[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" = 0 ]; then
  run mpnet-base "$PYTHON" src/merge.py outputs/mpnet-base
  minilm minilm-distilled --config configs/experiment/minilm_distilled.yaml || failed=1
fi
for pid in "${others[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "a run failed: see $LOGS"; exit 1; }

"$PYTHON" src/ensemble.py configs/ensemble/accuracy.yaml
"$PYTHON" src/report.py
echo "all done in $(( SECONDS - start )) s"
