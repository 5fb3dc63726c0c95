#!/usr/bin/env bash
# Set up .venv and run the whole test suite. Real-data tests read NBQUANT_MODEL / NBQUANT_DATA
# (default model/ and data/) and are skipped when those hold nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,zoo,text,ocr,notebooks,browser,dask
.venv/bin/ruff check nbquant tests benchmarks scripts
exec .venv/bin/python -m pytest -q "$@"
