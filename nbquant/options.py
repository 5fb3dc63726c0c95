"""Validated setting values: closed sets of string options (enums) that read their members, values
and aliases alike, and the number checks every settings dataclass uses (one message for each)."""

from __future__ import annotations

import math
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


def check_int(name: str, value: object, minimum: int = 1, error: type[Exception] = ConfigError) -> int:
    """``value`` as an int, or ``error`` naming the setting when it is not an int >= ``minimum``.

    >>> check_int("calib_num", 0)
    Traceback (most recent call last):
    ...
    nbquant.errors.ConfigError: calib_num must be an int >= 1, got 0
    """
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise error(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """:func:`check_int` for sample counts and offsets given with data (raises DataError)."""
    return check_int(name, value, minimum, DataError)


def check_number(name: str, value: object, minimum: float = 0.0) -> float:
    """``value`` as a float, or ConfigError naming the setting when it is not a finite number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """``value`` as a float, or ConfigError naming the setting when it is not a finite number > 0.

    >>> check_positive("scale", 0)
    Traceback (most recent call last):
    ...
    nbquant.errors.ConfigError: scale must be a number > 0, got 0
    """
    try:
        number = check_number(name, value)
    except ConfigError:
        number = 0.0  # reported below, in this function's words
    if number <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return number
