"""optimjax.fused: the one-pass CPU kernel gives the numbers of the GradientTransformation path and of torch.optim.

References: torch.optim (single-tensor path) for whole trajectories; a numpy float32 transcription of the
documented per-element equations for one step, bit for bit; the plain optimjax optimizer for the state layout and
the fallbacks.
"""

import inspect
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimjax as oj
from optimjax._kernels import Kernel, kernel_of
from optimjax.adam import adam_scalars
from optimjax.nadam import nadam_scalars
from optimjax.radam import radam_step_scalars, rectification_start
from cases import CASES, Problem, float64

# Every case of the table whose optimizer has a kernel (not AMSGrad, centered RMSprop or RMSprop with momentum,
# Adadelta; plain SGD has no state and stays on XLA's single pass).
FUSED_CASES = [c for c in CASES if isinstance(kernel_of(c.factory(**c.kwargs)), Kernel)]
F32_TOL = 1e-5
F64_TOL = 1e-11


def fused_of(case, **override):
    return oj.fused.of(case.factory(**{**case.kwargs, **override}))


def uses_kernel(fused, grads, state, params) -> bool:
    return oj.fused.TARGET in jax.jit(fused.step).lower(grads, state, params).as_text()


def run_fused(problem: Problem, fused) -> list[dict]:
    params = jax.tree.map(jnp.asarray, problem.params0)
    grads = jax.tree.map(jnp.asarray, problem.grad(problem.params0, 0))
    assert uses_kernel(fused, grads, fused.init(params), params), "the kernel did not run: the test would be vacuous"
    return problem.run_steps(fused.init, fused.step)


def test_kernel_builds_on_this_machine():
    assert oj.fused.available(), oj.fused.unavailable_reason()


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_float32_matches_torch(case):
    problem = Problem(seed=1)
    err = problem.relative_error(run_fused(problem, fused_of(case)), problem.run_torch(case.torch))
    assert err < F32_TOL, f"fused {case.id}: {err:.2e} from torch"


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_float64_matches_torch(case):
    with float64():
        problem = Problem(seed=2, dtype=np.float64)
        ours = run_fused(problem, fused_of(case))
        assert ours[-1]["w"].dtype == np.float64
        err = problem.relative_error(ours, problem.run_torch(case.torch))
    assert err < F64_TOL, f"fused {case.id}: {err:.2e} from torch in float64"


@pytest.mark.parametrize("case", [c for c in FUSED_CASES if c.id in ("adamw", "nadamw")], ids=lambda c: c.id)
def test_learning_rate_schedule_matches_torch(case):
    base = case.kwargs["learning_rate"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, base, warmup_steps=10, decay_steps=60, end_value=base / 10)
    problem = Problem(seed=3)
    ours = run_fused(problem, fused_of(case, learning_rate=schedule))
    reference = problem.run_torch(case.torch, lr_lambda=lambda t: float(schedule(t)) / base)
    assert problem.relative_error(ours, reference) < F32_TOL


STEP_COUNT = 4  # the state's step counts before the tested step (t = 5), so that every correction is non-trivial
MU_PRODUCT = 0.2  # NAdam's P_{t-1}


def _numpy_step(kind, hyper, p, g, states):
    """One step of the documented equations (optimjax/_kernels/fused_step.cc), each operation rounded to float32.

    The per-step scalars of Adam and NAdam come from the same JAX functions as the transforms' (`adam_scalars`,
    `nadam_scalars`); everything per element is numpy, in the order written in the transforms' docstrings.
    Returns the new params and state arrays.
    """
    f32 = np.float32
    lr, wd = f32(hyper["learning_rate"]), f32(hyper.get("weight_decay", 0.0))
    decoupled = kind in ("adamw", "nadamw")
    if wd and not decoupled:
        g = g + wd * p
    if kind in ("adam", "adamw", "nadam", "nadamw"):
        b1, b2, eps, (m, v) = hyper["b1"], hyper["b2"], f32(hyper["eps"]), states
        t = jnp.asarray(STEP_COUNT + 1, jnp.float32)
        w = f32(1 - b1)
        m = m + w * (g - m) if abs(1 - b1) < 0.5 else g - (g - m) * (f32(1) - w)  # torch.lerp's two forms
        v = v * f32(b2) + (f32(1 - b2) * g) * g
        if kind.startswith("nadam"):
            scalars = nadam_scalars(b1, b2, hyper["momentum_decay"], t, jnp.asarray(MU_PRODUCT, jnp.float32))
            _, a, b, c = (np.asarray(x, f32) for x in scalars)
            d = (a * g + b * m) / (np.sqrt(v / c) + eps)
        else:
            a, _, b = (np.asarray(x, f32) for x in adam_scalars(b1, b2, t))
            d = (a * m) / (np.sqrt(v) / b + eps)
        new_states = [m, v]
    elif kind == "sgd":
        beta, (u,) = f32(hyper["momentum"]), states
        u = u * beta + ((f32(1) - f32(hyper["dampening"])) * g if hyper.get("dampening") else g)
        d = g + beta * u if hyper.get("nesterov") else u
        new_states = [u]
    elif kind == "rmsprop":
        decay, (v,) = hyper["decay"], states
        v = v * f32(decay) + (f32(1 - decay) * g) * g
        d = g / (np.sqrt(v) + f32(hyper["eps"]))
        new_states = [v]
    else:  # adagrad; torch's lr / (1 + (t - 1) * lr_decay)
        (acc,) = states
        acc = acc + g * g
        d = g / (np.sqrt(acc) + f32(hyper["eps"]))
        lr = lr / (f32(1) + f32(STEP_COUNT) * f32(hyper.get("lr_decay", 0.0)))
        new_states = [acc]
    if wd and decoupled:
        d = d + wd * p
    return p + (-lr) * d, new_states


ADAM_HYPER = dict(learning_rate=3e-2, b2=0.99, eps=1e-6)
ONE_STEP = [
    (kind, {**ADAM_HYPER, "b1": b1, "weight_decay": wd, **({"momentum_decay": 4e-3} if "nadam" in kind else {})})
    for kind in ("adam", "adamw", "nadam", "nadamw") for b1 in (0.9, 0.3) for wd in (0.0, 0.1)
] + [
    ("sgd", dict(learning_rate=0.05, momentum=0.9)),
    ("sgd", dict(learning_rate=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1)),
    ("sgd", dict(learning_rate=0.05, momentum=0.7, nesterov=True, weight_decay=0.05)),
    ("rmsprop", dict(learning_rate=1e-2, decay=0.9, eps=1e-6)),
    ("rmsprop", dict(learning_rate=1e-2, decay=0.99, eps=1e-8, weight_decay=0.1)),
    ("adagrad", dict(learning_rate=0.1, eps=1e-10)),
    ("adagrad", dict(learning_rate=0.1, lr_decay=0.05, weight_decay=0.05, initial_accumulator_value=0.1, eps=1e-8)),
]


@pytest.mark.parametrize("kind,hyper", ONE_STEP, ids=[f"{k}-{'-'.join(f'{n}={v}' for n, v in h.items())}"
                                                       for k, h in ONE_STEP])
def test_one_step_is_the_documented_float32_arithmetic_bit_for_bit(kind, hyper):
    fused = oj.fused.of(getattr(oj, kind)(**hyper))
    rng = np.random.default_rng(7)
    n = 3 * 65536 + 17  # several chunks of the kernel, the last one short
    p, g = (rng.normal(size=n).astype(np.float32) for _ in range(2))
    state_arrays = [rng.normal(size=n).astype(np.float32), rng.exponential(size=n).astype(np.float32)]
    if kind in ("sgd", "rmsprop", "adagrad"):
        state_arrays = state_arrays[1:]  # one array, non-negative for the EMA of squares and the sum of squares
    supply = iter(state_arrays)

    def fill(x):  # the state after STEP_COUNT steps: counts, NAdam's P_{t-1} and the given arrays
        if x.shape == (n,):
            return jnp.asarray(next(supply))
        return jnp.asarray(STEP_COUNT if x.dtype == jnp.int32 else MU_PRODUCT, x.dtype)

    state = jax.tree.map(fill, fused.init(jnp.asarray(p)))
    assert next(supply, None) is None
    assert uses_kernel(fused, jnp.asarray(g), state, jnp.asarray(p))
    new_p, new_state = jax.jit(fused.step)(jnp.asarray(g), state, jnp.asarray(p))
    want_p, want_states = _numpy_step(kind, hyper, p, g, state_arrays)
    got_states = [x for x in jax.tree.leaves(new_state) if x.shape == (n,)]
    assert len(got_states) == len(want_states)
    for got, want in zip(got_states, want_states):
        np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(new_p), want_p)
    assert all(int(c) == STEP_COUNT + 1 for c in jax.tree.leaves(new_state) if c.dtype == jnp.int32)


def _numpy_new_step(kind, hyper, p, g, states, scalars):
    """One step of RAdam, Adamax, Rprop or ASGD as torch.optim's single-tensor path writes it, each operation
    rounded to float32 (for RAdam and ASGD, in the order of optimjax's docstrings, which torch rounds differently).

    `scalars`: the per-step scalars (RAdam: bc1, sqrt(1 - b2**t), r_t, rectified; Adamax: t; ASGD: eta, mu)."""
    f32 = np.float32
    if kind != "rprop" and hyper.get("maximize"):
        g = -g
    wd = f32(hyper.get("weight_decay", 0.0))
    decoupled = hyper.get("decoupled_weight_decay", False)
    if wd and not decoupled:
        g = g + wd * p
    if kind in ("radam", "adamax"):
        b1, b2, eps = hyper.get("b1", 0.9), hyper.get("b2", 0.999), f32(hyper.get("eps", 1e-8))
        m, second = states
        w = f32(1 - b1)
        m = m + w * (g - m) if abs(1 - b1) < 0.5 else g - (g - m) * (f32(1) - w)
        if kind == "radam":
            bc1, bc2_sqrt, rect, rectified = scalars
            v = second * f32(b2) + (f32(1 - b2) * g) * g
            m_hat = m / bc1
            d = (m_hat * (bc2_sqrt / (np.sqrt(v) + eps))) * rect if rectified else m_hat
            new_states = [m, v]
        else:
            u = np.maximum(second * f32(b2), np.abs(g) + eps)  # NaN if either is, as torch.maximum
            d = (m / u) * f32(1 / (1 - np.float64(b1) ** scalars))
            new_states = [m, u]
        if wd and decoupled:
            d = d + wd * p
        return p + (-f32(hyper["learning_rate"])) * d, new_states
    if kind == "rprop":
        if hyper.get("maximize"):
            g = -g
        (eta_minus, eta_plus), (step_min, step_max) = hyper["etas"], hyper["step_sizes"]
        prev, s = states
        q = g * prev
        s = s * np.where(q > 0, f32(eta_plus), np.where(q < 0, f32(eta_minus), f32(1)))
        s = np.minimum(np.maximum(s, f32(step_min)), f32(step_max))
        kept = np.where(q < 0, f32(0), g)
        sign = np.where(kept > 0, f32(1), np.where(kept < 0, f32(-1), kept))  # +-0 and NaN as they are
        return p + (-sign) * s, [kept, s]
    eta, mu = scalars  # asgd
    (ax,) = states
    new = p + ((p * (f32(1) - f32(hyper["lambd"]) * eta) - eta * g) - p)
    return new, [new if mu == 1 else ax + (new - ax) * mu]


NEW_ONE_STEP = [  # (kind, hyperparameters, step count before the step)
    ("radam", dict(learning_rate=1e-2, b2=0.99, eps=1e-6), 4),  # rho_5 < 5: bias-corrected momentum
    ("radam", dict(learning_rate=1e-2, b2=0.99, eps=1e-6), 9),  # rho_10 > 5: rectified
    ("radam", dict(learning_rate=1e-2, b1=0.3, weight_decay=0.1, maximize=True), 99),
    ("radam", dict(learning_rate=1e-2, weight_decay=0.1, decoupled_weight_decay=True), 99),
    ("adamax", dict(learning_rate=2e-2), 4),
    ("adamax", dict(learning_rate=2e-2, b1=0.3, b2=0.95, eps=1e-3, weight_decay=0.1, maximize=True), 4),
    ("rprop", dict(learning_rate=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)), 4),
    ("rprop", dict(learning_rate=1e-2, etas=(0.3, 1.5), step_sizes=(0.5, 1.5), maximize=True), 4),
    ("asgd", dict(learning_rate=0.05, lambd=0.05, alpha=0.6, t0=2.0, weight_decay=0.05), 4),  # mu = 1/2
    ("asgd", dict(learning_rate=0.05, lambd=1e-4, t0=1e6, maximize=True), 4),  # mu = 1: ax = theta
]


@pytest.mark.parametrize("kind,hyper,count", NEW_ONE_STEP, ids=[
    f"{k}-{c}-{'-'.join(f'{n}={v}' for n, v in h.items())}" for k, h, c in NEW_ONE_STEP])
def test_one_step_of_the_new_families_is_torchs_float32_arithmetic_bit_for_bit(kind, hyper, count):
    """RAdam, Adamax, Rprop and ASGD after `count` steps: the kernel's step equals a numpy float32 transcription
    bit for bit, NaN where torch has one (Adamax's max of a NaN, a NaN gradient); its per-step scalars are the
    float64 formulas rounded to float32 within 4 ulp."""
    fused = oj.fused.of(getattr(oj, kind)(**hyper))
    rng = np.random.default_rng(11)
    n = 2 * 65536 + 33  # several chunks of the kernel, the last one short
    p, g = (rng.normal(size=n).astype(np.float32) for _ in range(2))
    g[:5], p[5] = 0.0, -0.0
    g[6], g[7] = -0.0, np.nan
    state_arrays = [rng.normal(size=n).astype(np.float32), rng.exponential(size=n).astype(np.float32)]
    if kind == "rprop":  # prev with zeros, as after a sign flip; step sizes around the learning rate
        state_arrays = [np.where(rng.random(n) < 0.2, 0.0, state_arrays[0]).astype(np.float32),
                        (0.02 * state_arrays[1]).astype(np.float32)]
    elif kind == "asgd":
        state_arrays = state_arrays[:1]
    elif kind == "adamax":
        state_arrays[1][8] = np.nan
    b2, t = hyper.get("b2", 0.999), count + 1
    eta, mu = np.float32(0.03), np.float32(1.0 if hyper.get("t0", 0) > t else 0.5)
    supply = iter(state_arrays)

    def fill(x):  # the state after `count` steps: the counts, ASGD's eta and mu, the given arrays
        if x.shape == (n,):
            return jnp.asarray(next(supply))
        if x.dtype == jnp.int32:
            return jnp.asarray(count, x.dtype)
        return fill.scalars.pop(0)

    fill.scalars = [jnp.asarray(eta), jnp.asarray(mu)] if kind == "asgd" else []
    state = jax.tree.map(fill, fused.init(jnp.asarray(p)))
    assert next(supply, None) is None and not fill.scalars
    assert uses_kernel(fused, jnp.asarray(g), state, jnp.asarray(p))
    new_p, new_state = jax.jit(fused.step)(jnp.asarray(g), state, jnp.asarray(p))

    scalars = {"adamax": t, "asgd": (eta, mu)}.get(kind)
    if kind == "radam":
        start = rectification_start(b2)
        got = radam_step_scalars(hyper.get("b1", 0.9), b2, start, jnp.asarray(t), jnp.asarray(t, jnp.float32))
        scalars = [np.asarray(x, np.float32) for x in got[:3]] + [bool(got[3])]
        b1, rho_inf = hyper.get("b1", 0.9), 2 / (1 - b2) - 1  # torch's formulas, in float64
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        assert scalars[3] == (rho_t > 5) == (count >= 5)
        want = [1 - b1**t, (1 - b2**t) ** 0.5] + ([rect] if rho_t > 5 else [])
        np.testing.assert_allclose(scalars[: len(want)], want, rtol=4 * 2**-23)
    want_p, want_states = _numpy_new_step(kind, hyper, p, g, state_arrays, scalars)
    got_states = [x for x in jax.tree.leaves(new_state) if x.shape == (n,)]
    assert len(got_states) == len(want_states)
    for got, want in zip(got_states, want_states):
        np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(new_p), want_p)
    assert np.isnan(np.asarray(new_p)[7])
    assert all(int(c) == t for c in jax.tree.leaves(new_state) if c.dtype == jnp.int32)
    if kind == "asgd":  # torch's eta_{t+1} = lr / (1 + lambd lr t)**alpha and mu_{t+1} = 1 / max(1, t - t0)
        lr, lambd, alpha = hyper["learning_rate"], hyper["lambd"], hyper.get("alpha", 0.75)
        np.testing.assert_allclose(float(new_state[-1].eta), lr / (1 + lambd * lr * t) ** alpha, rtol=4e-7)
        assert new_state[-1].mu == np.float32(1 / max(1, t - hyper["t0"]))


@pytest.mark.parametrize("bounds", [(np.nan, 50.0), (1e-6, np.nan)], ids=["step_min", "step_max"])
def test_rprop_kernel_clamps_to_a_nan_bound_as_jnp_clip_does(bounds):
    """A step bound is NaN only when it is traced (a concrete NaN is refused): the kernel then takes its
    NaN-propagating clamp (every step size NaN, as jnp.clip and torch's clamp give), not the compare-and-select one
    it uses for numbers; a numpy float32 transcription, bit for bit."""
    rng = np.random.default_rng(5)
    n = 65536 + 7
    p, g = (rng.normal(size=n).astype(np.float32) for _ in range(2))
    prev = np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)).astype(np.float32)
    sizes = (0.02 * rng.exponential(size=n)).astype(np.float32)

    @jax.jit
    def step(bound, g, p):
        low, high = (bound, bounds[1]) if np.isnan(bounds[0]) else (bounds[0], bound)
        fused = oj.fused.of(oj.rprop(learning_rate=1e-2, step_sizes=(low, high)))
        *others, rprop_state = fused.init(p)  # the chain's states: maximize's (empty), then Rprop's
        state = (*others, rprop_state._replace(prev=jnp.asarray(prev), step_size=jnp.asarray(sizes)))
        return fused.step(g, state, p)

    lowered = step.lower(jnp.float32(np.nan), jnp.asarray(g), jnp.asarray(p)).as_text()
    assert oj.fused.TARGET in lowered, "the kernel did not run: the test would be vacuous"
    new_p, new_state = step(jnp.float32(np.nan), jnp.asarray(g), jnp.asarray(p))
    want_p, (want_prev, want_sizes) = _numpy_new_step(
        "rprop", dict(etas=(0.5, 1.2), step_sizes=bounds), p, g, [prev, sizes], None)
    assert np.isnan(want_sizes).all()
    np.testing.assert_array_equal(np.asarray(new_state[-1].step_size), want_sizes)
    np.testing.assert_array_equal(np.asarray(new_state[-1].prev), want_prev)
    np.testing.assert_array_equal(np.asarray(new_p), want_p)


def _xla_step(fused):
    def step(g, s, p):
        updates, s = fused.optimizer.update(g, s, p)
        return optax.apply_updates(p, updates), s
    return jax.jit(step)


def assert_close(x, y):
    """Equal to float32 rounding: within 2e-6 of the leaf's largest magnitude (1 at least)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
    np.testing.assert_allclose(x, y, rtol=0, atol=2e-6 * scale)


def _trajectories(fused, params, steps=30, seed=0):
    rng = np.random.default_rng(seed)
    runs = [(jax.jit(fused.step), params, fused.init(params)), (_xla_step(fused), params, fused.init(params))]
    out = [[], []]
    for _ in range(steps):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=np.shape(x)), x.dtype), params)
        for i, (step, p, s) in enumerate(runs):
            p, s = step(grads, s, p)
            runs[i] = (step, p, s)
            out[i].append((p, s))
    return out


@pytest.mark.parametrize("kind,kwargs", [
    ("adamw", dict(weight_decay=optax.linear_schedule(0.1, 0.0, 20))),
    ("nadamw", dict(learning_rate=optax.exponential_decay(1e-2, 5, 0.5), weight_decay=0.05)),
    ("adam", dict(b1=0.3, weight_decay=0.05)),
    ("nadam", dict(momentum_decay=0.0)),
    ("sgd", dict(learning_rate=optax.cosine_decay_schedule(0.05, 30), momentum=0.9, dampening=0.5)),
    ("adagrad", dict(learning_rate=0.1, lr_decay=0.1, initial_accumulator_value=0.5)),
    ("rmsprop", dict(learning_rate=1e-2, weight_decay=0.1)),
    ("radam", dict(learning_rate=optax.exponential_decay(1e-2, 5, 0.5), b2=0.99, weight_decay=0.05)),
    ("radam", dict(b1=0.3, weight_decay=optax.linear_schedule(0.1, 0.0, 20), decoupled_weight_decay=True)),
    ("adamax", dict(learning_rate=optax.cosine_decay_schedule(2e-2, 30), weight_decay=0.1)),
    ("rprop", dict(learning_rate=optax.constant_schedule(0.01), etas=(0.3, 1.5))),
    ("asgd", dict(learning_rate=optax.exponential_decay(0.05, 5, 0.5), lambd=0.05, t0=10.0, weight_decay=0.05)),
])
def test_state_and_trajectory_match_the_xla_path(kind, kwargs):
    """Same state layout and counts as the GradientTransformation; parameters within a few float32 ulp (XLA
    itself contracts some multiply-adds into FMAs and divides by sqrt(1 - b2**t) as a multiply by its rsqrt)."""
    fused = oj.fused.of(getattr(oj, kind)(**kwargs))
    params = {"w": jnp.linspace(-2.0, 2.0, 3000, dtype=jnp.float32).reshape(30, 100), "b": jnp.zeros(7)}
    fused_run, xla_run = _trajectories(fused, params)
    for (p1, s1), (p2, s2) in zip(fused_run, xla_run):
        assert jax.tree.structure(s1) == jax.tree.structure(s2)
        for x, y in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
            assert x.dtype == y.dtype and x.shape == y.shape
            if jnp.issubdtype(x.dtype, jnp.integer):
                assert int(x) == int(y)  # step counts of scale_by_*, the decay and the learning-rate schedules
            else:
                assert_close(x, y)


def test_hands_over_to_the_plain_optimizer_and_back():
    fused = oj.fused.of(oj.nadamw(1e-2))
    params = {"w": jnp.linspace(-1.0, 1.0, 500, dtype=jnp.float32)}
    rng = np.random.default_rng(1)
    grads = [{"w": jnp.asarray(rng.normal(size=500), jnp.float32)} for _ in range(9)]
    mixed, plain = (params, fused.init(params)), (params, fused.init(params))
    xla = _xla_step(fused)
    for i, g in enumerate(grads):
        mixed = (jax.jit(fused.step) if i % 3 else xla)(g, mixed[1], mixed[0])
        plain = xla(g, plain[1], plain[0])
    assert_close(mixed[0]["w"], plain[0]["w"])
    assert int(mixed[1][0].count) == int(plain[1][0].count) == 9


@pytest.mark.parametrize("kind,kwargs", [
    ("adamw", dict(weight_decay=optax.linear_schedule(0.1, 0.0, 20))), ("nadam", dict(weight_decay=0.05)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, dampening=0.3)), ("rmsprop", {}),
    ("adagrad", dict(lr_decay=0.1)), ("rprop", dict(etas=(0.3, 1.5))), ("asgd", dict(t0=2.0, weight_decay=0.1)),
])
def test_flat_state_is_the_per_leaf_step_bit_for_bit_with_optax_flattens_state(kind, kwargs):
    """flat_state=True keeps one vector per state array for all leaves (optax.flatten's layout): the same kernel
    arithmetic, so the same bits as per-leaf state, and the state of optax.flatten(plain optimizer)."""
    per_leaf = oj.fused.of(getattr(oj, kind)(**kwargs))
    flat = oj.fused.of(getattr(oj, kind)(**kwargs), flat_state=True)
    rng = np.random.default_rng(5)
    params = {"w": jnp.asarray(rng.normal(size=(70, 40)), jnp.float32), "b": jnp.zeros(7, jnp.float32),
              "many": [jnp.asarray(rng.normal(size=(3, 11)), jnp.float32) for _ in range(40)]}  # > 32 leaves
    flat_plain = optax.flatten(per_leaf.optimizer)
    assert jax.tree.structure(flat.init(params)) == jax.tree.structure(flat_plain.init(params))
    runs = [[per_leaf, params, per_leaf.init(params)], [flat, params, flat.init(params)]]
    assert uses_kernel(flat, params, runs[1][2], params)
    for _ in range(8):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
        for run in runs:
            run[1], run[2] = jax.jit(run[0].step)(grads, run[2], run[1])
    for x, y in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1])):
        np.testing.assert_array_equal(x, y)
    arrays = [x for x in jax.tree.leaves(runs[1][2]) if jnp.ndim(x) == 1 and x.size > 100]
    assert arrays and all(x.shape == (sum(p.size for p in jax.tree.leaves(params)),) for x in arrays)


def test_flat_state_falls_back_to_optax_flatten_of_the_plain_optimizer():
    fused = oj.fused.of(oj.adamw(1e-2), flat_state=True)
    params = {"w": jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    state = fused.init(params)
    with pytest.warns(UserWarning, match="float32 or all float64"):
        new_params, _ = jax.jit(fused.step)(grads, state, params)
    want, _ = _xla_step(fused)(grads, state, params)  # fused.optimizer is optax.flatten(optimjax.adamw(...))
    np.testing.assert_array_equal(np.asarray(new_params["w"], np.float32), np.asarray(want["w"], np.float32))


def test_flat_state_of_other_params_is_refused():
    fused = oj.fused.of(oj.adam(), flat_state=True)
    state = fused.init({"a": jnp.zeros(5)})
    params = {"a": jnp.zeros(6)}
    with pytest.raises(ValueError, match=r"adam: flat_state=True .* 6 elements"):
        fused.step(params, state, params)


def test_awkward_trees_and_donated_buffers_updated_in_place():
    """Scalars, empty and odd-sized leaves across chunk boundaries, None leaves, nesting; with donation the
    step allocates nothing per parameter: every output aliases its input."""
    fused = oj.fused.of(oj.adamw(1e-2, weight_decay=0.1))
    params = {
        "scalar": jnp.asarray(0.5, jnp.float32), "empty": jnp.zeros((0, 3), jnp.float32),
        "odd": jnp.linspace(-1, 1, 65537, dtype=jnp.float32), "none": None,
        "nested": [jnp.ones((3, 5), jnp.float32), {"deep": jnp.full((70001,), -0.25, jnp.float32)}],
    }
    fused_run, xla_run = _trajectories(fused, params, steps=5)
    for x, y in zip(jax.tree.leaves(fused_run[-1]), jax.tree.leaves(xla_run[-1])):
        assert_close(x, y)
    assert fused_run[-1][0]["none"] is None

    state = fused.init(params)
    donated = jax.jit(lambda p, s, g: fused.step(g, s, p), donate_argnums=(0, 1))
    memory = donated.lower(params, state, params).compile().memory_analysis()
    per_parameter = sum(x.nbytes for x in jax.tree.leaves((params, state[0].mu, state[0].nu)))
    assert memory.alias_size_in_bytes >= per_parameter
    assert memory.temp_size_in_bytes < 1024  # the coefficients and a few scalars


def test_empty_tree():
    fused = oj.fused.of(oj.adam())
    params, state = fused.step({}, fused.init({}), {})
    assert params == {} and int(state[1].count) == 1


def test_vmap_over_a_batch_of_states_equals_a_loop():
    fused = oj.fused.of(oj.adamw(1e-2))
    rng = np.random.default_rng(3)
    params = jnp.asarray(rng.normal(size=(4, 100)), jnp.float32)
    grads = jnp.asarray(rng.normal(size=(4, 100)), jnp.float32)
    states = jax.vmap(fused.init)(params)
    for _ in range(2):  # the second step has per-member counts and moments
        batched_p, batched_s = jax.vmap(fused.step)(grads, states, params)
        for i in range(4):
            p_i, s_i = jax.jit(fused.step)(grads[i], jax.tree.map(lambda x: x[i], states), params[i])
            np.testing.assert_array_equal(batched_p[i], p_i)
            np.testing.assert_array_equal(batched_s[0].nu[i], s_i[0].nu)
        params, states = batched_p, batched_s


@pytest.mark.parametrize("momentum", [None, 0.0])
def test_sgd_without_momentum_is_the_plain_single_pass_silently(momentum):
    params, grads = {"w": jnp.linspace(-1, 1, 100, dtype=jnp.float32)}, {"w": jnp.ones(100, jnp.float32)}
    with warnings.catch_warnings():  # silently: no warning from of() nor from a step
        warnings.simplefilter("error")
        fused = oj.fused.of(oj.sgd(0.1, momentum=momentum, weight_decay=0.1))
        new_params, _ = jax.jit(fused.step)(grads, fused.init(params), params)
        assert not uses_kernel(fused, grads, fused.init(params), params)
    np.testing.assert_array_equal(new_params["w"], _xla_step(fused)(grads, fused.init(params), params)[0]["w"])


def test_bfloat16_falls_back_to_the_xla_path_with_a_warning():
    fused = oj.fused.of(oj.nadam(1e-2))
    params = {"w": jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16)}
    grads = {"w": jnp.full((64,), 0.5, jnp.bfloat16)}
    state = fused.init(params)
    with pytest.warns(UserWarning, match="float32 or all float64"):
        new_params, _ = fused.step(grads, state, params)
    want, _ = _xla_step(fused)(grads, state, params)
    np.testing.assert_array_equal(np.asarray(new_params["w"], np.float32), np.asarray(want["w"], np.float32))
    with pytest.warns(UserWarning, match="bfloat16"):
        assert not uses_kernel(fused, grads, state, params)


def test_mismatched_trees_raise_naming_the_optimizer():
    fused = oj.fused.of(oj.adamw())
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match="adamw.*tree structure"):
        fused.step({"a": jnp.zeros(3)}, fused.init(params), params)
    with pytest.raises(ValueError, match=r"adamw.*shape \(4,\)"):
        fused.step({"a": jnp.zeros(3), "b": jnp.zeros(4)}, fused.init(params), params)
    with pytest.raises(ValueError, match=r"adamw: step\(\) got a param of shape \(5,\) at \['b'\]"):
        fused.step(params, fused.init(params), {"a": jnp.zeros(3), "b": jnp.zeros(5)})


def test_every_family_with_a_kernel_runs_in_the_table():
    """The table tests above are not vacuous: the cases that reach the kernel cover every family that has one."""
    assert {kernel_of(c.factory(**c.kwargs)).name for c in FUSED_CASES} == {
        "adam", "adamw", "nadam", "nadamw", "sgd", "rmsprop", "adagrad", "radam", "adamax", "rprop", "asgd"}


WITHOUT_KERNEL = [
    (lambda: oj.amsgrad(1e-2), r"adam\(amsgrad=True\): the kernel keeps no running maximum"),
    (lambda: oj.adam(1e-2, eps_root=1e-8), r"adam\(eps_root=1e-08\)"),
    (lambda: oj.adamw(1e-2, mask={"w": True, "b": False}), r"adamw\(mask=...\)"),
    (lambda: oj.nadamw(1e-2, mask={"w": True, "b": False}), r"nadamw\(mask=...\)"),
    (lambda: oj.rmsprop(1e-2, centered=True), r"rmsprop\(centered=True\)"),
    (lambda: oj.rmsprop(1e-2, momentum=0.9), r"rmsprop\(momentum=0.9\)"),
    (lambda: oj.adadelta(1.0), "not one of optimjax's optimizers with a kernel"),
    (lambda: optax.adam(1e-2), "not one of optimjax's optimizers with a kernel"),
    (lambda: optax.chain(optax.clip_by_global_norm(1.0), oj.adam(1e-2)), "not one of optimjax's optimizers"),
]


@pytest.mark.parametrize("make,reason", WITHOUT_KERNEL, ids=["amsgrad", "eps_root", "adamw-mask", "nadamw-mask",
                                                              "centered", "rmsprop-momentum", "adadelta", "optax",
                                                              "chained"])
def test_of_an_optimizer_without_a_kernel_is_its_plain_step_with_a_warning_naming_why(make, reason):
    optimizer = make()
    with pytest.warns(UserWarning, match="XLA path .* instead of the fused kernel: .*" + reason):
        fused = oj.fused.of(optimizer)
    assert fused.optimizer is optimizer
    params = {"w": jnp.linspace(-1, 1, 50, dtype=jnp.float32), "b": jnp.ones(3, jnp.float32)}
    grads = jax.tree.map(lambda x: jnp.sin(3 * x) + 0.5, params)
    state = fused.init(params)
    assert not uses_kernel(fused, grads, state, params)
    got, _ = fused.step(grads, state, params)
    updates, _ = optimizer.update(grads, state, params)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(optax.apply_updates(params, updates))):
        np.testing.assert_array_equal(x, y)


def test_of_refuses_what_is_not_an_optimizer():
    with pytest.raises(TypeError, match="optimjax.fused.of: optimizer must be an optax.GradientTransformation"):
        oj.fused.of(oj.adam)  # the function, not the optimizer it returns
    with pytest.raises(TypeError, match="flat_state must be True or False, got 'yes'"):
        oj.fused.of(oj.adam(), flat_state="yes")


@pytest.mark.parametrize("kind,kwargs", [
    ("adam", dict(learning_rate=0.01, weight_decay=0.1)), ("adamw", dict(learning_rate=0.01)),
    ("nadamw", dict(learning_rate=0.01)), ("sgd", dict(learning_rate=0.05, momentum=0.9, weight_decay=0.1)),
    ("rmsprop", dict(learning_rate=0.01)), ("adagrad", dict(learning_rate=0.1)),
    ("radam", dict(learning_rate=0.01, b2=0.9, weight_decay=0.1)), ("adamax", dict(learning_rate=0.01)),
    ("rprop", dict(learning_rate=0.01)), ("asgd", dict(learning_rate=0.05, t0=2.0)),
])
def test_maximize_negates_the_gradient_in_the_kernel(kind, kwargs):
    """maximize=True is the step of -g: bit for bit the kernel's step on the negated gradient."""
    if "maximize" not in inspect.signature(getattr(oj, kind)).parameters:
        pytest.skip(f"optimjax.{kind} has no maximize in this branch")
    up, down = (oj.fused.of(getattr(oj, kind)(**kwargs, maximize=m)) for m in (True, False))
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32)}
    assert uses_kernel(up, params, up.init(params), params)
    runs = [[up, params, up.init(params), 1.0], [down, params, down.init(params), -1.0]]
    for _ in range(5):
        grads = {"w": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32)}
        for run in runs:
            run[1], run[2] = jax.jit(run[0].step)(jax.tree.map(lambda g: run[3] * g, grads), run[2], run[1])
    np.testing.assert_array_equal(runs[0][1]["w"], runs[1][1]["w"])


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


FALLBACK_CHECK = """
    import warnings, jax, jax.numpy as jnp, numpy as np, optax, optimjax as oj
    fused = oj.fused.of(oj.adamw(1e-2))
    params = {"w": jnp.linspace(-1, 1, 1000, dtype=jnp.float32)}
    grads = {"w": jnp.full((1000,), 0.5, jnp.float32)}
    state = fused.init(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = jax.jit(fused.step).lower(grads, state, params).as_text()
        new_params, _ = jax.jit(fused.step)(grads, state, params)
    reference = jax.jit(lambda g, s, p: optax.apply_updates(p, fused.optimizer.update(g, s, p)[0]))
    assert oj.fused.TARGET not in text
    np.testing.assert_array_equal(new_params["w"], reference(grads, state, params)["w"])
    print("WARNED:", caught[0].message if caught else None)
    print("REASON:", oj.fused.unavailable_reason())
"""


def test_falls_back_with_the_reason_when_the_kernel_cannot_be_built(tmp_path):
    result = _run_python(FALLBACK_CHECK, CXX="/nonexistent/c++", OPTIMJAX_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "XLA path instead of the fused kernel" in result.stdout and "no C++ compiler" in result.stdout


def test_turned_off_by_the_environment(tmp_path):
    result = _run_python(FALLBACK_CHECK, OPTIMJAX_FUSED="0")
    assert result.returncode == 0, result.stderr
    assert "REASON: turned off by OPTIMJAX_FUSED=0" in result.stdout


def test_more_than_one_device_keeps_the_xla_path():
    result = _run_python(FALLBACK_CHECK, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert result.returncode == 0, result.stderr
    assert "more than one device" in result.stdout


@pytest.mark.parametrize("other", ["bfloat16", "complex64"])
@pytest.mark.parametrize("kind", ["adam", "amsgrad"])  # the kernel's family, and one that falls back to XLA
def test_flat_state_refuses_leaves_of_several_dtypes_naming_them(kind, other):
    """One state vector for float32 and bfloat16 (or complex64) leaves would be promoted: float32 state for the
    bfloat16 leaf and updates rounded otherwise than the per-leaf step's, or complex state for the real leaf."""
    params = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(2, other)}
    fused = oj.fused.of(getattr(oj, kind)(1e-2), flat_state=True)
    with pytest.raises(ValueError, match=rf"flat_state=True\): .* float32 at \['a'\] and {other} at \['b'\]"):
        fused.init(params)
    state = fused.init(jax.tree.map(lambda p: p.astype(jnp.float32), params))
    with pytest.raises(ValueError, match=rf"float32 at \['a'\] and {other} at \['b'\]"):
        fused.step(params, state, params)
