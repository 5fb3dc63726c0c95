import numpy as np
import onnx
import pytest
from synthetic import conv_bn_model, gemm_matmul_model

from nbquant.errors import ModelError
from nbquant.evaluation.session import make_session
from nbquant.graph.fusion import fold_batchnorm
from nbquant.graph.layers import find_layers, float_op_table, layer_table
from nbquant.graph.load import load_model, name_nodes


def test_unnamed_nodes_get_stable_names():
    model, renamed = name_nodes(gemm_matmul_model())
    assert [n.name for n in model.graph.node] == ["Gemm_0", "Relu_1", "MatMul_2"]
    assert renamed == ["Gemm_0", "Relu_1", "MatMul_2"]
    again, _ = name_nodes(gemm_matmul_model())
    assert [n.name for n in again.graph.node] == [n.name for n in model.graph.node]


def test_layer_table_conv_depthwise_macs():
    model, _ = name_nodes(conv_bn_model())
    table = layer_table(model).set_index("layer")
    assert list(table.index) == ["Conv_0", "Conv_3"]
    assert table.loc["Conv_0", "macs"] == 4 * 8 * 8 * 3 * 3 * 3
    assert table.loc["Conv_3", "macs"] == 4 * 8 * 8 * 1 * 3 * 3
    assert not table.loc["Conv_0", "depthwise"] and table.loc["Conv_3", "depthwise"]
    assert table.loc["Conv_0", "params"] == 4 * 27 + 4


def test_gemm_and_matmul_weight_axes():
    model, _ = name_nodes(gemm_matmul_model())
    layers = {layer.name: layer for layer in find_layers(model)}
    assert layers["Gemm_0"].weight_axis == 0  # transB: weight [out, in]
    assert layers["MatMul_2"].weight_axis == 1 and layers["MatMul_2"].bias is None
    table = layer_table(model).set_index("layer")
    assert table.loc["Gemm_0", "macs"] == 5 * 6 and table.loc["MatMul_2", "macs"] == 3 * 5
    ops = float_op_table(model)
    assert ops.set_index("op").loc["Relu", "count"] == 1


def test_fold_batchnorm_is_exact_and_recorded():
    model, _ = name_nodes(conv_bn_model())
    folded, fusions = fold_batchnorm(model)
    assert fusions == [{"layer": "Conv_0", "type": "Conv+BatchNormalization",
                        "original_nodes": ["Conv_0", "BatchNormalization_1"]}]
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    onnx.checker.check_model(folded)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    want = make_session(model).run(None, {"x": x})[0]
    got = make_session(folded).run(None, {"x": x})[0]
    assert np.allclose(got, want, atol=1e-5)


def test_fold_batchnorm_skip_list():
    model, _ = name_nodes(conv_bn_model())
    _, fusions = fold_batchnorm(model, skip=("Conv_0",))
    assert fusions == []


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    with pytest.raises(ModelError, match="notes.onnx"):
        load_model(text)
    good = tmp_path / "good.onnx"
    onnx.save(conv_bn_model(), good)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        load_model(cut)
