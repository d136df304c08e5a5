"""Argument validation shared by every optimizer: errors name the function, the argument, its value and the range.

Checks run at construction. A hyperparameter is a Python number or a 0-d array of any floating (or integer) dtype;
anything else of the wrong type raises TypeError, an array that is not 0-d or a value out of range ValueError.
Traced values (an `optax.inject_hyperparams` optimizer rebuilt inside `jit`) have their shape and dtype checked;
their value cannot be inspected and was checked when first given.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimjax._tree import TreeMismatchError


#: The arguments that may also be a schedule (a callable of the int32 step count).
SCHEDULABLE = ("learning_rate", "weight_decay")


def hyperparameter(where: str, name: str, value: Any, schedule: bool = False) -> float | None:
    """`value` (a hyperparameter of `where`) as a float, or None when it cannot be inspected (a schedule, a traced
    array). Raises TypeError unless it is a real number, a 0-d array of a floating or integer dtype (bfloat16 and
    float16 included: `optax.inject_hyperparams` stores hyperparameters in the params' dtype) or, when `schedule`,
    a callable; ValueError for an array that is not 0-d, which would broadcast the parameters to its shape.

    Shapes and dtypes are static, so a traced array (an injected hyperparameter inside `jit`) is checked too; only
    its value, which `check_range` compares with the allowed range, is not.
    """
    kind = "a real number or a schedule (a callable of the step count)" if schedule else "a real number"
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{where}: {name} must be {kind}, got {value!r}")
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        dtype = value.dtype
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(f"{where}: {name} must be {kind} (an array of a floating or integer dtype), got an array "
                            f"of dtype {dtype}: {value!r}")
        if np.ndim(value) != 0:
            raise ValueError(f"{where}: {name} must be a scalar (a 0-d array), got an array of shape "
                             f"{np.shape(value)}: {value!r}")
        return None if isinstance(value, jax.core.Tracer) else float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if callable(value):
        if schedule:
            return None
        raise TypeError(f"{where}: {name} must be a real number, got the callable {value!r} (only "
                        f"{' and '.join(SCHEDULABLE)} may be schedules)")
    raise TypeError(f"{where}: {name} must be {kind}, got {type(value).__name__} {value!r}")


def concrete_value(value: Any) -> float | None:
    """`value` as a float, or None when it cannot be inspected (a tracer, a schedule, None)."""
    if value is None or callable(value) and not isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return None
    return hyperparameter("concrete_value", "value", value)


def check_range(
    where: str, name: str, value: Any, low: float = 0.0, high: float = math.inf, high_open: bool = True
) -> None:
    """Raise ValueError unless `low <= value < high` (or `<= high` when `high_open` is False); TypeError (or
    ValueError for a shape) from `hyperparameter` unless `value` is a real scalar, or a schedule for the arguments
    named in `SCHEDULABLE`."""
    x = hyperparameter(where, name, value, schedule=name in SCHEDULABLE)
    if x is None:
        return
    ok = low <= x and (x < high if high_open else x <= high)
    if not ok:
        right = ")" if high_open else "]"
        hint = ""
        if isinstance(value, (jax.Array, np.ndarray, np.generic)) and jnp.finfo(jnp.float32).bits > _bits(value.dtype):
            hint = (f" ({value.dtype} has too few digits for it; `optax.inject_hyperparams` stores hyperparameters "
                    f"in the params' dtype: pass hyperparam_dtype=jnp.float32 to it)")
        raise ValueError(f"{where}: {name} must be in [{low:g}, {high:g}{right}, got {value!r}{hint}")


def _bits(dtype: Any) -> int:
    return jnp.finfo(dtype).bits if jnp.issubdtype(dtype, jnp.floating) else 64


def check_beta(where: str, name: str, value: Any) -> None:
    """A decay rate of an exponential moving average: in [0, 1)."""
    check_range(where, name, value, 0.0, 1.0)


def check_learning_rate(where: str, value: Any) -> None:
    """A learning rate: a non-negative number, or a schedule (a callable of the step count)."""
    check_range(where, "learning_rate", value)


def check_flag(where: str, name: str, value: Any) -> None:
    """A switch (amsgrad, nesterov, centered): True or False, never a truthy string or number."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")


def check_dtype(where: str, name: str, dtype: Any) -> None:
    """A state dtype (`mu_dtype`, `nu_dtype`): None (the params' dtype) or a floating dtype, checked at
    construction so that a typo fails before `init` and an integer or bool moment is never stored."""
    if dtype is None:
        return
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{where}: {name} must be None or a floating dtype (e.g. jnp.bfloat16, 'float32'), got "
                        f"{dtype!r}") from err
    if not jnp.issubdtype(resolved, jnp.inexact):
        raise ValueError(f"{where}: {name} must be None or a floating dtype (bfloat16, float16, float32, float64; "
                         f"complex for complex params), got {resolved}")


def is_zero(value: Any) -> bool:
    """True for a Python number equal to 0: the transform it controls can be left out of the chain.

    Arrays (e.g. hyperparameters injected by `optax.inject_hyperparams`) are never "zero" here, so the
    structure of the chain does not depend on a value that may change between steps.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


#: The optimizer families whose state holds each of optimjax's state classes, for error messages.
_FAMILIES = {
    "MomentumState": "sgd with momentum, momentum or nesterov (or rmsprop with momentum)",
    "ScaleByAdamState": "adam, adamw or amsgrad",
    "ScaleByNadamState": "nadam or nadamw",
    "ScaleByRmsState": "rmsprop",
    "ScaleByAdagradState": "adagrad",
    "ScaleByAdadeltaState": "adadelta",
}


def _skeleton(state: Any) -> Any:
    """The container types of an optimizer state, down through the plain tuples of `optax.chain` (the arrays and
    the trees of params-shaped leaves left out)."""
    if type(state) is tuple:
        return tuple(_skeleton(s) for s in state)
    return type(state)


def _describe(skeleton: Any) -> str:
    if isinstance(skeleton, tuple):
        return "(" + ", ".join(_describe(s) for s in skeleton) + ")"
    module = skeleton.__module__.split(".")[0]
    return skeleton.__name__ if module == "optimjax" else f"{module}.{skeleton.__name__}"


def _families(skeleton: Any) -> list[str]:
    if isinstance(skeleton, tuple):
        return [f for s in skeleton for f in _families(s)]
    return [_FAMILIES[skeleton.__name__]] if skeleton.__module__.startswith("optimjax") and \
        skeleton.__name__ in _FAMILIES else []


def named_optimizer(factory: Callable[..., optax.GradientTransformation]) -> Callable[..., Any]:
    """Decorator of an optimizer (`adam`, `sgd`, ...): the transformation it builds reports errors in `update`
    under the optimizer's name, the one the user called, not that of a transform inside its chain:

    - a state made by another optimizer (`adam`'s update given `sgd`'s state) raises TypeError naming both, where
      the chain would fail on a missing attribute;
    - gradients whose tree differs from the params or the state raise `TreeMismatchError` (a ValueError) naming
      this optimizer and the first differing key path.

    An optimizer that returns another's (`momentum`, `nesterov` and `amsgrad` return `sgd`'s and `adam`'s) keeps
    that one's name. The state and the signature are those of `factory`'s transformation (`optax.inject_hyperparams` reads the
    signature through `functools.wraps`). The expected state's containers come from `jax.eval_shape(init, grads)`,
    once per gradient tree structure.
    """
    name = factory.__name__

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
        tx = factory(*args, **kwargs)
        if getattr(tx.update, "optimjax_name", None):  # `momentum` returns `sgd(...)`: already named, kept as is
            return tx  # (the same update function: `optimjax.fused` finds its kernel by it)
        expected: dict[Any, Any] = {}

        def expected_skeleton(updates: Any) -> Any:
            treedef = jax.tree.structure(updates)
            if treedef not in expected:
                try:
                    expected[treedef] = _skeleton(jax.eval_shape(tx.init, updates))
                except Exception:  # noqa: BLE001  (init cannot take these gradients: update will say why)
                    expected[treedef] = None
            return expected[treedef]

        def update_fn(updates, state, params=None, **extra_args):
            want, got = expected_skeleton(updates), _skeleton(state)
            if want is not None and got != want:
                families = " or ".join(dict.fromkeys(_families(got)))
                made_by = f"another optimizer ({families})" if families else "another optimizer"
                raise TypeError(
                    f"{name}: update() got a state made by {made_by}: {_describe(got)}, where "
                    f"{name}'s init() makes {_describe(want)}. Pass the state this optimizer's init() made."
                )
            try:
                return optax.with_extra_args_support(tx).update(updates, state, params, **extra_args)
            except TreeMismatchError as err:
                if err.where == name:
                    raise
                raise TreeMismatchError(name, err.detail) from None

        update_fn.optimjax_name = name
        return optax.GradientTransformationExtraArgs(tx.init, update_fn)

    return build


def check_int(where: str, name: str, value: Any, low: int = 0) -> None:
    """Raise ValueError unless `value` is a Python integer (not a bool) >= `low`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}: {name} must be an integer >= {low}, got {value!r}")


def check_choice(where: str, name: str, value: Any, choices: tuple) -> None:
    """Raise ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
