"""NAdam with Dozat's momentum schedule: `scale_by_nadam`, `nadam`, `nadamw`."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range
from optimjax._checks import check_dtype, named_optimizer
from optimjax._kernels import NADAM, Kernel, fused_kernel
from optimjax._tree import bias_correction, cast_like, check_tree, float_leaves, leafwise, like, moments, next_count
from optimjax._tree import lerp_end_form, power, scalar_dtype, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class ScaleByNadamState(NamedTuple):
    """State of `scale_by_nadam`.

    Attributes:
      count: int32 number of updates so far, t.
      mu_product: prod_{i<=t} mu_i, the running product of the scheduled momenta (a scalar, as torch keeps it).
      mu: first moment m (EMA of g with rate b1), in `mu_dtype` or the params' dtype.
      nu: second moment v (EMA of g**2), in `nu_dtype` or the params' dtype.
    """

    count: jax.Array
    mu_product: jax.Array
    mu: Any
    nu: Any


def momentum_schedule(b1: Any, momentum_decay: Any, t: Any) -> Any:
    """Dozat's momentum schedule, mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)).

    mu_t rises from about b1 / 2 towards b1; with momentum_decay = 0 it stays at b1 / 2 for every t.

    Examples:
      >>> import optimjax
      >>> print(f"{float(optimjax.momentum_schedule(0.9, 4e-3, 1)):.5f}")  # 0.9 * (1 - 0.5 * 0.96 ** 0.004)
      0.45007
      >>> print(f"{float(optimjax.momentum_schedule(0.9, 4e-3, 10_000)):.5f}")
      0.81209
      >>> print(f"{float(optimjax.momentum_schedule(0.9, 0.0, 10_000)):.5f}")  # b1 / 2 at every step
      0.45000
    """
    return b1 * (1 - 0.5 * power(0.96, t * momentum_decay))


def nadam_scalars(
    b1: float, b2: float, momentum_decay: float, t: jax.Array, mu_product: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """NAdam's per-step scalars at step t, given P_{t-1}: P_t, the gradient's and the momentum's coefficients
    (1 - mu_t) / (1 - P_t) and mu_{t+1} / (1 - P_t mu_{t+1}), and 1 - b2**t (computed once per step, shared by
    `scale_by_nadam` and the fused kernel of `optimjax.fused`)."""
    mu_t = momentum_schedule(b1, momentum_decay, t)
    mu_next = momentum_schedule(b1, momentum_decay, t + 1)
    mu_product = mu_product * mu_t
    grad_coef = (1 - mu_t) / (1 - mu_product)
    momentum_coef = mu_next / (1 - mu_product * mu_next)
    return mu_product, grad_coef, momentum_coef, bias_correction(b2, t)


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """NAdam's direction: Dozat (2016), "Incorporating Nesterov Momentum into Adam", ICLR workshop, with the
    momentum schedule mu_t of Dozat's paper, as torch.optim.NAdam and Keras' Nadam implement it:

        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay)),   P_t = mu_1 * ... * mu_t
        m_t = b1 * m_{t-1} + (1 - b1) * g_t,   v_t = b2 * v_{t-1} + (1 - b2) * g_t**2
        denom_t = sqrt(v_t / (1 - b2**t)) + eps
        d_t = (1 - mu_t) / (1 - P_t) * g_t / denom_t + mu_{t+1} / (1 - P_t * mu_{t+1}) * m_t / denom_t

    The first term is the bias-corrected gradient, the second the momentum looked ahead one step (Nesterov)
    with the next step's mu. The EMA of m uses b1 itself; the schedule only weights the two terms.

    With momentum_decay = 0 the schedule is constant, mu_t = b1 / 2 (not b1: that is torch's formula, kept for
    parity), P_t = (b1 / 2) ** t, and this is Dozat's constant-momentum NAdam with momentum b1 / 2 in the
    look-ahead. `optax.nadam` uses the constant b1 there instead and has no schedule, so its trajectory differs.
    P_t is a scalar in the state, accumulated in float32 (float64 with jax_enable_x64), like torch's
    `mu_product` tensor.

    Complex parameters, as in torch: the real and imaginary parts are separate parameters (m and v stay
    complex; v's real part is the EMA of re(g)**2, its imaginary part that of im(g)**2). dtypes follow
    `optimjax._tree`'s policy (state dtype fixed at init, arithmetic in the promotion of gradient and state
    dtypes, updates in the gradients' dtype).

    Args:
      b1: decay rate of the first moment m, in [0, 1).
      b2: decay rate of the second moment v, in [0, 1).
      eps: added to the denominator outside the square root, >= 0.
      momentum_decay: psi >= 0 in Dozat's schedule (torch's default 4e-3).
      mu_dtype: dtype to store m in (e.g. jnp.bfloat16); None keeps each param's dtype.
      nu_dtype: dtype to store v in; None keeps each param's dtype. The update itself is computed in the
        promotion of the gradient's and the state's dtypes and returned in the gradients' dtype.
    """
    where = "scale_by_nadam"
    check_beta(where, "b1", b1)
    check_beta(where, "b2", b2)
    check_range(where, "eps", eps)
    check_range(where, "momentum_decay", momentum_decay)
    check_dtype(where, "mu_dtype", mu_dtype)
    check_dtype(where, "nu_dtype", nu_dtype)

    def init_fn(params):
        params = float_leaves(where, params, "parameter", "init()")
        return ScaleByNadamState(
            count=jnp.zeros([], jnp.int32),
            mu_product=jnp.ones([], scalar_dtype()),
            mu=zeros_like(params, mu_dtype),
            nu=zeros_like(params, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        updates = float_leaves(where, updates)
        check_tree(where, updates, state.mu)
        count, t = next_count(state.count)
        mu_product, grad_coef, momentum_coef, bc2 = nadam_scalars(b1, b2, momentum_decay, t, state.mu_product)
        mu, nu = moments(updates, state.mu, state.nu, b1, b2)

        def direction(g, m, v):  # one division per element (torch's two addcdiv divide twice)
            denom = jnp.sqrt(v / like(bc2, v)) + like(eps, v)
            return (like(grad_coef, g) * g + like(momentum_coef, m) * m) / denom

        directions = leafwise(direction, updates, mu, nu)
        state = ScaleByNadamState(
            count=count,
            mu_product=mu_product.astype(state.mu_product.dtype),
            mu=cast_like(mu, state.mu),
            nu=cast_like(nu, state.nu),
        )
        return cast_like(directions, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _nadam_kernel(name: str, coupled: bool, learning_rate, b1, b2, eps, momentum_decay, weight_decay, mask=None,
                  maximize=False, **_) -> Kernel | str:
    """The one-pass kernel of `nadam` (coupled decay) or `nadamw` (decoupled): m, v and `nadam_scalars` per step.
    Called with the alias's arguments each time it is described, never at import (so a mutation run can reach it)."""
    if mask is not None:
        return f"{name}(mask=...): the kernel decays every leaf"

    def coefficients(state):  # fused_step.cc: w1 = 1 - b1, b2, 1 - b2, the two NAdam terms, 1 - b2**t, eps
        count, t = next_count(state.count)
        mu_product, grad_coef, momentum_coef, bc2 = nadam_scalars(b1, b2, momentum_decay, t, state.mu_product)
        fields = {"count": count, "mu_product": mu_product.astype(state.mu_product.dtype)}
        return [1 - b1, b2, 1 - b2, grad_coef, momentum_coef, bc2, eps], fields

    return Kernel(name, NADAM, ScaleByNadamState, ("mu", "nu"), coefficients, learning_rate, weight_decay,
                  coupled, (lerp_end_form(b1), False), maximize)


@fused_kernel(functools.partial(_nadam_kernel, "nadam", True))
@named_optimizer
def nadam(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    weight_decay: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """NAdam (Dozat, 2016) with the momentum schedule and optional coupled L2 weight decay.

        g_t <- g_t + weight_decay * theta_{t-1},   theta_t = theta_{t-1} - lr_t * d_t,   d_t from `scale_by_nadam`

    Same trajectory as `torch.optim.NAdam(lr, betas=(b1, b2), eps, weight_decay, momentum_decay)`; differs from
    `optax.nadam` (constant momentum b1). Defaults are torch's (lr = 2e-3). `maximize=True` negates the gradient
    before anything else, weight decay included (torch's `maximize`).
    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex).
    """
    check_learning_rate("nadam", learning_rate)
    check_range("nadam", "weight_decay", weight_decay)
    return optax.chain(
        *maximizing("nadam", maximize),
        add_decayed_weights(weight_decay),
        scale_by_nadam(b1, b2, eps, momentum_decay, mu_dtype, nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@fused_kernel(functools.partial(_nadam_kernel, "nadamw", False))
@named_optimizer
def nadamw(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: Any | Callable[[Any], Any] | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """NAdamW: NAdam with decoupled weight decay (Loshchilov & Hutter, 2019).

        theta_t = theta_{t-1} - lr_t * (d_t + weight_decay * theta_{t-1}),   d_t from `scale_by_nadam`

    Same trajectory as `torch.optim.NAdam(..., weight_decay=weight_decay, decoupled_weight_decay=True)`.
    Default weight_decay 1e-2, as in `adamw`. `mask` selects the leaves that decay. `maximize=True` negates the
    gradient first (torch's `maximize`).
    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex).
    """
    check_learning_rate("nadamw", learning_rate)
    return optax.chain(
        *maximizing("nadamw", maximize),
        scale_by_nadam(b1, b2, eps, momentum_decay, mu_dtype, nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
