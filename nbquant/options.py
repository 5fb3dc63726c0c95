"""Closed sets of string options (enums) that read their members, values and aliases alike."""

from __future__ import annotations

import re
from enum import Enum

import numpy as np

from .errors import ConfigError, DataError


class Choice(str, Enum):
    """Base of nbquant's option enums; ``parse`` names the setting and the valid values on error."""

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Other names accepted for a value (e.g. the reference tool's), lower case."""
        return {}

    @classmethod
    def parse(cls, value, where: str | None = None):
        """The member for ``value`` (a member, its value or an alias, any case).

        >>> from nbquant.calibration.config import ActMethod
        >>> ActMethod.parse("IFMR")
        <ActMethod.MSE: 'mse'>
        """
        if isinstance(value, cls):
            return value
        text = str(value).lower()
        try:
            return cls(cls.aliases().get(text, text))
        except ValueError:
            where = where or re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
            raise ConfigError(f"{where} must be one of {', '.join(m.value for m in cls)}, got {value!r}") from None


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise DataError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)
