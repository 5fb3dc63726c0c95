"""The ranking's group models (nbquant.search.ranking_subgraphs) give the outputs, hence the scores, of
the whole one-layer fake-quant models: on a residual block, a branchy graph with two outputs, and a
MatMul encoder with dynamic layers; in this process and on a thread pool."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, parser
from structures import mobilenet_v2, text_encoder, text_samples
from synthetic import conv_bn_model

from nbquant.calibration.run import CalibrationSettings, calibrate
from nbquant.data.tensors import TensorDataset
from nbquant.evaluation.executors import EvaluationPool
from nbquant.evaluation.shards import outputs_of
from nbquant.search.ranking import DISTANCES, output_scores, rank_layers
from nbquant.search.ranking_groups import grouped_outputs, one_layer_outputs
from nbquant.search.ranking_subgraphs import FloatGraph, group_model, has_subgraphs

SETTINGS = CalibrationSettings(calib_num=16, batch_size=8, weight_rounding="nearest")


def branchy_model(seed: int = 0) -> onnx.ModelProto:
    """A stem feeding two conv branches that meet in a Concat, a skip Add around one of them, and a
    second output behind a layer of its own (``side``), which does not reach the first."""
    rng = np.random.default_rng(seed)
    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 8, 8] x) => (float[N, 5] y, float[N, 2, 8, 8] side) {
        s = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, ws, bs)
        r = Relu (s)
        a = Conv <kernel_shape = [1, 1]> (r, wa, ba)
        b = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], group = 4> (r, wb, bb)
        skip = Add (b, r)
        t = Relu (skip)
        side = Conv <kernel_shape = [1, 1]> (t, wc, bc)
        c = Concat <axis = 1> (a, skip)
        p = GlobalAveragePool (c)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, wy, by)
    }
    """)
    weights = {"ws": (4, 3, 3, 3), "bs": (4,), "wa": (4, 4, 1, 1), "ba": (4,), "wb": (4, 1, 3, 3), "bb": (4,),
               "wc": (2, 4, 1, 1),
               "bc": (2,), "wy": (5, 8), "by": (5,)}
    model.graph.initializer.extend(numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
                                   for name, shape in weights.items())
    onnx.checker.check_model(model)
    return model


def _calibrated(model, samples):
    result = calibrate(model, samples, settings=SETTINGS, progress=False)
    return result.prepared.model, result.calibrator


def _images(model, n=24, seed=1):
    first = model.graph.input[0]
    shape = [d.dim_value or n for d in first.type.tensor_type.shape.dim]
    return {first.name: np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)}


def _assert_same(model, calibrator, data, size):
    quant, qparams = calibrator.quant_, calibrator.tensor_qparams_
    whole = list(one_layer_outputs(model, quant, data, 8, qparams))
    grouped = list(grouped_outputs(model, quant, data, 8, qparams, size=size))
    assert len(grouped) == len(whole) == len(quant)
    for name, a, b in zip(quant, whole, grouped):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    reference = next(outputs_of([model], data, 8, simulate=True))
    fast = output_scores(model, quant, data, batch_size=8, progress=False, output_qparams=qparams, group_layers=size)
    assert list(fast) == list(quant)
    for name, outputs in zip(quant, whole):
        assert fast[name] == pytest.approx(DISTANCES["kl"](reference, outputs), rel=1e-6)


@pytest.mark.parametrize("size", [1, 2, 8])
def test_residual_block_group_outputs_match_the_one_layer_models(size):
    model = conv_bn_model()
    model, calibrator = _calibrated(model, _images(model, 32))
    _assert_same(model, calibrator, TensorDataset(_images(model, 12, seed=2)), size)


def test_mobilenet_block_at_opset_11_matches():
    model = mobilenet_v2()
    model, calibrator = _calibrated(model, _images(model, 32))
    assert len(calibrator.quant_) > 8
    _assert_same(model, calibrator, TensorDataset(_images(model, 12, seed=2)), 3)


def test_branchy_graph_with_a_second_output_matches():
    model = branchy_model()
    model, calibrator = _calibrated(model, _images(model, 32))
    data = TensorDataset(_images(model, 12, seed=2))
    _assert_same(model, calibrator, data, 4)
    graph = FloatGraph(model)
    layers = {lq.layer.output: lq.layer for lq in calibrator.quant_.values()}
    regions = {name: graph.region_model(graph.region(layer.input)) for name, layer in layers.items()}
    # every reader of a layer's input is in its region (they read the dequantized input)
    assert [o.name for o in regions["a"][0].graph.output] == ["y", "side"] and regions["a"][1] == ["r"]
    assert [o.name for o in regions["side"][0].graph.output] == ["side"] and regions["side"][1] == ["t"]
    side = list(calibrator.quant_).index(layers["side"].name)  # quantizing it leaves y the float one
    np.testing.assert_array_equal(list(grouped_outputs(model, calibrator.quant_, data, 8,
                                                       calibrator.tensor_qparams_))[side],
                                  next(outputs_of([model], data, 8, simulate=True)))


def test_matmul_encoder_with_dynamic_layers_matches_in_process_and_on_a_pool():
    model = text_encoder()
    model, calibrator = _calibrated(model, text_samples(32))
    assert any(lq.dynamic for lq in calibrator.quant_.values())
    data = TensorDataset(text_samples(20, seed=3))
    _assert_same(model, calibrator, data, 5)
    here = rank_layers(model, calibrator.quant_, data, progress=False, output_qparams=calibrator.tensor_qparams_,
                       distance="cosine")
    with ThreadPoolExecutor(2) as executor:
        pooled = rank_layers(model, calibrator.quant_, data, progress=False,
                             output_qparams=calibrator.tensor_qparams_, pool=EvaluationPool(executor, threads=1),
                             distance="cosine")
    assert pooled[["layer", "score"]].equals(here[["layer", "score"]])


def test_group_model_stacks_one_output_per_layer_and_is_checked():
    model = conv_bn_model()
    model, calibrator = _calibrated(model, _images(model, 32))
    grouped = group_model(model, calibrator.quant_, calibrator.tensor_qparams_)
    onnx.checker.check_model(grouped)
    assert len(grouped.graph.output) == 1 and len(grouped.graph.output[0].type.tensor_type.shape.dim) == 5
    names = [n.name for n in grouped.graph.node]
    assert len(names) == len(set(names))
    assert {init.name for init in model.graph.initializer} >= {
        init.name for init in grouped.graph.initializer if "/alone/" not in init.name and "ranking/" not in init.name}


def test_models_with_subgraphs_rank_with_whole_one_layer_models():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    assert has_subgraphs(helper.make_model(graph)) and not has_subgraphs(conv_bn_model())
