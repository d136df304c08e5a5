"""optimjax.lbfgs follows torch.optim.LBFGS's `step(closure)` (float64, 1e-10): several steps in a row (the history
and d, t carry over), both line-search modes, the stopping rules (max_iter, max_eval, tolerance_grad,
tolerance_change), a small history; a nonconvex full-batch problem (logistic regression with a tanh layer) and
Rosenbrock's function. Expected values come from torch."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optimjax as oj
from cases import float64

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 5))
Y = (RNG.uniform(size=40) < 0.5).astype(np.float64)
PARAMS0 = {"w": 0.5 * RNG.normal(size=(5, 3)), "v": 0.5 * RNG.normal(size=(3,)), "b": np.zeros(())}


def classifier_loss(xp, p, x, y):
    """Mean logistic loss of a one-hidden-layer tanh network plus an L2 penalty on every weight (so that the
    minimum is isolated and roundoff is not amplified as the weights grow); `xp` is jnp or torch."""
    logits = xp.tanh(x @ p["w"]) @ p["v"] + p["b"]
    penalty = 0.05 * (xp.sum(p["w"] ** 2) + xp.sum(p["v"] ** 2) + p["b"] ** 2)
    return xp.mean(xp.log1p(xp.exp(-(2 * y - 1) * logits))) + penalty


def rosenbrock(xp, p, *_):
    x = p["x"]
    return xp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


PROBLEMS = {
    "classifier": (classifier_loss, PARAMS0),
    "rosenbrock": (rosenbrock, {"x": np.array([-1.2, 1.0, -0.5, 0.8])}),
}


def run_torch(loss, params0, steps, dtype=torch.float64, **kwargs):
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params0.items()}
    opt = torch.optim.LBFGS(list(params.values()), **kwargs)
    x, y = torch.tensor(X, dtype=dtype), torch.tensor(Y, dtype=dtype)

    def closure():
        opt.zero_grad()
        value = loss(torch, params, x, y)
        value.backward()
        return value

    out = []
    for _ in range(steps):
        opt.step(closure)
        state = opt.state[opt._params[0]]
        out.append(({k: p.detach().numpy().copy() for k, p in params.items()}, state["func_evals"], state["n_iter"]))
    return out


def run_optimjax(loss, params0, steps, dtype=jnp.float64, **kwargs):
    tx = oj.lbfgs(**kwargs)
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), params0)
    x, y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
    step = jax.jit(lambda p, s: tx.step(lambda q: loss(jnp, q, x, y), p, s))
    state, out = tx.init(params), []
    for _ in range(steps):
        params, state = step(params, state)
        out.append((jax.tree.map(np.asarray, params), int(state.func_evals), int(state.n_iter)))
    return out


CONFIGS = {
    "defaults": dict(),
    "strong_wolfe": dict(line_search_fn="strong_wolfe"),
    "max_iter_5": dict(max_iter=5),
    "strong_wolfe_max_iter_5": dict(line_search_fn="strong_wolfe", max_iter=5),
    "lr_history_max_iter": dict(lr=0.5, history_size=3, max_iter=7),
    "strong_wolfe_max_eval_history": dict(line_search_fn="strong_wolfe", max_eval=9, history_size=4),
    "tolerances": dict(tolerance_grad=1e-4, tolerance_change=1e-6, max_iter=50),
    "strong_wolfe_tolerances": dict(line_search_fn="strong_wolfe", tolerance_grad=1e-5, tolerance_change=1e-7,
                                    max_iter=40),
}
# Rosenbrock's valley (condition number ~2500 at the minimum) amplifies the last-bit differences of the dot
# products (torch and XLA sum in different orders) to ~2e-9 of the displacement midway through the run.
TOLERANCE = {"classifier": 1e-10, "rosenbrock": 1e-8}
CASES = [("classifier", c) for c in sorted(CONFIGS)] + [("rosenbrock", "defaults"), ("rosenbrock", "strong_wolfe"),
                                                        ("rosenbrock", "strong_wolfe_max_eval_history")]


@pytest.mark.parametrize("problem,config", CASES, ids=[f"{p}-{c}" for p, c in CASES])
def test_lbfgs_steps_match_torch_in_float64(problem, config):
    """Four `step` calls: the params after each to 1e-10 of the displacement (1e-8 on Rosenbrock), and the
    number of loss evaluations and iterations exactly."""
    loss, params0 = PROBLEMS[problem]
    torch_kwargs = CONFIGS[config]
    ours_kwargs = {("learning_rate" if k == "lr" else k): v for k, v in torch_kwargs.items()}
    with float64():
        want = run_torch(loss, params0, 4, **torch_kwargs)
        got = run_optimjax(loss, params0, 4, **ours_kwargs)
    moved = max(np.max(np.abs(want[-1][0][k] - params0[k])) for k in params0)
    assert moved > 1e-2, "torch did not move: the comparison would be vacuous"
    for i, ((p_want, evals_want, iters_want), (p_got, evals_got, iters_got)) in enumerate(zip(want, got)):
        assert (evals_got, iters_got) == (evals_want, iters_want), f"step {i}: evaluations, iterations"
        for k in params0:
            np.testing.assert_allclose(p_got[k], p_want[k], rtol=0, atol=TOLERANCE[problem] * moved,
                                       err_msg=f"step {i} {k}")


def test_lbfgs_stops_at_once_when_the_gradient_is_small():
    """torch returns before any iteration when max|g| <= tolerance_grad: params unchanged, one evaluation."""
    tx = oj.lbfgs(tolerance_grad=1e-3)
    params = {"x": jnp.array([1.0, 2.0])}
    new, state = tx.step(lambda p: 1e-4 * jnp.sum(p["x"] ** 2), params, tx.init(params))
    np.testing.assert_array_equal(new["x"], params["x"])
    assert (int(state.func_evals), int(state.n_iter)) == (1, 0)


@pytest.mark.parametrize("kwargs,name", [(dict(max_iter=0), "max_iter"), (dict(history_size=0), "history_size"),
                                         (dict(line_search_fn="backtracking"), "line_search_fn"),
                                         (dict(learning_rate=-1.0), "learning_rate")])
def test_lbfgs_bad_arguments_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        oj.lbfgs(**kwargs)


# --- float32 ------------------------------------------------------------------------------------------------------

# (torch kwargs, steps). Without a line search the trajectory depends on the loss only through the stopping tests,
# so it follows torch to convergence (4 steps: 20 + 4 iterations). The strong Wolfe search compares loss values:
# once an iteration lowers the loss by less than its float32 rounding (~6e-8 at 0.68, from the 19th iteration on
# here), the last bit, which torch and XLA round differently, decides the search's branch and the runs part
# (measured: 6e-4 of the displacement at iteration 20). Three steps of 5 iterations stay clear of that.
CONFIGS_FLOAT32 = {"defaults": (dict(), 4),
                   "strong_wolfe_max_iter_5": (dict(line_search_fn="strong_wolfe", max_iter=5), 3)}


@pytest.mark.parametrize("config", sorted(CONFIGS_FLOAT32))
def test_lbfgs_steps_match_torch_in_float32(config):
    """float32 tensors on both sides: params after each step within 1e-5 of the displacement (measured: 4e-7),
    evaluations and iterations exactly."""
    torch_kwargs, steps = CONFIGS_FLOAT32[config]
    want = run_torch(classifier_loss, PARAMS0, steps, torch.float32, **torch_kwargs)
    got = run_optimjax(classifier_loss, PARAMS0, steps, jnp.float32, **torch_kwargs)
    moved = max(np.max(np.abs(want[-1][0][k] - PARAMS0[k])) for k in PARAMS0)
    assert moved > 1.0
    for i, ((p_want, evals_want, iters_want), (p_got, evals_got, iters_got)) in enumerate(zip(want, got)):
        assert (evals_got, iters_got) == (evals_want, iters_want), f"step {i}: evaluations, iterations"
        for k in PARAMS0:
            assert p_got[k].dtype == np.float32
            np.testing.assert_allclose(p_got[k], p_want[k], rtol=0, atol=1e-5 * moved, err_msg=f"step {i} {k}")


# --- jit, vmap, scan: identities (the compiled step against itself) ------------------------------------------------

SEARCH = dict(line_search_fn="strong_wolfe", max_iter=5, history_size=4)
# In float64 (inside `jax.enable_x64(True)`): vmap batches the loss's and the two-loop recursion's sums, which XLA
# may add in another order, and L-BFGS amplifies that roundoff (measured: 2e-14 in float64, 1.6e-5 in float32).


def classifier64(p):
    return classifier_loss(jnp, p, jnp.asarray(X), jnp.asarray(Y))


@functools.cache
def compiled_step():
    """(tx, jitted step) on the float64 classifier with SEARCH, shared by the tests below (one compilation)."""
    tx = oj.lbfgs(**SEARCH)
    return tx, jax.jit(lambda p, s: tx.step(classifier64, p, s))


def start(scale=1.0):
    return {k: jnp.asarray(scale * v) for k, v in PARAMS0.items()}


def assert_trees_equal(a, b, what):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}{jax.tree_util.keystr(path)}")


def test_lbfgs_vmap_over_initial_params_equals_each_run_alone():
    """A batch of three starting points through `jax.vmap(step)`: the inner while loops run until every member
    is done (here the members stop after different numbers of iterations), and each member must come out as its
    own run does (to 1e-11: see SEARCH)."""
    scales = [0.5, 1.0, 2.0]
    with jax.enable_x64(True):
        tx, step = compiled_step()
        alone = []
        for scale in scales:
            params, state = start(scale), tx.init(start(scale))
            for _ in range(2):
                params, state = step(params, state)
            alone.append((params, state))
        params = jax.tree.map(lambda *xs: jnp.stack(xs), *[start(scale) for scale in scales])
        state = jax.vmap(tx.init)(params)
        batched_step = jax.jit(jax.vmap(lambda p, s: tx.step(classifier64, p, s)))
        for _ in range(2):
            params, state = batched_step(params, state)
    assert len({int(s.n_iter) for _, s in alone}) > 1, "the members should stop after different iterations"
    for i, (params_alone, state_alone) in enumerate(alone):
        member = jax.tree.map(lambda x: np.asarray(x)[i], (params, state))
        assert (int(member[1].func_evals), int(member[1].n_iter)) == (int(state_alone.func_evals),
                                                                       int(state_alone.n_iter))
        alone_leaves = jax.tree.leaves((params_alone, state_alone))
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(member), alone_leaves):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-12, err_msg=f"member {i}{jax.tree_util.keystr(path)}")


def test_lbfgs_scan_over_steps_equals_the_python_loop():
    with jax.enable_x64(True):
        tx, step = compiled_step()
        params, state = start(), tx.init(start())
        looped = []
        for _ in range(3):
            params, state = step(params, state)
            looped.append(params)

        @jax.jit
        def scanned(params, state):
            def body(carry, _):
                carry = tx.step(classifier64, *carry)
                return carry, carry[0]
            return jax.lax.scan(body, (params, state), length=3)

        (params_scan, state_scan), trajectory = scanned(start(), tx.init(start()))
    assert_trees_equal((params_scan, state_scan), (params, state), "final ")
    for i, want in enumerate(looped):
        assert_trees_equal(jax.tree.map(lambda x: np.asarray(x)[i], trajectory), want, f"step {i} ")


def count_primitives(jaxpr, name):
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += count_primitives(sub, name)
    return total


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_step_is_one_program_whatever_max_iter(line_search_fn):
    """No Python loop over iterations or line-search trials: the traced program is the same size for max_iter 2
    and 200, the loss function is traced a fixed number of times, and the iterations are while loops (nested in
    the strong Wolfe mode: the bracketing and the zoom)."""
    sizes = {}
    for max_iter in (2, 200):
        traced = []
        tx = oj.lbfgs(max_iter=max_iter, line_search_fn=line_search_fn)
        with jax.enable_x64(True):
            jaxpr = jax.make_jaxpr(lambda p, s: tx.step(lambda q: (traced.append(1), classifier64(q))[1], p, s))(
                start(), tx.init(start())).jaxpr
        sizes[max_iter] = (len(traced), len(str(jaxpr).splitlines()), count_primitives(jaxpr, "while"),
                           [eqn.primitive.name for eqn in jaxpr.eqns].count("while"))
    assert sizes[2] == sizes[200], sizes
    assert sizes[2][2] >= (3 if line_search_fn else 1), sizes  # the iterations (+ bracketing and zoom)
    assert sizes[2][3] == 1, sizes  # one loop over the iterations at the top


# --- trees and dtypes ---------------------------------------------------------------------------------------------

def test_lbfgs_none_leaves_are_skipped_and_one_iteration_is_the_closed_form():
    """Params with None leaves (no parameter there, as in optax): the state holds the 7 real entries only, the
    Nones come back in place. One iteration of torch's L-BFGS is x - lr * min(1, 1 / ||g||_1) g (d = -g, the
    first step length), checked in numpy on a quadratic with g = 2 c x."""
    c = {"a": np.array([1.0, 2.0, 3.0]), "m": np.array([[0.5, 1.5], [2.5, 4.0]])}
    x0 = {"a": np.array([1.0, -2.0, 0.5]), "m": np.array([[0.3, -1.0], [2.0, 0.7]])}
    params = {"a": jnp.asarray(x0["a"], jnp.float32), "skip": None, "m": [jnp.asarray(x0["m"], jnp.float32), None]}
    loss = lambda p: jnp.sum(c["a"] * p["a"] ** 2) + jnp.sum(c["m"] * p["m"][0] ** 2)  # noqa: E731
    tx = oj.lbfgs(learning_rate=0.5, max_iter=1)
    state = tx.init(params)
    assert state.d.shape == (7,)
    new, state = tx.step(loss, params, state)
    assert new["skip"] is None and new["m"][1] is None
    g = {k: 2 * c[k] * x0[k] for k in x0}
    t = 0.5 * min(1.0, 1.0 / sum(np.sum(np.abs(v)) for v in g.values()))
    assert t < 0.5, "the 1 / ||g||_1 factor should show"
    np.testing.assert_allclose(new["a"], x0["a"] - t * g["a"], rtol=1e-6)
    np.testing.assert_allclose(new["m"][0], x0["m"] - t * g["m"], rtol=1e-6)
    assert (int(state.func_evals), int(state.n_iter)) == (1, 1)


@pytest.mark.parametrize("tree", [{}, {"a": None, "b": [None]}], ids=["dict", "nested_nones"])
def test_lbfgs_empty_tree(tree):
    """No parameters: init and step work and return the same empty tree (torch raises on an empty parameter list;
    an empty tree here is what optax does with one: nothing)."""
    tx = oj.lbfgs(line_search_fn="strong_wolfe")
    state = tx.init(tree)
    assert state.d.shape == (0,) and state.old_dirs.shape == (100, 0)
    new, state = tx.step(lambda p: jnp.float32(3.0), tree, state)
    assert jax.tree.structure(new) == jax.tree.structure(tree)
    assert (int(state.func_evals), int(state.n_iter), float(state.loss)) == (1, 0, 3.0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_lbfgs_state_dtype_is_the_params_and_fixed_at_init(dtype):
    """The state's float entries in the params' dtype (counters int32); step keeps the params' and the state's
    dtypes (shapes and dtypes traced with eval_shape: nothing to compile)."""
    with jax.enable_x64(dtype == "float64"):
        tx = oj.lbfgs(line_search_fn="strong_wolfe")
        params = {k: jnp.asarray(v, dtype) for k, v in PARAMS0.items()}
        state = jax.eval_shape(tx.init, params)
        counters = {"func_evals", "n_iter", "num_old"}
        for name, leaf in state._asdict().items():
            assert leaf.dtype == (jnp.int32 if name in counters else jnp.dtype(dtype)), name
        assert state.old_dirs.shape == (100, 19)
        loss = lambda p: classifier_loss(jnp, p, jnp.asarray(X, dtype), jnp.asarray(Y, dtype))  # noqa: E731
        new, new_state = jax.eval_shape(lambda p, s: tx.step(loss, p, s), params, state)
        assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, params)
        assert new_state == state


def test_lbfgs_refuses_params_of_two_dtypes_naming_them():
    """One flat state vector would promote the bfloat16 leaf to float32 inside the step, where torch rounds it to
    bfloat16 after every iteration: refused, at init and at step."""
    tx = oj.lbfgs()
    mixed = {"w": jnp.zeros(3, jnp.float32), "h": jnp.zeros(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"lbfgs: init\(\).*bfloat16 at \['h'\] and float32 at \['w'\]"):
        tx.init(mixed)
    state = tx.init({"w": jnp.zeros(3), "h": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"lbfgs: step\(\).*share one dtype"):
        tx.step(lambda p: jnp.sum(p["w"]), mixed, state)


@pytest.mark.parametrize("leaf,error,match", [
    (jnp.zeros(2, jnp.int32), TypeError, r"lbfgs: init\(\) got an int32 parameter .* at \['bad'\]"),
    (1, TypeError, r"lbfgs: init\(\) got an int parameter .* at \['bad'\]"),
    (jnp.zeros(2, jnp.complex64), TypeError, r"lbfgs: init\(\) got a complex64 parameter at \['bad'\]"),
], ids=["int32", "python_int", "complex64"])
def test_lbfgs_refuses_integer_and_complex_leaves_naming_the_path(leaf, error, match):
    with pytest.raises(error, match=match):
        oj.lbfgs().init({"w": jnp.zeros(3), "bad": leaf})


def test_lbfgs_step_refuses_params_the_state_was_not_made_for():
    tx = oj.lbfgs()
    state = tx.init({"w": jnp.zeros(3, jnp.float32)})
    with pytest.raises(ValueError, match=r"step\(\) got 4 float32 .* for 3 float32"):
        tx.step(lambda p: jnp.sum(p["w"]), {"w": jnp.zeros(4, jnp.float32)}, state)
    with jax.enable_x64(True), pytest.raises(ValueError, match=r"step\(\) got 3 float64 .* for 3 float32"):
        tx.step(lambda p: jnp.sum(p["w"]), {"w": jnp.zeros(3, jnp.float64)}, state)


# --- checkpoint -----------------------------------------------------------------------------------------------------

def test_lbfgs_checkpoint_round_trip_continues_the_uninterrupted_run(tmp_path):
    """Two steps, an Orbax save of params and LbfgsState, `optimjax.checkpoint.restore` into abstract arrays,
    two more steps: bit for bit the four uninterrupted steps (history, d, t and the previous gradient carry
    over between steps, so all of them must survive)."""
    ocp = pytest.importorskip("orbax.checkpoint")
    from optimjax import checkpoint

    with jax.enable_x64(True):
        tx, step = compiled_step()
        params, state = start(), tx.init(start())
        for i in range(4):
            if i == 2:
                with ocp.StandardCheckpointer() as checkpointer:
                    checkpointer.save(tmp_path / "ckpt", {"params": params, "state": state})
            params, state = step(params, state)
        target = jax.eval_shape(lambda p: {"params": p, "state": tx.init(p)}, start())
        restored = checkpoint.restore(tmp_path / "ckpt", target)
        assert int(restored["state"].num_old) > 0, "the history should be in use at the break"
        assert restored["state"].d.dtype == jnp.float64
        resumed, resumed_state = restored["params"], restored["state"]
        for _ in range(2):
            resumed, resumed_state = step(resumed, resumed_state)
    assert_trees_equal((resumed, resumed_state), (params, state), "")


# --- sharding -------------------------------------------------------------------------------------------------------

SHARDING_WORKER = r'''
import contextlib, json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import optimjax as oj

rng = np.random.default_rng(0)
specs = {"w": ((8, 6), P("data", "model")), "b": ((6,), P("model")), "s": ((), P())}
host = {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in specs.items()}
x, y = rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 6)).astype(np.float32)
loss = lambda p: jnp.mean((jnp.tanh(x @ p["w"]) * p["s"] + p["b"] - y) ** 2) + 0.01 * jnp.sum(p["w"] ** 2)
tx = oj.lbfgs(max_iter=4, history_size=3)
step = jax.jit(lambda p, s: tx.step(loss, p, s))
reference, state = host, tx.init(host)
for _ in range(2):
    reference, state = step(reference, state)
report = {"moved": max(float(np.max(np.abs(reference[k] - host[k]))) for k in host)}
for mode, kind in (("auto", AxisType.Auto), ("explicit", AxisType.Explicit)):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
    with jax.set_mesh(mesh) if kind == AxisType.Explicit else contextlib.nullcontext():
        params = jax.device_put(host, {k: NamedSharding(mesh, spec) for k, (_, spec) in specs.items()})
        compiled = step.lower(params, tx.init(params)).compile()
        state = tx.init(params)
        for _ in range(2):
            params, state = compiled(params, state)
    hlo = compiled.as_text()
    report[mode] = {
        "collectives": sorted({c for c in ("all-gather", "all-reduce", "collective-permute", "all-to-all",
                                           "reduce-scatter") if re.search(rf"\b{c}(-start)?\(", hlo)}),
        "params": {k: str(tuple(v.sharding.spec)) for k, v in params.items()},
        "state_replicated": all(v.sharding.is_fully_replicated and len(v.sharding.device_set) == 8
                                for v in (state.d, state.old_dirs, state.prev_flat_grad)),
        "diff": max(float(np.max(np.abs(np.asarray(params[k]) - reference[k]))) for k in host),
    }
print(json.dumps(report))
'''


def test_lbfgs_sharded_params_keep_their_sharding_and_the_flat_state_is_replicated():
    """On a 4x2 mesh of 8 CPU devices (a subprocess: jax fixes the device count at import), jax's automatic and
    explicit modes: the params come back sharded as they came, the flat state (d, the history, the previous
    gradient) is replicated on every device, the step gathers the params (all-gather), and the result is the
    one-device run's (bit for bit in explicit mode, where every device computes the whole step; to float32
    rounding in automatic mode, where GSPMD also splits the loss's sums)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDING_WORKER], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["moved"] > 1.0
    for mode in ("auto", "explicit"):
        facts = report[mode]
        assert facts["params"] == {"w": "('data', 'model')", "b": "('model',)", "s": "()"}, mode
        assert facts["state_replicated"], mode
        assert "all-gather" in facts["collectives"], mode
    assert report["explicit"]["collectives"] == ["all-gather"]
    assert report["explicit"]["diff"] == 0.0
    assert report["auto"]["diff"] <= 1e-5 * report["moved"]


# --- properties (hypothesis) --------------------------------------------------------------------------------------

QUADRATIC_N = 5


@functools.cache
def quadratic_step():
    """A jitted step on 0.5 x^T A x - b^T x with A and b as arguments (one compilation for every example)."""
    tx = oj.lbfgs(line_search_fn="strong_wolfe", max_iter=2, max_eval=10, tolerance_grad=1e-9, tolerance_change=0.0)

    @jax.jit
    def step(x, state, a, b):
        return tx.step(lambda p: 0.5 * p @ a @ p - b @ p, x, state)

    return tx, step


@settings(derandomize=True, database=None, deadline=None, max_examples=8, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(eigenvalues=st.lists(st.floats(0.1, 10.0), min_size=QUADRATIC_N, max_size=QUADRATIC_N),
       seed=st.integers(0, 2**32 - 1))
def test_lbfgs_on_strictly_convex_quadratics(eigenvalues, seed):
    """Random A = Q diag(eigenvalues) Q^T (condition number up to 100), b and x0, float64, steps of two strong
    Wolfe iterations: the loss (numpy, float64) never rises from step to step, everything stays finite, and
    after 12 steps x is the closed-form minimiser A^{-1} b. (tolerance_change=0: with torch's default 1e-9 a step
    ends once the loss changes by less than 1e-9, which leaves x ~sqrt(2e-9 / lambda_min) from the minimiser;
    tolerance_grad=1e-9 leaves it at most 1e-8 away.)"""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(QUADRATIC_N, QUADRATIC_N)))
    a = q @ np.diag(eigenvalues) @ q.T
    b, x = rng.normal(size=QUADRATIC_N), 3 * rng.normal(size=QUADRATIC_N)
    loss = lambda x: 0.5 * x @ a @ x - b @ x  # noqa: E731
    want = np.linalg.solve(a, b)
    with jax.enable_x64(True):
        tx, step = quadratic_step()
        state, losses = tx.init(jnp.asarray(x)), [loss(x)]
        for _ in range(12):
            x, state = step(jnp.asarray(x), state, jnp.asarray(a), jnp.asarray(b))
            x = np.asarray(x)
            assert all(np.all(np.isfinite(leaf)) for leaf in state), state
            losses.append(loss(x))
    scale = 1 + abs(loss(want))
    assert all(later <= earlier + 1e-12 * scale for earlier, later in zip(losses, losses[1:])), losses
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-6 * (1 + np.max(np.abs(want))))


def test_lbfgs_step_can_donate_the_state_that_init_made():
    """`jit(step, donate_argnums=(params, state))`: each state leaf init() makes is a buffer of its own."""
    tx = oj.lbfgs(max_iter=2)
    loss = lambda p: rosenbrock(jnp, p)  # noqa: E731
    params = {"x": jnp.asarray([-1.2, 1.0, -0.5, 0.8])}
    expected = tx.step(loss, params, tx.init(params))
    got = jax.jit(lambda p, s: tx.step(loss, p, s), donate_argnums=(0, 1))(jax.tree.map(jnp.copy, params),
                                                                           tx.init(params))
    np.testing.assert_array_equal(got[0]["x"], expected[0]["x"])
