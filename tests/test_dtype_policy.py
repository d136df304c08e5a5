"""The dtype policy of `optimjax._tree` for every optimizer: state dtype fixed at init whatever the gradients'
dtype, arithmetic in the promotion, updates in the gradients' dtype; Python numbers as leaves; integer and bool
leaves refused with the leaf's path."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimjax
from cases import CASES as ALL_CASES, muon_and_adamw

# The families whose transforms follow the dtype policy and complex rule of optimjax._tree (issue 10: every
# optimizer). Adafactor and Muon take real leaves only, as torch's (see test_complex's
# test_real_only_optimizers_raise_on_complex_leaves), so they are in the dtype policy's set and not the complex one.
COVERED = {optimjax.sgd, optimjax.momentum, optimjax.nesterov, optimjax.adam, optimjax.amsgrad, optimjax.adamw,
           optimjax.nadam, optimjax.nadamw, optimjax.rmsprop, optimjax.adagrad, optimjax.adadelta,
           optimjax.radam, optimjax.adamax, optimjax.asgd, optimjax.rprop, optimjax.adafactor, muon_and_adamw}
CASES = [c for c in ALL_CASES if c.factory in COVERED]
CASE_IDS = [c.id for c in CASES]


# (params dtype, gradients dtype)
PAIRS = [("float32", "bfloat16"), ("float32", "float16"), ("bfloat16", "float32"), ("float64", "float32")]
SHAPES = {"w": (3, 2), "s": ()}


def signature(tree):
    return jax.tree.structure(tree), [(jnp.shape(x), jnp.dtype(x.dtype), x.weak_type) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dtype_is_fixed_at_init_and_scan_runs(case, pair):
    """Several steps of lax.scan (whose carry must keep its exact types: it raised "carry input float32 ...
    output bfloat16" before), and the state after them has init's structure, shapes and dtypes."""
    param_dtype, grad_dtype = pair
    with jax.enable_x64(True) if "float64" in pair else contextlib.nullcontext():
        rng = np.random.default_rng(0)
        params = {k: jnp.asarray(rng.normal(size=s), param_dtype) for k, s in SHAPES.items()}
        grads = {k: jnp.asarray(rng.normal(size=(4, *s)), grad_dtype) for k, s in SHAPES.items()}
        tx = case.optimjax()
        state0 = tx.init(params)

        def step(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (optax.apply_updates(params, updates), state), updates

        (params_t, state_t), updates = jax.lax.scan(step, (params, state0), grads)
        assert signature(state_t) == signature(state0)
        assert signature(params_t) == signature(params)
        for k in SHAPES:
            assert updates[k].dtype == jnp.dtype(grad_dtype), "updates come out in the gradients' dtype"
            assert np.all(np.isfinite(np.asarray(params_t[k], np.float64)))
        assert any(np.any(np.asarray(params_t[k] != params[k])) for k in SHAPES), f"{case.id}: nothing moved"
        for x, x0 in zip(jax.tree.leaves(state_t), jax.tree.leaves(state0)):
            if jnp.shape(x) in SHAPES.values() and jnp.ndim(x) > 0:
                assert x.dtype == x0.dtype == jnp.dtype(param_dtype)


@pytest.mark.parametrize("name", ["adam", "nadam", "amsgrad"])
def test_bfloat16_gradients_keep_float32_moments_tracking(name):
    """g = 1 (exact in bfloat16) for 3000 steps: v_t = 1 - b2**t = 0.9503 in float32 (in bfloat16, b2 = 0.999
    rounds to 1 and v stalled at 0.5), m_t = 1 - b1**t, and every step is -lr (up to bfloat16 rounding of the
    update): p_3000 = -3."""
    steps, lr = 3000, 1e-3
    tx = getattr(optimjax, name)(lr)
    params = jnp.zeros(2, jnp.float32)

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jnp.ones(2, jnp.bfloat16), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    (inner,) = [s for s in state if hasattr(s, "nu")]
    assert inner.nu.dtype == inner.mu.dtype == jnp.float32
    np.testing.assert_allclose(inner.nu, 1 - 0.999**steps, rtol=1e-4)
    np.testing.assert_allclose(inner.mu, 1 - 0.9**steps, rtol=1e-5)
    np.testing.assert_allclose(params, -lr * steps, rtol=5e-3)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_python_number_leaves_equal_arrays(case):
    """Python floats as parameter and gradient leaves (as optax takes them) give the same steps as the same values
    in float32 arrays."""
    def run(as_leaf):
        tx = case.optimjax()
        params = {"a": as_leaf(1.5), "n": as_leaf(-2.0), "w": jnp.asarray([0.5, -1.0], jnp.float32)}
        state, out = tx.init(params), []
        for t in range(3):
            grads = {"a": as_leaf(0.25 - 0.5 * t), "n": as_leaf(t - 1.0), "w": jnp.asarray([1.0, -t], jnp.float32)}
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            out.append(params)
            params = {**params, "a": as_leaf(float(params["a"])), "n": as_leaf(float(params["n"]))}
        return out

    ours = run(lambda x: x)
    reference = run(lambda x: jnp.asarray(x, jnp.float32))
    for got, want in zip(ours, reference):
        for k in want:
            assert got[k].dtype == want[k].dtype == jnp.float32
            np.testing.assert_array_equal(got[k], want[k])
    assert float(ours[-1]["a"]) != 1.5


BAD_LEAVES = {"int32": jnp.arange(3, dtype=jnp.int32), "bool": jnp.asarray([True, False, True])}


@pytest.mark.parametrize("kind", BAD_LEAVES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_integer_and_bool_leaves_raise_naming_the_path(case, kind):
    """Before: SGD cast lr to int (zero update), Adam and RMSprop gave NaN/inf, bool failed deep inside jax."""
    bad = BAD_LEAVES[kind]
    tx = case.optimjax()
    with pytest.raises(TypeError, match=rf"init\(\) got an? {kind} parameter .*\['layer'\]\['step'\]"):
        tx.init({"layer": {"step": bad, "w": jnp.ones(3)}})
    params = {"layer": {"step": jnp.zeros(3), "w": jnp.ones(3)}}
    state = tx.init(params)
    with pytest.raises(TypeError, match=rf"update\(\) got an? {kind} gradient .*\['layer'\]\['step'\]"):
        tx.update({"layer": {"step": bad, "w": jnp.ones(3)}}, state, params)
    python = {"int32": 3, "bool": True}[kind]  # Python ints and bools are integer leaves too (jnp: int32, bool)
    with pytest.raises(TypeError, match=rf"got an? {type(python).__name__} parameter {python} at \['b'\]"):
        tx.init({"a": 1.0, "b": python})


@pytest.mark.parametrize("kind", BAD_LEAVES)
def test_muon_integer_and_bool_matrices_raise_naming_the_path(kind):
    """The table runs Muon on its matrices only (its other leaves go to AdamW): an integer or bool matrix given to
    optimjax.muon itself raises the same TypeError, before the check that every leaf is 2-D."""
    bad = BAD_LEAVES[kind].reshape(3, 1)
    tx = optimjax.muon(0.02)
    with pytest.raises(TypeError, match=rf"(?s)init\(\) got an? {kind} parameter .*\['layer'\]\['step'\]"):
        tx.init({"layer": {"step": bad, "w": jnp.ones((3, 2))}})
    params = {"layer": {"step": jnp.zeros((3, 1)), "w": jnp.ones((3, 2))}}
    with pytest.raises(TypeError, match=rf"(?s)update\(\) got an? {kind} gradient .*\['layer'\]\['step'\]"):
        tx.update({"layer": {"step": bad, "w": jnp.ones((3, 2))}}, tx.init(params), params)


def test_adafactor_and_muon_keep_float32_state_with_bfloat16_gradients():
    """float32 params, bfloat16 gradients g_t alternating 1 and 2 (exact in bfloat16) on every entry: Adafactor's
    variance and row factor follow x_t = x_{t-1} + t**-0.8 (g_t**2 - x_{t-1}) and Muon's buffer
    B_t = B_{t-1} + 0.05 (g_t - B_{t-1}), computed here in numpy float64; a state computed in bfloat16 is ~1e-3
    off."""
    steps = 60
    g = [1.0 + t % 2 for t in range(steps)]
    x, b = 0.0, 0.0
    for t in range(1, steps + 1):
        x += t**-0.8 * (g[t - 1] ** 2 - x)
        b += 0.05 * (g[t - 1] - b)

    def run(tx, params):
        state, update = tx.init(params), jax.jit(tx.update)
        for t in range(steps):
            grads = jax.tree.map(lambda p: jnp.full(p.shape, g[t], jnp.bfloat16), params)
            updates, state = update(grads, state, params)
            assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        return state

    state = run(optimjax.adafactor(0.0), {"v": jnp.ones(3), "m": jnp.ones((2, 3))})  # lr 0: params stay put
    (inner,) = [s for s in state if hasattr(s, "variance")]
    assert inner.variance["v"].dtype == inner.row_var["m"].dtype == jnp.float32
    np.testing.assert_allclose(inner.variance["v"], x, rtol=1e-5)
    np.testing.assert_allclose(inner.row_var["m"], x, rtol=1e-5)
    state = run(optimjax.muon(0.0, weight_decay=0.0), {"m": jnp.ones((2, 3))})
    (inner,) = [s for s in state if hasattr(s, "momentum_buffer")]
    assert inner.momentum_buffer["m"].dtype == jnp.float32
    np.testing.assert_allclose(inner.momentum_buffer["m"], b, rtol=1e-5)
