"""optimjax.schedules against torch.optim.lr_scheduler itself: the lr torch's optimizer uses at each step (and the
momentum / beta1 that CyclicLR and OneCycleLR cycle), for at least three periods and past T_max / total_steps /
milestones; then OneCycleLR with cycle_momentum through optax.inject_hyperparams against torch's trajectory."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from cases import CASES, Problem, float64

S = oj.schedules
L = torch.optim.lr_scheduler
BASE = 0.1  # not a power of two, so that rounding shows


def lam(k):  # works on torch's Python int and on JAX's traced int32 alike
    return 0.9**k + 0.1 * (k % 4)


def mult(k):
    return 0.9 if k % 3 else 1.05


# id, our schedule, torch scheduler for an optimizer with lr=BASE, number of steps (>= 3 periods, past the ends)
LR_CASES = [
    ("lambda", lambda: S.lambda_lr(BASE, lam), lambda o: L.LambdaLR(o, lam), 30),
    ("multiplicative", lambda: S.multiplicative_lr(BASE, mult, num_steps=40),
     lambda o: L.MultiplicativeLR(o, mult), 40),
    ("step", lambda: S.step_lr(BASE, 7, 0.5), lambda o: L.StepLR(o, 7, 0.5), 28),
    ("multi_step", lambda: S.multi_step_lr(BASE, [3, 3, 8, 15], 0.3),
     lambda o: L.MultiStepLR(o, [3, 3, 8, 15], 0.3), 25),
    ("multi_step_at_0", lambda: S.multi_step_lr(BASE, [0, 5]), lambda o: L.MultiStepLR(o, [0, 5]), 10),
    ("constant", lambda: S.constant_lr(BASE, 0.25, 6), lambda o: L.ConstantLR(o, 0.25, 6), 20),
    ("linear_up", lambda: S.linear_lr(BASE, 0.2, 0.9, 8), lambda o: L.LinearLR(o, 0.2, 0.9, 8), 25),
    ("linear_down", lambda: S.linear_lr(BASE, 1.0, 0.0, 7), lambda o: L.LinearLR(o, 1.0, 0.0, 7), 22),
    ("exponential", lambda: S.exponential_lr(BASE, 0.93), lambda o: L.ExponentialLR(o, 0.93), 60),
    ("polynomial", lambda: S.polynomial_lr(BASE, 10, 2.0), lambda o: L.PolynomialLR(o, 10, 2.0), 30),
    ("polynomial_sqrt", lambda: S.polynomial_lr(BASE, 9, 0.5), lambda o: L.PolynomialLR(o, 9, 0.5), 27),
    ("cosine", lambda: S.cosine_annealing_lr(BASE, 10, 0.001), lambda o: L.CosineAnnealingLR(o, 10, 0.001), 65),
    ("cosine_eta0", lambda: S.cosine_annealing_lr(BASE, 7), lambda o: L.CosineAnnealingLR(o, 7), 50),
    ("warm_restarts", lambda: S.cosine_annealing_warm_restarts(BASE, 5, 1, 0.01),
     lambda o: L.CosineAnnealingWarmRestarts(o, 5, 1, 0.01), 20),
    ("warm_restarts_mult", lambda: S.cosine_annealing_warm_restarts(BASE, 3, 2),
     lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2), 50),
    ("cyclic", lambda: S.cyclic_lr(0.01, BASE, 4, 6), lambda o: L.CyclicLR(o, 0.01, BASE, 4, 6), 35),
    ("cyclic_triangular2", lambda: S.cyclic_lr(0.01, BASE, 5, mode="triangular2"),
     lambda o: L.CyclicLR(o, 0.01, BASE, 5, mode="triangular2"), 35),
    ("cyclic_exp_range", lambda: S.cyclic_lr(0.01, BASE, 3, 4, mode="exp_range", gamma=0.97),
     lambda o: L.CyclicLR(o, 0.01, BASE, 3, 4, mode="exp_range", gamma=0.97), 25),
    ("cyclic_scale_fn_cycle", lambda: S.cyclic_lr(0.01, BASE, 3, scale_fn=lambda c: 1 / c),
     lambda o: L.CyclicLR(o, 0.01, BASE, 3, scale_fn=lambda c: 1 / c), 20),
    ("cyclic_scale_fn_iterations",
     lambda: S.cyclic_lr(0.01, BASE, 2, 5, scale_fn=lambda k: 0.99**k, scale_mode="iterations"),
     lambda o: L.CyclicLR(o, 0.01, BASE, 2, 5, scale_fn=lambda k: 0.99**k, scale_mode="iterations"), 22),
    ("one_cycle", lambda: S.one_cycle_lr(BASE, 30), lambda o: L.OneCycleLR(o, BASE, 30), 31),
    ("one_cycle_linear", lambda: S.one_cycle_lr(BASE, 25, pct_start=0.4, anneal_strategy="linear"),
     lambda o: L.OneCycleLR(o, BASE, 25, pct_start=0.4, anneal_strategy="linear"), 26),
    ("one_cycle_three_phase", lambda: S.one_cycle_lr(BASE, 30, three_phase=True, div_factor=10.0),
     lambda o: L.OneCycleLR(o, BASE, 30, three_phase=True, div_factor=10.0), 31),
    ("one_cycle_three_phase_linear",
     lambda: S.one_cycle_lr(BASE, epochs=4, steps_per_epoch=7, three_phase=True, anneal_strategy="linear"),
     lambda o: L.OneCycleLR(o, BASE, epochs=4, steps_per_epoch=7, three_phase=True, anneal_strategy="linear"), 29),
    ("sequential",
     lambda: S.sequential_lr(
         [S.linear_lr(BASE, 0.1, 1.0, 5), S.cosine_annealing_lr(BASE, 10), S.exponential_lr(BASE, 0.9)], [5, 15]),
     lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 5), L.CosineAnnealingLR(o, 10), L.ExponentialLR(o, 0.9)],
                              [5, 15]), 40),
    ("sequential_step_after_constant",
     lambda: S.sequential_lr([S.constant_lr(BASE, 0.5, 3), S.step_lr(BASE, 4, 0.5)], [6]),
     lambda o: L.SequentialLR(o, [L.ConstantLR(o, 0.5, 3), L.StepLR(o, 4, 0.5)], [6]), 20),
    ("chained", lambda: S.chained_scheduler([S.constant_lr(BASE, 0.5, 4), S.exponential_lr(BASE, 0.9)]),
     lambda o: L.ChainedScheduler([L.ConstantLR(o, 0.5, 4), L.ExponentialLR(o, 0.9)]), 20),
    ("chained_four",
     lambda: S.chained_scheduler([S.linear_lr(BASE, 0.5, 1.0, 6), S.step_lr(BASE, 5, 0.7),
                                  S.multi_step_lr(BASE, [4, 11], 0.5), S.polynomial_lr(BASE, 20, 1.5)]),
     lambda o: L.ChainedScheduler([L.LinearLR(o, 0.5, 1.0, 6), L.StepLR(o, 5, 0.7), L.MultiStepLR(o, [4, 11], 0.5),
                                   L.PolynomialLR(o, 20, 1.5)]), 20),
    ("chained_cosine_to_t_max",
     lambda: S.chained_scheduler([S.cosine_annealing_lr(BASE, 12), S.multiplicative_lr(BASE, mult, 20)]),
     lambda o: L.ChainedScheduler([L.CosineAnnealingLR(o, 12), L.MultiplicativeLR(o, mult)]), 13),
    ("chained_cosine_past_t_max",  # torch's cosine recursion restarts from 0 at T_max + 1 by adding a term
     lambda: S.chained_scheduler([S.linear_lr(BASE, 0.5, 1.0, 4), S.cosine_annealing_lr(BASE, 5),
                                  S.exponential_lr(BASE, 0.95), S.step_lr(BASE, 7, 0.8)]),
     lambda o: L.ChainedScheduler([L.LinearLR(o, 0.5, 1.0, 4), L.CosineAnnealingLR(o, 5), L.ExponentialLR(o, 0.95),
                                   L.StepLR(o, 7, 0.8)]), 35),
    ("chained_cosine_first_then_polynomial_to_0",
     lambda: S.chained_scheduler([S.cosine_annealing_lr(BASE, 4), S.polynomial_lr(BASE, 6, 1.0)]),
     lambda o: L.ChainedScheduler([L.CosineAnnealingLR(o, 4), L.PolynomialLR(o, 6, 1.0)]), 30),
]
LR_IDS = [c[0] for c in LR_CASES]


def torch_run(make_scheduler, steps, optimizer="sgd"):
    """torch's lr and momentum (SGD's momentum or Adam's beta1) for each of `steps` optimizer steps, scheduler
    stepped after each."""
    p = torch.nn.Parameter(torch.zeros(1))
    if optimizer == "sgd":
        opt = torch.optim.SGD([p], lr=BASE, momentum=0.9)
    else:
        opt = torch.optim.Adam([p], lr=BASE)
    scheduler = make_scheduler(opt)
    lrs, momenta = [], []
    for _ in range(steps):
        group = opt.param_groups[0]
        lrs.append(float(group["lr"]))
        momenta.append(float(group["momentum"] if optimizer == "sgd" else group["betas"][0]))
        opt.step()
        if len(lrs) < steps:  # OneCycleLR allows total_steps scheduler steps, its lr at step total_steps included
            scheduler.step()
    return np.array(lrs), np.array(momenta)


def ours(schedule, steps):
    """The schedule at 0..steps-1, jitted and vmapped over the int32 step count (as optax feeds it)."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(steps, dtype=jnp.int32)))


@pytest.mark.parametrize("case", LR_CASES, ids=LR_IDS)
def test_float64_lr_equals_torch(case):
    _, make, make_torch, steps = case
    reference, _ = torch_run(make_torch, steps)
    with jax.enable_x64(True):
        got = ours(make(), steps)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12 * np.max(np.abs(reference)))


@pytest.mark.parametrize("case", LR_CASES, ids=LR_IDS)
def test_float32_lr_within_float32_rounding(case):
    _, make, make_torch, steps = case
    reference, _ = torch_run(make_torch, steps)
    got = ours(make(), steps)
    assert got.dtype == np.float32
    # a few float32 ulp of the largest lr (torch's value is float64; rounding it alone costs half an ulp)
    np.testing.assert_allclose(got, reference, rtol=0, atol=8 * np.finfo(np.float32).eps * np.max(np.abs(reference)))


def test_a_python_int_step_gives_the_same_lr():
    schedule = S.cosine_annealing_lr(BASE, 10)
    assert float(schedule(13)) == float(ours(schedule, 14)[13])


MOMENTUM_CASES = [
    ("one_cycle", lambda: S.one_cycle_momentum(30), lambda o: L.OneCycleLR(o, BASE, 30), 31),
    ("one_cycle_linear_custom", lambda: S.one_cycle_momentum(25, pct_start=0.4, anneal_strategy="linear",
                                                            base_momentum=0.7, max_momentum=0.9),
     lambda o: L.OneCycleLR(o, BASE, 25, pct_start=0.4, anneal_strategy="linear", base_momentum=0.7,
                            max_momentum=0.9), 26),
    ("one_cycle_three_phase", lambda: S.one_cycle_momentum(epochs=5, steps_per_epoch=6, three_phase=True),
     lambda o: L.OneCycleLR(o, BASE, epochs=5, steps_per_epoch=6, three_phase=True), 31),
    ("cyclic", lambda: S.cyclic_momentum(0.8, 0.9, 4, 6), lambda o: L.CyclicLR(o, 0.01, BASE, 4, 6), 35),
    ("cyclic_triangular2", lambda: S.cyclic_momentum(0.75, 0.95, 5, mode="triangular2"),
     lambda o: L.CyclicLR(o, 0.01, BASE, 5, mode="triangular2", base_momentum=0.75, max_momentum=0.95), 35),
    ("cyclic_exp_range", lambda: S.cyclic_momentum(step_size_up=3, mode="exp_range", gamma=0.95),
     lambda o: L.CyclicLR(o, 0.01, BASE, 3, mode="exp_range", gamma=0.95), 25),
]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("case", MOMENTUM_CASES, ids=[c[0] for c in MOMENTUM_CASES])
def test_momentum_schedule_equals_torchs_param_group(case, optimizer):
    """SGD's param_groups[0]['momentum'] and Adam's param_groups[0]['betas'][0] as torch's scheduler cycles them."""
    _, make, make_torch, steps = case
    _, reference = torch_run(make_torch, steps, optimizer)
    with jax.enable_x64(True):
        got = ours(make(), steps)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-13)
    np.testing.assert_allclose(ours(make(), steps), reference, rtol=0, atol=4e-7)


def test_one_cycle_past_total_steps_holds_the_floor():
    """Torch raises past total_steps; the schedules hold min lr = max_lr / div_factor / final_div_factor and
    max_momentum."""
    with jax.enable_x64(True):
        lr = ours(S.one_cycle_lr(BASE, 20, div_factor=5.0, final_div_factor=100.0), 40)
        momentum = ours(S.one_cycle_momentum(20, three_phase=True), 40)
    np.testing.assert_array_equal(lr[21:], BASE / 5.0 / 100.0)
    np.testing.assert_array_equal(momentum[21:], 0.95)
    reference, _ = torch_run(lambda o: L.OneCycleLR(o, BASE, 20, div_factor=5.0, final_div_factor=100.0), 21)
    assert abs(lr[19] - BASE / 500) < 1e-15 and abs(reference[19] - BASE / 500) < 1e-15  # the floor at T - 1


def test_multiplicative_holds_past_num_steps():
    with jax.enable_x64(True):
        got = ours(S.multiplicative_lr(BASE, mult, num_steps=10), 15)
    reference, _ = torch_run(lambda o: L.MultiplicativeLR(o, mult), 11)
    np.testing.assert_allclose(got[:11], reference, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(got[11:], got[10])


def test_schedules_inside_jit_with_x64_on_are_float64():
    with jax.enable_x64(True):
        assert S.one_cycle_lr(BASE, 10)(jnp.int32(3)).dtype == jnp.float64
    assert S.one_cycle_lr(BASE, 10)(jnp.int32(3)).dtype == jnp.float32


BAD = [
    (S.cosine_annealing_lr, dict(learning_rate=0.1, T_max=-3), "T_max"),
    (S.cosine_annealing_lr, dict(learning_rate=0.1, T_max=0), "T_max"),
    (S.cosine_annealing_lr, dict(learning_rate=-0.1, T_max=3), "learning_rate"),
    (S.cosine_annealing_lr, dict(learning_rate=0.1, T_max=3, eta_min=-1.0), "eta_min"),
    (S.cosine_annealing_warm_restarts, dict(learning_rate=0.1, T_0=0), "T_0"),
    (S.cosine_annealing_warm_restarts, dict(learning_rate=0.1, T_0=2, T_mult=0), "T_mult"),
    (S.cosine_annealing_warm_restarts, dict(learning_rate=0.1, T_0=2.5), "T_0"),
    (S.one_cycle_lr, dict(max_lr=0.1, total_steps=10, pct_start=1.5), "pct_start"),
    (S.one_cycle_lr, dict(max_lr=0.1, total_steps=10, pct_start=0.0), "pct_start"),
    (S.one_cycle_lr, dict(max_lr=0.1, total_steps=10, pct_start=0.1), "pct_start"),  # phase of length 0
    (S.one_cycle_lr, dict(max_lr=0.1, total_steps=0), "total_steps"),
    (S.one_cycle_lr, dict(max_lr=0.1), "total_steps"),
    (S.one_cycle_lr, dict(max_lr=0.1, epochs=0, steps_per_epoch=3), "epochs"),
    (S.one_cycle_lr, dict(max_lr=0.1, total_steps=10, anneal_strategy="cosine"), "anneal_strategy"),
    (S.one_cycle_lr, dict(max_lr=0.1, total_steps=10, div_factor=0.0), "div_factor"),
    (S.one_cycle_momentum, dict(total_steps=10, max_momentum=1.0), "max_momentum"),
    (S.multi_step_lr, dict(learning_rate=0.1, milestones=[5, 3]), "milestones"),
    (S.multi_step_lr, dict(learning_rate=0.1, milestones=[-1, 3]), "milestones"),
    (S.step_lr, dict(learning_rate=0.1, step_size=0), "step_size"),
    (S.step_lr, dict(learning_rate=0.1, step_size=3, gamma=-0.5), "gamma"),
    (S.constant_lr, dict(learning_rate=0.1, factor=0.0), "factor"),
    (S.constant_lr, dict(learning_rate=0.1, factor=1.5), "factor"),
    (S.constant_lr, dict(learning_rate=0.1, total_iters=0), "total_iters"),
    (S.linear_lr, dict(learning_rate=0.1, start_factor=0.0), "start_factor"),
    (S.linear_lr, dict(learning_rate=0.1, end_factor=1.5), "end_factor"),
    (S.polynomial_lr, dict(learning_rate=0.1, total_iters=0), "total_iters"),
    (S.polynomial_lr, dict(learning_rate=0.1, power=-1.0), "power"),
    (S.exponential_lr, dict(learning_rate=0.1, gamma=-0.9), "gamma"),
    (S.exponential_lr, dict(learning_rate=lambda k: 0.1, gamma=0.9), "learning_rate"),
    (S.cyclic_lr, dict(base_lr=0.1, max_lr=1.0, step_size_up=0), "step_size_up"),
    (S.cyclic_lr, dict(base_lr=0.1, max_lr=1.0, mode="triangle"), "mode"),
    (S.cyclic_lr, dict(base_lr=0.1, max_lr=1.0, scale_fn=lambda x: 1.0, scale_mode="epochs"), "scale_mode"),
    (S.multiplicative_lr, dict(learning_rate=0.1, lr_lambda=lambda k: 0.9, num_steps=0), "num_steps"),
    (S.lambda_lr, dict(learning_rate=0.1, lr_lambda=0.9), "lr_lambda"),
    (S.sequential_lr, dict(schedules=[S.step_lr(0.1, 2), S.step_lr(0.1, 3)], milestones=[]), "milestones"),
    (S.sequential_lr, dict(schedules=[S.step_lr(0.1, 2)] * 3, milestones=[5, 5]), "milestones"),
    (S.sequential_lr, dict(schedules=[S.step_lr(0.1, 2)] * 2, milestones=[0]), "milestones"),
    (S.chained_scheduler, dict(schedules=[S.step_lr(0.1, 2), S.one_cycle_lr(0.1, 10)]), "schedules[1]"),
    (S.chained_scheduler, dict(schedules=[S.cosine_annealing_lr(0.1, 3, eta_min=0.01)]), "schedules[0]"),
    (S.chained_scheduler, dict(schedules=[]), "schedules"),
    (S.chained_scheduler, dict(schedules=[S.cosine_annealing_lr(0.1, 3), S.cosine_annealing_lr(0.1, 4)]), "schedules"),
    (S.sequential_lr, dict(schedules=[S.step_lr(0.1, 2), S.multiplicative_lr(0.1, mult, 5)], milestones=[3]),
     "schedules.1."),
]


@pytest.mark.parametrize("factory, kwargs, name", BAD, ids=[f"{f.__name__}-{n}-{i}" for i, (f, _, n) in enumerate(BAD)])
def test_nonsense_arguments_raise_valueerror_naming_them(factory, kwargs, name):
    with pytest.raises(ValueError, match=f"{factory.__name__}: .*{name.replace('[', '.').replace(']', '.')}"):
        factory(**kwargs)


# --- OneCycleLR with cycle_momentum=True, through inject_hyperparams, against torch's trajectory ------------------

def _cycled(case):
    """The hyperparameter torch's OneCycleLR cycles for this case's optimizer (None: it has none to cycle)."""
    if case.torch_cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam):
        return "b1"
    if case.torch_cls in (torch.optim.SGD, torch.optim.RMSprop):  # plain SGD too: torch sets its momentum to 0.95
        return "momentum"
    return None


# One row per family that has a momentum for torch to cycle (the whole table would cost 20 s of CI).
ONE_CYCLE_CASES = [c for c in CASES if _cycled(c) and c.id in (
    "sgd", "amsgrad", "adamw", "nadamw", "momentum_dampening_wd", "nesterov_wd", "rmsprop_centered_momentum_wd")]


def _one_cycle_run(case, problem):
    total = problem.steps
    tx = optax.inject_hyperparams(case.factory)(
        **{**case.kwargs, "learning_rate": S.one_cycle_lr(case.kwargs["learning_rate"], total),
           _cycled(case): S.one_cycle_momentum(total, base_momentum=0.5)}
    )
    ours = problem.run_optimjax(tx)
    reference = problem.run_torch(case.torch, make_scheduler=lambda o: L.OneCycleLR(
        o, case.kwargs["learning_rate"], total, base_momentum=0.5))
    return problem.relative_error(ours, reference)


@pytest.mark.parametrize("case", ONE_CYCLE_CASES, ids=[c.id for c in ONE_CYCLE_CASES])
def test_one_cycle_with_cycled_momentum_follows_torch_float32(case):
    problem = Problem(seed=4, steps=30)
    assert _one_cycle_run(case, problem) < 1e-5


@pytest.mark.parametrize("case_id", ["adamw", "momentum", "nadam"])
def test_one_cycle_with_cycled_momentum_follows_torch_float64(case_id):
    case = next(c for c in CASES if c.id == case_id)
    with float64():
        problem = Problem(seed=5, steps=30, dtype=np.float64)
        assert _one_cycle_run(case, problem) < 1e-11


def test_cycled_momentum_changes_the_trajectory():
    """The comparison above is not vacuous: a constant b1 gives a different run than torch's cycled beta1."""
    case = next(c for c in CASES if c.id == "adamw")
    problem = Problem(seed=4, steps=30)
    tx = optax.inject_hyperparams(case.factory)(**{**case.kwargs, "learning_rate": S.one_cycle_lr(1e-2, 30)})
    reference = problem.run_torch(case.torch, make_scheduler=lambda o: L.OneCycleLR(o, 1e-2, 30, base_momentum=0.5))
    assert 1e-3 < problem.relative_error(problem.run_optimjax(tx), reference) < math.inf
