"""The one table of optimizers every test runs through, with the torch.optim optimizer each must match.

Each case pairs an optimjax optimizer with the torch.optim constructor (single-tensor path, foreach=False) that
has the same hyperparameters. Hyperparameters are chosen so that every option shows in the trajectory:
dampening, weight decay (coupled and decoupled), amsgrad, centering, momentum, NAdam's momentum_decay.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import optimjax as oj


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    factory: Callable[..., Any]  # optimjax alias
    kwargs: dict  # its keyword arguments (learning_rate included)
    torch_cls: type
    torch_kwargs: dict

    def optimjax(self, **override):
        return self.factory(**{**self.kwargs, **override})

    def torch(self, params, **override):
        return self.torch_cls(params, **{"foreach": False, **self.torch_kwargs, **override})


@contextlib.contextmanager
def float64():
    """JAX with x64 and torch with float64 as its default dtype (torch keeps NAdam's mu_product in it)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with jax.enable_x64(True):
            yield
    finally:
        torch.set_default_dtype(default)


T = torch.optim
CASES = [
    Case("sgd", oj.sgd, dict(learning_rate=0.05), T.SGD, dict(lr=0.05)),
    Case("sgd_wd", oj.sgd, dict(learning_rate=0.05, weight_decay=0.1), T.SGD, dict(lr=0.05, weight_decay=0.1)),
    Case("momentum", oj.momentum, dict(learning_rate=0.02, momentum=0.9), T.SGD, dict(lr=0.02, momentum=0.9)),
    Case("momentum_dampening_wd", oj.sgd, dict(learning_rate=0.02, momentum=0.8, dampening=0.3, weight_decay=0.05),
         T.SGD, dict(lr=0.02, momentum=0.8, dampening=0.3, weight_decay=0.05)),
    Case("nesterov", oj.nesterov, dict(learning_rate=0.02, momentum=0.9), T.SGD,
         dict(lr=0.02, momentum=0.9, nesterov=True)),
    Case("nesterov_wd", oj.sgd, dict(learning_rate=0.02, momentum=0.7, nesterov=True, weight_decay=0.05), T.SGD,
         dict(lr=0.02, momentum=0.7, nesterov=True, weight_decay=0.05)),
    Case("adam", oj.adam, dict(learning_rate=1e-2), T.Adam, dict(lr=1e-2)),
    Case("adam_wd", oj.adam, dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1), T.Adam,
         dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    Case("amsgrad", oj.amsgrad, dict(learning_rate=1e-2, b2=0.95), T.Adam, dict(lr=1e-2, betas=(0.9, 0.95),
         amsgrad=True)),
    Case("adamw", oj.adamw, dict(learning_rate=1e-2, weight_decay=0.1), T.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    Case("adamw_amsgrad", oj.adamw, dict(learning_rate=1e-2, weight_decay=0.1, amsgrad=True), T.AdamW,
         dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    Case("nadam", oj.nadam, dict(learning_rate=1e-2), T.NAdam, dict(lr=1e-2)),
    Case("nadam_fast_schedule_wd", oj.nadam, dict(learning_rate=1e-2, momentum_decay=0.1, weight_decay=0.05),
         T.NAdam, dict(lr=1e-2, momentum_decay=0.1, weight_decay=0.05)),
    Case("nadam_momentum_decay_0", oj.nadam, dict(learning_rate=1e-2, momentum_decay=0.0), T.NAdam,
         dict(lr=1e-2, momentum_decay=0.0)),
    Case("nadamw", oj.nadamw, dict(learning_rate=1e-2, weight_decay=0.1), T.NAdam,
         dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    Case("rmsprop", oj.rmsprop, dict(learning_rate=1e-2), T.RMSprop, dict(lr=1e-2)),
    Case("rmsprop_centered", oj.rmsprop, dict(learning_rate=1e-2, decay=0.9, centered=True), T.RMSprop,
         dict(lr=1e-2, alpha=0.9, centered=True)),
    Case("rmsprop_centered_momentum_wd", oj.rmsprop,
         dict(learning_rate=1e-3, decay=0.95, eps=1e-6, centered=True, momentum=0.9, weight_decay=0.05),
         T.RMSprop, dict(lr=1e-3, alpha=0.95, eps=1e-6, centered=True, momentum=0.9, weight_decay=0.05)),
    Case("adagrad", oj.adagrad, dict(learning_rate=0.1), T.Adagrad, dict(lr=0.1)),
    Case("adagrad_all_options", oj.adagrad,
         dict(learning_rate=0.1, lr_decay=0.05, weight_decay=0.05, initial_accumulator_value=0.1, eps=1e-8),
         T.Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.05, initial_accumulator_value=0.1, eps=1e-8)),
    Case("adadelta", oj.adadelta, dict(learning_rate=1.0), T.Adadelta, dict(lr=1.0)),
    Case("adadelta_wd", oj.adadelta, dict(learning_rate=0.5, rho=0.8, eps=1e-5, weight_decay=0.1), T.Adadelta,
         dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1)),
]
CASE_IDS = [c.id for c in CASES]


# --- a small problem with feedback: g_t = curvature * (theta - target) + noise_t, per leaf -----------------------

SHAPES = {"w": (4, 3), "b": (3,), "conv": (2, 3, 2), "scale": ()}


class Problem:
    """A badly scaled noisy quadratic on a pytree of several leaves; gradients are computed in numpy, in `dtype`,
    from whichever framework's parameters, so both sides get bit-identical gradients for identical parameters."""

    def __init__(self, seed: int = 0, steps: int = 60, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.dtype, self.steps = dtype, steps
        self.params0 = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
        self.target = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
        self.curvature = {k: np.exp(rng.uniform(-3, 2, size=s)).astype(dtype) for k, s in SHAPES.items()}
        self.noise = [{k: (0.3 * rng.normal(size=s)).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]

    def grad(self, params: dict, t: int) -> dict:
        return {
            k: (self.curvature[k] * (np.asarray(params[k], self.dtype) - self.target[k]) + self.noise[t][k]).astype(
                self.dtype
            )
            for k in SHAPES
        }

    def run_optimjax(self, tx) -> list[dict]:
        def step(grads, state, params):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return self.run_steps(tx.init, step)

    def run_steps(self, init, step) -> list[dict]:
        """The parameters after each step of `step(grads, state, params) -> (params, state)`, jitted."""
        params = jax.tree.map(jnp.asarray, self.params0)
        state = init(params)
        step = jax.jit(step)
        out = []
        for t in range(self.steps):
            grads = jax.tree.map(jnp.asarray, self.grad(jax.tree.map(np.asarray, params), t))
            params, state = step(grads, state, params)
            out.append(jax.tree.map(np.asarray, params))
        return out

    def run_torch(self, make_optimizer, lr_lambda=None, make_scheduler=None) -> list[dict]:
        params = {k: torch.tensor(v) for k, v in self.params0.items()}
        optimizer = make_optimizer(list(params.values()))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
        if make_scheduler:  # any torch.optim.lr_scheduler, stepped once after each optimizer.step()
            scheduler = make_scheduler(optimizer)
        out = []
        for t in range(self.steps):
            for k, g in self.grad({k: p.numpy() for k, p in params.items()}, t).items():
                params[k].grad = torch.tensor(g)
            optimizer.step()
            if scheduler:
                scheduler.step()
            out.append({k: p.detach().numpy().copy() for k, p in params.items()})
        return out

    def relative_error(self, ours: list[dict], reference: list[dict]) -> float:
        """max |ours - reference| over steps and leaves, relative to the reference's largest displacement."""
        diff = max(float(np.max(np.abs(a[k] - b[k]))) for a, b in zip(ours, reference) for k in SHAPES)
        moved = max(float(np.max(np.abs(b[k] - self.params0[k]))) for b in reference for k in SHAPES)
        assert moved > 1e-3, "the reference did not move: the comparison would be vacuous"
        return diff / moved
