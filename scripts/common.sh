# Sourced by the step scripts: set up the venv if needed and launch a module with deepspeed.
#   NUM_GPUS  processes per node (default: every visible GPU, or 1 on a CPU machine)
#   HOSTFILE  a deepspeed hostfile for several nodes (optional)
#   MASTER_PORT  rendezvous port (default: a free one)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/setup.sh"
export PATH="$ROOT/.venv/bin:$PATH"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$ROOT/.cache/hf_datasets}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning}"

gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || echo 0
  else
    echo 0
  fi
}

launch() {
  local module="$1"; shift
  local gpus; gpus="$(gpu_count)"
  local nproc="${NUM_GPUS:-$(( gpus > 0 ? gpus : 1 ))}"
  if (( gpus == 0 )) && [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    # Several CPU ranks must not each grab every core (3-4x slower).
    export OMP_NUM_THREADS=$(( $(nproc) / nproc > 0 ? $(nproc) / nproc : 1 ))
  fi
  local port="${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  local args=(--master_port "$port")
  if [[ -n "${HOSTFILE:-}" ]]; then
    args+=(--hostfile "$HOSTFILE")
    [[ -n "${NUM_GPUS:-}" ]] && args+=(--num_gpus "$NUM_GPUS")
  else
    args+=(--num_gpus "$nproc")
  fi
  deepspeed "${args[@]}" --module "$module" "$@"
}
