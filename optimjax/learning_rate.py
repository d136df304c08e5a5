"""Scaling by the learning rate: the last link of every optimizer's chain."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimjax._checks import check_learning_rate
from optimjax._tree import like


class ScaleByLearningRateState(NamedTuple):
    """State of `scale_by_learning_rate` with a schedule: the int32 step count fed to the schedule."""

    count: jax.Array


def scale_by_learning_rate(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """Multiply updates by `-learning_rate`, turning a descent direction into a parameter update.

        u_t = -lr_t * d_t

    `learning_rate` is a non-negative number or an optax schedule `lr_t = schedule(t)`, t = 0, 1, ... (the same
    `t` torch's `LRScheduler` would have stepped to). A constant needs no state; a schedule keeps a step count.
    Unlike `optax.scale_by_learning_rate`, the scale is cast to each leaf's dtype, so bf16 updates stay bf16
    when the learning rate is an injected float32 hyperparameter.
    """
    check_learning_rate("scale_by_learning_rate", learning_rate)

    def scaled(updates, lr):
        return jax.tree.map(lambda u: like(-lr, u) * u, updates)

    if not callable(learning_rate):
        return optax.GradientTransformation(
            lambda params: optax.EmptyState(),
            lambda updates, state, params=None: (scaled(updates, learning_rate), state),
        )

    def init_fn(params):
        del params
        return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        updates = scaled(updates, learning_rate(state.count))
        return updates, ScaleByLearningRateState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def maximizing(where: str, maximize: bool) -> tuple[optax.GradientTransformation, ...]:
    """The head of an optimizer's chain for torch's `maximize` flag: nothing when False; when True, a transform
    that negates the gradient, g_t <- -g_t, before anything else (coupled weight decay included), as every
    torch.optim optimizer does first in its step. The negation is exact and keeps each leaf's dtype.
    """
    if not isinstance(maximize, (bool, np.bool_)):
        raise ValueError(f"{where}: maximize must be True or False, got {maximize!r}")
    if not maximize:
        return ()
    return (optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(jnp.negative, updates), state),
    ),)
