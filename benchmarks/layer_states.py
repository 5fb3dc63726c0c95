"""Latency of each layer state (int8, a16w8, dynamic, float, float_raw) on this CPU: one layer, and the whole model.

Run: python benchmarks/layer_states.py  (model and images from NBQUANT_MODEL / NBQUANT_DATA)
One layer: a chain of pointwise Convs 40 -> 240 -> 240 -> 40 channels at 28x28 (each with its Clip, as in
Lite0's blocks; a GlobalAveragePool at the end) whose middle Conv takes each state, the others int8, so the
figure includes what the state costs its producer; a Gemm 1280 -> 1000 alone (Lite0's classifier). Whole
model: every layer in one state, and five consecutive layers in one state. Median ms at batch 1 with
make_session's threads, best of 3 interleaved rounds; the integer kernels onnxruntime runs are counted in its
optimized graph. The header names the CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from common import integer_kernels, interleaved_latency, machine, model_and_data, parser
from onnx import helper, numpy_helper

from nbquant.calibration.calibrator import Calibrator, observe, observed_tensors, with_outputs
from nbquant.calibration.config import ActivationQuant, QuantConfig
from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.images import ImageDataset
from nbquant.evaluation.session import make_session
from nbquant.graph.layers import find_layers
from nbquant.graph.load import name_nodes
from nbquant.quantize.deploy_target import resolve_target, weight_max
from nbquant.quantize.layer_states import make_state_model

STATES = ("int8", "a16w8", "float", "float_raw")


def chain_model(layer: str) -> tuple[onnx.ModelProto, tuple]:
    """The benchmark's small graph and its input shape: the Conv chain, or a Gemm alone."""
    rng = np.random.default_rng(0)
    if layer == "gemm":
        weights = {"w": rng.normal(0, 0.03, (1000, 1280)), "b": rng.normal(0, 0.1, 1000)}
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
        shape, out = (1, 1280), (1, 1000)
    else:
        weights = {"w1": rng.normal(0, 0.15, (240, 40, 1, 1)), "w2": rng.normal(0, 0.06, (240, 240, 1, 1)),
                   "w3": rng.normal(0, 0.06, (40, 240, 1, 1))}
        weights |= {f"b{i}": rng.normal(0, 0.1, w.shape[0]) for i, w in enumerate(weights.values(), 1)}
        nodes = []
        for i in (1, 2, 3):
            nodes.append(helper.make_node("Conv", [f"x{i - 1}" if i > 1 else "x", f"w{i}", f"b{i}"], [f"c{i}"]))
            nodes.append(helper.make_node("Clip", [f"c{i}", "lo", "hi"], [f"x{i}"]))
        nodes.append(helper.make_node("GlobalAveragePool", ["x3"], ["y"]))  # so the last Conv's output is requantized
        weights |= {"lo": np.float32(0), "hi": np.float32(6)}
        shape, out = (1, 40, 28, 28), (1, 40, 1, 1)
    graph = helper.make_graph(nodes, layer, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    return name_nodes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))[0], shape


def one_layer(folder: Path, target) -> None:
    for layer, states in (("conv", STATES), ("gemm", ("int8", "dynamic", "a16w8", "float"))):
        model, shape = chain_model(layer)
        layers = find_layers(model)
        names = observed_tensors(model, layers)
        x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
        observers, _ = observe(make_session(with_outputs(model, names)), names, [x * s for s in (0.5, 1, 2)])
        config = QuantConfig.default({lay.name: lay.op for lay in layers}, ActivationQuant(),
                                     weight_max={lay.name: weight_max(lay.kind, target) for lay in layers},
                                     deploy_target=target)
        cal = Calibrator(config).fit(model, observers)
        middle = layers[len(layers) // 2].name
        paths = {"float model": folder / f"{layer}_float_model.onnx"}
        onnx.save(model, paths["float model"])
        for state in states:
            paths[state] = folder / f"{layer}_{state}.onnx"
            onnx.save(make_state_model(model, cal.quant_, {middle: state}, cal.tensor_qparams_, target), paths[state])
        ms = interleaved_latency(paths, x, 200)
        print(f"\n{middle} of the {layer} graph in each state (others int8):")
        for label, path in paths.items():
            print(f"  {label:12s} {ms[label]:7.3f} ms   {integer_kernels(path, folder)}")


def whole_model(model_path: str, data_dir: str, folder: Path, target) -> None:
    run = calibrate(model_path, ImageDataset(data_dir).spread(50), progress=False, cache=False,
                    settings=CalibrationSettings(calib_num=50, deploy_target=target, weight_rounding="nearest"))
    cal, model = run.calibrator, run.prepared.model
    convs = [name for name in cal.quant_ if name != "/_fc/Gemm"]
    configs = {"all int8": {}, "all a16w8": dict.fromkeys(cal.quant_, "a16w8"),
               "all float": dict.fromkeys(cal.quant_, "float"),
               "int8, Gemm dynamic": {"/_fc/Gemm": "dynamic"},
               "int8, 5 float": dict.fromkeys(convs[10:15], "float"),
               "int8, 5 float_raw": dict.fromkeys(convs[10:15], "float_raw"),
               "int8, 5 a16w8": dict.fromkeys(convs[10:15], "a16w8")}
    paths = {"float model": folder / "float_model.onnx"}
    onnx.save(model, paths["float model"])
    for label, states in configs.items():
        paths[label] = folder / f"{label.replace(' ', '_').replace(',', '')}.onnx"
        onnx.save(make_state_model(model, cal.quant_, states, cal.tensor_qparams_, cal.config.deploy_target),
                  paths[label])
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    ms = interleaved_latency(paths, x, 50)
    print(f"\n{run.prepared.name}, whole model (batch 1; the middle 5 = {convs[10]} .. {convs[14]}):")
    for label, path in paths.items():
        print(f"  {label:20s} {ms[label]:7.2f} ms  ratio to float {ms[label] / ms['float model']:.2f}   "
              f"{integer_kernels(path, folder)}")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--deploy-target", default="auto")
    args = p.parse_args()
    model_path, data_dir = model_and_data(args)
    target = resolve_target(args.deploy_target)
    print(f"machine: {machine()}; deploy target {target.value}")
    with tempfile.TemporaryDirectory() as tmp:
        one_layer(Path(tmp), target)
        whole_model(model_path, data_dir, Path(tmp), target)


if __name__ == "__main__":
    main()
