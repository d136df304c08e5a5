"""ASGD, averaged stochastic gradient descent: `scale_by_asgd`, `asgd`, `asgd_averaged_params`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_learning_rate, check_range
from optimjax._kernels import ASGD, Kernel, fused_kernel
from optimjax._tree import cast_like, check_tree, float_leaves, leafwise, like, next_count, scalar_dtype, zeros_like
from optimjax.learning_rate import maximizing
from optimjax.weight_decay import add_decayed_weights


class ScaleByAsgdState(NamedTuple):
    """State of `scale_by_asgd` (torch's `step`, `eta`, `mu` and `ax`).

    Attributes:
      count: int32 number of updates so far, t.
      eta: the step size of the next update (a scalar, float32, or float64 under jax_enable_x64, like torch's).
      mu: the averaging weight of the next update (a scalar in the same dtype; 1 until averaging starts).
      ax: the averaged parameters, in the params' dtype: what to evaluate the model with.
    """

    count: jax.Array
    eta: jax.Array
    mu: jax.Array
    ax: Any


def asgd_scalars(learning_rate: optax.ScalarOrSchedule, lambd: float, alpha: float, t0: float,
                 count: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ASGD's state scalars after the step that follows `count` updates (shared by `scale_by_asgd` and the fused
    kernel of `optimjax.fused`): the new count, eta_{t+1} and mu_{t+1}, in the scalar dtype."""
    lr = jnp.asarray(learning_rate(count) if callable(learning_rate) else learning_rate, scalar_dtype())
    count, t = next_count(count)
    eta = lr / (1 + lambd * lr * t) ** alpha
    mu = 1 / jnp.maximum(1, t - t0)
    return count, eta.astype(scalar_dtype()), mu.astype(scalar_dtype())


def scale_by_asgd(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
) -> optax.GradientTransformation:
    """ASGD's update, with the running average of the iterates: Polyak & Juditsky (1992), "Acceleration of
    Stochastic Approximation by Averaging", SIAM J. Control Optim., with the step sizes of Bottou (2012),
    "Stochastic Gradient Descent Tricks", as torch.optim.ASGD implements them:

        theta_t = theta_{t-1} * (1 - lambd * eta_t) - eta_t * g_t
        ax_t = theta_t                            if mu_t = 1
        ax_t = ax_{t-1} + mu_t * (theta_t - ax_{t-1})   otherwise
        eta_{t+1} = lr_t / (1 + lambd * lr_t * t) ** alpha,   mu_{t+1} = 1 / max(1, t - t0)

    with eta_1 = lr_0 and mu_1 = 1: the step size of an update is the one computed at the end of the previous
    one, from that step's learning rate (so a schedule or an injected learning rate acts one step late, as a torch
    LRScheduler does on ASGD). For an integer t0, mu_t < 1 from step t0 + 3 on and ax_t is then the mean of theta_{t0+2}, ...,
    theta_t; before, ax is a copy of theta.

    The returned update is theta_t - theta_{t-1}; ax_t is computed from theta_{t-1} + update, exactly what
    `optax.apply_updates` gives, so this transform must be the last of its chain (nothing may change the
    updates after it). Requires `params` in `update`. torch.optim.ASGD's single-tensor path, operation by
    operation; optax has no ASGD. `asgd_averaged_params(state)` returns ax from a chained state.

    Complex parameters: real and imaginary parts are separate parameters, as in torch (ax stays complex).
    dtypes follow `optimjax._tree`'s policy: state dtype fixed at init, arithmetic in the promotion of the
    dtypes read, updates in the gradients' dtype; integer and bool leaves raise TypeError naming the leaf.

    Args:
      learning_rate: lr >= 0 or a schedule of the step count (evaluated at the end of each step, as above).
      lambd: decay term, >= 0 (multiplies theta by 1 - lambd * eta_t each step).
      alpha: power of the step-size decay, >= 0.
      t0: the step after which averaging starts, >= 0.
    """
    where = "scale_by_asgd"
    check_learning_rate(where, learning_rate)
    check_range(where, "lambd", lambd)
    check_range(where, "alpha", alpha)
    check_range(where, "t0", t0)
    lr_at = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        params = float_leaves(where, params, "parameter", "init()")
        dtype = scalar_dtype()
        return ScaleByAsgdState(
            count=jnp.zeros([], jnp.int32),
            eta=jnp.asarray(lr_at(jnp.zeros([], jnp.int32)), dtype),
            mu=jnp.ones([], dtype),
            ax=zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_asgd: update() needs `params` (tx.update(grads, state, params)).")
        updates = float_leaves(where, updates)
        params = float_leaves(where, params, "parameter")
        check_tree(where, updates, state.ax)
        check_tree(where, updates, params, "the params")
        eta, mu = state.eta, state.mu

        def step(g, p):
            new = p * like(1 - lambd * eta, p) - like(eta, g) * g
            return new - p

        updates = cast_like(leafwise(step, updates, params), updates)
        new_params = optax.apply_updates(params, updates)

        def average(ax, new):
            return jnp.where(mu == 1, new, ax + (new - ax) * like(mu, ax))

        ax = cast_like(leafwise(average, state.ax, new_params), state.ax)
        count, eta, mu = asgd_scalars(learning_rate, lambd, alpha, t0, state.count)
        return updates, ScaleByAsgdState(count=count, eta=eta, mu=mu, ax=ax)

    return optax.GradientTransformation(init_fn, update_fn)


def _asgd_kernel(learning_rate, lambd, alpha, t0, weight_decay, maximize, **_) -> Kernel:
    """The one-pass kernel of `asgd`: ax, and the state's eta and mu; the update holds eta (no learning rate)."""

    def coefficients(state):  # fused_step.cc: 1 - lambd * eta, eta, mu, mu == 1
        count, eta, mu = asgd_scalars(learning_rate, lambd, alpha, t0, state.count)
        return [1 - lambd * state.eta, state.eta, state.mu, state.mu == 1], {"count": count, "eta": eta, "mu": mu}

    return Kernel("asgd", ASGD, ScaleByAsgdState, ("ax",), coefficients, None, weight_decay, maximize=maximize)


@fused_kernel(_asgd_kernel)
def asgd(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Averaged SGD (Polyak & Juditsky, 1992) with torch's decaying step size and coupled L2 weight decay.

        g_t <- -g_t                                           (maximize)
        g_t <- g_t + weight_decay * theta_{t-1}
        theta_t, ax_t from `scale_by_asgd`

    Same trajectory, and the same averaged parameters ax, as `torch.optim.ASGD(lr, lambd, alpha, t0,
    weight_decay, maximize)`, with torch's defaults (t0 = 1e6: no averaging unless you lower it). Train with
    theta; evaluate with `optimjax.asgd_averaged_params(opt_state)`, torch's `optimizer.state[p]["ax"]`.

    Examples:
      With lambd = 0 every step is plain SGD with lr; with t0 = 0, ax after three steps is the mean of the
      iterates of steps 2 and 3.

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.asgd(learning_rate=0.1, lambd=0.0, t0=0.0)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jnp.array([1.0, 1.0]), state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> print(params.round(4), optimjax.asgd_averaged_params(state).round(4))
      [ 0.7 -2.3] [ 0.75 -2.25]
    """
    check_range("asgd", "weight_decay", weight_decay)
    return optax.chain(
        *maximizing("asgd", maximize),
        add_decayed_weights(weight_decay),
        scale_by_asgd(learning_rate, lambd, alpha, t0),
    )


def asgd_averaged_params(state: Any) -> Any:
    """The averaged parameters ax of the one `scale_by_asgd` inside an optimizer state (a chain, an
    `inject_hyperparams` state, a `masked` state...): what torch users read as `optimizer.state[p]["ax"]`."""
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleByAsgdState))
             if isinstance(s, ScaleByAsgdState)]
    if len(found) != 1:
        raise ValueError(f"asgd_averaged_params: expected one ScaleByAsgdState in the optimizer state, "
                         f"found {len(found)}")
    return found[0].ax
