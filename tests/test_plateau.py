"""reduce_lr_on_plateau against torch.optim.lr_scheduler.ReduceLROnPlateau itself, on loss sequences with
improvements, plateaus, sub-threshold improvements, cooldowns, max mode, min_lr and eps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from cases import CASES, Problem, float64

BASE = 0.1


def losses(n=80, seed=0):
    """Decreasing stretches, flat stretches, noisy stretches and improvements smaller than 1e-2 relative."""
    rng = np.random.default_rng(seed)
    out, x = [], 1.0
    while len(out) < n:
        kind = rng.integers(4)
        for _ in range(int(rng.integers(2, 8))):
            if kind == 0:
                x *= 0.9  # clear improvement
            elif kind == 1:
                x *= 1.0  # exact plateau
            elif kind == 2:
                x *= 0.997  # better, but under a 1e-2 relative threshold
            else:
                x *= 1 + 0.05 * rng.normal()  # noise
            out.append(x)
    return out[:n]


CONFIGS = {
    "defaults_patience_2": dict(patience=2),
    "rel_threshold_cooldown": dict(factor=0.5, patience=2, threshold=1e-2, cooldown=3),
    "abs_threshold": dict(factor=0.5, patience=1, threshold=0.02, threshold_mode="abs"),
    "patience_0_cooldown_1": dict(factor=0.7, patience=0, cooldown=1),
    "max_rel": dict(mode="max", factor=0.5, patience=1, threshold=1e-2, cooldown=2),
    "max_abs": dict(mode="max", factor=0.5, patience=2, threshold=0.01, threshold_mode="abs"),
    "min_lr": dict(factor=0.3, patience=1, min_lr=0.02),
    "large_eps": dict(factor=0.5, patience=1, eps=0.02),  # 0.1 -> 0.05 -> 0.025, then cuts < eps
}


def metric(config, seed=0):
    values = losses(seed=seed)
    return [1 - v for v in values] if config.get("mode") == "max" else values


def torch_lrs(config, values):
    """torch's lr in force at each optimizer step (before the scheduler sees that step's value) and after it."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **config)
    before, after = [], []
    for v in values:
        before.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step(v)
        after.append(opt.param_groups[0]["lr"])
    return np.array(before), np.array(after)


def ours(config, values):
    tx = oj.reduce_lr_on_plateau(BASE, **config)
    state = tx.init(jnp.zeros(3))
    step = jax.jit(tx.update)
    applied, after = [], []
    for v in values:
        updates, state = step(jnp.ones(3), state, value=v)
        applied.append(float(updates[0]))
        after.append(float(state.lr))
        assert float(state.scale) == pytest.approx(float(state.lr) / BASE, rel=1e-6)
    return np.array(applied), np.array(after)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lr_sequence_equals_torch(name):
    config = CONFIGS[name]
    values = metric(config)
    before, after = torch_lrs(config, values)
    assert len(set(after)) >= 3, "the sequence must make torch cut the lr at least twice"
    with jax.enable_x64(True):
        applied, ours_after = ours(config, values)
    np.testing.assert_allclose(ours_after, after, rtol=1e-15)
    np.testing.assert_allclose(applied, before / BASE, rtol=1e-15)  # the update scaled by the lr before the value
    applied32, ours_after32 = ours(config, values)
    np.testing.assert_allclose(ours_after32, after, rtol=1e-6)


def test_nan_is_a_bad_value_as_in_torch():
    config = dict(factor=0.5, patience=1)
    values = [1.0, float("nan"), float("nan"), 0.5, float("nan"), float("nan"), float("nan")]
    _, after = torch_lrs(config, values)
    with jax.enable_x64(True):
        _, ours_after = ours(config, values)
    np.testing.assert_array_equal(ours_after, after)
    assert after[-1] < after[0]


def test_metric_once_per_epoch_with_value_on_the_last_batch():
    """torch's epoch loop: optimizer.step() per batch, scheduler.step(metric) after the epoch's last batch."""
    config = dict(factor=0.5, patience=1, cooldown=1)
    values, batches = losses(n=30, seed=2), 4
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **config)
    tx = oj.reduce_lr_on_plateau(BASE, **config)
    state = tx.init(jnp.zeros(1))
    with_value, without = jax.jit(tx.update), jax.jit(lambda u, s: tx.update(u, s))
    reference, ours = [], []
    for v in values:
        for b in range(batches):
            reference.append(opt.param_groups[0]["lr"])
            opt.step()
            last = b == batches - 1
            updates, state = with_value(jnp.ones(1), state, value=v) if last else without(jnp.ones(1), state)
            ours.append(float(updates[0]) * BASE)
        scheduler.step(v)
    assert len(set(reference)) >= 3
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_plateau_on_adam_follows_torch_trajectory():
    """adam + reduce_lr_on_plateau == torch.optim.Adam + ReduceLROnPlateau stepped with the same values."""
    case = next(c for c in CASES if c.id == "adam_wd")
    config = dict(factor=0.5, patience=1, threshold=1e-2, cooldown=1)
    with float64():
        problem = Problem(seed=7, steps=30, dtype=np.float64)
        values = losses(n=problem.steps, seed=1)
        params = {k: torch.tensor(v) for k, v in problem.params0.items()}
        opt = case.torch(list(params.values()))
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **config)
        reference = []
        for t in range(problem.steps):
            for k, g in problem.grad({k: p.numpy() for k, p in params.items()}, t).items():
                params[k].grad = torch.tensor(g)
            opt.step()
            scheduler.step(values[t])
            reference.append({k: p.detach().numpy().copy() for k, p in params.items()})
        assert opt.param_groups[0]["lr"] < case.kwargs["learning_rate"] / 4

        tx = optax.chain(case.optimjax(), oj.reduce_lr_on_plateau(case.kwargs["learning_rate"], **config))
        p = jax.tree.map(jnp.asarray, problem.params0)
        state = tx.init(p)

        @jax.jit
        def step(grads, state, params, value):
            updates, state = tx.update(grads, state, params, value=value)
            return optax.apply_updates(params, updates), state

        ours = []
        for t in range(problem.steps):
            p, state = step(jax.tree.map(jnp.asarray, problem.grad(jax.tree.map(np.asarray, p), t)), state, p,
                            values[t])
            ours.append(jax.tree.map(np.asarray, p))
        assert problem.relative_error(ours, reference) < 1e-11


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=0.1, mode="minimum"), "mode"),
    (dict(learning_rate=0.1, factor=1.0), "factor"),
    (dict(learning_rate=0.1, factor=-0.1), "factor"),
    (dict(learning_rate=0.1, patience=-1), "patience"),
    (dict(learning_rate=0.1, patience=1.5), "patience"),
    (dict(learning_rate=0.1, threshold=-1e-4), "threshold"),
    (dict(learning_rate=0.1, threshold_mode="relative"), "threshold_mode"),
    (dict(learning_rate=0.1, cooldown=-2), "cooldown"),
    (dict(learning_rate=0.1, min_lr=-1.0), "min_lr"),
    (dict(learning_rate=0.1, eps=-1.0), "eps"),
])
def test_bad_arguments_raise_valueerror_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=f"reduce_lr_on_plateau: {name}"):
        oj.reduce_lr_on_plateau(**kwargs)
