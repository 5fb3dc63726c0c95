"""The shared graph helpers on a graph small enough to check by hand."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, parser

from nbquant.errors import ModelError
from nbquant.graph.helpers import (
    attribute,
    attributes,
    consumers,
    copy_model,
    drop_unused_initializers,
    first_consumer,
    model_metadata,
    node_by_name,
    rename_inputs,
    set_bias,
)

TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y, float[N, 4] h) {
    s = Shape (x)
    h = MatMul (x, w)
    y = Add (h, h)
}
"""


@pytest.fixture
def model() -> onnx.ModelProto:
    model = parser.parse_model(TEXT)
    for node, name in zip(model.graph.node, ("shape", "matmul", "add")):
        node.name = name
    model.graph.initializer.extend([numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
                                    numpy_helper.from_array(np.zeros(4, np.float32), "unused")])
    return model


def test_consumers_list_each_reader_once_in_graph_order(model):
    users = consumers(model)
    assert [n.name for n in users["x"]] == ["shape", "matmul"]
    assert [n.name for n in users["h"]] == ["add"]  # Add reads h twice; h is also a graph output
    assert users["y"] == [] and users["s"] == []
    assert first_consumer(model, "x").name == "shape"
    with pytest.raises(ModelError, match="no node of graph 'g' reads tensor 'y'"):
        first_consumer(model, "y")


def test_rename_inputs_rewires_only_the_given_nodes(model):
    nodes = node_by_name(model)
    rename_inputs([nodes["add"]], {"h": "h_dequantized", "x": "never"})
    assert list(nodes["add"].input) == ["h_dequantized", "h_dequantized"]
    assert list(nodes["matmul"].input) == ["x", "w"]


def test_attributes_with_defaults():
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2])
    assert attributes(node) == {"group": 2, "strides": [2, 2]}
    assert attribute(node, "group", 1) == 2 and attribute(node, "pads", None) is None


def test_set_bias_replaces_or_appends():
    gemm = onnx.helper.make_node("Gemm", ["x", "w"], ["y"])
    set_bias(gemm, "b")
    set_bias(gemm, "b2")
    assert list(gemm.input) == ["x", "w", "b2"]


def test_copy_metadata_and_pruning(model):
    onnx.helper.set_model_props(model, {"a": "1"})
    copy = copy_model(model)
    drop_unused_initializers(copy)
    assert [i.name for i in copy.graph.initializer] == ["w"]
    assert len(model.graph.initializer) == 2  # the original is untouched
    assert model_metadata(copy) == {"a": "1"}
