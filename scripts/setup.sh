#!/usr/bin/env bash
# Create .venv at the repo root with the pinned stack. Idempotent: a second run only checks
# a stamp (the hash of requirements.txt) and returns in well under a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

python="${PYTHON:-python3}"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
torch_pin="$(grep -E '^torch==' requirements.txt)"

echo "[setup] installing $torch_pin into $venv"
quiet "${pip[@]}" "$torch_pin"
# Pin torch for the rest (and for DeepSpeed's own build environment) so nothing upgrades it.
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "$torch_pin" > "$constraint"
echo "[setup] installing requirements.txt"
PIP_CONSTRAINT="$constraint" quiet "${pip[@]}" -r requirements.txt
"$venv/bin/python" -m pip check
mkdir -p "$root/.cache/torch_extensions" "$root/.cache/hf_datasets"
echo "$want" > "$stamp"
echo "[setup] done: $venv"
