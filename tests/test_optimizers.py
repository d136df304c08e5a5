"""Every optimizer in the table through the same checks: jit, vmap, scan, dtypes, None leaves, empty trees,
schedules, chaining, inject_hyperparams, and clear errors. Expected values come from a plain Python loop of the
same optimizer (for the transformations of JAX), from numpy (clipping), or from torch (tests/test_torch_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimjax as oj
from cases import CASE_IDS, CASES, Problem

case_params = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def params_and_grads(dtype=jnp.float32, seed=0):
    problem = Problem(seed=seed, steps=4)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), problem.params0)
    grads = [jax.tree.map(lambda x: jnp.asarray(x, dtype), problem.grad(problem.params0, t)) for t in range(4)]
    return params, grads


def loop(tx, params, grads, jit=False):
    """Apply `tx` over the gradient list in a Python loop; the reference for jit/scan/vmap."""
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


@case_params
def test_jit_matches_eager(case):
    params, grads = params_and_grads()
    assert_trees_close(loop(case.optimjax(), params, grads, jit=True), loop(case.optimjax(), params, grads))


@case_params
def test_a_step_can_donate_the_state_that_init_made(case):
    """`jit(step, donate_argnums=(params, state))` as training loops run it: every state leaf that init() makes
    eagerly is a buffer of its own (two slots sharing one zero cannot both be donated)."""
    tx = case.optimjax()
    params, grads = params_and_grads()

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    expected = loop(tx, params, grads[:1])
    got = jax.jit(step, donate_argnums=(0, 1))(jax.tree.map(jnp.copy, params), state, grads[0])
    assert_trees_close(got, expected)


@case_params
def test_step_counters_are_int32(case):
    """Every step counter in the state (`count`, as optax keeps it) is int32, before and after a step: a float
    counter loses steps past 2**24 in float32 and changes the state's structure for checkpoints."""
    tx = case.optimjax()
    params, grads = params_and_grads()
    state = tx.init(params)
    for tree in (state, tx.update(grads[0], state, params)[1]):
        counters = [(jax.tree_util.keystr(path), leaf.dtype) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
                    if "count" in jax.tree_util.keystr(path)]
        assert all(dtype == jnp.int32 for _, dtype in counters), counters
        assert counters or case.id in STATELESS_STEPS, f"{case.id} has no step counter"


# The table's optimizers whose step does not depend on the step number: no counter in their state.
STATELESS_STEPS = {"sgd", "sgd_wd", "rmsprop", "rmsprop_centered", "adadelta", "adadelta_wd"}


@case_params
def test_scan_matches_loop(case):
    tx = case.optimjax()
    params, grads = params_and_grads()

    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
    (p_scan, s_scan), _ = jax.lax.scan(body, (params, tx.init(params)), stacked)
    assert_trees_close((p_scan, s_scan), loop(tx, params, grads))


@case_params
def test_vmap_over_a_batch_of_states_matches_loop(case):
    tx = case.optimjax()
    batch = [params_and_grads(seed=s) for s in range(3)]
    params = jax.tree.map(lambda *x: jnp.stack(x), *[p for p, _ in batch])
    states = jax.vmap(tx.init)(params)
    for t in range(4):
        grads = jax.tree.map(lambda *x: jnp.stack(x), *[g[t] for _, g in batch])
        updates, states = jax.vmap(tx.update)(grads, states, params)
        params = optax.apply_updates(params, updates)
    for i, (p, g) in enumerate(batch):
        expected = loop(tx, p, g)
        assert_trees_close(jax.tree.map(lambda x: x[i], (params, states)), expected, rtol=1e-5, atol=1e-6)


@case_params
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_updates_and_state_keep_the_params_dtype(case, dtype):
    tx = case.optimjax()
    params, grads = params_and_grads(dtype)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(grads[0], state, params)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert before.dtype == after.dtype and before.shape == after.shape
    floating = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert floating and all(x.dtype == dtype for x in floating) or case.id.startswith("sgd")
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@case_params
def test_float64_params_get_float64_state(case):
    with jax.enable_x64(True):
        tx = case.optimjax()
        params, grads = params_and_grads(jnp.float64)
        updates, state = jax.jit(tx.update)(grads[0], tx.init(params), params)
        assert all(u.dtype == jnp.float64 for u in jax.tree.leaves(updates))
        assert all(x.dtype in (jnp.float64, jnp.int32) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("factory", [oj.adam, oj.adamw, oj.amsgrad, oj.nadam, oj.nadamw])
def test_mu_dtype_and_nu_dtype_set_the_moments_dtype(factory):
    params, grads = params_and_grads()
    tx = factory(learning_rate=1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    updates, state = jax.jit(tx.update)(grads[0], tx.init(params), params)
    inner = next(s for s in state if hasattr(s, "mu"))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((inner.mu, inner.nu)))
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))


@case_params
def test_none_leaves_are_left_alone(case):
    tx = case.optimjax()
    params, grads = params_and_grads()
    with_none = lambda t: {"a": t, "frozen": None, "nested": [None, t["b"]]}
    p_none, g_none = with_none(params), [with_none(g) for g in grads]
    got_p, _ = loop(tx, p_none, g_none, jit=True)
    assert got_p["frozen"] is None and got_p["nested"][0] is None
    ref_p, _ = loop(tx, {"a": params, "b2": params["b"]}, [{"a": g, "b2": g["b"]} for g in grads], jit=True)
    assert_trees_close(got_p["a"], ref_p["a"])
    assert_trees_close(got_p["nested"][1], ref_p["b2"])


@case_params
def test_empty_pytree(case):
    tx = case.optimjax()
    state = tx.init({})
    updates, _ = jax.jit(tx.update)({}, state, {})
    assert updates == {}


@case_params
def test_constant_schedule_equals_float_learning_rate(case):
    lr = case.kwargs["learning_rate"]
    params, grads = params_and_grads()
    scheduled = loop(case.optimjax(learning_rate=lambda count: lr), params, grads, jit=True)[0]
    assert_trees_close(scheduled, loop(case.optimjax(), params, grads, jit=True)[0])


@case_params
def test_chain_after_clip_by_global_norm_equals_clipping_by_hand(case):
    max_norm = 0.5
    params, grads = params_and_grads()
    chained = loop(optax.chain(optax.clip_by_global_norm(max_norm), case.optimjax()), params, grads, jit=True)[0]

    def clip(g):  # numpy reference
        norm = np.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(g)))
        assert norm > max_norm  # the clip is active
        return jax.tree.map(lambda x: x * (max_norm / norm), g)

    by_hand = loop(case.optimjax(), params, [clip(g) for g in grads], jit=True)[0]
    assert_trees_close(chained, by_hand, rtol=1e-5, atol=1e-6)


@case_params
def test_inject_hyperparams_changes_learning_rate_without_recompiling(case):
    lr = case.kwargs["learning_rate"]
    tx = optax.inject_hyperparams(case.factory)(**case.kwargs)
    params, grads = params_and_grads()
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t, g in enumerate(grads):
        state.hyperparams["learning_rate"] = jnp.asarray(lr if t < 2 else lr / 4)
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    assert step._cache_size() == 1
    piecewise = lambda count: jnp.where(count < 2, lr, lr / 4)
    expected = loop(case.optimjax(learning_rate=piecewise), *params_and_grads(), jit=True)[0]
    assert_trees_close(params, expected, rtol=1e-5, atol=1e-6)


BAD = [
    (oj.sgd, dict(learning_rate=-0.1), "learning_rate"),
    (oj.sgd, dict(learning_rate=0.1, momentum=1.0), "momentum"),
    (oj.rmsprop, dict(momentum=-0.5), "momentum"),
    (oj.scale_by_momentum, dict(beta=1.0), "beta"),
    (oj.sgd, dict(learning_rate=0.1, momentum=0.9, dampening=1.5), "dampening"),
    (oj.sgd, dict(learning_rate=0.1, nesterov=True), "nesterov"),
    (oj.sgd, dict(learning_rate=0.1, weight_decay=-1.0), "weight_decay"),
    (oj.adam, dict(learning_rate=-1e-3), "learning_rate"),
    (oj.adam, dict(b1=1.0), "b1"),
    (oj.adam, dict(b2=-0.1), "b2"),
    (oj.adam, dict(eps=-1e-8), "eps"),
    (oj.adam, dict(b1=float("nan")), "b1"),
    (oj.adamw, dict(weight_decay=-0.1), "weight_decay"),
    (oj.nadam, dict(momentum_decay=-1e-3), "momentum_decay"),
    (oj.nadamw, dict(b2=1.5), "b2"),
    (oj.rmsprop, dict(decay=1.0), "decay"),
    (oj.rmsprop, dict(eps=-1.0), "eps"),
    (oj.adagrad, dict(lr_decay=-1.0), "lr_decay"),
    (oj.adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (oj.adadelta, dict(rho=1.0), "rho"),
    (oj.scale_by_learning_rate, dict(learning_rate=None), "learning_rate"),
    (oj.add_decayed_weights, dict(weight_decay="big"), "weight_decay"),
]


@pytest.mark.parametrize("factory,kwargs,name", BAD, ids=[f"{f.__name__}-{n}" for f, _, n in BAD])
def test_bad_hyperparameters_raise_at_construction_naming_the_argument(factory, kwargs, name):
    wrong_type = any(v is None or isinstance(v, str) for v in kwargs.values())  # TypeError, as Python's convention
    with pytest.raises(TypeError if wrong_type else ValueError, match=name):
        factory(**kwargs)


# The Muon rows run optax.partition, which reports a wrong tree itself (a jax pytree error naming the differing key);
# optimjax.muon's own message is checked in tests/test_new_optimizers.py.
@pytest.mark.parametrize("case", [c for c in CASES if not c.id.startswith("muon")],
                         ids=[c.id for c in CASES if not c.id.startswith("muon")])
def test_mismatched_gradient_tree_gets_a_clear_error(case):
    tx = case.optimjax()
    params, grads = params_and_grads()
    state = tx.init(params)
    wrong_structure = {k: v for k, v in grads[0].items() if k != "b"}
    with pytest.raises(ValueError, match="tree structure does not match"):
        jax.jit(tx.update)(wrong_structure, state, params)
    wrong_shape = {**grads[0], "w": jnp.ones((1, 3))}
    with pytest.raises(ValueError, match=r"shape \(1, 3\) at \['w'\]"):
        tx.update(wrong_shape, state, params)
