"""Gradient clipping as torch.nn.utils does it: `clip_grad_norm` (clip_grad_norm_) and `clip_grad_value`
(clip_grad_value_), plus `total_grad_norm` to read the norm a chain of transformations last clipped by."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimjax._checks import check_range
from optimjax._tree import like


class ClipGradNormState(NamedTuple):
    """State of `clip_grad_norm`.

    Attributes:
      total_norm: the total norm of the gradients of the last update (what torch's clip_grad_norm_ returns),
        0 before the first update; a scalar in the params' dtype (the widest one when leaves differ).
    """

    total_norm: jax.Array


def _vector_norm(x: jax.Array, p: float) -> jax.Array:
    """torch.linalg.vector_norm(x, p) of a flattened array: max |x| (inf), min |x| (-inf), the number of non-zero
    entries (0), (sum |x| ** p) ** (1 / p) otherwise; 0 for an empty array (inf: 0, -inf: inf, as torch)."""
    a = jnp.abs(jnp.ravel(x))
    if p == math.inf:
        return jnp.max(a, initial=0)
    if p == -math.inf:
        return jnp.min(a, initial=math.inf)
    if p == 0:
        return jnp.sum(a != 0).astype(a.dtype)
    if p == 1:
        return jnp.sum(a)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a))
    return jnp.sum(a ** like(p, a)) ** like(1 / p, a)


def _nonfinite_error(norm_type: float, total: Any) -> RuntimeError:
    return RuntimeError(
        f"clip_grad_norm: the total norm of order {norm_type} of the gradients is {float(total)}, not finite, so "
        "it cannot be clipped (error_if_nonfinite=True). Set error_if_nonfinite=False to scale the gradients by "
        "the non-finite norm anyway, as torch does."
    )


def clip_grad_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_ as a transformation: scale all gradients by one coefficient so that their
    total norm is at most max_norm.

        n_i = ||g_i||_p for each leaf i,   total = ||(n_1, ..., n_L)||_p   (p = inf: max_i n_i)
        coef = min(max_norm / (total + 1e-6), 1),   g_i <- coef * g_i

    Exactly torch's formula: the norm of the per-leaf norms (equal to the norm of all entries for finite p),
    the 1e-6 in the denominator, the clamp to 1, and the multiplication done always (so a total norm equal to
    max_norm still scales by max_norm / (max_norm + 1e-6), and zero gradients stay zero). `optax.clip_by_global_norm`
    differs: 2-norm only, no 1e-6, and gradients are left untouched when the norm is <= max_norm (relative
    differences up to 2e-3 at small norms). norm_type is any p > 0 or inf as for torch (also -inf and 0, which
    torch accepts: the smallest leaf norm and the number of non-zero leaf norms).

    The total norm of the last update is in the state (`ClipGradNormState.total_norm`); `total_grad_norm(state)`
    finds it in the state of a chain such as `optax.chain(clip_grad_norm(1.0), optimjax.adamw(1e-3))`.

    Non-finite gradients: with error_if_nonfinite=False, as in torch, an inf or NaN total norm gives coef = 0
    or NaN and the gradients become 0 / NaN (inf * 0 = NaN). With error_if_nonfinite=True a non-finite total norm
    raises RuntimeError: immediately when `update` runs eagerly; inside `jit` (where the value is not known while
    tracing) through `jax.debug.callback`, so that calling the compiled step raises `jax.errors.JaxRuntimeError`
    carrying the same message, and no updates are returned. The check costs one host callback per step, only
    when error_if_nonfinite=True.

    Args:
      max_norm: the largest total norm left unscaled, >= 0.
      norm_type: p of the p-norms (a float, or inf / "inf").
      error_if_nonfinite: raise on an inf or NaN total norm instead of scaling by it.

    Examples:
      Gradients (3, 4) have norm 5; clipped to 1 they become (3, 4) / (5 + 1e-6):

      >>> import jax.numpy as jnp, optimjax
      >>> tx = optimjax.clip_grad_norm(1.0)
      >>> grads = {"w": jnp.array([3.0, 4.0])}
      >>> clipped, state = tx.update(grads, tx.init(grads))
      >>> print(clipped["w"].round(6), float(state.total_norm))
      [0.6 0.8] 5.0
    """
    where = "clip_grad_norm"
    check_range(where, "max_norm", max_norm)
    try:
        p = float(norm_type)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: norm_type must be a number or 'inf', got {norm_type!r}") from err
    if math.isnan(p):
        raise ValueError(f"{where}: norm_type must be a number or inf, got {norm_type!r}")

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        if not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.float32
        return ClipGradNormState(total_norm=jnp.zeros([], dtype))

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        norms = [_vector_norm(g, p) for g in leaves]
        total = _vector_norm(jnp.stack([n.astype(jnp.result_type(*norms)) for n in norms]), p)
        if error_if_nonfinite:
            if isinstance(total, jax.core.Tracer):
                def check(value):
                    if not np.isfinite(value):
                        raise _nonfinite_error(p, value)

                jax.debug.callback(check, total)
            elif not bool(jnp.isfinite(total)):
                raise _nonfinite_error(p, total)
        coef = jnp.minimum(like(max_norm, total) / (total + like(1e-6, total)), like(1.0, total))
        updates = jax.tree.map(lambda g: g * coef.astype(g.dtype), updates)
        return updates, ClipGradNormState(total_norm=total.astype(state.total_norm.dtype))

    return optax.GradientTransformation(init_fn, update_fn)


def total_grad_norm(state: Any) -> jax.Array:
    """The total gradient norm of the last update, read from the state of a chain (or any nested optax state:
    `inject_hyperparams`, `MultiSteps`, `masked`, ...) that contains one `clip_grad_norm`; what torch's
    clip_grad_norm_ returns, for logging.

    Raises ValueError if the state holds no `ClipGradNormState`, or several (then read the one you mean from
    the chain's tuple).
    """
    found = [
        leaf.total_norm
        for leaf in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ClipGradNormState))
        if isinstance(leaf, ClipGradNormState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"total_grad_norm: the state must contain exactly one ClipGradNormState (from clip_grad_norm), "
            f"found {len(found)}"
        )
    return found[0]


def clip_grad_value(clip_value: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_value_ as a transformation: clamp every gradient entry to [-clip_value,
    clip_value] (NaN stays NaN). Same as `optax.clip(clip_value)`.

    Args:
      clip_value: the bound, >= 0 (cast to each gradient's dtype, as torch casts the Python number).
    """
    check_range("clip_grad_value", "clip_value", clip_value)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: jnp.clip(g, like(-clip_value, g), like(clip_value, g)), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
