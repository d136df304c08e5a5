"""Rprop, resilient backpropagation: `scale_by_rprop`, `rprop`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from optimjax._checks import check_learning_rate, check_range, concrete_value
from optimjax._kernels import RPROP, Kernel, fused_kernel
from optimjax._tree import cast_like, check_tree, float_leaves, full_like, leafwise, like, next_count, zeros_like
from optimjax.learning_rate import maximizing


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop` (torch's `step`, `prev` and `step_size`).

    Attributes:
      count: int32 number of updates so far, t.
      prev: the previous step's gradient, zeroed where its sign flipped, in the params' dtype.
      step_size: the per-element step size, in the params' dtype (starts at the learning rate).
    """

    count: jax.Array
    prev: Any
    step_size: Any


def check_pair(where: str, name: str, value: Any) -> tuple[Any, Any]:
    """A (low, high) pair of numbers, as torch's `etas` and `step_sizes`."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: {name} must be a pair (low, high), got {value!r}")
    return value[0], value[1]


def zero_after(x: jax.Array) -> jax.Array:
    """+0.0 for every x (NaN and infinities included), computed from x so that it is read after x.

    Why (memory, not arithmetic): Rprop's step size s_t and prev both read the old prev. Written as a zero that
    depends on the new s_t, the prev loop comes after the step-size loop, so XLA writes both state arrays in place
    (donated buffers) instead of copying the old prev first (one state-sized temporary and a pass over it). The
    step-size loop is likewise a select of three clipped products rather than one clip of s * factor (the same
    numbers: s * 1 is s): with the factor form XLA recomputes s_t inside the parameter update's loop, which then
    reads the old step sizes after they are overwritten, and copies them too. bench/README.md (peak memory) has
    the measurement.
    """
    zeros = lax.full_like(x, 0)
    return lax.select(lax.ne(x, x), zeros, lax.min(lax.abs(x), zeros))


def scale_by_rprop(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
) -> optax.GradientTransformation:
    """Rprop's update: Riedmiller & Braun (1993), "A Direct Adaptive Method for Faster Backpropagation Learning:
    The RPROP Algorithm", IEEE ICNN; torch.optim.Rprop's variant, Rprop without weight backtracking (iRprop- in
    Igel & Huesken (2000), "Improving the Rprop Learning Algorithm"):

        s_t = min(s_{t-1} * eta_plus, step_max)     where g_t * g_{t-1} > 0
        s_t = max(s_{t-1} * eta_minus, step_min),  g_t <- 0     where g_t * g_{t-1} < 0
        s_t = s_{t-1}                               where g_t * g_{t-1} = 0
        theta_t = theta_{t-1} - sign(g_t) * s_t,    g_{t-1} <- g_t (as zeroed)

    with s_0 = lr_0 and g_0 = 0, so the first update is -lr * sign(g_1), as in torch. optax.scale_by_rprop
    emits the previous step's update (its first update is 0), so its trajectory is one step behind torch's.

    The learning rate is only the initial step size: as in torch (where an LRScheduler changes the group's lr
    but not the step sizes already in the state), a schedule is read once, at step 0, and an injected learning
    rate only at `init`. The update is returned with its sign (no `scale_by_learning_rate` follows).

    Complex parameters: real and imaginary parts are separate parameters, as in torch (each part has its own
    sign test and step size, which starts at lr + lr * 1j).
    dtypes follow `optimjax._tree`'s policy: state dtype fixed at init, arithmetic in the promotion of the
    dtypes read, updates in the gradients' dtype; integer and bool leaves raise TypeError naming the leaf.

    Args:
      learning_rate: the initial step size s_0 >= 0 (a schedule is evaluated at step 0).
      etas: (eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus (torch's check).
      step_sizes: (step_min, step_max), the clamp of s_t, with 0 <= step_min <= step_max.
    """
    where = "scale_by_rprop"
    check_learning_rate(where, learning_rate)
    eta_minus, eta_plus = check_pair(where, "etas", etas)
    step_min, step_max = check_pair(where, "step_sizes", step_sizes)
    check_range(where, "etas[0]", eta_minus, 0.0, 1.0)
    if concrete_value(eta_minus) == 0:
        raise ValueError(f"{where}: etas[0] must be in (0, 1), got {eta_minus!r}")
    check_range(where, "etas[1]", eta_plus, 1.0)
    if concrete_value(eta_plus) == 1:
        raise ValueError(f"{where}: etas[1] must be > 1, got {eta_plus!r}")
    check_range(where, "step_sizes[0]", step_min)
    check_range(where, "step_sizes[1]", step_max, concrete_value(step_min) or 0.0)
    initial = learning_rate(0) if callable(learning_rate) else learning_rate

    def init_fn(params):
        params = float_leaves(where, params, "parameter", "init()")
        return ScaleByRpropState(count=jnp.zeros([], jnp.int32), prev=zeros_like(params),
                                 step_size=full_like(params, initial))

    def update_fn(updates, state, params=None):
        del params
        updates = float_leaves(where, updates)
        check_tree(where, updates, state.prev)
        count, _ = next_count(state.count)

        def step(g, prev, s):  # lax, not jnp: the same operations, traced without jnp's wrappers (compile time)
            zero, low, high = (lax.full_like(s, like(x, s)) for x in (0, step_min, step_max))  # broadcast once
            clip = lambda x: lax.min(high, lax.max(low, x))  # noqa: E731  (jnp.clip's order)
            product = lax.mul(g, prev)
            flipped = lax.lt(product, zero)
            s = lax.select(lax.gt(product, zero), clip(lax.mul(s, like(eta_plus, s))),
                           lax.select(flipped, clip(lax.mul(s, like(eta_minus, s))), clip(s)))
            g = lax.select(flipped, zero_after(s), g)  # no step where the sign flipped, no flip test next
            return lax.mul(lax.neg(lax.sign(g)), s), g, s

        out = leafwise(step, updates, state.prev, state.step_size)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)  # noqa: E731
        state = ScaleByRpropState(count=count, prev=cast_like(pick(1), state.prev),
                                  step_size=cast_like(pick(2), state.step_size))
        return cast_like(pick(0), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _rprop_kernel(etas, step_sizes, maximize, **_) -> Kernel:
    """The one-pass kernel of `rprop`: prev and the step sizes; the update holds the step sizes (no learning rate)."""
    (eta_minus, eta_plus), (step_min, step_max) = etas, step_sizes

    def coefficients(state):  # fused_step.cc: eta_plus, eta_minus, step_min, step_max
        count, _ = next_count(state.count)
        return [eta_plus, eta_minus, step_min, step_max], {"count": count}

    return Kernel("rprop", RPROP, ScaleByRpropState, ("prev", "step_size"), coefficients, None, maximize=maximize)


@fused_kernel(_rprop_kernel)
def rprop(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Rprop (Riedmiller & Braun, 1993): sign-based steps whose per-element sizes grow while the gradient keeps
    its sign and shrink when it flips (see `scale_by_rprop` for the equations).

    Same trajectory as `torch.optim.Rprop(lr, etas, step_sizes, maximize)`; `optax.rprop` is one step behind
    (its first update is 0). Full-batch method: with noisy minibatch gradients the sign flips at random.

    Examples:
      The first step is -lr * sign(g); the second, with the same signs, 1.2 times larger:

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.rprop(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update(jnp.array([0.5, -3.0]), state, params)
      ...     params = optax.apply_updates(params, updates)
      ...     print(params)
      [ 0.9 -1.9]
      [ 0.78 -1.78]
    """
    return optax.chain(*maximizing("rprop", maximize), scale_by_rprop(learning_rate, etas, step_sizes))
