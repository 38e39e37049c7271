#!/usr/bin/env bash
# Create ./.venv and install anybudget into it (editable). Idempotent: a second run is instant.
#   bash scripts/bootstrap.sh        # library + what the README's commands need (plot and nas extras)
#   bash scripts/bootstrap.sh dev    # + test tools (pytest, hypothesis, ruff, triton's CPU interpreter)
# torch: ANYBUDGET_TORCH picks the requirement (e.g. "torch==2.13.0" or "torch>=2.6").
# Default: on a machine without an NVIDIA GPU, the CPU-only pin torch==2.13.0 (which CI's
# machines hold locally, so no multi-GB CUDA download); with a GPU, your normal `torch`.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
vpy=.venv/bin/python
stamp=".venv/.anybudget-installed-${extra:-base}"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pipq() { "$vpy" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
if ! "$vpy" -c "import torch" 2>/dev/null; then
  if [ -n "${ANYBUDGET_TORCH:-}" ]; then
    torch_req="$ANYBUDGET_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    torch_req="torch"
  else
    torch_req="torch==2.13.0"
  fi
  echo "bootstrap: installing $torch_req" >&2
  pipq "$torch_req"
fi
if [ "$extra" = "dev" ]; then
  pipq -e ".[dev]"
else
  pipq -e ".[plot,nas]"
fi
"$vpy" -c "import anybudget, torch, transformers" || { echo "bootstrap: install failed" >&2; exit 1; }
echo "$want" > "$stamp"
