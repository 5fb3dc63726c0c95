"""Load an ONNX model and give every node a unique name."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import ModelError
from .helpers import copy_model

log = logging.getLogger(__name__)


def load_model(path) -> onnx.ModelProto:
    """Read an ONNX file, with an error that names the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX model ({exc.__class__.__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model: its graph has no nodes (truncated or another format?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path} is not a valid ONNX model: {first}") from exc
    return model


def name_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Copy of ``model`` where every unnamed node gets the stable name ``<op>_<index>``."""
    model = copy_model(model)
    taken = {n.name for n in model.graph.node if n.name}
    renamed = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            renamed.append(name)
    if renamed:
        log.info("gave %d unnamed nodes stable names (<op>_<index>), e.g. %s", len(renamed), renamed[0])
    return model, renamed
