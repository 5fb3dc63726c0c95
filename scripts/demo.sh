#!/usr/bin/env bash
# Set up .venv and run the main job: build EfficientNet-Lite0 into model/ when no model is there,
# then auto-calibrate it on the images in $NBQUANT_DATA, data/images or data/ (labeled: top-1),
# else on the sample photos shipped with scikit-image (label-free fidelity demo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,zoo,demo
exec .venv/bin/nbquant demo "$@"
