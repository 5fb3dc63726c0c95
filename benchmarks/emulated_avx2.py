"""Deploy accuracy on a CPU without VNNI, measured on any x86 host by emulating one with qemu.

Run: python benchmarks/emulated_avx2.py [--limit 1000]  (NBQUANT_MODEL / NBQUANT_DATA; needs
qemu-x86_64 from Debian's qemu-user). qemu's Haswell model has AVX2 and no VNNI, so onnxruntime
picks the u8 x s8 kernels whose pair sums saturate; emulation is about 250x slower than native
(about 5 minutes per 1000 images and model). Prints, per deploy target, top-1 of the deploy
model run natively (this CPU, see the header) and on the emulated AVX2 CPU, and whether the
logits are bit-identical.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.data.pixel_cache import cache_images
from nbquant.graph.load import load_model

RUN = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2], mmap_mode="r")
name = session.get_inputs()[0].name
np.save(sys.argv[3], np.concatenate([session.run(None, {name: np.ascontiguousarray(x[i:i + 16])})[0]
                                     for i in range(0, len(x), 16)]))
"""


def logits(prefix: list[str], model: Path, images: Path, out: Path) -> np.ndarray:
    subprocess.run([*prefix, sys.executable, "-c", RUN, str(model), str(images), str(out)], check=True,
                   capture_output=True)
    return np.load(out)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--limit", type=int, default=1000, help="evaluation images (default 1000)")
    args = p.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("needs qemu-x86_64 (apt-get install qemu-user)")
    model_path, data_dir = model_and_data(args)
    data = ImageDataset(data_dir)
    pre = resolve_preprocess(load_model(model_path))
    print(f"machine: {machine()}\nemulated: qemu-x86_64 -cpu Haswell (AVX2, no VNNI)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        evaluation = data.subset(min(args.limit, len(data)))
        np.save(tmp / "images.npy", cache_images(evaluation, pre, progress=False).images)
        print(f"{'target':9s} {'native top-1':>12s} {'AVX2 top-1':>10s} {'identical':>9s} {'emulated s':>10s}")
        for target in ("full", "portable"):
            run = calibrate(model_path, data, tmp / target, CalibrationSettings(deploy_target=target), progress=False)
            native = logits([], run.paths.deploy_model, tmp / "images.npy", tmp / "native.npy")
            start = time.perf_counter()
            emulated = logits([qemu, "-cpu", "Haswell"], run.paths.deploy_model, tmp / "images.npy", tmp / "avx2.npy")
            seconds = time.perf_counter() - start
            top1 = [float(np.mean(x.argmax(1) == evaluation.labels)) for x in (native, emulated)]
            print(f"{target:9s} {top1[0]:12.4f} {top1[1]:10.4f} {str(np.array_equal(native, emulated)):>9s} "
                  f"{seconds:10.0f}", flush=True)


if __name__ == "__main__":
    main()
