"""optimjax.fused: the one-pass CPU kernel gives the numbers of the GradientTransformation path and of torch.optim.

References: torch.optim (single-tensor path) for whole trajectories; a numpy float32 transcription of the
documented per-element equations for one step, bit for bit; the plain optimjax optimizer for the state layout and
the fallbacks.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from optimjax.adam import adam_scalars
from optimjax.nadam import nadam_scalars
from cases import CASES, Problem

FUSED_CASES = [
    c for c in CASES
    if c.factory in (oj.adam, oj.adamw, oj.nadam, oj.nadamw) and not c.kwargs.get("amsgrad")
]
F32_TOL = 1e-5
F64_TOL = 1e-11


def fused_of(case, **override):
    return getattr(oj.fused, case.factory.__name__)(**{**case.kwargs, **override})


def uses_kernel(fused, grads, state, params) -> bool:
    return oj.fused.TARGET in jax.jit(fused.step).lower(grads, state, params).as_text()


def run_fused(problem: Problem, fused) -> list[dict]:
    params = jax.tree.map(jnp.asarray, problem.params0)
    state = fused.init(params)
    step = jax.jit(fused.step)
    grads = jax.tree.map(jnp.asarray, problem.grad(problem.params0, 0))
    assert uses_kernel(fused, grads, state, params), "the fused kernel did not run: the test would be vacuous"
    out = []
    for t in range(problem.steps):
        grads = jax.tree.map(jnp.asarray, problem.grad(jax.tree.map(np.asarray, params), t))
        params, state = step(grads, state, params)
        out.append(jax.tree.map(np.asarray, params))
    return out


def test_kernel_builds_on_this_machine():
    assert oj.fused.available(), oj.fused.unavailable_reason()


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_float32_matches_torch(case):
    problem = Problem(seed=1)
    err = problem.relative_error(run_fused(problem, fused_of(case)), problem.run_torch(case.torch))
    assert err < F32_TOL, f"fused {case.id}: {err:.2e} from torch"


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_float64_matches_torch(case):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps NAdam's mu_product in the default dtype
    try:
        with jax.enable_x64(True):
            problem = Problem(seed=2, dtype=np.float64)
            ours = run_fused(problem, fused_of(case))
            assert ours[-1]["w"].dtype == np.float64
        err = problem.relative_error(ours, problem.run_torch(case.torch))
    finally:
        torch.set_default_dtype(default)
    assert err < F64_TOL, f"fused {case.id}: {err:.2e} from torch in float64"


@pytest.mark.parametrize("case", [c for c in FUSED_CASES if c.id in ("adamw", "nadamw")], ids=lambda c: c.id)
def test_learning_rate_schedule_matches_torch(case):
    base = case.kwargs["learning_rate"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, base, warmup_steps=10, decay_steps=60, end_value=base / 10)
    problem = Problem(seed=3)
    ours = run_fused(problem, fused_of(case, learning_rate=schedule))
    reference = problem.run_torch(case.torch, lr_lambda=lambda t: float(schedule(t)) / base)
    assert problem.relative_error(ours, reference) < F32_TOL


def _numpy_step(kind, hyper, t, p, g, m, v, mu_product=None):
    """One step of the documented equations (optimjax/_kernels/fused_step.cc), each operation rounded to float32.

    The per-step scalars come from the same JAX functions as the transforms' (`adam_scalars`, `nadam_scalars`);
    everything per element is numpy, in the order written in the docstrings of optimjax.adam / optimjax.nadam.
    """
    f32 = np.float32
    lr, b1, b2, eps, wd = (hyper[k] for k in ("learning_rate", "b1", "b2", "eps", "weight_decay"))
    coupled = kind in ("adam", "nadam")
    if coupled and wd:
        g = g + f32(wd) * p
    w = f32(1 - b1)
    m = m + w * (g - m) if abs(1 - b1) < 0.5 else g - (g - m) * (f32(1) - w)  # torch.lerp's two forms
    v = v * f32(b2) + (f32(1 - b2) * g) * g
    if kind.startswith("nadam"):
        _, a, b, c = (np.asarray(x, f32) for x in nadam_scalars(b1, b2, hyper["momentum_decay"], t, mu_product))
        d = (a * g + b * m) / (np.sqrt(v / c) + f32(eps))
    else:
        a, _, b = (np.asarray(x, f32) for x in adam_scalars(b1, b2, t))
        d = (a * m) / (np.sqrt(v) / b + f32(eps))
    if not coupled and wd:
        d = d + f32(wd) * p
    return p + f32(-lr) * d, m, v


HYPER = dict(learning_rate=3e-2, b1=0.9, b2=0.99, eps=1e-6, momentum_decay=4e-3)


@pytest.mark.parametrize("kind", ["adam", "adamw", "nadam", "nadamw"])
@pytest.mark.parametrize("b1", [0.9, 0.3], ids=["lerp_near_start", "lerp_near_end"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["no_decay", "decay"])
def test_one_step_is_the_documented_float32_arithmetic_bit_for_bit(kind, b1, weight_decay):
    hyper = {**HYPER, "b1": b1, "weight_decay": weight_decay}
    fused = getattr(oj.fused, kind)(**{k: x for k, x in hyper.items() if k != "momentum_decay" or "nadam" in kind})
    rng = np.random.default_rng(7)
    n = 3 * 65536 + 17  # several chunks of the kernel, the last one short
    p, g, m = (rng.normal(size=n).astype(np.float32) for _ in range(3))
    v = rng.exponential(size=n).astype(np.float32)
    state = fused.init(jnp.asarray(p))
    inner_index = 1 if kind in ("adam", "nadam") else 0
    inner = state[inner_index]._replace(count=jnp.asarray(4, jnp.int32), mu=jnp.asarray(m), nu=jnp.asarray(v))
    mu_product = None
    if kind.startswith("nadam"):
        mu_product = jnp.asarray(0.2, jnp.float32)
        inner = inner._replace(mu_product=mu_product)
    state = tuple(inner if i == inner_index else s for i, s in enumerate(state))
    assert uses_kernel(fused, jnp.asarray(g), state, jnp.asarray(p))
    new_p, new_state = jax.jit(fused.step)(jnp.asarray(g), state, jnp.asarray(p))
    want_p, want_m, want_v = _numpy_step(kind, hyper, jnp.asarray(5.0, jnp.float32), p, g, m, v, mu_product)
    np.testing.assert_array_equal(np.asarray(new_state[inner_index].mu), want_m)
    np.testing.assert_array_equal(np.asarray(new_state[inner_index].nu), want_v)
    np.testing.assert_array_equal(np.asarray(new_p), want_p)
    assert int(new_state[inner_index].count) == 5


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
])
def test_state_and_trajectory_match_the_xla_path(kind, kwargs):
    """Same state layout and counts as the GradientTransformation; parameters within a few float32 ulp (XLA
    itself contracts some multiply-adds into FMAs and divides by sqrt(1 - b2**t) as a multiply by its rsqrt)."""
    fused = getattr(oj.fused, kind)(**kwargs)
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
    fused = oj.fused.nadamw(1e-2)
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


def test_awkward_trees_and_donated_buffers_updated_in_place():
    """Scalars, empty and odd-sized leaves across chunk boundaries, None leaves, nesting; with donation the
    step allocates nothing per parameter: every output aliases its input."""
    fused = oj.fused.adamw(1e-2, weight_decay=0.1)
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
    fused = oj.fused.adam()
    params, state = fused.step({}, fused.init({}), {})
    assert params == {} and int(state[1].count) == 1


def test_vmap_over_a_batch_of_states_equals_a_loop():
    fused = oj.fused.adamw(1e-2)
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


def test_bfloat16_falls_back_to_the_xla_path_with_a_warning():
    fused = oj.fused.nadam(1e-2)
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
    fused = oj.fused.adamw()
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match="adamw.*tree structure"):
        fused.step({"a": jnp.zeros(3)}, fused.init(params), params)
    with pytest.raises(ValueError, match=r"adamw.*shape \(4,\)"):
        fused.step({"a": jnp.zeros(3), "b": jnp.zeros(4)}, fused.init(params), params)


@pytest.mark.parametrize("factory,kwargs,argument", [
    (oj.fused.adamw, dict(b1=1.0), "b1"), (oj.fused.nadam, dict(momentum_decay=-1.0), "momentum_decay"),
    (oj.fused.adam, dict(learning_rate=-1.0), "learning_rate"), (oj.fused.nadamw, dict(eps=-1.0), "eps"),
])
def test_bad_hyperparameters_raise_naming_the_argument(factory, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        factory(**kwargs)


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


FALLBACK_CHECK = """
    import warnings, jax, jax.numpy as jnp, numpy as np, optax, optimjax as oj
    fused = oj.fused.adamw(1e-2)
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
