#!/usr/bin/env bash
# GPU benchmarks (scripts/bench/gpu.py): SFT MFU, PPO with and without the hybrid engine at
# ZeRO-2 and ZeRO-3 (weights gathered for generation or not, dynamic or static KV cache), fp16
# loss scaling in SFT and PPO, peak memory of PPO vs ESRL.
#
#   bash scripts/bench/gpu.sh --download     # on a machine with network: wheels into .whl/
#   bash scripts/bench/gpu.sh                # on the GPU machine (no network needed): every section
#   bash scripts/bench/gpu.sh sft ppo-z2     # some sections (names below)
#   bash scripts/bench/gpu.sh "z3-short=ppo --zero 3 --answer_len 64"   # a section of your own
#
# On the GPU machine, whatever `python3` lacks of our stack (DeepSpeed, datasets, our pinned
# transformers) is installed from .whl/ into /tmp/gpu-site, ahead of its own packages; its torch is
# used as it is. Each section runs in its own process; a failing one prints its error and the
# rest still run. GPU_BENCH_LOG=path keeps the whole output there; GPU_BENCH_ARGS adds flags to
# every section (GPU_BENCH_ARGS=--small: tiny models, to check the bench itself on a CPU).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--download" ]]; then
  # Python 3.12 x86-64 wheels of what the GPU image (torch, numpy, pyarrow, pandas, accelerate...)
  # does not hold. DeepSpeed ships as source only: built here into a pure-Python wheel (its CUDA
  # ops compile on first use on the GPU machine).
  set -e
  mkdir -p .whl
  plat=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps -d .whl)
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    plat+=(--platform "$p")
  done
  "$PY" -m pip download "${plat[@]}" hjson==3.1.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing_extensions==4.16.0 dill==0.4.1 multiprocess==0.70.19 datasets==4.8.5 \
    transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 peft==0.21.2
  tmp="$(mktemp -d)"
  "$PY" -m pip download --no-deps --no-binary=:all: deepspeed==0.19.8 -d "$tmp"
  DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --no-build-isolation "$tmp"/deepspeed-0.19.8.tar.gz -w .whl
  ls .whl
  exit 0
fi

if [[ -d .whl ]] && ! "$PY" -c "import deepspeed, datasets" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .whl/*.whl \
    || { echo "error: installing .whl/ failed"; exit 1; }
  export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

declare -A SECTIONS=(
  [peak]="peak"
  [sft]="sft --zero 2"
  [sft-profile]="sft --zero 2 --steps 15 --profile 8"
  [sft-compile]="sft --zero 2 --compile --batch 32"
  [fp16]="fp16 --zero 2"
  [ppo-z2]="ppo --zero 2"
  [ppo-z2-he]="ppo --zero 2 --hybrid"
  [ppo-z3]="ppo --zero 3"
  [ppo-z3-partitioned]="ppo --zero 3 --no_gather --answer_len 64"
  [ppo-z2-static]="ppo --zero 2 --cache static"
  [ppo-z3-static]="ppo --zero 3 --cache static"
  [ppo-z3-he]="ppo --zero 3 --hybrid"
  [ppo-fp16]="ppo --zero 2 --dtype fp16 --rounds 8"
  [esrl]="ppo --zero 2 --esrl"
)
# ppo-z2-he / ppo-z3-he only show the hybrid engine switching itself off with transformers 4.57
# (training/step3_rlhf/rlhf_engine.py); name them to run them
# ppo-z3-partitioned decodes with ZeRO-3's per-step gathering (190 ms per token on an H100), hence
# 64 new tokens
ORDER=(peak sft sft-profile sft-compile fp16 ppo-z2 ppo-z2-static esrl ppo-fp16 ppo-z3 ppo-z3-static
       ppo-z3-partitioned)
(( $# )) && ORDER=("$@")

log="${GPU_BENCH_LOG:-$(mktemp)}"
{
  echo "== environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__)"
} 2>&1 | tee -a "$log"
for i in "${!ORDER[@]}"; do
  s="${ORDER[$i]}"
  if [[ "$s" == *=* ]]; then SECTIONS[${s%%=*}]="${s#*=}"; s="${s%%=*}"; ORDER[$i]="$s"; fi
done
for s in "${ORDER[@]}"; do
  [[ -n "${SECTIONS[$s]:-}" ]] || { echo "error: unknown section $s (one of ${ORDER[*]})"; exit 2; }
  echo "== $s: python -m scripts.bench.gpu ${SECTIONS[$s]}" | tee -a "$log"
  t=$SECONDS
  # shellcheck disable=SC2086
  timeout "${GPU_BENCH_SECTION_TIMEOUT:-1200}" "$PY" -m scripts.bench.gpu ${SECTIONS[$s]} ${GPU_BENCH_ARGS:-} > "$log.$s" 2>&1
  rc=$?
  cat "$log.$s" >> "$log"
  if (( rc == 0 )); then
    grep '^| ' "$log.$s"
  else
    echo "FAILED (exit $rc); the end of its output:"; tail -n 25 "$log.$s"
  fi
  echo "   ($(( SECONDS - t )) s)"
done
echo "== results (JSON, one per section)"
grep -h '^RESULT ' "$log".* 2>/dev/null | cut -c8-
echo "full log: $log"
