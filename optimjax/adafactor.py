"""Adafactor as torch.optim.Adafactor implements it: `scale_by_adafactor`, `adafactor`."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimjax._checks import check_learning_rate, check_range
from optimjax._tree import cast_like, check_tree, lerp, like, next_count, placed_like, real_leaves, scalar_dtype
from optimjax.learning_rate import maximizing


class ScaleByAdafactorState(NamedTuple):
    """State of `scale_by_adafactor` (torch's `step`, `row_var`, `col_var`, `variance`).

    Each of the three trees is shaped like the params' tree; a leaf that does not use a slot holds a 0-d zero
    there (torch leaves the key out).

    Attributes:
      count: int32 number of updates so far, t.
      row_var: for a leaf with >= 2 dims of shape (..., m, n), the row factor R of shape (..., m, 1).
      col_var: for such a leaf, the column factor C of shape (..., 1, n).
      variance: for a leaf with < 2 dims, the unfactored second moment v, shaped like the leaf.
    """

    count: jax.Array
    row_var: Any
    col_var: Any
    variance: Any


def is_factored(x: Any) -> bool:
    """torch factors every tensor with >= 2 dims, over its last two."""
    return jnp.ndim(x) >= 2


def scale_by_adafactor(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adafactor's update: Shazeer & Stern (2018), "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost", ICML, in the form of torch.optim.Adafactor (without momentum). At step t, for a leaf theta with
    gradient g:

        rho_t = min(lr_t, 1 / sqrt(t))                    relative step size
        w_t = t ** beta2_decay                            (= 1 - beta2_t; 1 at t = 1)
        alpha_t = max(eps2, RMS(theta_{t-1})) * rho_t     RMS(x) = ||x||_2 / sqrt(numel(x))
        for >= 2 dims (..., m, n), factored over the last two:
          R_t = lerp(R_{t-1}, ||g||_row**2 / n, w_t),  C_t = lerp(C_{t-1}, ||g||_col**2 / m, w_t)
          V_t = R_t C_t / max(mean_rows(R_t), eps1)       (outer product, per leading index)
        for 0 or 1 dims:  V_t = lerp(V_{t-1}, g**2, w_t)
        U_t = g / sqrt(max(V_t, eps1**2))
        theta_t = theta_{t-1} * (1 - lr_t * weight_decay) - alpha_t / max(1, RMS(U_t) / d) * U_t

    eps1 = None is the machine epsilon of the param's dtype (as in torch). The returned update is
    theta_t - theta_{t-1}, so it includes the decoupled weight decay and the step size: nothing scales it
    afterwards, and `params` are required. Same as torch.optim.Adafactor's single-tensor path (torch computes
    the scalars in Python float64, here they are float32 scalars unless jax_enable_x64). optax.adafactor is
    another algorithm (constant decay_rate, factoring only the two largest dims of tensors above a minimum
    size, momentum, clipping and eps placed differently): 7e-3 apart at step 1.

    Sharded leaves (jax's automatic or explicit mode): the row and column sums of g**2, the mean of R and the two
    RMS norms reduce across shards, so a step all-reduces, per (m, n) matrix split into D_rows x D_cols blocks,
    m / D_rows + n / D_cols numbers and three scalars per device; the state is sharded like the param on the
    dims it keeps. The sums run in another order than on one device (float32 rounding apart).

    Complex parameters raise TypeError naming the leaf, as torch.optim.Adafactor raises (a row norm would mix
    the real and imaginary parts).
    dtypes follow `optimjax._tree`'s policy: state dtype fixed at init, arithmetic in the promotion of the
    dtypes read, updates in the gradients' dtype; integer and bool leaves raise TypeError naming the leaf.

    Args:
      learning_rate: lr >= 0 (the cap of the relative step size) or a schedule of the step count.
      beta2_decay: <= 0, the exponent of the second-moment rate w_t = t ** beta2_decay.
      eps: (eps1, eps2): eps1 >= 0 (or None) floors the factored denominator and the variance (squared);
        eps2 >= 0 floors the parameters' RMS in the step size.
      d: >= 1, the clipping threshold on RMS(U_t).
      weight_decay: >= 0, decoupled: theta is multiplied by 1 - lr * weight_decay.
    """
    where = "scale_by_adafactor"
    check_learning_rate(where, learning_rate)
    check_range(where, "beta2_decay", beta2_decay, -np.inf, 0.0, high_open=False)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"{where}: eps must be a pair (eps1 or None, eps2), got {eps!r}")
    eps1, eps2 = eps
    if eps1 is not None:
        check_range(where, "eps[0]", eps1)
    check_range(where, "eps[1]", eps2)
    check_range(where, "d", d, 1.0)
    check_range(where, "weight_decay", weight_decay)
    lr_at = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        params = real_leaves(where, params, "parameter", "init()")

        def slots(p):  # (row_var, col_var, variance) of one leaf; unused slots are 0-d zeros
            zeros = placed_like(jnp.zeros_like(p), p)

            def none():  # a buffer of its own for each slot, so that a jitted step can donate the state
                return placed_like(jnp.zeros_like(p), p) if p.ndim == 0 else jnp.zeros([], p.dtype)

            if is_factored(p):  # sums of zeros sharded like p: under jit, sharded like p on the dims they keep
                return jnp.sum(zeros, axis=-1, keepdims=True), jnp.sum(zeros, axis=-2, keepdims=True), none()
            return none(), none(), zeros

        out = jax.tree.map(slots, params)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], params, out)  # noqa: E731
        return ScaleByAdafactorState(count=jnp.zeros([], jnp.int32), row_var=pick(0), col_var=pick(1),
                                     variance=pick(2))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{where}: update() needs `params` (tx.update(grads, state, params)).")
        updates = real_leaves(where, updates)
        params = real_leaves(where, params, "parameter")
        check_tree(where, updates, params, "the params")
        lr = jnp.asarray(lr_at(state.count), scalar_dtype())
        count, t = next_count(state.count)
        rho = jnp.minimum(lr, 1 / jnp.sqrt(t))
        w = jnp.exp(beta2_decay * jnp.log(t))  # t ** beta2_decay
        keep = 1 - lr * weight_decay

        def rms(x):  # ||x||_2 / sqrt(numel), accumulated in float32 at least
            x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            return jnp.sqrt(jnp.sum(jnp.square(x))) / np.sqrt(max(x.size, 1))

        def step(g, p, r, c, v):  # in the promotion of the dtypes read; eps1 from the param's dtype, as torch
            e1 = float(jnp.finfo(p.dtype).eps) if eps1 is None else eps1
            dtype = functools.reduce(jnp.promote_types, [x.dtype for x in (g, p, r, c, v)])
            stored = r.dtype, c.dtype, v.dtype
            g, p, r, c, v = (x.astype(dtype) for x in (g, p, r, c, v))
            alpha = jnp.maximum(eps2, rms(p)) * rho
            if is_factored(g):
                row_mean = jnp.square(jnp.linalg.norm(g, axis=-1, keepdims=True)) / like(g.shape[-1], g)
                col_mean = jnp.square(jnp.linalg.norm(g, axis=-2, keepdims=True)) / like(g.shape[-2], g)
                r = lerp(r, row_mean, w)
                c = lerp(c, col_mean, w)
                estimate = r * c / jnp.maximum(jnp.mean(r, axis=-2, keepdims=True), like(e1, g))
            else:
                v = lerp(v, g * g, w)
                estimate = v
            u = 1 / jnp.sqrt(jnp.maximum(estimate, like(e1 * e1, g))) * g
            denom = jnp.maximum(1, rms(u) / d)
            new = p * like(keep, g) - like(alpha / denom, g) * u
            return new - p, *(x.astype(k) for x, k in zip((r, c, v), stored))

        out = jax.tree.map(step, updates, params, state.row_var, state.col_var, state.variance)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)  # noqa: E731
        state = ScaleByAdafactorState(count=count, row_var=pick(1), col_var=pick(2), variance=pick(3))
        return cast_like(pick(0), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def adafactor(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018) as torch.optim.Adafactor: relative step min(lr, 1 / sqrt(t)) scaled by
    the parameters' RMS, second moment factored over the last two dims of every leaf with >= 2 dims (memory
    m + n instead of m n per matrix), update clipping at RMS d, decoupled weight decay. See `scale_by_adafactor`.

    Same trajectory as `torch.optim.Adafactor(lr, beta2_decay, eps, d, weight_decay, maximize)`; a different
    algorithm from `optax.adafactor` (which follows the paper's and T5's choices, not torch's).

    Examples:
      At step 1 the factored estimate of a rank-one g**2 is exact, so U_1 = sign(g) and the step is
      alpha_1 = max(1e-3, RMS(theta_0)) * min(lr, 1) = 0.1 * 1:

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.adafactor(learning_rate=0.1)
      >>> params = jnp.ones((2, 2))
      >>> updates, state = tx.update(jnp.array([[1.0, -2.0], [2.0, -4.0]]), tx.init(params), params)
      >>> print(optax.apply_updates(params, updates))
      [[0.9 1.1]
       [0.9 1.1]]
    """
    return optax.chain(*maximizing("adafactor", maximize), scale_by_adafactor(learning_rate, beta2_decay, eps, d,
                                                                     weight_decay))
