"""RMSprop, plain and centered: `scale_by_rms`, `rmsprop`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range, is_zero
from optimjax._checks import check_flag, named_optimizer
from optimjax._kernels import RMS, Kernel, fused_kernel
from optimjax._tree import check_tree, ema_of_square, lerp, like, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.sgd import scale_by_momentum
from optimjax.weight_decay import add_decayed_weights


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`.

    Attributes:
      nu: EMA of g**2, shaped and typed like the params.
      mu_grad: EMA of g (the centered variant only), else None.
    """

    nu: Any
    mu_grad: Any


def scale_by_rms(decay: float = 0.99, eps: float = 1e-8, centered: bool = False) -> optax.GradientTransformation:
    """Divide the gradient by a running root mean square: RMSprop, Hinton (2012), Neural Networks for Machine
    Learning, lecture 6e; the centered variant is Graves (2013), "Generating Sequences With Recurrent Neural
    Networks", eq. 38.

        v_t = decay * v_{t-1} + (1 - decay) * g_t**2
        gbar_t = decay * gbar_{t-1} + (1 - decay) * g_t          (centered only)
        d_t = g_t / (sqrt(v_t) + eps)   or, centered,   g_t / (sqrt(v_t - gbar_t**2) + eps)

    Each parameter gets its own step size 1 / RMS(g): large for rarely or weakly moving coordinates, small for
    steep ones. No bias correction, so the first steps are large (v_1 = (1 - decay) g_1**2).

    Same as torch.optim.RMSprop (eps outside the sqrt; defaults decay = alpha = 0.99, eps = 1e-8). Differs from
    `optax.scale_by_rms`, whose default puts eps inside the sqrt (and whose default decay is 0.9).

    Examples:
      The first direction is g / sqrt((1 - decay) * g**2) = sign(g) / sqrt(1 - decay): 10 sign(g) for decay 0.99.

      >>> import jax.numpy as jnp, optimjax
      >>> tx = optimjax.scale_by_rms(decay=0.99)
      >>> direction, _ = tx.update(jnp.array([3.0, -0.5]), tx.init(jnp.zeros(2)))
      >>> print(jnp.round(direction, 4))
      [ 10. -10.]
    """
    where = "scale_by_rms"
    check_beta(where, "decay", decay)
    check_range(where, "eps", eps)
    check_flag(where, "centered", centered)

    def init_fn(params):
        return ScaleByRmsState(nu=zeros_like(params), mu_grad=zeros_like(params) if centered else None)

    def update_fn(updates, state, params=None):
        del params
        check_tree(where, updates, state.nu)
        nu = jax.tree.map(lambda g, v: ema_of_square(v, g, decay), updates, state.nu)
        if centered:
            mu_grad = jax.tree.map(lambda g, m: lerp(m, g, 1 - decay), updates, state.mu_grad)
            # v - gbar**2 is inf - inf = NaN once g**2 overflows; keep v = inf there (the update is then 0, as torch's).
            var = jax.tree.map(lambda v, m: jnp.where(jnp.isinf(v), v, v - m * m), nu, mu_grad)
        else:
            mu_grad, var = None, nu
        updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + like(eps, s)), updates, var)
        return updates, ScaleByRmsState(nu=nu, mu_grad=mu_grad)

    return optax.GradientTransformation(init_fn, update_fn)


def _rmsprop_kernel(learning_rate, decay, eps, centered, momentum, weight_decay, maximize=False, **_) -> Kernel | str:
    """The one-pass kernel of plain `rmsprop` (coupled decay): v and its coefficients, constant per step."""
    if centered:
        return "rmsprop(centered=True): the kernel keeps no EMA of g"
    if momentum is not None and not is_zero(momentum):
        return f"rmsprop(momentum={momentum!r}): the kernel keeps no momentum buffer for RMSprop"
    return Kernel("rmsprop", RMS, ScaleByRmsState, ("nu",), lambda state: ([decay, 1 - decay, eps], {}), learning_rate,
                  weight_decay, maximize=maximize)


@fused_kernel(_rmsprop_kernel)
@named_optimizer
def rmsprop(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    decay: float = 0.99,
    eps: float = 1e-8,
    centered: bool = False,
    momentum: float | None = None,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """RMSprop with optional centering, heavy-ball momentum on the scaled gradient and coupled L2 weight decay.

        g_t <- g_t + weight_decay * theta_{t-1}
        b_t = momentum * b_{t-1} + g_t / (sqrt(v_t) + eps)        (b_t = g_t / (sqrt(v_t) + eps) without momentum)
        theta_t = theta_{t-1} - lr_t * b_t

    Same trajectory as `torch.optim.RMSprop(lr, alpha=decay, eps, weight_decay, momentum, centered)`, whose
    momentum buffer also holds the scaled gradient before the learning rate. `optax.rmsprop` differs (eps inside
    the sqrt by default, momentum traced after the learning rate). `maximize=True` negates the gradient before
    anything else, weight decay included (torch's `maximize`).
    """
    check_learning_rate("rmsprop", learning_rate)
    check_range("rmsprop", "weight_decay", weight_decay)
    if momentum is not None:
        check_beta("rmsprop", "momentum", momentum)
    return optax.chain(
        *maximizing("rmsprop", maximize),
        add_decayed_weights(weight_decay),
        scale_by_rms(decay, eps, centered),
        *([] if momentum is None or is_zero(momentum) else [scale_by_momentum(momentum)]),
        scale_by_learning_rate(learning_rate),
    )
