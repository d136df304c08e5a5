"""SGD with heavy-ball or Nesterov momentum: `scale_by_momentum`, `scale_by_nesterov_momentum`, `sgd`,
`momentum`, `nesterov`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_beta, check_learning_rate, check_range, concrete_value, is_zero
from optimjax._checks import check_flag, named_optimizer
from optimjax._kernels import MOMENTUM, Kernel, fused_kernel
from optimjax._tree import check_tree, like, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights


class MomentumState(NamedTuple):
    """State of `scale_by_momentum` / `scale_by_nesterov_momentum`.

    Attributes:
      count: int32 number of updates so far (the first update starts the velocity at g, as torch does).
      velocity: the momentum buffer v, shaped and typed like the params.
    """

    count: jax.Array
    velocity: Any


def _momentum(where: str, beta: Any, dampening: Any, nesterov: bool) -> optax.GradientTransformation:
    check_beta(where, "beta", beta)
    check_range(where, "dampening", dampening, 0.0, 1.0, high_open=False)

    def init_fn(params):
        return MomentumState(count=jnp.zeros([], jnp.int32), velocity=zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        check_tree(where, updates, state.velocity)
        # torch starts the buffer at g (no dampening on the first step): v_1 = g.
        damp = jnp.where(state.count == 0, 0.0, dampening) if not is_zero(dampening) else 0.0

        def new_velocity(g, v):  # torch: v.mul_(beta).add_(g, alpha=1 - dampening); alpha = 1 adds g as is
            return v * like(beta, v) + (g if is_zero(damp) else like(1 - damp, g) * g)

        velocity = jax.tree.map(new_velocity, updates, state.velocity)
        if nesterov:
            updates = jax.tree.map(lambda g, v: g + like(beta, v) * v, updates, velocity)
        else:
            updates = velocity
        return updates, MomentumState(count=optax.safe_increment(state.count), velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_momentum(beta: float = 0.9, dampening: float = 0.0) -> optax.GradientTransformation:
    """Heavy-ball momentum (Polyak, 1964, "Some methods of speeding up the convergence of iteration methods").

        v_1 = g_1,   v_t = beta * v_{t-1} + (1 - dampening) * g_t,   d_t = v_t

    Same as torch.optim.SGD's buffer (momentum=beta, dampening, nesterov=False) and, with dampening=0, as
    `optax.trace(decay=beta)`. Momentum accumulates the gradient along a ravine's floor, where successive
    gradients agree, and cancels it across the ravine, where they alternate in sign.
    """
    return _momentum("scale_by_momentum", beta, dampening, nesterov=False)


def scale_by_nesterov_momentum(beta: float = 0.9) -> optax.GradientTransformation:
    """Nesterov accelerated gradient in the form of Sutskever, Martens, Dahl & Hinton (2013), "On the importance
    of initialization and momentum in deep learning", ICML, as torch.optim.SGD(nesterov=True) writes it:

        v_t = beta * v_{t-1} + g_t,   d_t = g_t + beta * v_t

    Nesterov (1983) evaluates the gradient at the look-ahead point theta + beta * v. Substituting
    phi = theta - lr * beta * v turns that into the update above, which needs the gradient at the current
    parameters only (the iterates are the look-ahead points of the textbook form). Same as
    `optax.trace(decay=beta, nesterov=True)`; torch requires dampening=0 for Nesterov, and so does this.
    """
    return _momentum("scale_by_nesterov_momentum", beta, 0.0, nesterov=True)


def _sgd_kernel(learning_rate, momentum, nesterov, dampening, weight_decay, maximize=False, **_) -> Kernel | str:
    """The one-pass kernel of `sgd` with momentum (coupled decay): the velocity; without momentum there is no
    state and XLA already makes one pass ("")."""
    if momentum is None or is_zero(momentum):
        return ""

    def coefficients(state):  # fused_step.cc: beta, 1 - dampening (none on the first step: torch starts v at g)
        one_minus_dampening = 1 - jnp.where(state.count == 0, 0.0, dampening) if not is_zero(dampening) else 1.0
        return [momentum, one_minus_dampening], {"count": optax.safe_increment(state.count)}

    return Kernel("sgd", MOMENTUM, MomentumState, ("velocity",), coefficients, learning_rate, weight_decay,
                  flags=(bool(nesterov), not is_zero(dampening)), maximize=maximize)


@fused_kernel(_sgd_kernel)
@named_optimizer
def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum and L2 weight decay.

        g_t <- g_t + weight_decay * theta_{t-1}
        d_t = g_t (no momentum), or the heavy-ball / Nesterov direction of `scale_by_momentum` /
              `scale_by_nesterov_momentum`
        theta_t = theta_{t-1} - lr_t * d_t

    Robbins & Monro (1951), "A Stochastic Approximation Method". Same trajectory as
    `torch.optim.SGD(lr, momentum, dampening, weight_decay, nesterov)`; `optax.sgd` has neither dampening nor
    weight decay.

    Args:
      learning_rate: lr >= 0 or an optax schedule.
      momentum: beta in [0, 1), or None for plain SGD.
      nesterov: use Nesterov momentum (needs `momentum` and dampening = 0).
      dampening: in [0, 1], scales the gradient in the heavy-ball buffer after the first step.
      weight_decay: L2 coefficient added to the gradient (coupled), >= 0.
      maximize: ascend instead: g_t <- -g_t before anything else, weight decay included (torch's `maximize`).

    Examples:
      Nesterov on f(p) = p**2 / 2 (gradient p) from p = 1: v_1 = 1, p_1 = 1 - 0.1 * (1 + 0.9 * 1) = 0.81;
      v_2 = 0.9 * 1 + 0.81 = 1.71, p_2 = 0.81 - 0.1 * (0.81 + 0.9 * 1.71) = 0.5751.

      >>> import jax.numpy as jnp, optax, optimjax
      >>> tx = optimjax.sgd(learning_rate=0.1, momentum=0.9, nesterov=True)
      >>> p = jnp.array(1.0)
      >>> state = tx.init(p)
      >>> for _ in range(2):
      ...     updates, state = tx.update(p, state, p)
      ...     p = optax.apply_updates(p, updates)
      ...     print(f"{float(p):.4f}")
      0.8100
      0.5751
    """
    check_learning_rate("sgd", learning_rate)
    check_range("sgd", "weight_decay", weight_decay)
    check_flag("sgd", "nesterov", nesterov)
    if momentum is not None:
        check_beta("sgd", "momentum", momentum)
    if nesterov and (momentum is None or concrete_value(momentum) == 0 or concrete_value(dampening) not in (0, None)):
        raise ValueError(f"sgd: nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum!r}, "
                         f"dampening={dampening!r}")
    parts = [*maximizing("sgd", maximize), add_decayed_weights(weight_decay)]
    if momentum is not None and not isinstance(momentum, (int, float)) and not is_zero(dampening):
        # An array momentum (injected) keeps the buffer whatever its value; at 0, torch ignores dampening: so must we.
        check_range("sgd", "dampening", dampening, 0.0, 1.0, high_open=False)
        dampening = jnp.where(jnp.asarray(momentum) == 0, 0.0, dampening)
    if momentum is not None and not is_zero(momentum):
        parts.append(scale_by_nesterov_momentum(momentum) if nesterov else scale_by_momentum(momentum, dampening))
    else:
        check_range("sgd", "dampening", dampening, 0.0, 1.0, high_open=False)
    parts.append(scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


@named_optimizer
def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """SGD with heavy-ball momentum: `sgd(learning_rate, momentum, nesterov=False, dampening, weight_decay)`.

        v_t = momentum * v_{t-1} + (1 - dampening) * g_t,   theta_t = theta_{t-1} - lr_t * v_t

    torch.optim.SGD(lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, maximize=maximize).
    """
    return sgd(learning_rate, momentum=momentum, dampening=dampening, weight_decay=weight_decay, maximize=maximize)


@named_optimizer
def nesterov(
    learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0, maximize: bool = False
) -> optax.GradientTransformation:
    """SGD with Nesterov momentum (NAG): `sgd(learning_rate, momentum, nesterov=True, weight_decay=...)`.

        v_t = momentum * v_{t-1} + g_t,   theta_t = theta_{t-1} - lr_t * (g_t + momentum * v_t)

    torch.optim.SGD(lr, momentum=momentum, nesterov=True, weight_decay=weight_decay, maximize=maximize).
    """
    return sgd(learning_rate, momentum=momentum, nesterov=True, weight_decay=weight_decay, maximize=maximize)
