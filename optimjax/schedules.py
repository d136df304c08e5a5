"""torch.optim.lr_scheduler as optax schedules: pure functions of the step count, one per torch scheduler class.

Every function here builds a schedule `lr = schedule(count)`: a jit-safe function of the int step count with no
Python state, usable as any optimjax (or optax) `learning_rate`, or as an injected hyperparameter through
`optax.inject_hyperparams`. Names are torch's class names in snake_case, with the base learning rate first.

Step semantics. Step k of a schedule (k = 0, 1, ...) is the learning rate torch's optimizer uses at its (k+1)-th
`step()` when `scheduler.step()` is called once after each `optimizer.step()`, i.e. the scheduler's lr at
`last_epoch == k`. optimjax's optimizers evaluate their schedule at the number of updates made so far, so that is
the lr of the k-th update (0-based) here too.

Closed forms. Several torch schedulers are recursive (`group["lr"]` is multiplied by a ratio at each step:
ExponentialLR, StepLR, LinearLR, PolynomialLR, CosineAnnealingLR). The closed forms used here equal the recursions
in exact arithmetic; in float64 the two differ by rounding only (a few ulp of the base lr after thousands of
steps, measured in tests/test_schedules.py to 1e-12). Torch computes lrs as Python float64; these schedules compute
in float64 when `jax_enable_x64` is on and in float32 otherwise (within a few float32 ulp of torch's value).

Every optimjax schedule carries its base learning rate as the attribute `base_lr` (read by `chained_scheduler`).
Arguments that make no sense (or make torch divide by zero) raise ValueError at construction.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optimjax._checks import check_choice, check_int, check_range
from optimjax._tree import scalar_dtype

Schedule = Callable[[Any], jax.Array]


def _number(where: str, name: str, value: Any, low: float = 0.0, high: float = math.inf,
            high_open: bool = True) -> float:
    """`value` as a Python float after checking it is a number in the range (schedules take no schedules)."""
    if value is None or callable(value) or isinstance(value, jax.core.Tracer):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    check_range(where, name, value, low, high, high_open)
    return float(np.asarray(value))


def _step(count: Any) -> jax.Array:
    """The step count as an integer array (optax passes an int32 scalar; a Python int is accepted too)."""
    return jnp.asarray(count)


def _real(x: Any) -> jax.Array:
    """`x` in the dtype of per-step scalars: float64 with jax_enable_x64, float32 otherwise."""
    return jnp.asarray(x, scalar_dtype())


def _power(gamma: float, n: Any) -> jax.Array:
    """gamma ** n for a Python float gamma >= 0 and a count n >= 0, as exp(n * log(gamma)) with the log taken in
    float64: in float32 this keeps the relative error near eps * (1 + |n log gamma|) (a float32 gamma ** n would
    add n times gamma's own rounding: 5e-4 at gamma = 0.9995, n = 20000)."""
    if gamma == 0:
        return jnp.where(n == 0, _real(1.0), _real(0.0))
    return jnp.exp(_real(n) * _real(math.log(gamma)))


def _schedule(fn: Schedule, base_lr: float, chainable: bool = False) -> Schedule:
    """Tag a schedule with its base lr and whether `chained_scheduler` can combine it (see there)."""
    fn.base_lr = base_lr
    fn.chainable = chainable
    return fn


def lambda_lr(learning_rate: float, lr_lambda: Callable[[Any], Any]) -> Schedule:
    """torch.optim.lr_scheduler.LambdaLR: `lr_k = learning_rate * lr_lambda(k)`.

    `lr_lambda` is called with the step count as a float scalar holding an integer value (float64 with
    `jax_enable_x64`, else float32; torch passes a Python int), under `jit` a traced one, so it must be written
    with operations JAX can trace (arithmetic, `%`, `//`, `**`, `jnp.where`, `jnp.minimum`, ...; no Python `if`
    on k, no `math.*`). A lambda that only uses arithmetic works for torch and for JAX alike, e.g.
    `lambda k: 0.95 ** k`. Torch evaluates it in Python float64, as it is here with `jax_enable_x64`.

    Examples:
      >>> import optimjax
      >>> schedule = optimjax.schedules.lambda_lr(0.1, lambda k: 1 / (1 + k))
      >>> print([round(float(schedule(k)), 4) for k in range(4)])
      [0.1, 0.05, 0.0333, 0.025]
    """
    where = "lambda_lr"
    base = _number(where, "learning_rate", learning_rate)
    if not callable(lr_lambda):
        raise ValueError(f"{where}: lr_lambda must be a callable of the step count, got {lr_lambda!r}")

    def schedule(count):
        return _real(base) * _real(lr_lambda(_real(_step(count))))

    return _schedule(schedule, base)


def multiplicative_lr(learning_rate: float, lr_lambda: Callable[[int], float], num_steps: int) -> Schedule:
    """torch.optim.lr_scheduler.MultiplicativeLR: `lr_0 = learning_rate`, `lr_k = lr_{k-1} * lr_lambda(k)`.

    A running product over steps has no closed form for an arbitrary `lr_lambda`, and recomputing it inside the
    schedule would cost O(k) at step k. So the product is tabulated once, at construction: `lr_lambda` is called
    in Python with the ints 1, ..., `num_steps` exactly as torch calls it (any Python callable works: it never
    sees a tracer), multiplied in torch's order in float64, and the schedule looks up `table[k]` (O(1), jit-safe;
    the table is a constant of `num_steps + 1` floats in the compiled step).

    Past `num_steps`, where the product would need more calls of `lr_lambda`, the schedule holds the last value
    `lr_{num_steps}`: choose `num_steps` >= the number of updates of the run. `sequential_lr` takes it only
    first (torch continues a MultiplicativeLR from the previous scheduler's lr at a milestone).

    Examples:
      >>> import optimjax
      >>> schedule = optimjax.schedules.multiplicative_lr(1.0, lambda k: 0.5, num_steps=10)
      >>> print([float(schedule(k)) for k in range(4)])
      [1.0, 0.5, 0.25, 0.125]
    """
    where = "multiplicative_lr"
    base = _number(where, "learning_rate", learning_rate)
    if not callable(lr_lambda):
        raise ValueError(f"{where}: lr_lambda must be a callable of the step count, got {lr_lambda!r}")
    check_int(where, "num_steps", num_steps, low=1)
    table = [base]
    for k in range(1, num_steps + 1):
        table.append(table[-1] * float(lr_lambda(k)))
    table = np.asarray(table, np.float64)

    def schedule(count):
        return _real(table)[jnp.clip(_step(count), 0, num_steps)]

    schedule = _schedule(schedule, base, chainable=True)
    schedule.continues_lr = True  # see sequential_lr
    return schedule


def step_lr(learning_rate: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """torch.optim.lr_scheduler.StepLR: `lr_k = learning_rate * gamma ** (k // step_size)`.

    Examples:
      >>> import optimjax
      >>> schedule = optimjax.schedules.step_lr(1.0, step_size=2, gamma=0.5)
      >>> print([float(schedule(k)) for k in range(5)])
      [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    where = "step_lr"
    base = _number(where, "learning_rate", learning_rate)
    check_int(where, "step_size", step_size, low=1)
    gamma = _number(where, "gamma", gamma)

    def schedule(count):
        return _real(base) * _power(gamma, _step(count) // step_size)

    return _schedule(schedule, base, chainable=True)


def multi_step_lr(learning_rate: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """torch.optim.lr_scheduler.MultiStepLR: `lr_k = learning_rate * gamma ** #{m in milestones : m <= k}`.

    `milestones` must be non-decreasing integers >= 0; a milestone listed n times decays by gamma ** n there, as
    in torch.
    """
    where = "multi_step_lr"
    base = _number(where, "learning_rate", learning_rate)
    milestones = list(milestones)
    for m in milestones:
        check_int(where, "milestones", m)
    if any(b < a for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"{where}: milestones must be non-decreasing, got {milestones!r}")
    gamma = _number(where, "gamma", gamma)
    marks = np.asarray(milestones, np.int32)

    def schedule(count):
        passed = jnp.sum(_step(count) >= marks) if milestones else 0
        return _real(base) * _power(gamma, passed)

    return _schedule(schedule, base, chainable=True)


def constant_lr(learning_rate: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """torch.optim.lr_scheduler.ConstantLR: `lr_k = learning_rate * factor` for k < total_iters, then
    `learning_rate`.

    factor must be in (0, 1] and total_iters >= 1 (torch divides by factor at total_iters, and with
    total_iters = 0 its recursion keeps the factor forever while its closed form drops it).
    """
    where = "constant_lr"
    base = _number(where, "learning_rate", learning_rate)
    factor = _number(where, "factor", factor, 0.0, 1.0, high_open=False)
    if factor == 0:
        raise ValueError(f"{where}: factor must be in (0, 1], got 0 (torch divides by it at total_iters)")
    check_int(where, "total_iters", total_iters, low=1)

    def schedule(count):
        return jnp.where(_step(count) < total_iters, _real(base * factor), _real(base))

    return _schedule(schedule, base, chainable=True)


def linear_lr(
    learning_rate: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    """torch.optim.lr_scheduler.LinearLR: the factor goes linearly from start_factor to end_factor in total_iters
    steps, then stays:

        lr_k = learning_rate * (start_factor + (end_factor - start_factor) * min(k, total_iters) / total_iters)

    start_factor in (0, 1], end_factor in [0, 1] (as torch checks), total_iters >= 1.

    Examples:
      A warm-up over 4 steps from a quarter of the learning rate:

      >>> import optimjax
      >>> schedule = optimjax.schedules.linear_lr(1.0, start_factor=0.25, total_iters=3)
      >>> print([float(schedule(k)) for k in range(5)])
      [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    where = "linear_lr"
    base = _number(where, "learning_rate", learning_rate)
    start = _number(where, "start_factor", start_factor, 0.0, 1.0, high_open=False)
    if start == 0:
        raise ValueError(f"{where}: start_factor must be in (0, 1], got 0")
    end = _number(where, "end_factor", end_factor, 0.0, 1.0, high_open=False)
    check_int(where, "total_iters", total_iters, low=1)

    def schedule(count):
        k = jnp.minimum(_step(count), total_iters)
        return _real(base) * (_real(start) + _real(end - start) * k / _real(total_iters))

    return _schedule(schedule, base, chainable=True)


def exponential_lr(learning_rate: float, gamma: float) -> Schedule:
    """torch.optim.lr_scheduler.ExponentialLR: `lr_k = learning_rate * gamma ** k` (torch multiplies by gamma at
    each step; the power differs from that product by rounding only)."""
    where = "exponential_lr"
    base = _number(where, "learning_rate", learning_rate)
    gamma = _number(where, "gamma", gamma)

    def schedule(count):
        return _real(base) * _power(gamma, _step(count))

    return _schedule(schedule, base, chainable=True)


def polynomial_lr(learning_rate: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """torch.optim.lr_scheduler.PolynomialLR: `lr_k = learning_rate * (1 - min(k, total_iters) / total_iters) **
    power`, 0 from total_iters on. total_iters >= 1, power >= 0."""
    where = "polynomial_lr"
    base = _number(where, "learning_rate", learning_rate)
    check_int(where, "total_iters", total_iters, low=1)
    power = _number(where, "power", power)

    def schedule(count):
        remaining = total_iters - jnp.minimum(_step(count), total_iters)  # an exact 0 from total_iters on
        return _real(base) * (remaining / _real(total_iters)) ** _real(power)

    return _schedule(schedule, base, chainable=True)


def cosine_annealing_lr(learning_rate: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    """torch.optim.lr_scheduler.CosineAnnealingLR, the cosine of SGDR without restarts (Loshchilov & Hutter,
    2017, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR):

        lr_k = eta_min + (learning_rate - eta_min) * (1 + cos(pi * k / T_max)) / 2     for every k >= 0

    Past T_max torch keeps following the cosine back up (period 2 * T_max): so does this schedule, unlike
    `optax.cosine_decay_schedule`, which holds the floor. Torch updates the lr recursively (the ratio of two
    consecutive cosines); the closed form differs from it by rounding (~1e-16 of the base lr per step).

    Examples:
      >>> import optimjax
      >>> schedule = optimjax.schedules.cosine_annealing_lr(1.0, T_max=2)
      >>> print([round(float(schedule(k)), 6) for k in range(5)])  # back up after T_max
      [1.0, 0.5, 0.0, 0.5, 1.0]
    """
    where = "cosine_annealing_lr"
    base = _number(where, "learning_rate", learning_rate)
    check_int(where, "T_max", T_max, low=1)
    eta_min = _number(where, "eta_min", eta_min)

    def schedule(count):
        k = jnp.mod(_step(count), 2 * T_max)  # the cosine's period, reduced exactly in integers
        return _real(eta_min) + _real(base - eta_min) * (1 + jnp.cos(_real(math.pi) * k / _real(T_max))) / 2

    # In a ChainedScheduler torch multiplies by the ratio of consecutive cosines only when eta_min = 0.
    schedule = _schedule(schedule, base, chainable=eta_min == 0)
    schedule.cosine_T_max = T_max  # chained_scheduler reproduces torch's restart past T_max
    return schedule


def cosine_annealing_warm_restarts(learning_rate: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0) -> Schedule:
    """torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, SGDR (Loshchilov & Hutter, 2017):

        lr_k = eta_min + (learning_rate - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2

    where cycle i lasts T_i = T_0 * T_mult ** i steps and T_cur counts the steps since the cycle started (the lr
    restarts at learning_rate at the first step of every cycle). Equal to optax's `sgdr_schedule` with the cycles
    listed. The cycle boundaries are exact integers (torch's closed form for `step(epoch)` uses a float log).
    T_0 >= 1, T_mult >= 1 integers.
    """
    where = "cosine_annealing_warm_restarts"
    base = _number(where, "learning_rate", learning_rate)
    check_int(where, "T_0", T_0, low=1)
    check_int(where, "T_mult", T_mult, low=1)
    eta_min = _number(where, "eta_min", eta_min)
    # Start of each cycle (while it fits an int32 step count) and its length.
    starts, lengths = [0], [T_0]
    while T_mult > 1 and starts[-1] + lengths[-1] < 2**31 - 1:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * T_mult)
    starts = np.asarray(starts, np.int64)
    lengths_f = np.asarray(lengths, np.float64)

    def schedule(count):
        k = _step(count)
        if T_mult == 1:
            t_cur, t_i = jnp.mod(k, T_0), _real(T_0)
        else:
            cycle_starts = jnp.asarray(starts, k.dtype)
            cycle = jnp.sum(k >= cycle_starts[1:])
            t_cur, t_i = k - cycle_starts[cycle], _real(lengths_f)[cycle]
        return _real(eta_min) + _real(base - eta_min) * (1 + jnp.cos(_real(math.pi) * t_cur / t_i)) / 2

    return _schedule(schedule, base)


def _cyclic(where: str, step_size_up: Any, step_size_down: Any, mode: str, gamma: Any, scale_fn: Any,
            scale_mode: str) -> Callable[[jax.Array], jax.Array]:
    """CyclicLR's position in the cycle times its amplitude scale, `scale_factor(k) * scale_fn(...)`, in [0, 1]."""
    check_int(where, "step_size_up", step_size_up, low=1)
    down = step_size_up if step_size_down is None else step_size_down
    check_int(where, "step_size_down", down, low=0)
    if scale_fn is None:
        check_choice(where, "mode", mode, ("triangular", "triangular2", "exp_range"))
        gamma = _number(where, "gamma", gamma)
        scale_mode = "iterations" if mode == "exp_range" else "cycle"
        scale_fn = {
            "triangular": lambda x: 1.0,
            "triangular2": lambda x: 1 / (2.0 ** (x - 1)),
            "exp_range": lambda x: _power(gamma, x),
        }[mode]
    else:
        if not callable(scale_fn):
            raise ValueError(f"{where}: scale_fn must be None or a callable, got {scale_fn!r}")
        check_choice(where, "scale_mode", scale_mode, ("cycle", "iterations"))
    total = step_size_up + down

    def amplitude(k):
        cycle = k // total + 1  # torch: floor(1 + k / total_size), computed exactly in integers
        r = k - (cycle - 1) * total  # steps into the cycle; torch's x = r / total_size
        # torch: x / step_ratio on the way up, (x - 1) / (step_ratio - 1) on the way down
        position = jnp.where(r <= step_size_up, r / _real(step_size_up), (total - r) / _real(max(down, 1)))
        return _real(position) * _real(scale_fn(_real(cycle if scale_mode == "cycle" else k)))

    return amplitude


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[Any], Any] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """torch.optim.lr_scheduler.CyclicLR, Smith (2017), "Cyclical Learning Rates for Training Neural Networks",
    WACV:

        cycle = k // (up + down) + 1,   r = k - (cycle - 1) * (up + down)
        position = r / up on the way up (r <= up), (up + down - r) / down on the way down
        lr_k = base_lr + (max_lr - base_lr) * position * scale

    with scale = 1 ("triangular"), 1 / 2 ** (cycle - 1) ("triangular2"), gamma ** k ("exp_range"), or
    `scale_fn(cycle)` / `scale_fn(k)` for a custom `scale_fn` (then `mode` is ignored and `scale_mode` says which
    it takes). A custom scale_fn is called with a float scalar holding the integer (traced under `jit`), as
    `lambda_lr`'s lr_lambda is: it must be JAX-traceable.

    Torch's CyclicLR also cycles the momentum (`cycle_momentum=True` by default) and sets the optimizer's lr to
    base_lr: pass `cyclic_momentum(...)` with the same cycle as the optimizer's `b1` / `momentum` through
    `optax.inject_hyperparams` to get both.
    """
    where = "cyclic_lr"
    base = _number(where, "base_lr", base_lr)
    top = _number(where, "max_lr", max_lr)
    amplitude = _cyclic(where, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def schedule(count):
        return _real(base) + _real(top - base) * amplitude(_step(count))

    return _schedule(schedule, base)


def cyclic_momentum(
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[Any], Any] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """The momentum (Adam's b1 / SGD's momentum) that torch's CyclicLR cycles inversely to the lr
    (`cycle_momentum=True`, its default), with the same cycle arguments as `cyclic_lr`:

        momentum_k = max_momentum - (max_momentum - base_momentum) * position * scale

    Use it as `optax.inject_hyperparams(optimjax.sgd)(learning_rate=cyclic_lr(...), momentum=cyclic_momentum(...))`
    (or `b1=` for the Adam family). Both momenta in [0, 1).
    """
    where = "cyclic_momentum"
    low = _number(where, "base_momentum", base_momentum, 0.0, 1.0)
    high = _number(where, "max_momentum", max_momentum, 0.0, 1.0)
    amplitude = _cyclic(where, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def schedule(count):
        return _real(high) - _real(high - low) * amplitude(_step(count))

    return schedule


def _one_cycle_phases(where: str, total_steps: Any, epochs: Any, steps_per_epoch: Any, pct_start: Any,
                      anneal_strategy: str, three_phase: bool) -> tuple[int, list[float], Callable]:
    """OneCycleLR's total steps, the last step of each phase (torch's floats) and its anneal function."""
    if total_steps is None:
        if epochs is None or steps_per_epoch is None:
            raise ValueError(f"{where}: give total_steps, or both epochs and steps_per_epoch")
        check_int(where, "epochs", epochs, low=1)
        check_int(where, "steps_per_epoch", steps_per_epoch, low=1)
        total_steps = epochs * steps_per_epoch
    check_int(where, "total_steps", total_steps, low=1)
    pct = _number(where, "pct_start", pct_start, 0.0, 1.0)
    if pct == 0:
        raise ValueError(f"{where}: pct_start must be in (0, 1), got {pct_start!r}")
    check_choice(where, "anneal_strategy", anneal_strategy, ("cos", "linear"))
    ends = [float(pct * total_steps) - 1]
    if three_phase:
        ends.append(float(2 * pct * total_steps) - 2)
    ends.append(total_steps - 1)
    starts = [0.0] + ends[:-1]
    if any(e == s for s, e in zip(starts, ends)):
        raise ValueError(
            f"{where}: pct_start={pct_start!r} with total_steps={total_steps} gives a phase of length 0 "
            f"(phase ends {ends}); torch divides by that length"
        )

    def anneal(start, end, frac):
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (jnp.cos(_real(math.pi) * frac) + 1)
        return (end - start) * frac + start

    return total_steps, ends, anneal


def _one_cycle(k: jax.Array, ends: list[float], anneal: Callable, values: list[tuple[float, float]],
               total_steps: int, after: float) -> jax.Array:
    """Torch's phase selection (the first phase with k <= its last step, or the last phase), annealed over the
    phase from values[i][0] to values[i][1]; `after` past total_steps."""
    t = _real(k)
    starts = [0.0] + ends[:-1]

    def phase(i):
        start, end = values[i]
        return anneal(_real(start), _real(end), (t - starts[i]) / _real(ends[i] - starts[i]))

    out = phase(len(ends) - 1)
    for i in reversed(range(len(ends) - 1)):
        out = jnp.where(t <= ends[i], phase(i), out)
    return jnp.where(k > total_steps, _real(after), out)


def one_cycle_lr(
    max_lr: float,
    total_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """torch.optim.lr_scheduler.OneCycleLR, the 1cycle policy of Smith & Topin (2017), "Super-Convergence: Very
    Fast Training of Neural Networks Using Large Learning Rates":

        initial = max_lr / div_factor,   floor = initial / final_div_factor,   T = total_steps
        two phases (default): initial -> max_lr over steps [0, pct_start * T - 1],
                              max_lr -> floor over [pct_start * T - 1, T - 1]
        three_phase: initial -> max_lr -> initial (symmetric about pct_start * T - 1), then initial -> floor
                     ending at T - 1

    each phase annealed by `start + (end - start) * frac` ("linear") or `end + (start - end) / 2 * (1 +
    cos(pi * frac))` ("cos"), frac the position in the phase. The peak is at step pct_start * T - 1 and the floor
    at T - 1, one step earlier than optax's `cosine_onecycle_schedule`. total_steps is given directly or as
    epochs * steps_per_epoch.

    Torch lets its scheduler reach step T (the last phase continued one step past the floor) and raises at any
    later step; this schedule returns torch's value at step T and, past T, holds the floor `floor`.

    Torch also cycles the momentum (`cycle_momentum=True` by default: Adam's beta1 or SGD's momentum between
    0.95 and 0.85): pass `one_cycle_momentum(...)` with the same total_steps, pct_start, anneal_strategy and
    three_phase as the optimizer's `b1` / `momentum` through `optax.inject_hyperparams`.

    Examples:
      >>> import optax, optimjax
      >>> lr = optimjax.schedules.one_cycle_lr(0.1, total_steps=100)
      >>> b1 = optimjax.schedules.one_cycle_momentum(total_steps=100)
      >>> tx = optax.inject_hyperparams(optimjax.adamw)(learning_rate=lr, b1=b1)
      >>> print(f"{float(lr(29)):.3f} {float(b1(29)):.3f}")  # the peak at pct_start * total_steps - 1
      0.100 0.850
    """
    where = "one_cycle_lr"
    top = _number(where, "max_lr", max_lr)
    div = _number(where, "div_factor", div_factor)
    final_div = _number(where, "final_div_factor", final_div_factor)
    if div == 0 or final_div == 0:
        raise ValueError(f"{where}: div_factor and final_div_factor must be > 0, got {div_factor!r}, "
                         f"{final_div_factor!r}")
    total, ends, anneal = _one_cycle_phases(where, total_steps, epochs, steps_per_epoch, pct_start,
                                            anneal_strategy, three_phase)
    initial = top / div
    floor = initial / final_div
    if three_phase:
        values = [(initial, top), (top, initial), (initial, floor)]
    else:
        values = [(initial, top), (top, floor)]

    def schedule(count):
        return _one_cycle(_step(count), ends, anneal, values, total, floor)

    return _schedule(schedule, initial)


def one_cycle_momentum(
    total_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    three_phase: bool = False,
) -> Schedule:
    """The momentum torch's OneCycleLR cycles inversely to the lr (`cycle_momentum=True`, its default): from
    max_momentum down to base_momentum at the lr's peak, then back up to max_momentum (three_phase: down, up,
    then held at max_momentum), with the phases and anneal of `one_cycle_lr` for the same arguments. Past
    total_steps it holds max_momentum.

    Use it as Adam's / NAdam's `b1` or SGD's / RMSprop's `momentum`, through `optax.inject_hyperparams`. Both
    momenta in [0, 1). Note that torch cycles the momentum of a plain `SGD(params, lr)` too (its momentum
    default 0 is overwritten with max_momentum), so `SGD(lr) + OneCycleLR(...)` ports to
    `inject_hyperparams(optimjax.sgd)(learning_rate=one_cycle_lr(...), momentum=one_cycle_momentum(...))`; pass
    `cycle_momentum=False` in torch for a momentum-free run.
    """
    where = "one_cycle_momentum"
    low = _number(where, "base_momentum", base_momentum, 0.0, 1.0)
    high = _number(where, "max_momentum", max_momentum, 0.0, 1.0)
    total, ends, anneal = _one_cycle_phases(where, total_steps, epochs, steps_per_epoch, pct_start,
                                            anneal_strategy, three_phase)
    if three_phase:
        values = [(high, low), (low, high), (high, high)]
    else:
        values = [(high, low), (low, high)]

    def schedule(count):
        return _one_cycle(_step(count), ends, anneal, values, total, high)

    return schedule


def sequential_lr(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """torch.optim.lr_scheduler.SequentialLR: `schedules[i]` from milestone i - 1 on, with its count restarted:

        lr_k = schedules[i](k - milestones[i - 1])   for milestones[i - 1] <= k < milestones[i]

    (milestones[-1] = 0). Milestones are strictly increasing integers >= 1, one fewer than schedules. Each
    schedule restarts from its own base lr, as torch's schedulers do at a milestone (torch resets them through
    their closed form); the one exception in torch is MultiplicativeLR, which has no closed form and continues
    from the previous scheduler's last lr instead: a `multiplicative_lr` after the first raises ValueError.

    Examples:
      Linear warm-up for 3 steps, then cosine decay over 4:

      >>> import optimjax
      >>> s = optimjax.schedules
      >>> schedule = s.sequential_lr([s.linear_lr(1.0, 0.25, total_iters=3), s.cosine_annealing_lr(1.0, 4)], [3])
      >>> print([round(float(schedule(k)), 4) for k in range(8)])
      [0.25, 0.5, 0.75, 1.0, 0.8536, 0.5, 0.1464, 0.0]
    """
    where = "sequential_lr"
    schedules, milestones = list(schedules), list(milestones)
    if not schedules or not all(callable(s) for s in schedules):
        raise ValueError(f"{where}: schedules must be a non-empty sequence of schedules, got {schedules!r}")
    if len(milestones) != len(schedules) - 1:
        raise ValueError(f"{where}: milestones must have len(schedules) - 1 = {len(schedules) - 1} entries, "
                         f"got {milestones!r}")
    for m in milestones:
        check_int(where, "milestones", m, low=1)
    for i, s in enumerate(schedules[1:], 1):
        if getattr(s, "continues_lr", False):
            raise ValueError(
                f"{where}: schedules[{i}] is a multiplicative_lr: torch's SequentialLR continues it from the "
                "previous scheduler's last lr (MultiplicativeLR has no closed form to restart from), which a "
                "schedule of the step count cannot know; use it first, or a lambda_lr"
            )
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"{where}: milestones must be strictly increasing, got {milestones!r}")

    def schedule(count):
        k = _step(count)
        lr = _real(schedules[0](k))
        for m, later in zip(milestones, schedules[1:]):
            lr = jnp.where(k >= m, _real(later(jnp.maximum(k - m, 0))), lr)
        return lr

    return schedule


def chained_scheduler(schedules: Sequence[Schedule]) -> Schedule:
    """torch.optim.lr_scheduler.ChainedScheduler: every scheduler multiplies the lr by its own factor, so

        lr_k = schedules[0](k) * prod_{i >= 1} schedules[i](k) / schedules[i].base_lr

    (all built with the same base lr, as torch's schedulers of one optimizer are). Torch's ChainedScheduler
    steps each scheduler's recursion in turn on the shared lr; that is this product for the schedulers whose step
    multiplies the lr by a ratio: `multiplicative_lr`, `step_lr`, `multi_step_lr`, `constant_lr`, `linear_lr`,
    `exponential_lr`, `polynomial_lr`, and `cosine_annealing_lr` with eta_min = 0 (at most one). The cosine's
    recursion reaches exactly 0 at T_max and restarts at T_max + 1 (+ 2 m T_max) by adding a term to the lr
    instead of multiplying it; the other factors are then counted from that step on, as in torch:

        lr_k = cos_k * prod_{i before the cosine} f_i(k) / f_i(k0) * prod_{i after it} f_i(k) / f_i(k0 - 1)

    with k0 the last restart and f_i the factor `schedules[i](k) / base_lr`. The other schedulers set the lr
    outright (LambdaLR, CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts) or add eta_min, so that in a torch
    chain they override whatever came before them: they raise ValueError here.

    Examples:
      >>> import optimjax
      >>> s = optimjax.schedules
      >>> schedule = s.chained_scheduler([s.constant_lr(1.0, 0.1, total_iters=2), s.exponential_lr(1.0, 0.5)])
      >>> print([round(float(schedule(k)), 4) for k in range(4)])
      [0.1, 0.05, 0.25, 0.125]
    """
    where = "chained_scheduler"
    schedules = list(schedules)
    if not schedules:
        raise ValueError(f"{where}: schedules must be a non-empty sequence, got []")
    for i, s in enumerate(schedules):
        if not getattr(s, "chainable", False):
            raise ValueError(
                f"{where}: schedules[{i}] ({getattr(s, '__qualname__', s)!r}) is not a multiplicative optimjax "
                "schedule (see the docstring for the ones torch's ChainedScheduler multiplies)"
            )
        if s.base_lr == 0:
            raise ValueError(f"{where}: schedules[{i}] has base lr 0, so its factor is undefined")
    cosines = [i for i, s in enumerate(schedules) if getattr(s, "cosine_T_max", None)]
    if len(cosines) > 1:
        raise ValueError(f"{where}: schedules{cosines} are all cosine_annealing_lr; at most one is supported")

    def factor(i, k):
        return _real(schedules[i](k)) / _real(schedules[i].base_lr)

    def ratio(numerator, denominator):  # a factor that stayed 0 leaves torch's lr as it is
        return jnp.where(denominator == 0, _real(1.0), numerator / jnp.where(denominator == 0, 1, denominator))

    def schedule(count):
        k = _step(count)
        if not cosines:
            lr = _real(schedules[0].base_lr)
            for i in range(len(schedules)):
                lr = lr * factor(i, k)
            return lr
        j = cosines[0]
        period = schedules[j].cosine_T_max
        restarted = k >= period + 1
        k0 = period + 1 + 2 * period * (jnp.maximum(k - period - 1, 0) // (2 * period))  # the last restart
        lr = _real(schedules[j](k))
        for i in range(len(schedules)):
            if i != j:
                since = ratio(factor(i, k), factor(i, k0 if i < j else k0 - 1))
                lr = lr * jnp.where(restarted, since, factor(i, k))
        return lr

    return _schedule(schedule, schedules[0].base_lr, chainable=not cosines)
