"""Fold BatchNormalization into the Conv before it, and record which nodes became which layer."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .helpers import attribute, constants, consumers, copy_model, drop_unused_initializers

log = logging.getLogger(__name__)


def fold_batchnorm(model: onnx.ModelProto, skip: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, list[dict]]:
    """Copy of ``model`` with each Conv -> BatchNormalization pair folded into one Conv.

    Returns the model and one record per fusion: ``{"layer", "type", "original_nodes"}``.
    The Conv keeps its name, so configs keyed by layer name stay valid. Convs named in
    ``skip`` are left alone (the reference tool's ``skip_fusion_layers``).
    """
    model = copy_model(model)
    values = constants(model)
    users = consumers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    fusions, drop = [], set()
    for bn in model.graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or conv.name in skip
                or len(users[conv.output[0]]) != 1 or conv.output[0] in graph_outputs
                or any(name not in values for name in list(bn.input[1:5]) + [conv.input[1]])
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in values)):
            continue
        _fold_pair(model, conv, bn, values)
        drop.add(bn.name or id(bn))
        fusions.append({"layer": conv.name, "type": "Conv+BatchNormalization",
                        "original_nodes": [conv.name, bn.name]})
    kept = [n for n in model.graph.node if (n.name or id(n)) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    drop_unused_initializers(model)
    if fusions:
        log.info("folded %d BatchNormalization nodes into Convs", len(fusions))
    return model, fusions


def fold_bn_params(weight, bias, gamma, beta, mean, var, eps):
    """Conv weight and bias with an inference BatchNorm folded in, as float32.

    scale = gamma / sqrt(var + eps); weight' = weight * scale per output channel;
    bias' = (bias - mean) * scale + beta (bias None = 0). Computed in float64.

    >>> w, b = fold_bn_params(np.ones((1, 1, 1, 1)), None, [2.0], [1.0], [0.5], [3.0], 1.0)
    >>> w.ravel().tolist(), b.tolist()
    ([1.0], [0.5])
    """
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    folded = np.asarray(weight, np.float64) * scale.reshape(-1, *([1] * (np.ndim(weight) - 1)))
    bias = np.zeros(scale.shape) if bias is None else np.asarray(bias, np.float64)
    new_bias = (bias - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)
    return folded.astype(np.float32), new_bias.astype(np.float32)


def _fold_pair(model, conv, bn, values):
    """Give ``conv`` the folded weight and bias (new initializers named after it) and ``bn``'s output."""
    eps = attribute(bn, "epsilon", 1e-5)
    has_bias = len(conv.input) > 2 and conv.input[2]
    new_weight, new_bias = fold_bn_params(values[conv.input[1]], values[conv.input[2]] if has_bias else None,
                                          *(values[name] for name in bn.input[1:5]), eps)
    weight_name, bias_name = f"{conv.name}/fused_weight", f"{conv.name}/fused_bias"
    model.graph.initializer.extend([numpy_helper.from_array(new_weight, weight_name),
                                    numpy_helper.from_array(new_bias, bias_name)])
    inputs = [conv.input[0], weight_name, bias_name]
    del conv.input[:]
    conv.input.extend(inputs)
    conv.output[0] = bn.output[0]
