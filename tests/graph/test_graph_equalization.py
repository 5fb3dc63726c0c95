"""Cross-layer equalization on small synthetic graphs: the float function is kept, ranges even out."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from synthetic import conv_bn_model, relu6_chain_model

from nbquant.evaluation.session import make_session
from nbquant.graph.equalization import PER_CHANNEL_CLIP, equalize, find_pairs, spread
from nbquant.graph.helpers import constants
from nbquant.graph.layers import float_op_table, post_layer_tensor
from nbquant.graph.prepare import prepare_model


def run(model, x, outputs=None):
    session = make_session(model)
    return session.run(outputs, {"x": x})


def images(seed: int = 1, n: int = 8, amplitude: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, amplitude, (n, 3, 8, 8))).astype(np.float32)


@pytest.mark.parametrize("opset", [10, 13])
def test_equalization_keeps_the_float_outputs_and_evens_the_ranges(opset):
    model = relu6_chain_model(opset=opset)
    x = images()
    assert (run(with_output(model, "a1"), x)[1] == 6.0).any(), "the ReLU6 clips: its clip point matters"
    equalized, table = equalize(model)
    np.testing.assert_allclose(run(equalized, x)[0], run(model, x)[0], rtol=1e-4, atol=1e-4)
    assert list(table["layer"]) == ["c1", "c2", "c3"]
    assert (table["weight_spread_after"] < table["weight_spread_before"]).all(), table
    values, nodes = constants(equalized), {n.name: n for n in equalized.graph.node}
    # Nagel's fixed point: output channel i of the first and input channel i of the second share one range
    first = np.abs(values[nodes["c1"].input[1]]).reshape(6, -1).max(axis=1)
    second = np.abs(values[nodes["c2"].input[1]]).reshape(6, -1).max(axis=1)
    np.testing.assert_allclose(first, second, rtol=1e-3)
    # the ReLU6 got its per-channel clip points, 6 times each channel's factor; the Relu needs none
    mins = [n for n in equalized.graph.node if n.op_type == "Min"]
    assert [n.name for n in mins] == [f"a1/{PER_CHANNEL_CLIP}"] and nodes["c2"].input[0] == mins[0].output[0]
    factors = table.set_index("layer").loc["c1", ["cle_scale_min", "cle_scale_max"]]
    points = values[mins[0].input[1]].ravel()
    np.testing.assert_allclose([points.min(), points.max()], 6 * factors.to_numpy(), rtol=1e-5)


def with_output(model, name):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def test_a_shared_clip_point_would_change_the_outputs():
    """Why the per-channel Min: with one Clip(0, 6) after rescaling the outputs move."""
    model = relu6_chain_model()
    equalized, _ = equalize(model)
    mins = [n for n in equalized.graph.node if n.op_type == "Min"]
    naive = onnx.ModelProto()
    naive.CopyFrom(equalized)
    clip = next(n for n in naive.graph.node if n.name == "a1")
    clip.input[2] = "six"
    naive.graph.initializer.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
    reader = next(n for n in naive.graph.node if n.name == "c2")
    reader.input[0] = clip.output[0]
    naive.graph.node.remove(next(n for n in naive.graph.node if n.name == mins[0].name))
    x = images()
    assert np.abs(run(naive, x)[0] - run(model, x)[0]).max() > 0.1


def test_high_bias_absorption_is_exact_where_the_bounds_hold():
    model = relu6_chain_model()
    x = images(n=16)
    pre = run(with_output(model, "c2"), x)[1]
    lower = pre.min(axis=(0, 2, 3))
    assert lower.max() > 0, "one channel stays above zero: there is a bias to absorb"
    equalized, table = equalize(model, {"c2": lower, "c1": np.full(6, 5.0)})
    np.testing.assert_allclose(run(equalized, x)[0], run(model, x)[0], rtol=1e-4, atol=1e-4)
    absorbed = table.set_index("layer")["bias_absorbed_max"]
    assert absorbed["c2"] > 0
    assert absorbed["c1"] == 0, "c2 pads its input with zeros: absorbing into it would not be exact"
    plain, _ = equalize(model)
    b2 = constants(plain)[next(n for n in plain.graph.node if n.name == "c2").input[2]]
    b2_absorbed = constants(equalized)[next(n for n in equalized.graph.node if n.name == "c2").input[2]]
    assert (b2_absorbed <= b2 + 1e-6).all() and (b2_absorbed < b2 - 1e-3).any()


def test_only_sole_readers_pair():
    """A tensor read twice (a residual Add) cannot be rescaled: nothing pairs, nothing changes."""
    prepared = prepare_model(conv_bn_model())
    assert find_pairs(prepared.model) == []
    equalized, table = equalize(prepared.model)
    assert table.empty and len(equalized.graph.node) == len(prepared.model.graph.node)


def test_spread_and_the_integer_kernels_output():
    assert spread(np.array([[2.0, 0.0], [1.0, 1.0], [0.5, 0.1]])) == 2.0
    assert spread(np.zeros((3, 2))) == float("inf")
    equalized, _ = equalize(relu6_chain_model())
    c1 = next(layer for layer in prepare_model(equalized).layers if layer.name == "c1")
    assert post_layer_tensor(equalized, c1) == f"a1/{PER_CHANNEL_CLIP}"
    assert "Min" in set(float_op_table(equalized)["op"])
