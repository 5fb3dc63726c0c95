"""Layer states: the precision each quantizable layer is built in, and the models built from a mapping
layer -> state (int8 and float layers are the special case the search started with).

| state | input | weights | what onnxruntime 1.32's CPU EP runs |
|---|---|---|---|
| ``int8`` | 8-bit, calibrated | int8 | integer kernels (QLinearConv, QGemm ...) |
| ``a16w8`` | 16-bit over the observed range | int8 | no 16-bit kernel: DequantizeLinear, float layer |
| ``dynamic`` | 8-bit, range of each run | int8 | DynamicQuantizeMatMul (MatMul with a 2-D weight, Gemm) |
| ``float`` | the 8-bit output of an int8 producer | float | float layer; the producer keeps its integer kernel |
| ``float_raw`` | the producer's unrounded output | float | float layer; the producer computes in float too |

A layer left in ``float`` reads what the integer kernel before it emits (rounded to 8 bits): it
undoes only its own weight rounding. ``float_raw``, ``a16w8`` and ``dynamic`` read the unrounded
tensor, so an int8 producer whose output they read leaves its integer kernel (it computes the same
values in float). 16-bit Q/DQ are ONNX ops from opset 21 and onnxruntime's ``com.microsoft`` ops below
(the model keeps its opset). Every built model records each layer's state (``nbquant.layer_states``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import replace

import onnx
import pandas as pd

from ..errors import ConfigError
from .deploy import make_deploy_model
from .fake_quant import make_fake_quant_model
from .layer_quant import LayerQuant, LayerState
from .metadata import STATES_KEY
from .numerics import INT16, UINT16, QParams, qparams_from_range

# what each state reads and computes with: activation bits (0: float), weight bits, reads the raw tensor
STATE_BITS = {LayerState.INT8: (8, 8, False), LayerState.A16W8: (16, 8, True), LayerState.DYNAMIC: (8, 8, True),
              LayerState.FLOAT: (0, 32, False), LayerState.FLOAT_RAW: (0, 32, True)}


def sixteen_bit_activation(lq: LayerQuant) -> QParams:
    """16-bit params of the layer's input from the same statistics as its 8-bit ones: the observed
    range (``input_range``, else the 8-bit clip range) over 65535 steps, uint16 (int16 symmetric when
    the 8-bit activation is symmetric int8)."""
    lo, hi = lq.input_range if lq.input_range is not None else lq.clip
    symmetric = lq.activation.qmin < 0
    return qparams_from_range(lo, hi, INT16 if symmetric else UINT16, symmetric)


def can_be_dynamic(lq: LayerQuant) -> bool:
    """Whether the layer has a dynamic int8 kernel: a Gemm, or a MatMul with a 2-D weight."""
    return lq.layer.op == "Gemm" or (lq.layer.op == "MatMul" and lq.weight_q.ndim == 2)


def in_state(lq: LayerQuant, state) -> LayerQuant:
    """``lq`` (a calibrator's 8-bit LayerQuant) built as ``state`` (int8, a16w8 or dynamic)."""
    name = lq.layer.name
    state = LayerState.parse(state, f"layer {name!r}: state")
    if not state.quantized:
        raise ConfigError(f"layer {name!r}: state {state.value} has no LayerQuant (the layer stays float)")
    if lq.activation.bits > 8:
        raise ConfigError(f"layer {name!r}: in_state needs the calibrator's 8-bit LayerQuant, got a 16-bit one")
    if state is LayerState.DYNAMIC:
        if not can_be_dynamic(lq):
            raise ConfigError(f"layer {name!r} ({lq.layer.op}) cannot be dynamic: only Gemm and MatMul with a "
                              "2-D weight have a dynamic int8 kernel")
        return replace(lq, dynamic=True)
    if state is LayerState.A16W8:
        return replace(lq, dynamic=False, activation=sixteen_bit_activation(lq))
    return replace(lq, dynamic=False)


def resolve_states(quant: Mapping[str, LayerQuant], states: Mapping | None = None,
                   float_layers: Collection[str] = ()) -> dict[str, LayerState]:
    """The state of every layer of ``quant`` (its own: int8, or dynamic where calibrated so), then
    ``float_layers`` in float, then ``states`` (layer -> LayerState or its value), which win."""
    resolved = {name: lq.state for name, lq in quant.items()}
    resolved.update((name, LayerState.FLOAT) for name in float_layers)
    for name, state in (states or {}).items():
        state = LayerState.parse(state, f"layer {name!r}: state")
        if state.quantized and name not in quant:
            raise ConfigError(f"layer {name!r} has state {state.value} but no calibration (it is not among the "
                              f"{len(quant)} calibrated layers)")
        resolved[name] = state
    return resolved


def state_quant(quant: Mapping[str, LayerQuant], states: Mapping | None = None,
                float_layers: Collection[str] = ()) -> tuple[dict[str, LayerQuant], frozenset[str]]:
    """What the builders take for these states: the quantized layers' LayerQuant (graph order) and the
    float_raw layers."""
    resolved = resolve_states(quant, states, float_layers)
    kept = {name: in_state(lq, resolved[name]) for name, lq in quant.items() if resolved[name].quantized}
    raw = frozenset(name for name, state in resolved.items() if state is LayerState.FLOAT_RAW)
    return kept, raw


def make_state_model(model: onnx.ModelProto, quant: Mapping[str, LayerQuant], states: Mapping | None,
                     output_qparams: dict[str, QParams], target=None, deploy: bool = True,
                     float_layers: Collection[str] = ()) -> onnx.ModelProto:
    """``model`` with each layer in its state (:func:`resolve_states`): the deploy model (onnxruntime's
    kernels) or its fake-quant simulation. ``quant``: a calibrator's ``quant_``; ``output_qparams``: its
    ``tensor_qparams_``; ``target``: the resolved deploy target."""
    nodes = {node.name for node in model.graph.node}
    unknown = [name for name in [*(states or {}), *float_layers] if name not in nodes]
    if unknown:
        raise ConfigError(f"layer {unknown[0]!r} in the states is not a node of model {model.graph.name!r}")
    kept, raw = state_quant(quant, states, float_layers)
    build = make_deploy_model if deploy else make_fake_quant_model
    return build(model, kept, output_qparams, target, raw_inputs=raw)


def model_states(model: onnx.ModelProto) -> dict[str, LayerState] | None:
    """Each layer's state as a model nbquant built records it (None: a model without the record)."""
    value = next((p.value for p in model.metadata_props if p.key == STATES_KEY), None)
    return None if value is None else states_from_json(json.loads(value), f"model metadata {STATES_KEY}")


def states_to_json(states: Mapping) -> dict[str, str]:
    """``{layer: "int8" | "a16w8" | "dynamic" | "float" | "float_raw"}``, for records and config files."""
    return {name: LayerState.parse(state, f"layer {name!r}: state").value for name, state in states.items()}


def states_from_json(data, source: str = "states") -> dict[str, LayerState]:
    """The inverse of :func:`states_to_json`; ConfigError naming ``source`` and the layer on a bad entry."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a JSON object of layer -> state, got {type(data).__name__}")
    return {name: LayerState.parse(state, f"{source}: layer {name!r}: state") for name, state in data.items()}


def state_table(states: Mapping) -> pd.DataFrame:
    """One row per layer: state, activation_bits (0: float), weight_bits (32: float) and reads_raw
    (whether it reads the unrounded tensor, so an int8 producer computes in float); merge it into a
    layer table on ``layer``."""
    rows = []
    for name, state in states.items():
        state = LayerState.parse(state, f"layer {name!r}: state")
        act, weight, raw = STATE_BITS[state]
        rows.append({"layer": name, "state": state.value, "activation_bits": act, "weight_bits": weight,
                     "reads_raw": raw})
    return pd.DataFrame(rows, columns=["layer", "state", "activation_bits", "weight_bits", "reads_raw"])
