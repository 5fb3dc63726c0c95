"""What a mixed-precision model costs, predicted from per-layer costs: pure functions over a cost table.

The table (:class:`LayerCosts`, built by :func:`nbquant.evaluation.latency.cost_table` from one profile
each of the float model, the all-int8 deploy model and a probe model with isolated layers in float) holds
each layer's kernel time and weight bytes in each state. A mixed model's latency is then

    the sum of each layer's time in its state + the other ops (interpolated between the two profiles by
    the share of layers in float) + a cost for every tensor that crosses between float and int8,

each state's part scaled by its measured wall time over its profile total. A crossing costs what
onnxruntime runs there: a layout Transpose of the 8-bit tensor (integer kernels run NHWC), a
DequantizeLinear or QuantizeLinear, and a float layout reorder (NCHWc), each fitted as a fixed plus a
per-element cost on the probe's profile. The size is the sum of each layer's weight bytes in its state
plus the weights outside the layers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import pandas as pd

from ..errors import ConfigError
from ..graph.layers import Layer, post_layer_tensor

OTHER = "other"
STATES = ("int8", "float")
# ops that run on each side of a tensor crossing between float and int8 layers, by direction
CROSSING_OPS = {"in": ("Transpose", "DequantizeLinear", "ReorderInput"),
                "out": ("ReorderOutput", "QuantizeLinear", "Transpose")}


def layer_keys(model: onnx.ModelProto, layers: Collection[Layer]) -> dict[str, str]:
    """Tensor name -> layer for each layer's output and the output of its Clip/Relu: onnxruntime names a
    float Conv it moves to the NCHWc layout after the tensor it writes (``<tensor>_nchwc``)."""
    keys = {}
    for layer in layers:
        keys[layer.output] = layer.name
        keys[post_layer_tensor(model, layer)] = layer.name
    return keys


def attribute_nodes(nodes: Collection[str], layer_names: Collection[str], tensors: Mapping[str, str]) -> list[str]:
    """The layer each profiled node belongs to, else ``"other"``.

    A node belongs to a layer when it is the layer's own node or carries its name as a prefix: nbquant's
    Q/DQ around it (``<layer>/input/QuantizeLinear``) and onnxruntime's fused kernels (``<layer>_token_7``,
    a QLinearConv; FusedConv keeps the name); or when it is named after the layer's output tensor
    (``<tensor>_nchwc``, a float Conv in NCHWc layout, with its Clip and residual Add fused in). Longer
    layer names win, so ``Conv_12`` is not taken for ``Conv_1``.

    >>> attribute_nodes(["a/input/QuantizeLinear", "a_token_3", "t_nchwc", "Transpose"], ["a", "b"], {"t": "b"})
    ['a', 'a', 'b', 'other']
    """
    ordered = sorted(layer_names, key=len, reverse=True)
    out = []
    for node in nodes:
        hit = next((name for name in ordered
                    if node == name or node.startswith(name + "/") or node.startswith(name + "_")), None)
        if hit is None:
            hit = tensors.get(node.removesuffix("_nchwc"))
        out.append(hit or OTHER)
    return out


def layer_neighbours(model: onnx.ModelProto, layers: Collection[Layer]) -> dict[str, tuple[str, ...]]:
    """Layer -> the layers whose output reaches its input through ops that are no layers (Clip, Add,
    pooling ...): where a tensor crosses between float and int8 when one of the two is in float."""
    names = {layer.name for layer in layers}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for layer in layers:
        upstream, seen, stack = [], set(), [layer.input]
        while stack:
            tensor = stack.pop()
            node = producer.get(tensor)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.name in names:
                upstream.append(node.name)
            else:
                stack.extend(node.input)
        found[layer.name] = tuple(sorted(upstream))
    return found


def probe_float_layers(neighbours: Mapping[str, Collection[str]]) -> list[str]:
    """Layers to put in float, none next to another (graph order, greedy), so that a mixed model of them
    runs every crossing op on tensors of many sizes: what :func:`crossing_rates` is fitted on.

    >>> probe_float_layers({"a": (), "b": ("a",), "c": ("b",), "d": ("b",), "e": ("c", "d")})
    ['a', 'c', 'd']
    """
    chosen: list[str] = []
    successors: dict[str, set[str]] = {name: set() for name in neighbours}
    for name, before in neighbours.items():
        for p in before:
            successors.setdefault(p, set()).add(name)
    for name, before in neighbours.items():
        if not (set(before) | successors[name]) & set(chosen):
            chosen.append(name)
    return chosen


@dataclass
class LayerCosts:
    """Per-layer costs of one model at one batch size on one machine.

    ``layers`` (index: layer name, graph order): ``kind``, ``int8_us`` / ``float_us`` (median kernel
    microseconds per run of the layer's nodes in the all-int8 / float profile), ``int8_bytes`` /
    ``float_bytes`` (its weight, bias and quantization parameters), ``in_elements`` / ``out_elements``
    (its input tensor and the tensor it emits), ``cross_in_us`` / ``cross_out_us`` (what that tensor costs
    when it crosses between float and int8). ``predecessors``: layer -> the layers that feed it.
    ``other_us``: the ops outside layers, per state; ``other_bytes``: weights outside layers.
    ``crossing_rates``: op -> (fixed, per element) microseconds, fitted on the profiles. ``run_us``: the median
    profiled run of each whole model (kernels plus the gaps between them). ``wall_ms``: the median wall time
    of the all-int8 and the float model, unprofiled; ``scale``: wall time over profile total per state (the
    profiler's own cost weighs more on the many short kernels of an int8 model: 1.3 against 1.05 at batch 1
    on EfficientNet-Lite0), 1 where no wall time was measured.
    """

    layers: pd.DataFrame
    predecessors: dict[str, tuple[str, ...]]
    other_us: dict[str, float]
    other_bytes: int
    crossing_rates: dict[str, tuple[float, float]]
    batch: int
    threads: int
    run_us: dict[str, float] = field(default_factory=dict)
    wall_ms: dict[str, float] = field(default_factory=dict)

    @property
    def scale(self) -> dict[str, float]:
        totals = self.total_us
        return {state: (self.wall_ms[state] * 1000 / totals[state] if state in self.wall_ms and totals[state] > 0
                        else 1.0) for state in STATES}

    def __repr__(self) -> str:
        return (f"LayerCosts({len(self.layers)} layers, batch {self.batch}, {self.threads} threads, "
                f"int8 {predict_latency(self, ()):.2f} ms, float {predict_latency(self, self.layers.index):.2f} ms)")

    @property
    def total_us(self) -> dict[str, float]:
        """Profile totals (kernels only) per state: the all-int8 and the float model."""
        return {state: float(self.layers[f"{state}_us"].sum() + self.other_us[state]) for state in STATES}

    def to_dict(self) -> dict:
        """A JSON form (for a cache or a record); :meth:`from_dict` reads it back."""
        return {"layers": self.layers.reset_index().to_dict(orient="list"),
                "predecessors": {k: list(v) for k, v in self.predecessors.items()}, "other_us": self.other_us,
                "other_bytes": self.other_bytes, "crossing_rates": {k: list(v) for k, v in self.crossing_rates.items()},
                "batch": self.batch, "threads": self.threads, "run_us": self.run_us, "wall_ms": self.wall_ms}

    @classmethod
    def from_dict(cls, data: dict) -> LayerCosts:
        return cls(pd.DataFrame(data["layers"]).set_index("layer"),
                   {k: tuple(v) for k, v in data["predecessors"].items()}, dict(data["other_us"]),
                   int(data["other_bytes"]), {k: tuple(v) for k, v in data["crossing_rates"].items()},
                   int(data["batch"]), int(data["threads"]), dict(data.get("run_us", {})),
                   dict(data.get("wall_ms", {})))

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` layers that gain most from int8 (float minus int8 microseconds), with their sizes."""
        table = self.layers.assign(saved_us=self.layers["float_us"] - self.layers["int8_us"])
        return table.sort_values("saved_us", ascending=False).head(n)


def check_float_layers(costs: LayerCosts, float_layers) -> frozenset[str]:
    chosen = frozenset(float_layers)
    unknown = sorted(chosen - set(costs.layers.index))
    if unknown:
        raise ConfigError(f"float layers {unknown[:3]} are not layers of the cost table "
                          f"({len(costs.layers)} layers, e.g. {list(costs.layers.index[:2])})")
    return chosen


def crossings(costs: LayerCosts, float_layers) -> pd.DataFrame:
    """Each float layer's input and output crossings to int8 neighbours under ``float_layers``:
    columns ``cross_in`` / ``cross_out`` (bool) and their microseconds."""
    chosen = check_float_layers(costs, float_layers)
    successors: dict[str, list[str]] = {name: [] for name in costs.layers.index}
    for name, before in costs.predecessors.items():
        for p in before:
            successors[p].append(name)
    rows = []
    for name in costs.layers.index:
        if name not in chosen:
            continue
        cross_in = any(p not in chosen for p in costs.predecessors.get(name, ()))
        cross_out = any(s not in chosen for s in successors[name])
        row = costs.layers.loc[name]
        rows.append({"layer": name, "cross_in": cross_in, "cross_out": cross_out,
                     "us": cross_in * row["cross_in_us"] + cross_out * row["cross_out_us"]})
    return pd.DataFrame(rows, columns=["layer", "cross_in", "cross_out", "us"]).set_index("layer")


def predict_latency(costs: LayerCosts, float_layers, kernels: bool = False) -> float:
    """Predicted milliseconds of one run of the model with ``float_layers`` in float and the rest in int8.

    The layers' kernel times in their states, the other ops interpolated between the two profiles by
    the share of layers in float, and the crossings between float and int8; each state's times scaled
    by its wall time over its profile total (``costs.scale``; the crossings by the mean of the two), so
    no and every layer in float give the measured wall times of the all-int8 and the float model.
    ``kernels``: unscaled, the profile's kernel time (no and every layer give the two profile totals).
    """
    chosen = check_float_layers(costs, float_layers)
    table = costs.layers
    scale = dict.fromkeys(STATES, 1.0) if kernels else costs.scale
    in_float = table.index.isin(list(chosen))
    layers_us = float(np.where(in_float, table["float_us"] * scale["float"], table["int8_us"] * scale["int8"]).sum())
    share = in_float.mean() if len(table) else 0.0
    other = (1 - share) * costs.other_us["int8"] * scale["int8"] + share * costs.other_us["float"] * scale["float"]
    crossing = float(crossings(costs, chosen)["us"].sum()) * (scale["int8"] + scale["float"]) / 2
    return (layers_us + other + crossing) / 1000.0


def predict_size(costs: LayerCosts, float_layers) -> int:
    """Predicted bytes of the weights (tensor data, not file bytes) of the model with ``float_layers`` in float."""
    chosen = check_float_layers(costs, float_layers)
    table = costs.layers
    in_float = table.index.isin(list(chosen))
    return int(np.where(in_float, table["float_bytes"], table["int8_bytes"]).sum()) + costs.other_bytes


def crossing_rates(frames: Collection[pd.DataFrame]) -> dict[str, tuple[float, float]]:
    """Op -> (fixed microseconds, microseconds per element of its first input) of each op a crossing runs,
    fitted by least squares on profiled nodes (``op``, ``us``, ``elements``) of any models: best a mixed
    model whose float layers sit between int8 ones, so each op ran on tensors of many sizes. Without a size
    spread an op gets one rate through zero; DequantizeLinear, when none ran unfused, costs what
    QuantizeLinear does; an op that never ran (no NCHWc reorders on this CPU) costs nothing."""
    nodes = pd.concat(list(frames), ignore_index=True)
    ops = sorted({op for group in CROSSING_OPS.values() for op in group})
    rates: dict[str, tuple[float, float] | None] = {op: affine_fit(nodes[(nodes["op"] == op) & (nodes["elements"] > 0)])
                                                    for op in ops}
    if rates["DequantizeLinear"] is None:
        rates["DequantizeLinear"] = rates["QuantizeLinear"]
    return {op: rate or (0.0, 0.0) for op, rate in rates.items()}


def affine_fit(rows: pd.DataFrame) -> tuple[float, float] | None:
    """(fixed, per element) microseconds, both >= 0, fitted to ``rows``' ``us`` over ``elements``; None for no rows.

    >>> affine_fit(pd.DataFrame({"us": [12.0, 22.0, 42.0], "elements": [100, 200, 400]}))
    (2.0, 0.1)
    """
    if rows.empty:
        return None
    x, y = rows["elements"].to_numpy(float), rows["us"].to_numpy(float)
    if np.unique(x).size >= 2:
        (fixed, slope), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), y, rcond=None)
        if fixed >= 0 and slope >= 0:
            return round(float(fixed), 9), round(float(slope), 12)
        if slope < 0:  # no size dependence to see: a fixed cost
            return float(y.mean()), 0.0
    return 0.0, float(y.sum() / x.sum())


def crossing_us(rates: Mapping[str, tuple[float, float]], elements: float, direction: str) -> float:
    """Microseconds for ``elements`` crossing ``in`` (int8 -> a float layer) or ``out`` (a float layer -> int8)."""
    return float(sum(rates[op][0] + rates[op][1] * float(elements) for op in CROSSING_OPS[direction]))
