#!/usr/bin/env bash
# Set up .venv, build EfficientNet-Lite0 into model/ if no model is there, and run the main job
# on the images in $NBQUANT_DATA (default data/). Extra arguments go to `nbquant calibrate`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,zoo
model="${NBQUANT_MODEL:-model}"
if [ -d "$model" ] && ! ls "$model"/*.onnx >/dev/null 2>&1; then
    .venv/bin/nbquant zoo efficientnet-lite0 -o "$model/efficientnet_lite0.onnx"
elif [ ! -e "$model" ]; then
    .venv/bin/nbquant zoo efficientnet-lite0 -o model/efficientnet_lite0.onnx
fi
exec .venv/bin/nbquant calibrate --save-dir runs/demo "$@"
