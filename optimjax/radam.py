"""RAdam, Adam with the variance of its adaptive learning rate rectified: `scale_by_radam`, `radam`."""

from __future__ import annotations

import math

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range, concrete_value
from optimjax._kernels import RADAM, Kernel, fused_kernel
from optimjax._tree import bias_correction, cast_like, check_tree, float_leaves, leafwise, like, moments, next_count
from optimjax._tree import lerp_end_form, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class ScaleByRadamState(NamedTuple):
    """State of `scale_by_radam` (torch's `exp_avg`, `exp_avg_sq` and `step`).

    Attributes:
      count: int32 number of updates so far, t.
      mu: first moment m (EMA of g), in `mu_dtype` or the params' dtype.
      nu: second moment v (EMA of g**2), in `nu_dtype` or the params' dtype.
    """

    count: jax.Array
    mu: Any
    nu: Any


NEVER = 2**31  # an int32 step count never reaches it


def rectification_start(b2: float, limit: int = 100_000) -> int | None:
    """The first step t at which rho_t > 5 (rho_t increases with t), computed in Python float64 as torch does;
    NEVER when rho_inf = 2 / (1 - b2) - 1 <= 5 (b2 <= 2/3); None when b2 is so close to 2/3 that it is not
    found within `limit` steps (then the comparison is made at every step, in the scalar dtype)."""
    rho_inf = 2 / (1 - b2) - 1
    if rho_inf <= 5:
        return NEVER
    for t in range(1, limit):
        if rho_inf - 2 * t * b2**t / (1 - b2**t) > 5:
            return t
    return None


def excess_ratio(y: jax.Array) -> jax.Array:
    """1 - y / (e**y - 1) = (e**y - 1 - y) / (e**y - 1) for y >= 0, accurate to a few ulp (a series below 0.5,
    where the subtraction would cancel)."""
    y = jnp.minimum(y, 100.0)  # the ratio is 1 to every precision there; avoids inf / inf
    small = jnp.minimum(y, 0.5)
    term, series = small * small / 2, jnp.zeros_like(small)
    for k in range(3, 14):  # e**y - 1 - y = sum_{k>=2} y**k / k!; the remainder is < 1e-14 relative at y = 0.5
        series, term = series + term, term * small / k
    return jnp.where(y < 0.5, series / jnp.expm1(small), 1 - y / jnp.expm1(y))


def radam_scalars(b2: Any, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RAdam's per-step scalars at step t: rho_t, sqrt(1 - b2**t) and the rectification r_t (meaningful where
    rho_t > 5).

    rho_t = rho_inf - 2 t b2**t / (1 - b2**t) is a small difference of two numbers close to 2 / (1 - b2) while
    t << 1 / (1 - b2), which float32 would compute with an error of 1e-4 at t = 6 (b2 = 0.999); torch computes it
    in Python float64. With L = -log(b2) and y = t L it is rewritten without cancellation:

        rho_t = (2 / (1 - b2) - 1 - 2 / L) + (2 / L) * (1 - y / (e**y - 1))

    whose constant is computed in float64 at construction for a numeric b2."""
    if isinstance(b2, (int, float)):
        if b2 == 0:
            return jnp.ones_like(t), jnp.ones_like(t), jnp.zeros_like(t)
        log_b2 = -math.log(b2)
        rho_inf = 2 / (1 - b2) - 1
        offset, scale = rho_inf - 2 / log_b2, 2 / log_b2
        rect_const = rho_inf / ((rho_inf - 4) * (rho_inf - 2)) if rho_inf not in (2, 4) else math.inf
    else:
        b2 = jnp.asarray(b2, t.dtype)
        log_b2 = -jnp.log(b2)
        rho_inf = 2 / (1 - b2) - 1
        offset, scale = rho_inf - 2 / log_b2, 2 / log_b2
        rect_const = rho_inf / ((rho_inf - 4) * (rho_inf - 2))
    rho_t = offset + scale * excess_ratio(t * log_b2)
    bc2 = -jnp.expm1(-t * log_b2)
    rect = jnp.sqrt(jnp.maximum((rho_t - 4) * (rho_t - 2) * rect_const / rho_t, 0))
    return rho_t, jnp.sqrt(bc2), rect


def radam_step_scalars(b1: Any, b2: Any, start: int | None, count: jax.Array, t: jax.Array):
    """RAdam's scalars at step t (shared by `scale_by_radam` and the fused kernel of `optimjax.fused`): 1 - b1**t,
    sqrt(1 - b2**t), r_t and whether the step is rectified (rho_t > 5), decided from `start`, the
    `rectification_start` of b2, or in the scalar dtype when that is None (b2 traced or too close to 2/3)."""
    rho_t, bc2_sqrt, rect = radam_scalars(b2, t)
    if start is None:
        rectified = rho_t > 5
    else:
        rectified = count >= start if start < NEVER else jnp.asarray(False)
    return bias_correction(b1, t), bc2_sqrt, rect, rectified


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """RAdam's direction: Liu, Jiang, He, Chen, Liu, Gao & Han (2020), "On the Variance of the Adaptive Learning
    Rate and Beyond", ICLR.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t               (torch: m.lerp_(g, 1 - b1))
        v_t = b2 * v_{t-1} + (1 - b2) * g_t**2
        rho_inf = 2 / (1 - b2) - 1,   rho_t = rho_inf - 2 t b2**t / (1 - b2**t)
        r_t = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
        d_t = m_t / (1 - b1**t) * sqrt(1 - b2**t) / (sqrt(v_t) + eps) * r_t    if rho_t > 5
        d_t = m_t / (1 - b1**t)                                                otherwise (SGD with momentum)

    Same as torch.optim.RAdam's single-tensor path: the strict `rho_t > 5` (decided in Python float64 at
    construction for a numeric b2, so float32 rounding never moves the switch) and eps added to the raw sqrt(v_t).
    optax.scale_by_radam differs on both: it switches at rho_t >= 5 and adds eps to the bias-corrected
    sqrt(v_t / (1 - b2**t)) (6e-5 apart over 100 steps with the defaults, 2e-3 with eps = 1e-3).

    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex).
    dtypes follow `optimjax._tree`'s policy: state dtype fixed at init, arithmetic in the promotion of the
    dtypes read, updates in the gradients' dtype; integer and bool leaves raise TypeError naming the leaf.

    Args:
      b1: decay rate of the first moment m, in [0, 1).
      b2: decay rate of the second moment v, in [0, 1); with b2 <= 2/3, rho_t never exceeds 5 and RAdam is SGD
        with bias-corrected momentum.
      eps: added to sqrt(v_t) in the denominator, >= 0.
      mu_dtype: dtype to store m in (e.g. jnp.bfloat16); None keeps each param's dtype.
      nu_dtype: dtype to store v in; None keeps each param's dtype.
    """
    where = "scale_by_radam"
    check_beta(where, "b1", b1)
    check_beta(where, "b2", b2)
    check_range(where, "eps", eps)
    b2_value = concrete_value(b2)
    start = rectification_start(b2_value) if b2_value is not None else None

    def init_fn(params):
        params = float_leaves(where, params, "parameter", "init()")
        return ScaleByRadamState(count=jnp.zeros([], jnp.int32), mu=zeros_like(params, mu_dtype),
                                 nu=zeros_like(params, nu_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates = float_leaves(where, updates)
        check_tree(where, updates, state.mu)
        count, t = next_count(state.count)
        bc1, bc2_sqrt, rect, rectified = radam_step_scalars(b1, b2, start, count, t)
        mu, nu = moments(updates, state.mu, state.nu, b1, b2)

        def direction(m, v):
            m_hat = m / like(bc1, m)
            adaptive = like(bc2_sqrt, v) / (jnp.sqrt(v) + like(eps, v))
            return jnp.where(rectified, m_hat * adaptive * like(rect, m), m_hat)

        directions = leafwise(direction, mu, nu)
        state = ScaleByRadamState(count=count, mu=cast_like(mu, state.mu), nu=cast_like(nu, state.nu))
        return cast_like(directions, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _radam_kernel(learning_rate, b1, b2, eps, weight_decay, decoupled_weight_decay, maximize, **_) -> Kernel | str:
    """The one-pass kernel of `radam`: m, v and `radam_step_scalars` per step."""
    b2_value = concrete_value(b2)
    start = rectification_start(b2_value) if b2_value is not None else None

    def coefficients(state):  # fused_step.cc: w1 = 1 - b1, b2, 1 - b2, bc1, sqrt(1 - b2**t), eps, r_t, rectified
        count, t = next_count(state.count)
        bc1, bc2_sqrt, rect, rectified = radam_step_scalars(b1, b2, start, count, t)
        return [1 - b1, b2, 1 - b2, bc1, bc2_sqrt, eps, rect, rectified], {"count": count}

    return Kernel("radam", RADAM, ScaleByRadamState, ("mu", "nu"), coefficients, learning_rate, weight_decay,
                  not decoupled_weight_decay, (lerp_end_form(b1), False), maximize)


@fused_kernel(_radam_kernel)
def radam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """RAdam (Liu et al., 2020) with torch's weight decay, coupled (L2) or decoupled (AdamW-style).

        g_t <- -g_t                                           (maximize)
        g_t <- g_t + weight_decay * theta_{t-1}               (coupled, the default)
        theta_t = theta_{t-1} - lr_t * d_t                    d_t from `scale_by_radam`
        theta_t = theta_{t-1} - lr_t * (d_t + weight_decay * theta_{t-1})   (decoupled_weight_decay=True)

    Same trajectory as `torch.optim.RAdam(lr, betas=(b1, b2), eps, weight_decay, decoupled_weight_decay,
    maximize)` (for the decoupled decay torch multiplies theta by (1 - lr * weight_decay) first: the same update,
    rounded differently). `optax.radam` differs in the threshold and eps placement (see `scale_by_radam`) and has
    no weight decay.

    Examples:
      The first five steps (rho_t <= 5) are bias-corrected momentum: theta_1 = theta_0 - lr * g_1.

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.radam(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = tx.update(jnp.array([0.5, 3.0]), tx.init(params), params)
      >>> print(optax.apply_updates(params, updates))
      [ 0.95 -2.3 ]
    """
    check_learning_rate("radam", learning_rate)
    check_range("radam", "weight_decay", weight_decay)
    if not isinstance(decoupled_weight_decay, bool):
        raise ValueError(f"radam: decoupled_weight_decay must be a bool, got {decoupled_weight_decay!r}")
    decay = add_decayed_weights(weight_decay)
    return optax.chain(
        *maximizing("radam", maximize),
        *([] if decoupled_weight_decay else [decay]),
        scale_by_radam(b1, b2, eps, mu_dtype, nu_dtype),
        *([decay] if decoupled_weight_decay else []),
        scale_by_learning_rate(learning_rate),
    )
