"""nbquant's exception types; each subclasses the builtin it refines."""


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
