"""Adadelta: `scale_by_adadelta`, `adadelta`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range
from optimjax._checks import named_optimizer
from optimjax._tree import check_tree, ema_of_square, like, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class ScaleByAdadeltaState(NamedTuple):
    """State of `scale_by_adadelta`.

    Attributes:
      grad_sq_avg: E[g**2], the EMA of squared gradients.
      delta_sq_avg: E[dx**2], the EMA of squared updates.
    """

    grad_sq_avg: Any
    delta_sq_avg: Any


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> optax.GradientTransformation:
    """Adadelta's direction: Zeiler (2012), "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701.

        E[g^2]_t = rho * E[g^2]_{t-1} + (1 - rho) * g_t**2
        d_t = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * d_t**2

    The ratio of the two RMS gives the update the units of the parameters, so the method needs no learning rate
    (lr = 1 in the paper and in torch's default).

    Same as torch.optim.Adadelta and, up to rounding, `optax.scale_by_adadelta`.
    """
    check_beta("scale_by_adadelta", "rho", rho)
    check_range("scale_by_adadelta", "eps", eps)

    def init_fn(params):
        return ScaleByAdadeltaState(grad_sq_avg=zeros_like(params), delta_sq_avg=zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        check_tree("scale_by_adadelta", updates, state.grad_sq_avg)
        grad_sq_avg = jax.tree.map(lambda g, a: ema_of_square(a, g, rho), updates, state.grad_sq_avg)
        updates = jax.tree.map(
            lambda g, a, d: jnp.sqrt(d + like(eps, d)) / jnp.sqrt(a + like(eps, a)) * g,
            updates, grad_sq_avg, state.delta_sq_avg,
        )
        delta_sq_avg = jax.tree.map(lambda u, d: ema_of_square(d, u, rho), updates, state.delta_sq_avg)
        return updates, ScaleByAdadeltaState(grad_sq_avg=grad_sq_avg, delta_sq_avg=delta_sq_avg)

    return optax.GradientTransformation(init_fn, update_fn)


@named_optimizer
def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adadelta (Zeiler, 2012) with a learning rate (1.0 by default) and coupled L2 weight decay.

        g_t <- g_t + weight_decay * theta_{t-1},   theta_t = theta_{t-1} - lr_t * d_t,   d_t from `scale_by_adadelta`

    Same trajectory as `torch.optim.Adadelta(lr, rho, eps, weight_decay, maximize)` and `optax.adadelta`;
    `maximize=True` negates the gradient before anything else, weight decay included.
    """
    check_learning_rate("adadelta", learning_rate)
    check_range("adadelta", "weight_decay", weight_decay)
    return optax.chain(
        *maximizing("adadelta", maximize),
        add_decayed_weights(weight_decay),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(learning_rate),
    )
