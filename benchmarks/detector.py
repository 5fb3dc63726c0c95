"""The zoo's text detector (PP-OCRv4 det, from rapidocr-onnxruntime) on the shared photos: dense metrics of the
float model against itself, the all-int8 model, an auto calibration at an IoU budget, and onnxruntime's
quantize_static on the same photos.

Run: python benchmarks/detector.py  (NBQUANT_DATA; needs the ocr extra). Photos letterboxed to --letterbox
(default 640, padded to a multiple of 32); evaluation on --eval-num photos spread over the sorted folder
(every 10th of the 1000 shared photos), calibration on as many others (the photos halfway between). Metric:
mean IoU of the map thresholded at 0.3 (the detector's own binarization) with the float model's, per photo;
also sqnr (dB, 60 = no error) and cosine, and the mean IoU over the photos whose float map has text ("text").
Prints the CPU, one row per model, the auto calibration's layers, evaluations, wall time and peak RSS.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from common import machine, model_and_data, parser

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.binding import resolve_preprocess
from nbquant.data.images import ImageDataset
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.evaluation.metrics import BEST
from nbquant.search.auto import AutoSettings, auto_calibrate
from nbquant.zoo import save_text_detector


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def photo_sets(folder: str, n: int) -> tuple[ImageDataset, ImageDataset]:
    """(evaluation, calibration): ``n`` photos spread over the folder, and the ``n`` halfway between them."""
    data = ImageDataset(folder)
    picks = (np.arange(n) * len(data)) // n
    between = np.minimum(picks + len(data) // (2 * n), len(data) - 1)
    return (ImageDataset.from_files([data.files[i] for i in picks]),
            ImageDataset.from_files([data.files[i] for i in between]))


def row(label: str, evaluator: LogitEvaluator, model, text: np.ndarray, seconds: float | None = None) -> str:
    frame = evaluator.samples(model)
    took = f"{seconds:7.1f}" if seconds is not None else f"{'':7s}"
    return (f"{label:34s} {frame['iou'].mean():7.4f} {frame['iou'][text].mean():7.4f} {frame['sqnr_db'].mean():7.2f} "
            f"{frame['cosine'].mean():7.4f} {took}")


def ort_quantize_static(model_path: Path, calib: ImageDataset, pre, folder: Path) -> Path:
    """onnxruntime's static QDQ quantization: per-channel int8 weights, uint8 activations, MinMax (the model
    converted to opset 13 first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(model_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = ({name: b.images} for b in calib.iter_batches(pre, 10))

        def get_next(self):
            return next(self.batches, None)

    opset13, prepped, out = folder / "ort_opset13.onnx", folder / "ort_pre.onnx", folder / "ort_qdq.onnx"
    # the detector is opset 12, whose DequantizeLinear has no axis: per-channel weights need opset 13
    onnx.save(onnx.version_converter.convert_version(onnx.load(str(model_path)), 13), str(opset13))
    quant_pre_process(str(opset13), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--letterbox", default="640", help="letterbox size (default 640)")
    p.add_argument("--eval-num", type=int, default=100, help="evaluation photos (default 100)")
    p.add_argument("--calib-num", type=int, default=100, help="calibration photos (default 100)")
    p.add_argument("--max-drop", type=float, default=0.02, help="budget in mean IoU@0.3 (default 0.02)")
    p.add_argument("--rank-num", type=int, default=16, help="photos for the ranking (default 16)")
    p.add_argument("--max-evals", type=int, default=20, help="evaluations (default 20)")
    p.add_argument("--deploy-target", default="auto", help="auto, portable or full (default auto)")
    args = p.parse_args()
    _, data_dir = model_and_data(args)
    evals, calib = photo_sets(data_dir, args.eval_num)
    print(f"machine: {machine()}")
    print(f"{len(evals)} evaluation photos, {len(calib)} calibration photos, letterbox {args.letterbox}, "
          f"deploy target {args.deploy_target}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = save_text_detector(folder / "pp_ocrv4_det.onnx", args.letterbox)
        cal_settings = CalibrationSettings(calib_num=len(calib), deploy_target=args.deploy_target)
        start = time.perf_counter()
        result = auto_calibrate(path, evals, calib_data=calib, save_dir=folder / "auto", progress=False,
                                cache=folder / "cache", calib_settings=cal_settings,
                                settings=AutoSettings(max_drop=args.max_drop, rank_num=args.rank_num,
                                                      max_evals=args.max_evals))
        auto_wall, auto_peak = time.perf_counter() - start, peak_mib()
        evaluator = result.evaluator
        model = evaluator._float_model
        pre = resolve_preprocess(model)
        print(f"preprocessing: {pre.describe()}; metric {evaluator.metric} ({evaluator.metric_why_})")
        reference = evaluator.samples(model)
        text = (reference["float_above"] > 0).to_numpy()
        print(f"photos whose float map has text (above 0.3): {int(text.sum())} of {len(text)}")
        selfs = []
        for metric in ("iou@0.3", "sqnr", "cosine"):
            own = LogitEvaluator(evals, metric).prepare(model, pre, progress=False, cache=None)
            selfs.append(f"{metric} {own.evaluate(model)} (best {BEST[metric.split('@')[0]]})")
        print("float model against itself: " + ", ".join(selfs))
        print(f"\n{'model':34s} {'iou':>7s} {'iou txt':>7s} {'sqnr':>7s} {'cosine':>7s} {'wall s':>7s}")
        print(row("float", evaluator, model, text))
        start = time.perf_counter()
        all_int8 = calibrate(path, calib, folder / "all", cal_settings, progress=False, cache=folder / "cache")
        print(row("nbquant all-int8 (deploy)", evaluator, all_int8.deploy_model, text,
                  time.perf_counter() - start), flush=True)
        n = result.n_layers
        label = f"nbquant auto {args.max_drop:g}: {n - len(result.float_layers)}/{n} int8"
        print(row(label, evaluator, result.paths.deploy_model, text, auto_wall) if result.ok
              else f"{label}: not met ({result.message})", flush=True)
        start = time.perf_counter()
        ort = ort_quantize_static(path, calib, pre, folder)
        print(row("onnxruntime quantize_static (QDQ)", evaluator, str(ort), text, time.perf_counter() - start))
        print(f"\nauto calibration: met {result.ok}, {result.evaluations} evaluations (float model included), "
              f"{n - len(result.float_layers)} of {n} layers in int8, {auto_wall:.0f} s wall, peak RSS "
              f"{auto_peak:.0f} MiB; in float: {', '.join(result.float_layers) or '-'}")
        print(result.history.drop(columns=["float_layers"]).to_string(index=False))
        print(result.stage_times.to_string(index=False))
    print(f"peak RSS of this process: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
