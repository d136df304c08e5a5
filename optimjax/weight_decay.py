"""Weight decay: `add_decayed_weights`, coupled (L2) or decoupled depending on where it sits in the chain."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_range, is_zero
from optimjax._tree import cast_like, check_tree, float_leaves, leafwise, like


class AddDecayedWeightsState(NamedTuple):
    """State of `add_decayed_weights` with a scheduled weight decay: the int32 step count."""

    count: jax.Array


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """Add `weight_decay * params` to the updates.

        d_t = u_t + lambda * theta_{t-1}

    Where it sits in the chain decides which method you get:

    - before the preconditioner (`chain(add_decayed_weights(l), scale_by_adam(), scale_by_learning_rate(lr))`):
      L2 regularisation coupled to the gradient, torch's `weight_decay` in SGD, Adam, RMSprop, Adagrad, Adadelta
      and NAdam;
    - after it (`chain(scale_by_adam(), add_decayed_weights(l), scale_by_learning_rate(lr))`): decoupled weight
      decay, theta <- theta - lr * (adam_direction + lambda * theta), Loshchilov & Hutter (2019), "Decoupled Weight
      Decay Regularization", ICLR: torch's AdamW and NAdam(decoupled_weight_decay=True). torch multiplies the
      parameters by (1 - lr * lambda) first, which is the same update, rounded differently.

    Args:
      weight_decay: lambda >= 0, or a schedule of the step count.
      mask: a pytree of booleans shaped like the params (or a callable params -> such a pytree); decay is applied
        only where it is True, e.g. to skip biases and norm scales. Same semantics as `optax.masked`.

    Requires `params` in `update`. Same as `optax.add_decayed_weights`, except that the decay is cast to each
    leaf's dtype (so an injected float32 hyperparameter never turns bf16 updates into float32) and that the sum
    is computed in the promotion of the update's and the parameter's dtypes and returned in the update's dtype.
    Complex parameters: real and imaginary parts decay as separate parameters, as in torch.

    Examples:
      Decay the weights but not the bias: the update of "w" becomes g + 0.1 * w, that of "b" stays g.

      >>> import jax.numpy as jnp, optimjax
      >>> params = {"w": jnp.array([2.0, -4.0]), "b": jnp.array([2.0])}
      >>> tx = optimjax.add_decayed_weights(0.1, mask={"w": True, "b": False})
      >>> grads = {"w": jnp.array([1.0, 1.0]), "b": jnp.array([1.0])}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> print(updates["w"], updates["b"])
      [1.2 0.6] [1.]
    """
    check_range("add_decayed_weights", "weight_decay", weight_decay)
    scheduled = callable(weight_decay)

    def init_fn(params):
        float_leaves("add_decayed_weights", params, "parameter", "init()")
        return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32)) if scheduled else optax.EmptyState()

    def update_fn(updates, state, params=None):
        updates = float_leaves("add_decayed_weights", updates)
        if params is not None:
            params = float_leaves("add_decayed_weights", params, "parameter")
            check_tree("add_decayed_weights", updates, params, "the params")
        if is_zero(weight_decay):
            return updates, state
        if params is None:
            raise ValueError("add_decayed_weights: update() needs `params` (tx.update(grads, state, params)).")
        if scheduled:
            decay, state = weight_decay(state.count), AddDecayedWeightsState(optax.safe_increment(state.count))
        else:
            decay = weight_decay
        decayed = leafwise(lambda u, p: u + like(decay, u) * p, updates, params)
        return cast_like(decayed, updates), state

    tx = optax.GradientTransformation(init_fn, update_fn)
    return tx if mask is None else optax.masked(tx, mask)
