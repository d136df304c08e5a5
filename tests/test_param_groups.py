"""torch's param_groups in optax's terms: `optax.partition` (a transformation per group) or a `mask` (one
transformation, decay on some leaves), against torch with two groups, in float32 and float64.

The table's leaves: "w" (4, 3) and "conv" (2, 3, 2) are weights, "b" (3,) and "scale" () a bias and a norm scale:
the usual recipe decays the first two and not the last two.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from _resume import run_optimjax, run_torch, torch_params
from cases import Problem, float64
from optimjax import port

L = torch.optim.lr_scheduler

F32_TOL = 1e-5
F64_TOL = 1e-11
DECAY, NO_DECAY = ["w", "conv"], ["b", "scale"]
PATHS = DECAY + NO_DECAY  # torch's parameter indices: group after group


def by_ndim(params):
    """The recipe's labels: matrices and conv kernels decay, vectors and scalars (biases, norm scales) do not."""
    return jax.tree.map(lambda x: "decay" if x.ndim > 1 else "no_decay", params)


def torch_groups(params, decay, no_decay):
    return [{"params": [params[k] for k in DECAY], **decay}, {"params": [params[k] for k in NO_DECAY], **no_decay}]


def both(make_torch, tx, lr_lambda=None, steps=30):
    """Trajectories of torch (two groups) and optimjax on the table's problem, float32 then float64."""
    errors = []
    for dtype, seed in ((np.float32, 20), (np.float64, 21)):
        with float64() if dtype == np.float64 else _nothing():
            problem = Problem(seed=seed, steps=steps, dtype=dtype)
            params = torch_params(problem.params0)
            optimizer = make_torch(params)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
            reference = run_torch(problem, optimizer, params, scheduler=scheduler)
            ours, _ = run_optimjax(problem, tx)
            errors.append(problem.relative_error(ours, reference))
    return errors


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check(errors):
    assert errors[0] < F32_TOL and errors[1] < F64_TOL, f"float32 {errors[0]:.2e}, float64 {errors[1]:.2e}"


def test_two_groups_with_their_own_lr_weight_decay_and_betas():
    tx = optax.partition({"decay": oj.adamw(1e-2, weight_decay=0.1),
                          "no_decay": oj.adamw(3e-2, b1=0.8, b2=0.99, weight_decay=0.0)}, by_ndim)
    check(both(lambda p: torch.optim.AdamW(torch_groups(p, dict(weight_decay=0.1),
                                                       dict(lr=3e-2, betas=(0.8, 0.99), weight_decay=0.0)),
                                          lr=1e-2, foreach=False), tx))


def test_no_decay_on_biases_and_norms_is_a_mask():
    """Same optimizer for both groups, decay on the weights only: `mask` is enough (and shorter)."""
    tx = oj.adamw(1e-2, weight_decay=0.1, mask=lambda params: jax.tree.map(lambda x: x.ndim > 1, params))
    check(both(lambda p: torch.optim.AdamW(torch_groups(p, {}, dict(weight_decay=0.0)), lr=1e-2, weight_decay=0.1,
                                          foreach=False), tx))


def test_coupled_decay_per_group_with_sgd():
    tx = optax.partition({"decay": oj.sgd(0.02, momentum=0.9, weight_decay=0.05),
                          "no_decay": oj.sgd(0.05, momentum=0.9, nesterov=True)}, by_ndim)
    check(both(lambda p: torch.optim.SGD(torch_groups(p, dict(weight_decay=0.05), dict(lr=0.05, nesterov=True)),
                                        lr=0.02, momentum=0.9, foreach=False), tx))


def test_each_group_its_own_schedule():
    """torch's LambdaLR with one lambda per group == each group's optimizer with its own optax schedule."""
    warmup_cosine = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=5, decay_steps=30, end_value=1e-3)
    exponential = optax.exponential_decay(3e-2, transition_steps=1, decay_rate=0.95)
    tx = optax.partition({"decay": oj.adamw(warmup_cosine, weight_decay=0.1),
                          "no_decay": oj.adamw(exponential, weight_decay=0.0)}, by_ndim)
    # optax's schedules compute in float32 from the int32 count (also under x64): give torch the same numbers
    count = lambda t: jnp.asarray(t, jnp.int32)  # noqa: E731
    lambdas = [lambda t: float(warmup_cosine(count(t))) / 1e-2, lambda t: float(exponential(count(t))) / 3e-2]
    check(both(lambda p: torch.optim.AdamW(torch_groups(p, {}, dict(lr=3e-2, weight_decay=0.0)), lr=1e-2,
                                          weight_decay=0.1, foreach=False), tx, lr_lambda=lambdas))


def make_two_groups(params):
    return torch.optim.AdamW(torch_groups(params, dict(weight_decay=0.1),
                                          dict(lr=3e-2, betas=(0.8, 0.99), weight_decay=0.0, amsgrad=True)),
                             lr=1e-2, foreach=False)


def test_from_torch_builds_the_groups():
    problem = Problem(seed=22, steps=2)
    tx = port.from_torch(make_two_groups(torch_params(problem.params0)), PATHS)
    check(both(make_two_groups, tx))
    with pytest.raises(ValueError, match=r"has 2 param groups; pass paths"):
        port.from_torch(make_two_groups(torch_params(problem.params0)))
    with pytest.raises(ValueError, match=r"the JAX leaf 'extra' is in no param group"):
        tx.init({**problem.params0, "extra": np.zeros(2, np.float32)})


def test_two_groups_resume_from_a_torch_checkpoint_and_back():
    """The state of an optax.partition (one masked state per group) loads from torch's two groups and goes back."""
    problem = Problem(seed=23, steps=20)
    params = torch_params(problem.params0)
    optimizer = make_two_groups(params)
    before = run_torch(problem, optimizer, params, 0, 10)
    saved = copy.deepcopy(optimizer.state_dict())
    reference = run_torch(problem, optimizer, params, 10, 10)
    tx = port.from_torch(optimizer, PATHS)
    state = port.load_state_dict(tx, before[-1], saved, PATHS)
    ours, state = run_optimjax(problem, tx, before[-1], state, 10, 10)
    assert problem.relative_error(ours, reference) < F32_TOL
    back = port.state_dict(tx, state, ours[-1], PATHS, optimizer)
    assert back["param_groups"] == optimizer.state_dict()["param_groups"]
    for i, k in enumerate(PATHS):
        for key, value in optimizer.state_dict()["state"][i].items():
            torch.testing.assert_close(back["state"][i][key], value, rtol=1e-5, atol=1e-7, msg=f"{k} {key}")


@pytest.mark.parametrize("make_scheduler", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=1e-3),
    lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=8),
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2, eta_min=1e-3),
    lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=5),
                                 L.CosineAnnealingLR(o, T_max=10, eta_min=1e-4), L.ExponentialLR(o, gamma=0.9)],
                             milestones=[6, 16]),
    lambda o: L.ChainedScheduler([L.MultiStepLR(o, [5, 11], gamma=0.5), L.LinearLR(o, 0.5, total_iters=9),
                                  L.ExponentialLR(o, gamma=0.97)]),
    lambda o: L.OneCycleLR(o, max_lr=[0.05, 0.02], total_steps=30, pct_start=0.4, cycle_momentum=False),
    lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=30, div_factor=10.0, final_div_factor=100.0),
    lambda o: L.OneCycleLR(o, max_lr=[0.05, 0.02], epochs=3, steps_per_epoch=10, anneal_strategy="linear",
                           three_phase=True, base_momentum=0.8, max_momentum=0.9),
    lambda o: L.CyclicLR(o, base_lr=[1e-3, 5e-4], max_lr=[0.05, 0.02], step_size_up=4, step_size_down=6),
    lambda o: L.CyclicLR(o, 1e-3, 0.04, step_size_up=5, mode="triangular2", cycle_momentum=False),
    lambda o: L.CyclicLR(o, 1e-3, 0.04, step_size_up=3, step_size_down=4, mode="exp_range", gamma=0.97,
                         base_momentum=0.7, max_momentum=0.95),
], ids=["StepLR", "CosineAnnealingLR", "LinearLR", "CosineAnnealingWarmRestarts", "SequentialLR",
        "ChainedScheduler", "OneCycleLR-lr-only", "OneCycleLR", "OneCycleLR-three-phase", "CyclicLR",
        "CyclicLR-triangular2-lr-only", "CyclicLR-exp_range"])
def test_from_torch_with_a_scheduler(make_scheduler):
    """from_torch(optimizer, paths, scheduler): each group's optimjax schedule, on torch's trajectory with the
    scheduler stepped after every step (30 steps, past CosineAnnealingLR's T_max, over three warm restarts, through
    both of SequentialLR's milestones, the whole of OneCycleLR's cycle, three of CyclicLR's); the lr of every step
    is torch's, and so is beta1 where OneCycleLR or CyclicLR cycles it (AdamW's groups)."""
    problem = Problem(seed=24, steps=30)
    params = torch_params(problem.params0)
    optimizer = make_two_groups(params)
    scheduler = make_scheduler(optimizer)
    tx = port.from_torch(optimizer, PATHS, scheduler)
    read = port.TORCH_SCHEDULERS[type(scheduler).__name__]
    group_schedules = [read(scheduler, group) for group in optimizer.param_groups]
    cycled = getattr(scheduler, "cycle_momentum", False)
    if cycled:  # beta1's schedule: the injected hyperparameter of each group's transformation
        group_schedules += [port._cycled_momentum("test", scheduler, group, "Adam") for group in optimizer.param_groups]
    lrs, step = [], scheduler.step

    def record_and_step():  # the lr (and beta1) of the step just taken
        lrs.append([group["lr"] for group in optimizer.param_groups]
                   + ([group["betas"][0] for group in optimizer.param_groups] if cycled else []))
        step()

    scheduler.step = record_and_step
    reference = run_torch(problem, optimizer, params, scheduler=scheduler)
    assert len(lrs) == problem.steps and len(set(lrs[k][0] for k in range(problem.steps))) > 3
    ours, _ = run_optimjax(problem, tx)
    assert problem.relative_error(ours, reference) < F32_TOL
    with jax.enable_x64(True):  # each group's learning rate at every step, in float64: torch's
        for g, schedule in enumerate(group_schedules):
            got = jax.jit(jax.vmap(schedule))(jnp.arange(problem.steps, dtype=jnp.int32))
            want = [lr[g] for lr in lrs]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * max(want), err_msg=f"group {g}")



@pytest.mark.parametrize("make_scheduler", [
    lambda o: L.OneCycleLR(o, max_lr=0.2, total_steps=25, pct_start=0.2, base_momentum=0.7),
    lambda o: L.CyclicLR(o, 0.01, 0.2, step_size_up=3, step_size_down=5, mode="triangular2", base_momentum=0.6),
], ids=["OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_from_torch_cycling_sgds_momentum(nesterov, make_scheduler):
    """OneCycleLR and CyclicLR on SGD (torch overwrites the group's momentum with max_momentum, then cycles it
    every step): from_torch's transformation follows torch's trajectory, float32 and float64, over 25 steps."""
    errors = []
    for dtype in (np.float32, np.float64):
        with float64() if dtype == np.float64 else _nothing():
            problem = Problem(seed=26, steps=25, dtype=dtype)
            params = torch_params(problem.params0)
            optimizer = torch.optim.SGD(params.values(), lr=0.1, momentum=0.5, nesterov=nesterov, weight_decay=1e-3)
            scheduler = make_scheduler(optimizer)
            tx = port.from_torch(optimizer, scheduler=scheduler)
            reference = run_torch(problem, optimizer, params, scheduler=scheduler)
            ours, _ = run_optimjax(problem, tx)
            errors.append(problem.relative_error(ours, reference))
    check(errors)


def test_from_torch_with_one_cycle_resumes_from_a_torch_checkpoint():
    """AdamW's two groups under OneCycleLR (lr and beta1 cycled), resumed at step 12 from torch's state_dict:
    port.load_state_dict sets the injected hyperparameters' count, so both schedules continue where torch's
    scheduler is; the next 12 steps are torch's."""
    problem = Problem(seed=27, steps=24)
    params = torch_params(problem.params0)
    optimizer = make_two_groups(params)
    scheduler = L.OneCycleLR(optimizer, max_lr=[0.05, 0.02], total_steps=24)
    tx = port.from_torch(optimizer, PATHS, scheduler)
    before = run_torch(problem, optimizer, params, 0, 12, scheduler)
    saved = copy.deepcopy(optimizer.state_dict())
    reference = run_torch(problem, optimizer, params, 12, 12, scheduler)
    state = port.load_state_dict(tx, before[-1], saved, PATHS)
    ours, _ = run_optimjax(problem, tx, before[-1], state, 12, 12)
    assert problem.relative_error(ours, reference) < F32_TOL
    fresh, _ = run_optimjax(problem, tx, before[-1], tx.init(before[-1]), 12, 12)  # schedules from step 0: not torch's
    assert problem.relative_error(fresh, reference) > 100 * F32_TOL


def test_from_torch_refuses_a_scheduler_it_cannot_read():
    problem = Problem(seed=25, steps=2)
    optimizer = make_two_groups(torch_params(problem.params0))
    scheduler = L.LambdaLR(optimizer, lambda k: 0.9**k)
    with pytest.raises(NotImplementedError, match=r"scheduler=LambdaLR is not supported"):
        port.from_torch(optimizer, PATHS, scheduler)
    optimizer = torch.optim.RAdam(torch_params(problem.params0).values(), lr=1e-2)
    with pytest.raises(NotImplementedError, match=r"OneCycleLR cycles the momentum of RAdam.*cycle_momentum=False"):
        port.from_torch(optimizer, scheduler=L.OneCycleLR(optimizer, max_lr=0.1, total_steps=10))
    optimizer = make_two_groups(torch_params(problem.params0))
    warm_up = L.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / 5))
    scheduler = L.SequentialLR(optimizer, [warm_up, L.CosineAnnealingLR(optimizer, T_max=10)], milestones=[5])
    with pytest.raises(NotImplementedError, match=r"scheduler=LambdaLR in SequentialLR is not supported"):
        port.from_torch(optimizer, PATHS, scheduler)
    optimizer = make_two_groups(torch_params(problem.params0))  # a momentum cycle inside SequentialLR: refused
    cycle = L.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    scheduler = L.SequentialLR(optimizer, [L.ConstantLR(optimizer, total_iters=3), cycle], milestones=[3])
    with pytest.raises(NotImplementedError, match=r"scheduler=OneCycleLR in SequentialLR cycles the momentum"):
        port.from_torch(optimizer, PATHS, scheduler)
    cycle.cycle_momentum = False  # its lr alone is read
    port.from_torch(optimizer, PATHS, scheduler)
