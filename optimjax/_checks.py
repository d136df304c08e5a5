"""Argument validation shared by every optimizer: errors name the function, the argument, its value and the range.

Checks run at construction on Python numbers and concrete arrays. Traced values (an `optax.inject_hyperparams`
optimizer rebuilt inside `jit`) cannot be inspected and are let through; they were checked when first given.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def concrete_value(value: Any) -> float | None:
    """`value` as a float, or None when it cannot be inspected (a tracer, a schedule, None)."""
    if value is None or callable(value) or isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value)
    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"expected a real scalar, got {value!r}")
    return float(array.reshape(()))


def check_range(
    where: str, name: str, value: Any, low: float = 0.0, high: float = math.inf, high_open: bool = True
) -> None:
    """Raise ValueError unless `low <= value < high` (or `<= high` when `high_open` is False)."""
    try:
        x = concrete_value(value)
    except TypeError as err:
        raise ValueError(f"{where}: {name} must be a real number, got {value!r}") from err
    if x is None:
        return
    ok = low <= x and (x < high if high_open else x <= high)
    if not ok:
        right = ")" if high_open else "]"
        raise ValueError(f"{where}: {name} must be in [{low:g}, {high:g}{right}, got {value!r}")


def check_beta(where: str, name: str, value: Any) -> None:
    """A decay rate of an exponential moving average: in [0, 1)."""
    check_range(where, name, value, 0.0, 1.0)


def check_learning_rate(where: str, value: Any) -> None:
    """A learning rate: a non-negative number, or a schedule (a callable of the step count)."""
    if value is None:
        raise ValueError(f"{where}: learning_rate must be a non-negative number or a schedule, got None")
    check_range(where, "learning_rate", value)


def is_zero(value: Any) -> bool:
    """True for a Python number equal to 0: the transform it controls can be left out of the chain.

    Arrays (e.g. hyperparameters injected by `optax.inject_hyperparams`) are never "zero" here, so the
    structure of the chain does not depend on a value that may change between steps.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def check_int(where: str, name: str, value: Any, low: int = 0) -> None:
    """Raise ValueError unless `value` is a Python integer (not a bool) >= `low`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}: {name} must be an integer >= {low}, got {value!r}")


def check_choice(where: str, name: str, value: Any, choices: tuple) -> None:
    """Raise ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
