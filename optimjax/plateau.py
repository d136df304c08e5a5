"""torch.optim.lr_scheduler.ReduceLROnPlateau as a transformation that scales the updates: `reduce_lr_on_plateau`."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import check_choice, check_int, check_range
from optimjax._tree import like, scalar_dtype


class ReduceLROnPlateauState(NamedTuple):
    """State of `reduce_lr_on_plateau`, torch's scheduler attributes.

    Attributes:
      lr: the current learning rate (torch's `param_group["lr"]`), learning_rate until the first reduction.
      scale: lr / learning_rate, the factor the updates are multiplied by.
      best: the best value seen so far (inf in mode "min", -inf in "max" before the first value).
      num_bad_epochs: int32 number of values since the last improvement (0 during cooldown).
      cooldown_counter: int32 number of values left in the cooldown after a reduction.
    """

    lr: jax.Array
    scale: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array


def reduce_lr_on_plateau(
    learning_rate: float,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """torch.optim.lr_scheduler.ReduceLROnPlateau as a transformation: each `update(updates, state, params,
    value=v)` is one `scheduler.step(v)`, and the updates are multiplied by lr / learning_rate.

    Put it last in the chain, after the optimizer whose `learning_rate` is the same base `learning_rate`:
    `optax.chain(optimjax.adamw(1e-3), optimjax.reduce_lr_on_plateau(1e-3, patience=5))`, and pass the metric
    torch's loop would give `scheduler.step()` right after this `optimizer.step()`. The update of a call is scaled
    by the lr in force before it sees its value (torch steps the optimizer first, then the scheduler), so the
    first reduction shows in the update after the value that triggered it. (optax.contrib.reduce_on_plateau
    applies the new scale to the same call's updates, and cuts after `patience` bad values, torch after
    `patience + 1`.) A call without `value` (or with `value=None`) only scales the updates: with a metric
    measured once per epoch, as in torch's usual loop, pass it with the epoch's last batch only (the two kinds of
    call compile separately under `jit`, since None is static).

    Torch's rule, per value v (in float64 with jax_enable_x64, else float32; torch compares Python floats):

        better = v < best * (1 - threshold)   (mode "min", threshold_mode "rel")
                 v < best - threshold         ("min", "abs");  v > best * (1 + threshold), v > best + threshold ("max")
        if better: best = v, bad = 0  else: bad = bad + 1
        if cooldown_counter > 0: cooldown_counter -= 1, bad = 0
        if bad > patience:
            new = max(lr * factor, min_lr);  if lr - new > eps: lr = new
            cooldown_counter = cooldown, bad = 0

    min_lr and eps are in learning-rate units, as in torch: that is why the base learning_rate is an argument
    (scale = lr / learning_rate, so the floor on the scale is min_lr / learning_rate). A NaN value is a bad value,
    as in torch.

    Scaling the update equals changing torch's lr when the optimizer's update is lr times something that does
    not depend on lr, and its state does not depend on lr either. That holds for every optimjax optimizer, as
    for their torch counterparts: SGD (plain, momentum, dampening, Nesterov, coupled weight decay: torch's
    momentum buffer is kept before lr), Adam, AMSGrad, AdamW (torch's decay p *= 1 - lr * wd is linear in lr
    too), NAdam, NAdamW, RMSprop (plain, centered, momentum: torch's buffer holds the step before lr), Adagrad
    (lr / (1 + (t - 1) * lr_decay) is linear in lr), Adadelta (its accumulated delta is computed before lr);
    likewise torch's Adamax and RAdam. It does not hold for torch's Rprop (lr only sets the initial step sizes,
    which then evolve in the state: a new lr does nothing after the first step, a scaled update changes every
    step), ASGD (lr enters its averaging state eta), Adafactor (relative step min(lr, 1 / sqrt(t))) or LBFGS
    (lr scales the line search's trial step).

    Args:
      learning_rate: the optimizer's base lr (> 0), the lr the scale multiplies.
      mode: "min" (the metric should decrease) or "max".
      factor: lr <- lr * factor at a reduction, in [0, 1).
      patience: number of bad values tolerated; the lr is cut at the (patience + 1)-th, integer >= 0.
      threshold: how much better a value must be to count as an improvement, >= 0.
      threshold_mode: "rel" (relative to best) or "abs".
      cooldown: number of values after a reduction during which bad values are not counted, integer >= 0.
      min_lr: the lr is never cut below it, >= 0.
      eps: a cut smaller than eps (in lr units) is skipped, >= 0.

    Examples:
      With patience=1 the lr is cut after the second value that does not improve on the best (1.0):

      >>> import jax.numpy as jnp, optimjax
      >>> tx = optimjax.reduce_lr_on_plateau(0.1, patience=1, factor=0.5)
      >>> state = tx.init(jnp.zeros(2))
      >>> for loss in [1.0, 1.0, 1.0, 0.5]:
      ...     updates, state = tx.update(jnp.ones(2), state, value=loss)
      ...     print(round(float(state.lr), 6), float(state.scale))
      0.1 1.0
      0.1 1.0
      0.05 0.5
      0.05 0.5
    """
    where = "reduce_lr_on_plateau"
    check_range(where, "learning_rate", learning_rate)
    if callable(learning_rate) or float(learning_rate) == 0:
        raise ValueError(f"{where}: learning_rate must be a number > 0 (the base lr), got {learning_rate!r}")
    check_choice(where, "mode", mode, ("min", "max"))
    check_range(where, "factor", factor, 0.0, 1.0)
    check_int(where, "patience", patience)
    check_range(where, "threshold", threshold)
    check_choice(where, "threshold_mode", threshold_mode, ("rel", "abs"))
    check_int(where, "cooldown", cooldown)
    check_range(where, "min_lr", min_lr)
    check_range(where, "eps", eps)
    base, factor, threshold, min_lr, eps = map(float, (learning_rate, factor, threshold, min_lr, eps))

    def is_better(value, best):
        if mode == "min":
            return value < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
        return value > (best * (threshold + 1.0) if threshold_mode == "rel" else best + threshold)

    def init_fn(params):
        del params
        dtype = scalar_dtype()
        return ReduceLROnPlateauState(
            lr=jnp.asarray(base, dtype),
            scale=jnp.ones([], dtype),
            best=jnp.asarray(math.inf if mode == "min" else -math.inf, dtype),
            num_bad_epochs=jnp.zeros([], jnp.int32),
            cooldown_counter=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        updates = jax.tree.map(lambda u: like(state.scale, u) * u, updates)  # the lr before this value
        if value is None:  # no scheduler.step() after this optimizer.step()
            return updates, state
        value = jnp.asarray(value, state.best.dtype)
        better = is_better(value, state.best)
        best = jnp.where(better, value, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        new_lr = jnp.maximum(state.lr * factor, min_lr)
        lr = jnp.where(reduce & (state.lr - new_lr > eps), new_lr, state.lr)
        state = ReduceLROnPlateauState(
            lr=lr,
            scale=lr / base,
            best=best,
            num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
            cooldown_counter=jnp.where(reduce, cooldown, cooldown_counter).astype(jnp.int32),
        )
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
