"""benchmarks/compare_peers.py helpers: layer counting from graphs, and peer rows on a tiny model.

The peer rows run only where the peers' venv exists ($NBQUANT_PEERS_PYTHON, default
/work/peers-venv/nncf/bin/python); CI does not install peers, so they skip there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

from peerlib import count_layers  # noqa: E402

PEERS_PYTHON = os.environ.get("NBQUANT_PEERS_PYTHON", "/work/peers-venv/nncf/bin/python")


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-GlobalAveragePool-Flatten-Gemm on [N, 3, 8, 8], 10 classes."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (10, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_count_layers_float_model():
    assert count_layers(tiny_model()) == {"layers_int8": 0, "layers_total": 2, "float_layers": ["conv", "fc"]}


def test_count_layers_qdq_and_integer_ops():
    model = tiny_model()
    g = model.graph
    # conv's weight: int8 initializer -> DequantizeLinear -> Conv
    q = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.int8), "w1_q")
    g.initializer.extend([q, numpy_helper.from_array(np.float32(0.1), "s"),
                          numpy_helper.from_array(np.int8(0), "z")])
    g.node.insert(0, helper.make_node("DequantizeLinear", ["w1_q", "s", "z"], ["w1_dq"], name="dq"))
    g.node[1].input[1] = "w1_dq"
    assert count_layers(model)["layers_int8"] == 1
    # an integer kernel counts as int8; MatMul of two activations is no layer
    g.node.append(helper.make_node("QLinearMatMul", ["a", "b", "c", "d", "e", "f", "h", "i"], ["o"], name="qmm"))
    g.node.append(helper.make_node("MatMul", ["r", "g"], ["mm"], name="act_mm"))
    counted = count_layers(model)
    assert (counted["layers_int8"], counted["layers_total"], counted["float_layers"]) == (2, 3, ["fc"])


def _work_dir(tmp_path: Path) -> Path:
    model_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(model_path))
    rng = np.random.default_rng(1)
    images = rng.normal(size=(24, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort
    logits = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
    labels = logits.argmax(1)
    labels[:3] = (labels[:3] + 1) % 10  # float top-1 0.875, so the int8 model has a target to meet
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    np.save(data / "eval.npy", images)
    np.save(data / "calib.npy", images[:8])
    np.save(data / "labels.npy", labels.astype(np.int64))
    (data / "meta.json").write_text(json.dumps({"model": str(model_path), "data": str(tmp_path),
                                                "input_name": "input", "calib_num": 8, "eval_num": 24}))
    return tmp_path / "work"


@pytest.mark.parametrize("tool", ["ort", "nncf"])
def test_peer_row_on_tiny_model(tool, tmp_path):
    if not Path(PEERS_PYTHON).is_file():
        pytest.skip(f"no peers venv at {PEERS_PYTHON} (set NBQUANT_PEERS_PYTHON)")
    probe = subprocess.run([PEERS_PYTHON, "-c", "import nncf" if tool == "nncf" else "import onnxruntime"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"{tool} is not installed in {PEERS_PYTHON}")
    work = _work_dir(tmp_path)
    out = work / "rows" / f"{tool}_pt-0.01.json"
    subprocess.run([PEERS_PYTHON, str(PEERS / "run_row.py"), tool, "pt-0.01", "--work", str(work), "--out",
                    str(out)], check=True, timeout=300, capture_output=True, cwd=tmp_path)
    row = json.loads(out.read_text())
    assert row["ok"], row.get("error")
    assert row["original_metric"] == pytest.approx(0.875)
    assert row["full_evaluations"] >= 2 and row["wall_s"] >= 0
    counted = count_layers(row["model"])
    assert counted["layers_total"] == 2 and counted["layers_int8"] >= 1
