"""clip_grad_norm / clip_grad_value against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ themselves."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from cases import CASES, Problem, float64

SHAPES = {"w": (5, 3), "b": (3,), "scalar": (), "conv": (2, 2, 3)}


def grads(scale, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: np.asarray(scale * rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def torch_clip(g, max_norm, norm_type, **kwargs):
    """torch's clipped gradients and total norm (per-leaf tensors in the tree's leaf order)."""
    params = []
    for k in sorted(g):  # jax's dict order
        p = torch.nn.Parameter(torch.zeros(g[k].shape, dtype=torch.from_numpy(np.asarray(g[k])).dtype))
        p.grad = torch.tensor(g[k])
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, foreach=False, **kwargs)
    return {k: p.grad.numpy() for k, p in zip(sorted(g), params)}, float(total)


def torch_norm(g, norm_type):
    return float(torch.nn.utils.get_total_norm([torch.tensor(v) for v in g.values()], norm_type))


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, 0.5, math.inf])
def test_clip_grad_norm_equals_torch(norm_type, dtype, rtol):
    """Total norm below, at and above max_norm (also at a small norm, where optax's clip differs most)."""
    for where in ["below", "at", "above", "small_above"]:
        g = grads(0.01 if where == "small_above" else 1.0, dtype)
        norm = torch_norm(g, norm_type)
        max_norm = {"below": 2 * norm, "at": norm, "above": norm / 3, "small_above": norm / 10}[where]
        reference, reference_total = torch_clip(g, max_norm, norm_type)
        with jax.enable_x64(dtype == np.float64):
            tx = oj.clip_grad_norm(max_norm, norm_type)
            update = jax.jit(tx.update) if where == "at" else tx.update
            ours, state = update(jax.tree.map(jnp.asarray, g), tx.init(g))
            assert state.total_norm.dtype == dtype
            np.testing.assert_allclose(float(state.total_norm), reference_total, rtol=rtol)
            for k in SHAPES:
                assert ours[k].dtype == dtype
                np.testing.assert_allclose(np.asarray(ours[k]), reference[k], rtol=rtol, atol=0)
        if where != "below":  # torch always multiplies: at max_norm too, by max_norm / (max_norm + 1e-6)
            assert not np.array_equal(reference["w"], g["w"])


def test_zero_gradients_stay_zero():
    g = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    reference, total = torch_clip(g, 1.0, 2.0)
    tx = oj.clip_grad_norm(1.0)
    ours, state = tx.update(g, tx.init(g))
    assert float(state.total_norm) == total == 0.0
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(ours[k]), reference[k])


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_nonfinite_without_error_scales_like_torch(bad):
    g = grads(1.0, np.float32)
    g["b"][1] = bad
    reference, total = torch_clip(g, 1.0, 2.0)
    tx = oj.clip_grad_norm(1.0)
    ours, state = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(float(state.total_norm), total)
    for k in SHAPES:
        np.testing.assert_array_equal(np.asarray(ours[k]), reference[k])  # NaN where torch has NaN


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_error_if_nonfinite_raises_eagerly_and_under_jit(bad):
    g = grads(1.0, np.float32)
    g["w"][0, 0] = bad
    with pytest.raises(RuntimeError, match="non-finite"):
        torch_clip(g, 1.0, 2.0, error_if_nonfinite=True)
    tx = oj.clip_grad_norm(1.0, error_if_nonfinite=True)
    state = tx.init(g)
    with pytest.raises(RuntimeError, match="clip_grad_norm: the total norm of order 2.0 .* not finite"):
        tx.update(g, state)
    step = jax.jit(tx.update)
    with pytest.raises(jax.errors.JaxRuntimeError, match="not finite"):
        jax.block_until_ready(step(g, state))
    finite = grads(1.0, np.float32)
    np.testing.assert_allclose(float(step(finite, state)[1].total_norm), torch_norm(finite, 2.0), rtol=1e-6)


def test_total_grad_norm_reads_a_chained_state():
    g = grads(1.0, np.float32)
    tx = optax.chain(oj.clip_grad_norm(0.5), oj.adamw(1e-3))
    params = jax.tree.map(jnp.zeros_like, g)
    _, state = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(float(oj.total_grad_norm(state)), torch_norm(g, 2.0), rtol=1e-6)
    injected = optax.inject_hyperparams(oj.clip_grad_norm)(max_norm=0.5)
    _, state = injected.update(g, injected.init(params))
    np.testing.assert_allclose(float(oj.total_grad_norm(state)), torch_norm(g, 2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="exactly one ClipGradNormState"):
        oj.total_grad_norm(optax.chain(oj.clip_grad_norm(1.0), oj.clip_grad_norm(2.0)).init(params))
    with pytest.raises(ValueError, match="found 0"):
        oj.total_grad_norm(oj.adamw(1e-3).init(params))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_value_equals_torch(dtype):
    g = grads(1.0, dtype)
    g["b"][0] = np.nan
    params = []
    for k in sorted(g):
        p = torch.nn.Parameter(torch.zeros(g[k].shape, dtype=torch.from_numpy(np.asarray(g[k])).dtype))
        p.grad = torch.tensor(g[k])
        params.append(p)
    torch.nn.utils.clip_grad_value_(params, 0.7, foreach=False)
    with jax.enable_x64(dtype == np.float64):
        ours, _ = oj.clip_grad_value(0.7).update(g, optax.EmptyState())
        for k, p in zip(sorted(g), params):
            assert ours[k].dtype == dtype
            np.testing.assert_array_equal(np.asarray(ours[k]), p.grad.numpy())
    assert np.any(np.abs(g["w"]) > 0.7)  # something was clipped


@pytest.mark.parametrize("factory, kwargs, name", [
    (oj.clip_grad_norm, dict(max_norm=-1.0), "max_norm"),
    (oj.clip_grad_norm, dict(max_norm=1.0, norm_type="two"), "norm_type"),
    (oj.clip_grad_norm, dict(max_norm=1.0, norm_type=float("nan")), "norm_type"),
    (oj.clip_grad_value, dict(clip_value=-0.5), "clip_value"),
])
def test_bad_arguments_raise_valueerror_naming_them(factory, kwargs, name):
    with pytest.raises(ValueError, match=f"{factory.__name__}: {name}"):
        factory(**kwargs)


class ClippedOptimizer:
    """torch's recipe: clip_grad_norm_ then optimizer.step()."""

    def __init__(self, optimizer, params, max_norm):
        self.optimizer, self.params, self.max_norm = optimizer, params, max_norm

    def step(self):
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=False)
        self.optimizer.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipped_adamw_follows_torch(dtype):
    case = next(c for c in CASES if c.id == "adamw")
    with float64() if dtype == np.float64 else jax.enable_x64(False):
        problem = Problem(seed=6, steps=30, dtype=dtype)
        ours = problem.run_optimjax(optax.chain(oj.clip_grad_norm(1.0), case.optimjax()))
        reference = problem.run_torch(lambda params: ClippedOptimizer(case.torch(params), params, 1.0))
        assert problem.relative_error(ours, reference) < (1e-5 if dtype == np.float32 else 1e-11)
