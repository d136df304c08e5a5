"""What the table (tests/cases.py) does not show for RAdam, Adamax, ASGD, Rprop, Adafactor and Muon: ASGD's
averaged parameters and schedules, torch's `maximize` for every family, RAdam's per-step scalars, Adafactor's
factored state, Muon in bfloat16 against torch's own Muon and its error on a non-matrix leaf. Expected values come
from torch (or numpy float64)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from cases import CASES, Problem, TorchMuonAndAdamW, float64, muon_and_adamw
from optimjax.radam import radam_scalars, rectification_start

CASES_BY_ID = {c.id: c for c in CASES}


def run_torch_with_state(problem: Problem, make_optimizer, lr_lambda=None):
    """Problem.run_torch, also returning the optimizer (to read its state)."""
    params = {k: torch.tensor(v) for k, v in problem.params0.items()}
    optimizer = make_optimizer(list(params.values()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
    out = []
    for t in range(problem.steps):
        for k, g in problem.grad({k: p.numpy() for k, p in params.items()}, t).items():
            params[k].grad = torch.tensor(g)
        optimizer.step()
        if scheduler:
            scheduler.step()
        out.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return out, optimizer, list(params)


def run_with_state(problem: Problem, tx):
    """Problem.run_optimjax, also returning the final optimizer state."""

    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.asarray, problem.params0)
    state, jitted, out = tx.init(params), jax.jit(step), []
    for t in range(problem.steps):
        grads = jax.tree.map(jnp.asarray, problem.grad(jax.tree.map(np.asarray, params), t))
        params, state = jitted(grads, state, params)
        out.append(jax.tree.map(np.asarray, params))
    return out, state


# --- ASGD --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_asgd_averaged_params_match_torch_ax(precision):
    """`asgd_averaged_params(state)` is torch's state[p]["ax"] after 60 steps (averaging from step 22 on), read
    through optax.inject_hyperparams' state."""
    case = CASES_BY_ID["asgd_averaging_wd"]
    dtype, tol = (np.float64, 1e-11) if precision == "float64" else (np.float32, 1e-5)
    with float64() if precision == "float64" else jax.enable_x64(False):
        problem = Problem(seed=4, dtype=dtype)
        _, optimizer, names = run_torch_with_state(problem, case.torch)
        _, state = run_with_state(problem, optax.inject_hyperparams(oj.asgd)(**case.kwargs))
        ax = oj.asgd_averaged_params(state)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for name, p in zip(names, params):
            want = optimizer.state[p]["ax"].numpy()
            assert not np.allclose(want, p.detach().numpy()), "ax equals the params: averaging never started"
            np.testing.assert_allclose(ax[name], want, rtol=0, atol=tol * np.max(np.abs(want)), err_msg=name)


@pytest.mark.parametrize("case_id", ["asgd_averaging_wd", "rprop", "radam_decoupled_wd", "adafactor_all_options"])
def test_schedule_matches_torch_lr_scheduler(case_id):
    """A schedule as learning_rate == torch's LambdaLR: ASGD's eta uses each step's lr one step late, Rprop reads
    the lr once (its step sizes live in the state), Adafactor caps its relative step with it."""
    case = CASES_BY_ID[case_id]
    base = case.kwargs["learning_rate"]
    schedule = optax.warmup_cosine_decay_schedule(base / 10, base, warmup_steps=10, decay_steps=60,
                                                  end_value=base / 10)
    problem = Problem(seed=3)
    ours = problem.run_optimjax(case.optimjax(learning_rate=schedule))
    reference = problem.run_torch(case.torch, lr_lambda=lambda t: float(schedule(t)) / base)
    assert problem.relative_error(ours, reference) < 1e-5


def test_asgd_needs_params():
    tx = oj.asgd()
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="scale_by_asgd: update.. needs `params`"):
        tx.update(params, tx.init(params))


def test_asgd_averaged_params_needs_one_asgd_state():
    with pytest.raises(ValueError, match="found 0"):
        oj.asgd_averaged_params(oj.adam().init({"w": jnp.ones(2)}))


# --- maximize, for every new family -------------------------------------------------------------------------------

MAXIMIZE = {
    "adamax": (oj.adamax, dict(learning_rate=2e-2, weight_decay=0.1), torch.optim.Adamax,
               dict(lr=2e-2, weight_decay=0.1)),
    "asgd": (oj.asgd, dict(learning_rate=0.01, lambd=0.05, t0=20.0), torch.optim.ASGD,
             dict(lr=0.01, lambd=0.05, t0=20.0)),
    "adafactor": (oj.adafactor, dict(learning_rate=1e-2, weight_decay=0.1), torch.optim.Adafactor,
                  dict(lr=1e-2, weight_decay=0.1)),
    "radam_decoupled": (oj.radam, dict(learning_rate=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
                        torch.optim.RAdam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("name", sorted(MAXIMIZE))
def test_maximize_matches_torch_in_float64(name):
    factory, kwargs, torch_cls, torch_kwargs = MAXIMIZE[name]
    with float64():
        problem = Problem(seed=5, steps=30, dtype=np.float64)
        ours = problem.run_optimjax(factory(**kwargs, maximize=True))
        reference = problem.run_torch(lambda p: torch_cls(p, maximize=True, foreach=False, **torch_kwargs))
        assert problem.relative_error(ours, reference) < 1e-11


# --- RAdam's per-step scalars --------------------------------------------------------------------------------------

@pytest.mark.parametrize("b2", [0.5, 0.7, 0.9, 0.99, 0.999, 0.9999])
def test_radam_scalars_match_float64(b2):
    """rho_t and r_t in float32 within a few ulp of numpy float64 (the textbook formula loses 1e-4 to
    cancellation at t = 6 with b2 = 0.999), and the switch at torch's first t with rho_t > 5."""
    t = np.arange(1, 5000, dtype=np.float64)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    got_rho, got_bc2_sqrt, got_rect = radam_scalars(b2, jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(got_rho, rho, rtol=2e-6)
    np.testing.assert_allclose(got_bc2_sqrt, np.sqrt(1 - b2**t), rtol=2e-6)
    on = rho > 5
    if on.any():
        rho = rho[on]
        rect = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        np.testing.assert_allclose(np.asarray(got_rect)[on], rect, rtol=2e-6)
        assert rectification_start(b2) == int(t[on][0])
    else:
        assert rectification_start(b2) >= 2**31 - 1


def test_radam_is_not_rectified_where_rho_t_is_exactly_5():
    """torch rectifies where rho_t > 5, strictly (optax where rho_t >= 5): with this b2, torch's float64 rho_6 is
    exactly 5, so step 6 is still momentum and step 7 the first rectified one (float64, 1e-11 from torch)."""
    b2, steps = 0.8397685748659791, 8
    rho = [2 / (1 - b2) - 1 - 2 * t * b2**t / (1 - b2**t) for t in (5.0, 6.0, 7.0)]  # torch's formula, in floats
    assert rho[0] < 5 and rho[1] == 5 and rho[2] > 5
    with float64():
        problem = Problem(seed=6, steps=steps, dtype=np.float64)
        ours = problem.run_optimjax(oj.radam(learning_rate=1e-2, b2=b2))
        reference = problem.run_torch(lambda p: torch.optim.RAdam(p, lr=1e-2, betas=(0.9, b2), foreach=False))
        assert problem.relative_error(ours, reference) < 1e-11


# --- Adafactor's factored state --------------------------------------------------------------------------------------

def test_adafactor_state_is_factored_like_torch():
    """Shapes and values of row_var / col_var (>= 2 dims, over the last two) and variance (< 2 dims) after 60
    float64 steps equal torch's state; a (4, 3) matrix keeps 4 + 3 numbers instead of 12."""
    case = CASES_BY_ID["adafactor_all_options"]
    with float64():
        problem = Problem(seed=6, dtype=np.float64)
        _, optimizer, names = run_torch_with_state(problem, case.torch)
        _, state = run_with_state(problem, case.optimjax())
        inner = next(s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, oj.ScaleByAdafactorState))
                     if isinstance(s, oj.ScaleByAdafactorState))
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for name, p in zip(names, params):
            torch_state = optimizer.state[p]
            for key in ("row_var", "col_var", "variance"):
                ours = np.asarray(getattr(inner, key)[name])
                if key not in torch_state:
                    assert ours.shape == (), f"{name}.{key}: a placeholder where torch keeps nothing"
                    continue
                want = torch_state[key].numpy()
                assert ours.shape == want.shape, f"{name}.{key}"
                np.testing.assert_allclose(ours, want, rtol=1e-10, err_msg=f"{name}.{key}")
    assert inner.row_var["w"].shape == (4, 1) and inner.col_var["w"].shape == (1, 3)
    assert inner.row_var["conv"].shape == (2, 3, 1) and inner.col_var["conv"].shape == (2, 1, 2)


class DeadGradients(Problem):
    """The problem with gradients that stay 0: a row of the matrix (an unused embedding row) and one entry of the
    vector, so that their second-moment estimate is 0 at every step."""

    def grad(self, params, t):
        grads = super().grad(params, t)
        grads["w"][0], grads["b"][1] = 0, 0
        return grads


def test_adafactor_with_gradients_that_stay_zero_matches_torch():
    """Where the estimate is 0, torch floors it at eps1**2 before the rsqrt, so U = 0 there (not 0 / 0): float64,
    1e-11 from torch, no NaN, and the dead entries do not move."""
    case = CASES_BY_ID["adafactor"]
    with float64():
        problem = DeadGradients(seed=7, steps=20, dtype=np.float64)
        ours = problem.run_optimjax(case.optimjax())
        reference = problem.run_torch(case.torch)
        assert all(np.isfinite(p[k]).all() for p in ours for k in p)
        assert problem.relative_error(ours, reference) < 1e-11
        assert (ours[-1]["w"][0] == problem.params0["w"][0]).all() and ours[-1]["b"][1] == problem.params0["b"][1]


# --- Muon ----------------------------------------------------------------------------------------------------------

def test_muon_in_bfloat16_is_near_torch_muon():
    """The default ns_dtype=bfloat16 against torch.optim.Muon itself (bfloat16 Newton-Schulz): within 2% of the
    displacement over 60 steps (measured 0.2-0.9% on three seeds; torch's own algorithm in float32 is as far from
    its bfloat16 run), and the first step within 1% of its size (bfloat16 has 8 significant bits)."""
    problem = Problem(seed=1)
    ours = problem.run_optimjax(muon_and_adamw(learning_rate=0.02))
    reference = problem.run_torch(functools.partial(TorchMuonAndAdamW, lr=0.02, ns_in_grad_dtype=False))
    first_step = np.max(np.abs(reference[0]["w"] - problem.params0["w"]))
    assert np.max(np.abs(ours[0]["w"] - reference[0]["w"])) < 1e-2 * first_step
    assert problem.relative_error(ours, reference) < 2e-2


def test_muon_in_float32_is_far_closer_than_bfloat16():
    """ns_dtype=None (float32) is on torch's algorithm run in float32 (the table checks 1e-5): the bfloat16 check
    above is loose because of bfloat16, not because of a difference in the algorithm."""
    problem = Problem(seed=1)
    exact = problem.relative_error(problem.run_optimjax(muon_and_adamw(learning_rate=0.02, ns_dtype=None)),
                                   problem.run_torch(functools.partial(TorchMuonAndAdamW, lr=0.02)))
    assert exact < 1e-5


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 2)])
def test_muon_refuses_a_non_matrix_leaf_naming_it(shape):
    params = {"w": jnp.ones((4, 3)), "layer": {"bias": jnp.ones(shape)}}
    with pytest.raises(ValueError, match=r"muon: Muon only takes 2-D leaves.*\['layer'\]\['bias'\] has shape"):
        oj.muon().init(params)


def test_muon_mismatched_gradient_tree_gets_a_clear_error():
    tx = oj.muon()
    params = {"w": jnp.ones((4, 3)), "v": jnp.ones((2, 2))}
    state = tx.init(params)
    with pytest.raises(ValueError, match="tree structure does not match"):
        tx.update({"w": jnp.ones((4, 3))}, state, params)
    with pytest.raises(ValueError, match=r"shape \(1, 3\) at \['w'\]"):
        tx.update({"w": jnp.ones((1, 3)), "v": jnp.ones((2, 2))}, state, params)


def test_orthogonalize_gives_near_orthogonal_rows():
    """In float64, many steps of the quintic leave singular values in torch's documented (0.5, 1.5) band and
    the singular vectors of the input (numpy's SVD as the reference)."""
    with jax.enable_x64(True):
        x = np.random.default_rng(0).normal(size=(6, 4))
        o = np.asarray(oj.orthogonalize(jnp.asarray(x), ns_steps=10, ns_dtype=jnp.float64))
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        s_o = np.linalg.svd(o, compute_uv=False)
        assert np.all((s_o > 0.5) & (s_o < 1.5)), s_o
        np.testing.assert_allclose(u.T @ o @ vt.T, np.diag(np.diag(u.T @ o @ vt.T)), atol=1e-9)


# --- errors --------------------------------------------------------------------------------------------------------

BAD = [
    (oj.radam, dict(b2=1.0), "b2"),
    (oj.radam, dict(decoupled_weight_decay=1), "decoupled_weight_decay"),
    (oj.adamax, dict(eps=-1.0), "eps"),
    (oj.asgd, dict(lambd=-1.0), "lambd"),
    (oj.asgd, dict(t0=-1.0), "t0"),
    (oj.rprop, dict(etas=(1.5, 2.0)), r"etas\[0\]"),
    (oj.rprop, dict(etas=(0.5, 0.9)), r"etas\[1\]"),
    (oj.rprop, dict(step_sizes=(1.0, 0.5)), r"step_sizes\[1\]"),
    (oj.rprop, dict(etas=0.5), "etas"),
    (oj.adafactor, dict(beta2_decay=0.5), "beta2_decay"),
    (oj.adafactor, dict(d=0.5), r"\bd\b"),
    (oj.adafactor, dict(eps=(None, -1.0)), r"eps\[1\]"),
    (oj.muon, dict(ns_steps=100), "ns_steps"),
    (oj.muon, dict(adjust_lr_fn="sqrt"), "adjust_lr_fn"),
    (oj.muon, dict(momentum=1.0), "momentum"),
    (oj.rprop, dict(maximize="yes"), "maximize must be True or False"),
]


@pytest.mark.parametrize("factory,kwargs,name", BAD, ids=[f"{f.__name__}-{k}" for f, k, _ in
                                                         [(f, next(iter(k)), n) for f, k, n in BAD]])
def test_bad_hyperparameters_raise_naming_the_argument(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


def test_readme_muon_partition_example_runs():
    """The README's Muon + AdamW partition (a ```py block, so that test_readme's numbering of its ```python blocks
    is unchanged): the matrix gets Muon's orthogonalized step, the bias AdamW's."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```py\n(.*?)```", readme, re.S)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    state, updates = scope["state"], scope["updates"]
    assert set(state.inner_states) == {"muon", "adamw"}
    # AdamW's first step is -lr * sign(g) (+ decay on 0); Muon's moves every entry of the all-ones matrix.
    np.testing.assert_allclose(updates["bias"], -3e-4 * np.ones(4), rtol=1e-5)
    assert np.all(np.asarray(updates["kernel"]) != 0)
