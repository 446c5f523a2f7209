#!/usr/bin/env bash
# Set up if needed, then run the test suite on CPU (extra arguments go to pytest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$ROOT/.cache/hf_datasets}"
export HF_HUB_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
