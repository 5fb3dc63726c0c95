"""nbquant's exception types; each subclasses the builtin it refines."""


import re
from contextlib import contextmanager


class NbquantError(Exception):
    """Base of every error nbquant raises on purpose (the CLI turns them into exit code 2)."""


class ModelError(NbquantError, ValueError):
    """The ONNX model file is missing, unreadable or not what nbquant can quantize."""


class DataError(NbquantError, ValueError):
    """The image folder or a setting about it is unusable."""


class ConfigError(NbquantError, ValueError):
    """A setting or a quant config file holds a value nbquant cannot use."""


class NotFittedError(NbquantError, AttributeError):
    """A learned attribute was used before ``fit`` ran."""


class StageError(ModelError):
    """A step failed on this model's structure in a way nbquant did not foresee: names the stage and node."""


@contextmanager
def stage(what: str, model: str):
    """Turn an unforeseen exception inside the block into one StageError line: model, stage, node.

    >>> with stage("building the deploy model", "m.onnx"):
    ...     raise ValueError("input 'a' of node:\\nname: Shape_3 OpType: Shape\\n is not output of any previous nodes")
    Traceback (most recent call last):
    nbquant.errors.StageError: m.onnx: building the deploy model failed at node Shape_3: ValueError: input 'a' of node:
    """
    try:
        yield
    except (NbquantError, KeyboardInterrupt):
        raise
    except Exception as exc:
        text = str(exc).strip()
        node = re.search(r"name:\s*(\S+)", text)
        where = f" at node {node.group(1)}" if node else ""
        first = text.splitlines()[0] if text else ""
        raise StageError(f"{model}: {what} failed{where}: {exc.__class__.__name__}: {first}") from exc
