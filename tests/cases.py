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


def muon_and_adamw(learning_rate=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                   ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None,
                   ns_dtype=jnp.bfloat16, maximize=False):
    """optimjax.muon on the matrices and optimjax.adamw (same learning rate) on every other leaf: the partition
    the README shows, and the way the table's problem (with 0-d, 1-D and 3-D leaves) can run Muon at all. (Named
    arguments, not **kwargs, so that optax.inject_hyperparams can read them.)"""
    labels = lambda params: jax.tree.map(lambda p: "muon" if jnp.ndim(p) == 2 else "adamw", params)  # noqa: E731
    muon = oj.muon(learning_rate, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn,
                   ns_dtype, maximize=maximize)
    return optax.partition({"muon": muon, "adamw": oj.adamw(learning_rate, maximize=maximize)}, labels)


def newton_schulz_in_grad_dtype(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz's operations without its cast to bfloat16: in the gradient's
    dtype, so that optimjax.muon(ns_dtype=None) can be checked against torch's algorithm in float32 and float64."""
    a, b, c = ns_coefficients
    x = grad.clone()
    if grad.size(0) > grad.size(1):
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


class TorchMuonAndAdamW:
    """torch.optim.Muon on the 2-D params and torch.optim.AdamW (same lr) on the others, stepped together; with
    `ns_in_grad_dtype`, Muon's Newton-Schulz runs `newton_schulz_in_grad_dtype` (torch's own is bfloat16). torch's
    Muon has no `maximize`: with maximize=True its gradients are negated before its step, which is what the flag
    does in every other torch optimizer."""

    def __init__(self, params, foreach=False, ns_in_grad_dtype=True, maximize=False, **muon_kwargs):
        self.ns_in_grad_dtype, self.maximize = ns_in_grad_dtype, maximize
        self.matrices = [p for p in params if p.ndim == 2]
        self.muon = torch.optim.Muon(self.matrices, **muon_kwargs)
        self.adamw = torch.optim.AdamW([p for p in params if p.ndim != 2], lr=muon_kwargs["lr"], foreach=foreach,
                                       maximize=maximize)
        self.optimizers = (self.muon, self.adamw)  # Problem.run_torch schedules each of them

    def step(self):
        import torch.optim._muon as torch_muon

        if self.maximize:
            for p in self.matrices:
                p.grad = -p.grad
        original = torch_muon._zeropower_via_newtonschulz
        if self.ns_in_grad_dtype:
            torch_muon._zeropower_via_newtonschulz = newton_schulz_in_grad_dtype
        try:
            self.muon.step()
        finally:
            torch_muon._zeropower_via_newtonschulz = original
        self.adamw.step()


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
    Case("radam", oj.radam, dict(learning_rate=1e-2), T.RAdam, dict(lr=1e-2)),
    Case("radam_wd_eps_maximize", oj.radam,
         dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-3, weight_decay=0.1, maximize=True),
         T.RAdam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1, maximize=True)),
    Case("radam_decoupled_wd", oj.radam, dict(learning_rate=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
         T.RAdam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    Case("adamax", oj.adamax, dict(learning_rate=2e-2), T.Adamax, dict(lr=2e-2)),
    Case("adamax_wd", oj.adamax, dict(learning_rate=2e-2, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.1), T.Adamax,
         dict(lr=2e-2, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1)),
    Case("asgd_averaging_wd", oj.asgd, dict(learning_rate=0.05, lambd=0.05, alpha=0.6, t0=20.0, weight_decay=0.05),
         T.ASGD, dict(lr=0.05, lambd=0.05, alpha=0.6, t0=20.0, weight_decay=0.05)),
    Case("rprop", oj.rprop, dict(learning_rate=1e-2), T.Rprop, dict(lr=1e-2)),
    Case("rprop_etas_step_sizes", oj.rprop,
         dict(learning_rate=2e-2, etas=(0.3, 1.5), step_sizes=(1e-4, 10.0)), T.Rprop,
         dict(lr=2e-2, etas=(0.3, 1.5), step_sizes=(1e-4, 10.0))),
    Case("adafactor", oj.adafactor, dict(learning_rate=1e-2), T.Adafactor, dict(lr=1e-2)),
    Case("adafactor_all_options", oj.adafactor,
         dict(learning_rate=0.05, beta2_decay=-0.5, eps=(1e-3, 0.3), d=1.5, weight_decay=0.1), T.Adafactor,
         dict(lr=0.05, beta2_decay=-0.5, eps=(1e-3, 0.3), d=1.5, weight_decay=0.1)),
    Case("muon_nesterov_wd", muon_and_adamw, dict(learning_rate=0.02, ns_dtype=None), TorchMuonAndAdamW,
         dict(lr=0.02)),
    Case("muon_momentum_match_rms_adamw", muon_and_adamw,
         dict(learning_rate=0.02, momentum=0.8, nesterov=False, weight_decay=0.05, ns_steps=3,
              ns_coefficients=(3.0, -3.2, 1.2), adjust_lr_fn="match_rms_adamw", ns_dtype=None), TorchMuonAndAdamW,
         dict(lr=0.02, momentum=0.8, nesterov=False, weight_decay=0.05, ns_steps=3, ns_coefficients=(3.0, -3.2, 1.2),
              adjust_lr_fn="match_rms_adamw")),
    # b2 close to 1, where 1 - b2**t must be computed without cancellation (a float32 power is 2e-5 off torch at
    # 0.99999); b1 < 0.5 takes torch.lerp's second rounding form. eps = 1e-3: in float16 (the dtype test) eps = 1e-8
    # rounds to 0 and (1 - b2) g**2 underflows for |g| < 0.1, so the default would divide by zero (torch's too).
    Case("adam_b1_0.3_b2_0.99999", oj.adam, dict(learning_rate=1e-2, b1=0.3, b2=0.99999, eps=1e-3), T.Adam,
         dict(lr=1e-2, betas=(0.3, 0.99999), eps=1e-3)),
    Case("nadamw_b2_0.9999", oj.nadamw, dict(learning_rate=1e-2, b2=0.9999, weight_decay=0.1), T.NAdam,
         dict(lr=1e-2, betas=(0.9, 0.9999), weight_decay=0.1, decoupled_weight_decay=True)),
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
        schedulers = []
        for each in getattr(optimizer, "optimizers", (optimizer,)):  # a pair of torch optimizers: one scheduler each
            if lr_lambda:
                schedulers.append(torch.optim.lr_scheduler.LambdaLR(each, lr_lambda))
            if make_scheduler:  # any torch.optim.lr_scheduler, stepped once after each optimizer.step()
                schedulers.append(make_scheduler(each))
        out = []
        for t in range(self.steps):
            for k, g in self.grad({k: p.numpy() for k, p in params.items()}, t).items():
                params[k].grad = torch.tensor(g)
            optimizer.step()
            for scheduler in schedulers:
                scheduler.step()
            out.append({k: p.detach().numpy().copy() for k, p in params.items()})
        return out

    def relative_error(self, ours: list[dict], reference: list[dict]) -> float:
        """max |ours - reference| over steps and leaves, relative to the reference's largest displacement."""
        diff = max(float(np.max(np.abs(a[k] - b[k]))) for a, b in zip(ours, reference) for k in SHAPES)
        moved = max(float(np.max(np.abs(b[k] - self.params0[k]))) for b in reference for k in SHAPES)
        assert moved > 1e-3, "the reference did not move: the comparison would be vacuous"
        return diff / moved
