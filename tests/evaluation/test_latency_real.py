"""Latency costs of the real model: the cost table of EfficientNet-Lite0 and a mixed model predicted from it.

Structure and sanity only, with tolerances a loaded CI machine holds: the speed figures are measured by
``benchmarks/precision.py``. The prediction is checked against the mixed model's own profile (per-node
medians, which a busy machine disturbs far less than wall time).
"""


import pytest
from onnx import numpy_helper

from nbquant.data.binding import resolve_preprocess
from nbquant.evaluation.latency import attribute, cost_table, profile_nodes
from nbquant.evaluation.latency_model import (
    layer_neighbours,
    predict_size,
    probe_float_layers,
)
from nbquant.search.steps import config_model

pytestmark = pytest.mark.real

INTEGER_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


@pytest.fixture(scope="module")
def lite0(real_calibration, real_data):
    """The calibrated model, a builder of its mixed deploy models, one real image and the batch-1 cost table."""
    run = real_calibration
    model, calibrator = run.prepared.model, run.calibrator

    def build(float_layers):
        return config_model(model, calibrator.quant_, set(float_layers), calibrator.tensor_qparams_,
                            run.config.deploy_target, True)
    image = next(real_data.subset(1).iter_batches(resolve_preprocess(model), 1)).images
    probe = probe_float_layers(layer_neighbours(model, run.prepared.layers))
    costs = cost_table(model, build(()), image, probe_model=build(probe), runs=8)
    return run, build, image, costs


def test_every_layer_of_lite0_has_a_cost_in_each_state(lite0):
    run, _, _, costs = lite0
    table = costs.layers
    assert list(table.index) == [layer.name for layer in run.prepared.layers] and len(table) == 50
    assert (table[["int8_us", "float_us"]] > 0).all().all()
    # int8 weights with per-channel scales, int32 biases: smaller than float32 everywhere, a third or less in all
    assert (table["int8_bytes"] < table["float_bytes"]).all()
    assert table["int8_bytes"].sum() * 3 < table["float_bytes"].sum()
    assert (table[["in_elements", "out_elements"]] > 0).all().all()
    assert set(table.loc[table["kind"] == "depthwise"].index)  # Lite0's kinds came through
    names = list(table.index)
    assert predict_size(costs, ()) * 3 < predict_size(costs, names)
    float_bytes = sum(numpy_helper.to_array(init).nbytes for init in run.prepared.model.graph.initializer)
    assert predict_size(costs, names) == float_bytes


def test_lite0_layers_run_integer_kernels_only_in_int8(lite0):
    run, build, image, _ = lite0
    layers = run.prepared.layers
    name = layers[10].name
    nodes = attribute(profile_nodes(build([name]), image, runs=2)[0], run.prepared.model, layers)
    by_layer = nodes.groupby("layer")["op"].agg(set)
    assert not by_layer[name] & INTEGER_KERNELS  # the float layer stays in float
    assert all(by_layer[layer.name] & INTEGER_KERNELS for layer in layers if layer.name != name)


