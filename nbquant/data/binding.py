"""Data checked against the model: image preprocessing resolved, arrays bound to inputs."""

from __future__ import annotations

import logging

import onnx

from ..errors import ConfigError
from ..graph.prepare import PreparedModel
from .images import ImageDataset
from .preprocess import DEFAULT_PRESET, Preprocess, check_input_shape, fit_to_input, get_preset
from .tensors import TensorDataset, open_data

log = logging.getLogger(__name__)


METADATA_PREFIX = "nbquant.preprocess."


def resolve_preprocess(model: onnx.ModelProto, preprocess=None) -> Preprocess:
    """The given Preprocess; else what the model's metadata records (a letterbox's box from the model's input
    where it fixes both sizes); else the given preset name (default "half") with crop, resize and layout
    taken from the model's input shape (logged)."""
    if isinstance(preprocess, Preprocess):
        return preprocess
    meta = {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}
    if preprocess is not None or not meta:
        pre, why = fit_to_input(get_preset(preprocess or DEFAULT_PRESET), input_shape(model))
        if why:
            log.info("preprocessing for %s: %s", model.graph.name or "the model", why)
        return pre
    kwargs = {}
    for key, value in meta.items():
        if key in ("resize", "crop", "pad_multiple", "pad_value"):
            kwargs[key] = int(value)
        elif key == "letterbox":
            kwargs[key] = value  # "640" or "640x480" (width x height)
        elif key in ("mean", "std"):
            kwargs[key] = tuple(float(v) for v in value.split(","))
        elif key in ("channel_order", "layout", "interpolation", "resize_rounding"):
            kwargs[key] = value.lower()
    pre = Preprocess(**kwargs)
    return fit_to_input(pre, input_shape(model))[0] if pre.letterbox is not None else pre


def input_shape(model: onnx.ModelProto) -> list:
    """The first input's shape: ints where fixed, the dim name or None where dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def check_preprocess(model: onnx.ModelProto, pre: Preprocess, where: str) -> None:
    """Raise when ``pre`` produces images of another size than the model's first input."""
    check_input_shape(pre, input_shape(model), where)


def bind_data(prepared: PreparedModel, data, preprocess=None) -> tuple[ImageDataset | TensorDataset,
                                                                      Preprocess | None]:
    """(data, preprocessing) checked against the model: images get their Preprocess (see
    :func:`resolve_preprocess`); arrays (:class:`~nbquant.data.tensors.TensorDataset`) are matched to the
    model's inputs by name and need none."""
    data = open_data(data)
    if isinstance(data, TensorDataset):
        if preprocess is not None:
            raise ConfigError(f"image preprocessing ({preprocess}) was given, but {data.root} holds arrays, "
                              "which are fed to the model as they are")
        return data.bind(prepared.model), None
    pre = resolve_preprocess(prepared.model, preprocess)
    check_preprocess(prepared.model, pre, prepared.name)
    return data, pre


def fingerprint(data: ImageDataset | TensorDataset) -> tuple:
    """What identifies the data's content for the cache: the image files (path, and size and time or
    content: see :func:`nbquant.cache.make_key`) with their labels, or the arrays themselves."""
    if isinstance(data, TensorDataset):
        return ("arrays", data.inputs, data.labels)
    return ("images", list(data.files), data.labels)


def describe_preprocess(pre: Preprocess | None) -> str:
    return pre.describe() if pre is not None else "none (array inputs, fed as they are)"
