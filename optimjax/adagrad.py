"""Adagrad: `scale_by_adagrad`, `adagrad`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_learning_rate, check_range, is_zero
from optimjax._checks import named_optimizer
from optimjax._kernels import ADAGRAD, Kernel, fused_kernel
from optimjax._tree import check_tree, full_like, like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`: `sum_of_squares`, the running sum of g**2, shaped and typed like the params."""

    sum_of_squares: Any


def scale_by_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> optax.GradientTransformation:
    """Adagrad's direction: Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization", JMLR 12.

        s_t = s_{t-1} + g_t**2,   s_0 = initial_accumulator_value
        d_t = g_t / (sqrt(s_t) + eps)

    Coordinates that have seen large gradients take small steps from then on; rare features keep large steps.
    The sum only grows, so the effective step size decays like 1 / sqrt(t).

    Same as torch.optim.Adagrad (s_0 = 0 and eps = 1e-10 outside the sqrt by default). `optax.adagrad` puts
    eps inside the sqrt and starts at s_0 = 0.1 by default, which differs.
    """
    check_range("scale_by_adagrad", "eps", eps)
    check_range("scale_by_adagrad", "initial_accumulator_value", initial_accumulator_value)

    def init_fn(params):
        return ScaleByAdagradState(sum_of_squares=full_like(params, initial_accumulator_value))

    def update_fn(updates, state, params=None):
        del params
        check_tree("scale_by_adagrad", updates, state.sum_of_squares)
        sum_of_squares = jax.tree.map(lambda g, s: s + g * g, updates, state.sum_of_squares)
        updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + like(eps, s)), updates, sum_of_squares)
        return updates, ScaleByAdagradState(sum_of_squares=sum_of_squares)

    return optax.GradientTransformation(init_fn, update_fn)


def _adagrad_kernel(learning_rate, lr_decay, weight_decay, eps, maximize=False, **_) -> Kernel:
    """The one-pass kernel of `adagrad` (coupled decay): the sum of squares; lr_decay is in the learning rate."""
    return Kernel("adagrad", ADAGRAD, ScaleByAdagradState, ("sum_of_squares",), lambda state: ([0.0, 0.0, eps], {}),
                  decayed_learning_rate(learning_rate, lr_decay), weight_decay, maximize=maximize)


@fused_kernel(_adagrad_kernel)
@named_optimizer
def adagrad(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Adagrad with torch's learning-rate decay and coupled L2 weight decay.

        g_t <- g_t + weight_decay * theta_{t-1}
        theta_t = theta_{t-1} - lr_t / (1 + (t - 1) * lr_decay) * d_t,   d_t from `scale_by_adagrad`, t = 1, 2, ...

    Same trajectory as `torch.optim.Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps,
    maximize)`; `maximize=True` negates the gradient before anything else, weight decay included.
    """
    check_learning_rate("adagrad", learning_rate)
    check_range("adagrad", "lr_decay", lr_decay)
    check_range("adagrad", "weight_decay", weight_decay)
    return optax.chain(
        *maximizing("adagrad", maximize),
        add_decayed_weights(weight_decay),
        scale_by_adagrad(eps, initial_accumulator_value),
        scale_by_learning_rate(decayed_learning_rate(learning_rate, lr_decay)),
    )


def decayed_learning_rate(learning_rate: optax.ScalarOrSchedule, lr_decay: float) -> optax.ScalarOrSchedule:
    """torch's Adagrad learning rate lr_t / (1 + (t - 1) * lr_decay), as a schedule of count = t - 1 = 0, 1, ...

    Always a schedule, so the state always holds the step count (as torch's Adagrad keeps `step`), whether
    lr_decay is 0 or an array injected by `optax.inject_hyperparams`: plain and injected optimizers have the same
    state structure, and their states and checkpoints can be swapped.
    """

    def schedule(count):
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        return lr if is_zero(lr_decay) else lr / (1 + count * lr_decay)

    return schedule
