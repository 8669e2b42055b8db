#!/usr/bin/env bash
# Every device measurement of issue 14 in one call, most valuable rows first, each under its own time
# limit, all of it inside BUDGET_S seconds of wall time (default 540). Rows stream as they are
# measured: `tools/benchmark.py` prints each `[row]` (and `[stage]` progress) to stderr at once, and
# everything is tee'd to $OUT/device.log, so a row killed by its limit still leaves every row before it.
#
#   bash benchmarks/device/run.sh                 # on the GPU machine ($OUT set by the device tool)
#   DEVICE_DRY=1 OUT=/tmp/dry bash benchmarks/device/run.sh   # CPU check: tiny equivalents of each row
#   ROWS="train_flextok quantizers" bash benchmarks/device/run.sh   # only these, in this order
#
# Wheels for what the device image lacks (ml-collections; vector-quantize-pytorch and its einx,
# frozendict, loguru, torch-einops-utils) are carried in .whl/ (not committed; see README.md here) and
# installed into $SITE with --no-index. `python benchmarks/device/to_results.py $OUT/device.log` turns
# the log into RESULTS.md tables.
set -u
set -o pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
START=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
RESERVE_S=${RESERVE_S:-12}   # kept back at the end: timeout's kill grace and the final listing
MIN_ROW_S=${MIN_ROW_S:-25}   # a row is not started with less than this left
DRY=${DEVICE_DRY:-0}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
LOG=$OUT/device.log
TABLES=$OUT/tables.md
: >"$LOG"

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "$*" | tee -a "$LOG"; }

export PYTHONUNBUFFERED=1
# Persistent compilation cache: a rerun of the script (or of one row) in the same lease skips XLA
# compilation of everything already compiled. No XLA_FLAGS by default: this is one GPU with no
# collectives for the latency-hiding scheduler to overlap, and an unknown flag aborts every process;
# EXTRA_XLA_FLAGS is passed through for experiments.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
# Each row has the GPU to itself: let JAX's pool take 92% of it (default 75%), since the FlexTok d18_d28
# train step (2.54B parameters: f32 weights, AdamW moments, EMA and gradients are about 51 GB before
# activations) is tight at batch 32; the quantizer row's PyTorch side needs well under the 8% left.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
if [ -n "${EXTRA_XLA_FLAGS:-}" ]; then export XLA_FLAGS="${XLA_FLAGS:-} $EXTRA_XLA_FLAGS"; fi

say "[run] start $(date -u +%FT%TZ) dry=$DRY budget=${BUDGET_S}s root=$ROOT"
if ls .whl/*.whl >/dev/null 2>&1; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl 2>&1 | tee -a "$LOG"; then
    export PYTHONPATH=$SITE:$ROOT
    say "[run] wheels installed into $SITE: $(cd .whl && ls *.whl | tr '\n' ' ')"
  else
    export PYTHONPATH=$ROOT
    say "[run] wheel install FAILED; continuing without them"
  fi
else
  export PYTHONPATH=$ROOT
  say "[run] no .whl/ folder: nothing installed"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi -L 2>&1 | tee -a "$LOG"
  # GPU load, memory and SM clock every 2 s beside the rows: where a step spends its time compiling
  # (GPU idle) or running shows up here. Ended by its own pid at the end.
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm,power.draw \
    --format=csv,noheader -l 2 >"$OUT/gpu.csv" 2>&1 &
  SMI_PID=$!
fi
timeout -k 5 60 $PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, os, platform, sys
import jax
print(f"[env] python {platform.python_version()} jax {jax.__version__} devices {jax.devices()} "
      f"cores {os.cpu_count()}", flush=True)
for name in ("flax", "optax", "ml_collections", "torch", "einx", "vector_quantize_pytorch"):
  try:
    mod = importlib.import_module(name)
    print(f"[env] {name} {getattr(mod, '__version__', '?')} from {os.path.dirname(mod.__file__)}")
  except Exception as err:  # noqa: BLE001
    print(f"[env] {name} NOT importable: {type(err).__name__}: {err}")
EOF
say "[run] environment checked +$(elapsed)s"

# name | limit (s) on the device | benchmark.py arguments on the device | dry (CPU) arguments
ROW_SPECS=(
  # a. encode/decode throughput at batch 64, bf16 (never measured on a GPU)
  "tok_titok_s128|75|--suite tokenizers --models titok_s128 --batch 64 --dtype bfloat16 --repeats 3|--suite tokenizers --models main --batch 2 --repeats 1"
  "tok_titok_b64|75|--suite tokenizers --models titok_b64 --batch 64 --dtype bfloat16 --repeats 3|--suite tokenizers --models main --batch 4 --repeats 1"
  "tok_titok_l32|90|--suite tokenizers --models titok_l32 --batch 64 --dtype bfloat16 --repeats 3|--suite tokenizers --models main --batch 8 --repeats 1"
  "tok_vqgan|90|--suite tokenizers --models vqgan --batch 64 --dtype bfloat16 --repeats 3|--suite tokenizers --models main --batch 2 --dtype bfloat16 --repeats 1"
  "tok_flextok|120|--suite tokenizers --models flextok --batch 64 --dtype bfloat16 --repeats 2|--suite tokenizers --models main,no_such_model --batch 2 --repeats 1"
  # b. train step: FlexTok d18_d28 (never measured), TiTok-B-64 re-measure, TiTok-L-32
  "train_flextok|150|--suite train --models flextok --batch 32 --dtype bfloat16 --repeats 3|--suite train --models main --batch 4 --repeats 1"
  "train_titok_b64|90|--suite train --models titok_b64 --batch 256 --dtype bfloat16 --repeats 3|--suite train --models main --batch 8 --repeats 1"
  "train_titok_l32|120|--suite train --models titok_l32 --batch 64 --dtype bfloat16 --repeats 3|--suite train --models main --batch 2 --repeats 1"
  # c. samplers: masked diffusion, MAR + DiSA, rectified flow (missing on GPU); AR at RAR's size
  "samplers_other|150|--suite samplers --skip-ar --other-batch 16 --repeats 9|--suite samplers --skip-ar --other-batch 1 --repeats 1"
  "ar_b64|90|--suite samplers --ar-only --ar-batch 64 --ar-tokens 256 --dtype bfloat16 --repeats 6|--suite samplers --ar-only --ar-batch 1 --ar-tokens 4 --repeats 1"
  # d. quantizers after the search rewrite, against vector-quantize-pytorch on the same GPU
  "quantizers|90|--suite quantizers --compare-torch --repeats 5|--suite quantizers --vq-vectors 512 --repeats 1"
  "ar_b16|60|--suite samplers --ar-only --ar-batch 16 --ar-tokens 256 --dtype bfloat16 --repeats 6|--suite samplers --ar-only --ar-batch 2 --ar-tokens 4 --repeats 1"
)
# Dry limits: short, and samplers_other (the full 12x768 models on a CPU) is meant to hit its limit,
# which checks that a killed row is logged and the next one still runs.
declare -A DRY_LIMIT=([samplers_other]=15)

declare -A LIMIT DEV_ARGS DRY_ARGS
ORDER=()
for spec in "${ROW_SPECS[@]}"; do
  IFS='|' read -r name limit dev dry <<<"$spec"
  LIMIT[$name]=$limit; DEV_ARGS[$name]=$dev; DRY_ARGS[$name]=$dry; ORDER+=("$name")
done

run_row() {
  local name=$1 limit args left rc
  if [ -z "${LIMIT[$name]:-}" ]; then say "[step] $name unknown (known: ${ORDER[*]})"; return; fi
  if [ "$DRY" = 1 ]; then limit=${DRY_LIMIT[$name]:-90}; args=${DRY_ARGS[$name]}
  else limit=${LIMIT[$name]}; args=${DEV_ARGS[$name]}; fi
  left=$(( START + BUDGET_S - RESERVE_S - $(date +%s) ))
  if [ "$left" -lt "$MIN_ROW_S" ]; then say "[step] $name skipped: ${left}s left +$(elapsed)s"; return; fi
  [ "$left" -lt "$limit" ] && limit=$left
  say "[step] $name start +$(elapsed)s limit ${limit}s: python tools/benchmark.py $args"
  # shellcheck disable=SC2086
  timeout -k 5 "$limit" $PY tools/benchmark.py $args --out "$TABLES" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) say "[step] $name end ok +$(elapsed)s" ;;
    124|137) say "[step] $name end TIMEOUT after ${limit}s +$(elapsed)s" ;;
    *) say "[step] $name end rc=$rc +$(elapsed)s" ;;
  esac
}

for name in ${ROWS:-${ORDER[*]}}; do run_row "$name"; done

if [ -n "${SMI_PID:-}" ]; then kill "$SMI_PID" 2>/dev/null; fi
say "[run] done +$(elapsed)s; rows: $(grep -c '^\[row\]' "$LOG")"
ls -la "$OUT" | tee -a "$LOG"
