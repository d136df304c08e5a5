"""Non-finite and extreme gradients, and the step counter at its limit, for every optimizer of tests/cases.py.

The policy (README, "Non-finite gradients"):

- wrapped in `optax.apply_if_finite(tx, max_consecutive_errors)`, a step whose gradients hold a NaN or an inf
  changes neither the params nor the inner state, and training continues as if that step had not happened; after
  more than `max_consecutive_errors` bad steps in a row optax applies the update anyway;
- unwrapped, the optimizers are elementwise: a NaN gradient entry turns that parameter (and its state entries)
  into NaN for good, and leaves every other entry exactly as it would have been;
- zero, tiny (1e-30) and huge (1e30) finite gradients in float32 and bfloat16 give finite updates; the step
  counter saturates at 2**31 - 1 instead of wrapping.
Known exceptions are marked xfail(strict=True), so that a fix shows up as an unexpected pass.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cases import CASE_IDS, CASES, Problem

import optimjax

CASES_BY_ID = {case.id: case for case in CASES}
STEPS = 12
BAD_STEPS = {3: np.nan, 7: np.inf, 8: -np.inf}  # step -> the value put in one gradient entry
ENTRY = ("w", (1, 2))  # the poisoned entry


def poison(grads: dict, value: float) -> dict:
    leaf, index = ENTRY
    bad = np.array(grads[leaf])
    bad[index] = value
    return {**grads, leaf: bad}


def make_step(tx):
    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return step


@functools.cache
def optimizer_and_step(case_id: str):
    """The case's optimizer and its jitted step, made once so that tests with the same shapes share compilations."""
    tx = CASES_BY_ID[case_id].optimjax()
    return tx, make_step(tx)


def host(tree):
    """A writable numpy copy of `tree`."""
    return jax.tree.map(np.array, tree)


def assert_trees_equal(a, b, what: str) -> None:
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}{jax.tree_util.keystr(path)}", strict=True)


# --- apply_if_finite ---------------------------------------------------------------------------------------------

# apply_if_finite does not look inside the inner state, so one case per state layout (with every option on) is
# enough here; the unguarded and extreme-gradient tests below run every case.
GUARDED_CASES = ["sgd_wd", "momentum_dampening_wd", "nesterov_wd", "adam_wd", "adamw_amsgrad", "nadam_fast_schedule_wd",
                 "nadamw", "rmsprop_centered_momentum_wd", "adagrad_all_options", "adadelta_wd"]


@pytest.mark.parametrize("case_id", GUARDED_CASES)
def test_apply_if_finite_skips_bad_steps_and_training_continues(case_id):
    """Each bad step leaves params and inner state bit for bit unchanged; the run ends where the bare optimizer
    ends when it never sees the bad steps (to float32 rounding)."""
    case, problem = CASES_BY_ID[case_id], Problem(steps=STEPS)
    guarded = optax.apply_if_finite(case.optimjax(), max_consecutive_errors=3)
    step = make_step(guarded)
    params = jax.tree.map(jnp.asarray, problem.params0)
    state = guarded.init(params)
    for t in range(STEPS):
        grads = problem.grad(host(params), t)
        if t not in BAD_STEPS:
            params, state, _ = step(grads, state, params)
            assert int(state.notfinite_count) == 0
            continue
        before_params, before_inner = host(params), host(state.inner_state)
        params, state, _ = step(poison(grads, BAD_STEPS[t]), state, params)
        assert_trees_equal(params, before_params, "params")
        assert_trees_equal(state.inner_state, before_inner, "inner_state")
        assert not bool(state.last_finite)
        assert int(state.notfinite_count) == (2 if t == 8 else 1)  # steps 7 and 8 are consecutive
    assert int(state.total_notfinite) == len(BAD_STEPS)

    # The reference: the bare optimizer, on the same stream without the bad steps.
    tx, ref_step = optimizer_and_step(case_id)
    ref_params = jax.tree.map(jnp.asarray, problem.params0)
    ref_state = tx.init(ref_params)
    for t in range(STEPS):
        if t not in BAD_STEPS:
            ref_params, ref_state, _ = ref_step(problem.grad(host(ref_params), t), ref_state, ref_params)
    # Not bit for bit: the guarded step is another XLA program, which may fuse a multiply-add differently.
    assert problem.relative_error([host(params)], [host(ref_params)]) < 1e-5
    chex.assert_trees_all_close(state.inner_state, ref_state, rtol=1e-5, atol=1e-7)


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
    """optax's documented behaviour: after `max_consecutive_errors` ignored steps in a row the next bad update is
    applied, so a gradient that stays NaN still reaches the params."""
    guarded = optax.apply_if_finite(optimjax.adam(1e-2), max_consecutive_errors=2)
    step = make_step(guarded)
    problem = Problem(steps=3)
    params = jax.tree.map(jnp.asarray, problem.params0)
    state = guarded.init(params)
    for t in range(3):
        params, state, _ = step(poison(problem.grad(host(params), t), np.nan), state, params)
        assert bool(np.isnan(params["w"][ENTRY[1]])) == (t == 2)


# --- unguarded: what a NaN does ----------------------------------------------------------------------------------

# Adafactor scales each leaf's step by the leaf's RMS and factors its second moment; Muon's Newton-Schulz mixes every
# entry of a matrix: a NaN entry poisons its whole leaf (and only it), as in torch.optim.
LEAF_WIDE = [c.id for c in CASES if c.factory is optimjax.adafactor or c.id.startswith("muon")]


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c not in LEAF_WIDE])
def test_without_guard_a_nan_entry_poisons_only_its_own_parameter(case_id):
    """Documented behaviour without apply_if_finite: the NaN entry's parameter is NaN from the bad step on, and
    every other entry is bit for bit what it is in the run without the NaN."""
    problem = Problem(steps=7)
    tx, step = optimizer_and_step(case_id)
    params = clean = jax.tree.map(jnp.asarray, problem.params0)
    state = clean_state = tx.init(params)
    leaf, index = ENTRY
    for t in range(7):
        grads = problem.grad(host(params), t)
        clean_grads = problem.grad(host(clean), t)
        if t == 3:
            grads = poison(grads, np.nan)
        params, state, _ = step(grads, state, params)
        clean, clean_state, _ = step(clean_grads, clean_state, clean)
        poisoned = np.isnan(host(params)[leaf][index])
        assert poisoned == (t >= 3)
        got, want = host(params), host(clean)
        got[leaf][index] = want[leaf][index] = 0.0
        assert_trees_equal(got, want, "params")


# --- extreme finite gradients ------------------------------------------------------------------------------------

ADAPTIVE = [c.id for c in CASES if c.factory in (optimjax.adam, optimjax.amsgrad, optimjax.adamw, optimjax.nadam,
                                                    optimjax.nadamw, optimjax.rmsprop, optimjax.adagrad,
                                                    optimjax.adadelta, optimjax.radam, optimjax.adafactor)
            or c.id.startswith("muon")]  # Muon's table rows give the table's non-matrix leaves to AdamW
FACTORED = [c.id for c in CASES if c.factory is optimjax.adafactor]
ADAFACTOR_OVERFLOW = ("g**2 overflows to inf at |g| = 1e30 and torch's lerp with weight 1 (Adafactor's first step) "
                      "computes inf - inf * 0 = NaN, so the update is NaN, in torch.optim.Adafactor too")
OVERFLOW = ("g**2 overflows float32/bfloat16 for |g| > ~1.8e19, so the second moment becomes inf (torch.optim's "
            "does too); the update is then 0 and that entry never moves again")


def extreme_cases(exceptions: dict[str, str], dtypes=("float32", "bfloat16")) -> list:
    """(case, dtype, gradient) for every case, float32 and bfloat16, gradients 0, 1e-30 and 1e30; a case listed
    in `exceptions` (id -> reason) is an expected failure at 1e30 in `dtypes`."""
    return [
        pytest.param(case.id, dtype, g, id=f"{case.id}-{dtype}-{g:g}",
                     marks=[pytest.mark.xfail(strict=True, reason=exceptions[case.id])]
                     if g == 1e30 and case.id in exceptions and dtype in dtypes else [])
        for case in CASES for dtype in ("float32", "bfloat16") for g in (0.0, 1e-30, 1e30)
    ]


def run_constant_gradient(case_id: str, dtype: str, g: float, steps: int = 3):
    tx, step = optimizer_and_step(case_id)
    params = {"w": jnp.ones((4,), dtype), "b": jnp.full((), -2.0, dtype)}
    state = tx.init(params)
    grads = {"w": jnp.full((4,), g, dtype), "b": jnp.asarray(-g, dtype)}
    updates = []
    for _ in range(steps):
        params, state, u = step(grads, state, params)
        updates.append(u)
    return params, state, updates


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact))


@pytest.mark.parametrize("case_id, dtype, g", extreme_cases({c: ADAFACTOR_OVERFLOW for c in FACTORED}))
def test_extreme_finite_gradients_give_finite_updates(case_id, dtype, g):
    params, _, updates = run_constant_gradient(case_id, dtype, g)
    assert all_finite(updates) and all_finite(params)


@pytest.mark.parametrize("case_id, dtype, g", extreme_cases({c: OVERFLOW for c in ADAPTIVE}))
def test_extreme_finite_gradients_keep_state_finite(case_id, dtype, g):
    _, state, _ = run_constant_gradient(case_id, dtype, g)
    assert all_finite(state)


@pytest.mark.xfail(strict=True, reason="eps=1e-8 rounds to 0 in float16 (smallest subnormal 6e-8): 0 / (0 + 0) "
                   "is NaN, as in torch. Pass eps >= 6e-8 for float16 parameters.")
def test_zero_gradient_in_float16_with_default_eps():
    tx = optimjax.adam(1e-3)
    params = {"w": jnp.ones(3, jnp.float16)}
    updates, _ = tx.update({"w": jnp.zeros(3, jnp.float16)}, tx.init(params), params)
    assert all_finite(updates)


def test_zero_gradient_in_float16_with_representable_eps():
    tx = optimjax.adam(1e-3, eps=1e-4)
    params = {"w": jnp.ones(3, jnp.float16)}
    updates, _ = tx.update({"w": jnp.zeros(3, jnp.float16)}, tx.init(params), params)
    np.testing.assert_array_equal(updates["w"], np.zeros(3, np.float16))


# --- the step counter at its limit -------------------------------------------------------------------------------

COUNT_MAX = np.iinfo(np.int32).max
COUNTED = [c.id for c in CASES if optax.tree.get_all_with_path(c.optimjax().init({"w": jnp.ones(2)}), "count")]


@pytest.mark.parametrize("case_id", COUNTED)
def test_step_counter_saturates_at_int32_max(case_id):
    tx, step = optimizer_and_step(case_id)
    params = {"w": jnp.asarray([0.5, -1.5, 2.0])}
    state = optax.tree.set(tx.init(params), count=jnp.asarray(COUNT_MAX, jnp.int32))
    grads = {"w": jnp.asarray([0.3, -0.2, 1.0])}
    for _ in range(2):
        params, state, updates = step(grads, state, params)
        assert all_finite(updates) and all_finite(params) and all_finite(state)
        counts = [c for _, c in optax.tree.get_all_with_path(state, "count")]
        assert counts and all(c.dtype == jnp.int32 and int(c) == COUNT_MAX for c in counts)


def test_adam_at_int32_max_steps_has_no_bias_correction_left():
    """At t = 2**31 - 1 both bias corrections are 1, so Adam's first update from zero moments is the closed form
    -lr (1 - b1) g / (sqrt(1 - b2) |g| + eps) (numpy, float64)."""
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    tx = optimjax.adam(lr, b1, b2, eps)
    g = np.asarray([0.3, -0.2, 1.0, 1e-3], np.float32)
    params = {"w": jnp.zeros(4)}
    state = optax.tree.set(tx.init(params), count=jnp.asarray(COUNT_MAX - 1, jnp.int32))
    updates, _ = tx.update({"w": jnp.asarray(g)}, state, params)
    g64 = g.astype(np.float64)
    expected = -lr * (1 - b1) * g64 / (np.sqrt(1 - b2) * np.abs(g64) + eps)
    np.testing.assert_allclose(updates["w"], expected, rtol=2e-6)
