"""optimjax.lbfgs follows torch.optim.LBFGS's `step(closure)` (float64, 1e-10): several steps in a row (the history
and d, t carry over), both line-search modes, the stopping rules (max_iter, max_eval, tolerance_grad,
tolerance_change), a small history; a nonconvex full-batch problem (logistic regression with a tanh layer) and
Rosenbrock's function. Expected values come from torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

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


def run_torch(loss, params0, steps, **kwargs):
    params = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
    opt = torch.optim.LBFGS(list(params.values()), **kwargs)
    x, y = torch.tensor(X), torch.tensor(Y)

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


def run_optimjax(loss, params0, steps, **kwargs):
    tx = oj.lbfgs(**kwargs)
    params = jax.tree.map(jnp.asarray, params0)
    x, y = jnp.asarray(X), jnp.asarray(Y)
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
