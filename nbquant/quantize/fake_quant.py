"""The fake-quant model: the deploy model's arithmetic, simulated in float.

Every Q/DQ of the deploy model is there (each enabled layer's input, its integer weights,
its requantized output), only the bias stays float (bias-corrected) instead of int32. nbquant
runs it with onnxruntime's QDQ fusion off (metadata ``nbquant.simulate_int8``), so its accuracy
is what exact integer kernels give: the deploy model's on any CPU that computes it exactly.
Where nbquant differs from the reference tool: its fake-quant model quantizes layer inputs and
weights only, so its accuracy drifts from what the integer kernels deliver.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx

from .deploy import quantize_graph
from .deploy_target import target_metadata
from .layer_quant import LayerQuant
from .metadata import SIMULATE_KEY
from .numerics import QParams


def make_fake_quant_model(model: onnx.ModelProto, quant: dict[str, LayerQuant], output_qparams: dict[str, QParams],
                          target=None, raw_inputs: Collection[str] = ()) -> onnx.ModelProto:
    """Float ``model`` with the deploy model's Q/DQ for every layer in ``quant`` and float biases.

    ``output_qparams``: a calibrator's ``tensor_qparams_``; ``target`` (the resolved deploy target)
    is recorded in the metadata with each layer's weight range; ``raw_inputs`` as for
    :func:`~nbquant.quantize.deploy.make_deploy_model`.
    """
    edit = quantize_graph(model, quant, output_qparams, integer_bias=False, raw_inputs=raw_inputs)
    return edit.finish(metadata={**target_metadata(quant, target), SIMULATE_KEY: "1"})
