"""The float model as nbquant quantizes it: nodes named, BatchNorm folded, layers found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pandas as pd

from ..errors import ModelError
from .fusion import fold_batchnorm
from .layers import Layer, find_layers, layer_table
from .load import load_model, name_nodes


@dataclass
class PreparedModel:
    """The float model as nbquant quantizes it: nodes named, BatchNorm folded, layers found."""

    name: str
    model: onnx.ModelProto = field(repr=False)
    layers: list[Layer] = field(repr=False)
    fusions: list[dict] = field(repr=False)
    renamed: list[str] = field(repr=False)
    equalization: pd.DataFrame | None = field(default=None, repr=False)  # set once equalized (calibration)

    @property
    def table(self) -> pd.DataFrame:
        return layer_table(self.model)


def prepare_model(model, do_fusion: bool = True, skip_fusion=()) -> PreparedModel:
    """Load (path) or take (ModelProto) a model, name its nodes, fold BN, find its layers."""
    name = Path(model).stem if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    proto = load_model(model) if not isinstance(model, onnx.ModelProto) else model
    proto, renamed = name_nodes(proto)
    fusions = []
    if do_fusion:
        proto, fusions = fold_batchnorm(proto, tuple(skip_fusion))
    layers = find_layers(proto)
    if not layers:
        raise ModelError(f"model {model if not isinstance(model, onnx.ModelProto) else name} has no "
                         "quantizable layer (Conv, ConvTranspose, Gemm, or MatMul with a constant weight)")
    return PreparedModel(name, proto, layers, fusions, renamed)
