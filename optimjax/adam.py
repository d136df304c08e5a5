"""Adam, AMSGrad and AdamW: `scale_by_adam`, `adam`, `amsgrad`, `adamw`."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range, is_zero
from optimjax._checks import check_dtype, check_flag, named_optimizer
from optimjax._kernels import ADAM, Kernel, fused_kernel
from optimjax._tree import bias_correction, cast_like, check_tree, float_leaves, leafwise, like, moments, next_count
from optimjax._tree import lerp_end_form, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`.

    Attributes:
      count: int32 number of updates so far, t.
      mu: first moment m (EMA of g), in `mu_dtype` or the params' dtype.
      nu: second moment v (EMA of g**2), in `nu_dtype` or the params' dtype.
      nu_max: AMSGrad's running maximum of v (raw, before bias correction), or None without amsgrad.
    """

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def adam_scalars(b1: float, b2: float, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Adam's per-step scalars at step t: `1 / (1 - b1**t)`, `1 - b2**t` and `sqrt(1 - b2**t)`, i.e.
    $1/(1-\beta_1^t)$, $1-\beta_2^t$ and $\sqrt{1-\beta_2^t}$ (computed once per step, shared by `scale_by_adam`
    and the fused kernel of `optimjax.fused`)."""
    bc2 = bias_correction(b2, t)
    return 1 / bias_correction(b1, t), bc2, jnp.sqrt(bc2)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Adam's preconditioned direction: Kingma & Ba (2014), "Adam: A Method for Stochastic Optimization", ICLR 2015.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t               (torch: m.lerp_(g, 1 - b1))
        v_t = b2 * v_{t-1} + (1 - b2) * g_t**2
        vmax_t = max(vmax_{t-1}, v_t)                     (amsgrad only, else vmax_t = v_t)
        d_t = (m_t / (1 - b1**t)) / (sqrt(vmax_t + eps_root') / sqrt(1 - b2**t) + eps)

    with eps_root' = eps_root * (1 - b2**t), i.e. eps_root is added to the bias-corrected v inside the sqrt as in
    optax (0 by default, as in torch). AMSGrad is Reddi, Kale & Kumar (2018), "On the Convergence of Adam and
    Beyond", ICLR: like torch, the running max is taken over the raw v and bias-corrected afterwards (optax takes
    the max of the corrected value, so its AMSGrad differs from torch's).

    The bias corrections are per-step scalars, 1 - b**t = -expm1(t log b), accurate for b close to 1.

    Complex parameters, as in torch: the real and imaginary parts are separate parameters, so m, v and vmax are
    complex and v's real (imaginary) part is the EMA of re(g)**2 (im(g)**2); the max is taken per part. dtypes
    follow the policy of `optimjax._tree`: state in the params' dtype (or mu_dtype / nu_dtype) whatever the
    gradients' dtype, arithmetic in the promotion of gradient and state dtypes, updates in the gradients' dtype.

    Args:
      b1: decay rate of the first moment m, in [0, 1).
      b2: decay rate of the second moment v, in [0, 1).
      eps: added to the denominator outside the square root, >= 0.
      eps_root: added inside the square root, >= 0.
      amsgrad: keep the running maximum of v.
      mu_dtype: dtype to store m in (e.g. jnp.bfloat16); None keeps each param's dtype.
      nu_dtype: dtype to store v in; None keeps each param's dtype. The update itself is computed in the
        promotion of the gradient's and the state's dtypes and returned in the gradients' dtype.
    """
    where = "scale_by_adam"
    check_beta(where, "b1", b1)
    check_beta(where, "b2", b2)
    check_range(where, "eps", eps)
    check_range(where, "eps_root", eps_root)
    check_flag(where, "amsgrad", amsgrad)
    check_dtype(where, "mu_dtype", mu_dtype)
    check_dtype(where, "nu_dtype", nu_dtype)

    def init_fn(params):
        params = float_leaves(where, params, "parameter", "init()")
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=zeros_like(params, mu_dtype),
            nu=zeros_like(params, nu_dtype),
            nu_max=zeros_like(params, nu_dtype) if amsgrad else None,  # its own buffers: a step may donate both
        )

    def update_fn(updates, state, params=None):
        del params
        updates = float_leaves(where, updates)
        check_tree(where, updates, state.mu)
        count, t = next_count(state.count)
        inv_bc1, bc2, bc2_sqrt = adam_scalars(b1, b2, t)
        mu, nu = moments(updates, state.mu, state.nu, b1, b2)
        nu_max = leafwise(jnp.maximum, state.nu_max, nu) if amsgrad else None
        nu_hat = nu_max if amsgrad else nu

        def direction(m, v):
            if not is_zero(eps_root):
                v = v + like(eps_root * bc2, v)
            return like(inv_bc1, m) * m / (jnp.sqrt(v) / like(bc2_sqrt, v) + like(eps, v))

        directions = leafwise(direction, mu, nu_hat)
        state = ScaleByAdamState(
            count=count,
            mu=cast_like(mu, state.mu),
            nu=cast_like(nu, state.nu),
            nu_max=cast_like(nu_max, state.nu_max),
        )
        return cast_like(directions, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _adam_kernel(name: str, coupled: bool, learning_rate, b1, b2, eps, eps_root, weight_decay, amsgrad, mask=None,
                 maximize=False, **_) -> Kernel | str:
    """The one-pass kernel of `adam` (coupled decay) or `adamw` (decoupled): m, v and `adam_scalars` per step.
    Called with the alias's arguments each time it is described, never at import (so a mutation run can reach it)."""
    if amsgrad:
        return f"{name}(amsgrad=True): the kernel keeps no running maximum of v"
    if not is_zero(eps_root):
        return f"{name}(eps_root={eps_root!r}): the kernel has no eps_root"
    if mask is not None:
        return f"{name}(mask=...): the kernel decays every leaf"

    def coefficients(state):  # fused_step.cc: w1 = 1 - b1, b2, 1 - b2, 1 / (1 - b1**t), sqrt(1 - b2**t), -, eps
        count, t = next_count(state.count)
        inv_bc1, _, bc2_sqrt = adam_scalars(b1, b2, t)
        return [1 - b1, b2, 1 - b2, inv_bc1, bc2_sqrt, 0.0, eps], {"count": count}

    return Kernel(name, ADAM, ScaleByAdamState, ("mu", "nu"), coefficients, learning_rate, weight_decay,
                  coupled, (lerp_end_form(b1), False), maximize)


@fused_kernel(functools.partial(_adam_kernel, "adam", True))
@named_optimizer
def adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba, 2014) with optional coupled L2 weight decay and AMSGrad.

        g_t <- g_t + weight_decay * theta_{t-1}
        theta_t = theta_{t-1} - lr_t * d_t,   d_t from `scale_by_adam`

    Same trajectory as `torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay, amsgrad)`; with the defaults, the
    same as `optax.adam` too. For decoupled decay use `adamw`. `maximize=True` ascends, negating the gradient
    before anything else (weight decay included), as torch's `maximize` does.
    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex).
    """
    check_learning_rate("adam", learning_rate)
    check_range("adam", "weight_decay", weight_decay)
    return optax.chain(
        *maximizing("adam", maximize),
        add_decayed_weights(weight_decay),
        scale_by_adam(b1, b2, eps, eps_root, amsgrad, mu_dtype, nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def amsgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """AMSGrad (Reddi et al., 2018): Adam whose denominator uses the running maximum of the raw second moment.

        vmax_t = max(vmax_{t-1}, v_t),   theta_t = theta_{t-1} - lr_t * (m_t / (1 - b1**t)) /
                                                     (sqrt(vmax_t) / sqrt(1 - b2**t) + eps)

    Same trajectory as `torch.optim.Adam(..., amsgrad=True)`; differs from `optax.amsgrad`, which takes the max
    of the bias-corrected v.
    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex).
    """
    return adam(learning_rate, b1, b2, eps, 0.0, weight_decay, True, mu_dtype, nu_dtype, maximize)


@fused_kernel(functools.partial(_adam_kernel, "adamw", False))
@named_optimizer
def adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    mask: Any | Callable[[Any], Any] | None = None,
    amsgrad: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """AdamW: Adam with decoupled weight decay, Loshchilov & Hutter (2019), "Decoupled Weight Decay
    Regularization", ICLR.

        theta_t = theta_{t-1} - lr_t * (d_t + weight_decay * theta_{t-1}),   d_t from `scale_by_adam`

    The decay is not divided by Adam's denominator, so every weight shrinks at the same rate lr * weight_decay.
    Same trajectory as `torch.optim.AdamW(lr, betas, eps, weight_decay, amsgrad)` (torch multiplies theta by
    (1 - lr * weight_decay) first: equal in exact arithmetic) and as `optax.adamw`. The default weight_decay is
    torch's 1e-2 (optax's is 1e-4). `mask` selects the leaves that decay (see `add_decayed_weights`).
    `maximize=True` negates the gradient first (torch's `maximize`); the decay still shrinks the weights.
    Complex parameters: real and imaginary parts are separate parameters, as in torch (state stays complex).

    Examples:
      Adam's first direction is m_1 / sqrt(v_1) = sign(g); the decay adds weight_decay * theta, and both are
      scaled by lr: theta_1 = theta_0 - 0.1 * (1 + 0.5 * theta_0), i.e. 1 -> 0.85 and -2 -> -2.

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.adamw(learning_rate=0.1, weight_decay=0.5)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, state = tx.update(jnp.array([0.5, 0.5]), tx.init(params), params)
      >>> print(optax.apply_updates(params, updates))
      [ 0.85 -2.  ]
    """
    check_learning_rate("adamw", learning_rate)
    return optax.chain(
        *maximizing("adamw", maximize),
        scale_by_adam(b1, b2, eps, eps_root, amsgrad, mu_dtype, nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
