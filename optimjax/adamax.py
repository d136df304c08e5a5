"""Adamax, Adam with the infinity norm: `scale_by_adamax`, `adamax`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range
from optimjax._kernels import ADAMAX, Kernel, fused_kernel
from optimjax._tree import bias_correction, cast_like, check_tree, float_leaves, leafwise, lerp, like, next_count
from optimjax._tree import lerp_end_form, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class ScaleByAdamaxState(NamedTuple):
    """State of `scale_by_adamax` (torch's `exp_avg`, `exp_inf` and `step`).

    Attributes:
      count: int32 number of updates so far, t.
      mu: first moment m (EMA of g), in `mu_dtype` or the params' dtype.
      nu: the exponentially weighted infinity norm u, in the params' dtype.
    """

    count: jax.Array
    mu: Any
    nu: Any


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Adamax's direction: Kingma & Ba (2014), "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t               (torch: m.lerp_(g, 1 - b1))
        u_t = max(b2 * u_{t-1}, |g_t| + eps)
        d_t = m_t / u_t / (1 - b1**t)

    Same as torch.optim.Adamax's single-tensor path (eps is added to |g_t| inside the max, as in torch) and as
    `optax.scale_by_adamax` (measured 2e-7 apart in float32 over 100 steps).

    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex;
    u's real part is the infinity norm of re(g), its imaginary part that of im(g)).
    dtypes follow `optimjax._tree`'s policy: state dtype fixed at init, arithmetic in the promotion of the
    dtypes read, updates in the gradients' dtype; integer and bool leaves raise TypeError naming the leaf.

    Args:
      b1: decay rate of the first moment m, in [0, 1).
      b2: decay rate of the infinity norm u, in [0, 1).
      eps: added to |g_t| before the max, >= 0 (with eps = 0 a gradient that stays 0 gives 0 / 0).
      mu_dtype: dtype to store m in (e.g. jnp.bfloat16); None keeps each param's dtype.
    """
    where = "scale_by_adamax"
    check_beta(where, "b1", b1)
    check_beta(where, "b2", b2)
    check_range(where, "eps", eps)

    def init_fn(params):
        params = float_leaves(where, params, "parameter", "init()")
        return ScaleByAdamaxState(count=jnp.zeros([], jnp.int32), mu=zeros_like(params, mu_dtype),
                                  nu=zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        updates = float_leaves(where, updates)
        check_tree(where, updates, state.mu)
        count, t = next_count(state.count)
        inv_bc1 = 1 / bias_correction(b1, t)
        mu = leafwise(lambda g, m: lerp(m, g, 1 - b1), updates, state.mu)
        nu = leafwise(lambda g, u: jnp.maximum(u * like(b2, u), jnp.abs(g) + like(eps, g)), updates, state.nu)
        directions = leafwise(lambda m, u: m / u * like(inv_bc1, m), mu, nu)
        state = ScaleByAdamaxState(count=count, mu=cast_like(mu, state.mu), nu=cast_like(nu, state.nu))
        return cast_like(directions, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _adamax_kernel(learning_rate, b1, b2, eps, weight_decay, maximize, **_) -> Kernel:
    """The one-pass kernel of `adamax`: m, u and 1 / (1 - b1**t) per step."""

    def coefficients(state):  # fused_step.cc: w1 = 1 - b1, b2, eps, 1 / (1 - b1**t)
        count, t = next_count(state.count)
        return [1 - b1, b2, eps, 1 / bias_correction(b1, t)], {"count": count}

    return Kernel("adamax", ADAMAX, ScaleByAdamaxState, ("mu", "nu"), coefficients, learning_rate, weight_decay,
                  True, (lerp_end_form(b1), False), maximize)


@fused_kernel(_adamax_kernel)
def adamax(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Adamax (Kingma & Ba, 2014) with torch's coupled L2 weight decay.

        g_t <- -g_t                                           (maximize)
        g_t <- g_t + weight_decay * theta_{t-1}
        theta_t = theta_{t-1} - lr_t * d_t                    d_t from `scale_by_adamax`

    Same trajectory as `torch.optim.Adamax(lr, betas=(b1, b2), eps, weight_decay, maximize)`, whose default lr
    2e-3 it keeps; with weight_decay = 0 also as `optax.adamax` (which has no weight decay).

    Examples:
      The first direction is m_1 / u_1 / (1 - b1) = g / (|g| + eps), about sign(g):

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.adamax(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = tx.update(jnp.array([0.5, -3.0]), tx.init(params), params)
      >>> print(optax.apply_updates(params, updates))
      [ 0.9 -1.9]
    """
    check_learning_rate("adamax", learning_rate)
    check_range("adamax", "weight_decay", weight_decay)
    return optax.chain(
        *maximizing("adamax", maximize),
        add_decayed_weights(weight_decay),
        scale_by_adamax(b1, b2, eps, mu_dtype),
        scale_by_learning_rate(learning_rate),
    )
