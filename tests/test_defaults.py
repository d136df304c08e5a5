"""Defaults and pass-through arguments against torch.optim (found by mutation testing: the table passes every
hyperparameter explicitly, so a wrong default, or an alias that drops an argument, went unseen).

Each optimjax optimizer or transform called with its defaults follows torch's optimizer with torch's defaults
(or, where optimjax documents its own default, torch with that value spelled out), in float64 over a short run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from cases import Problem, float64

T = torch.optim
TOL = 1e-11


def lr(value, transform):
    return optax.chain(transform, oj.scale_by_learning_rate(value))


PAIRS = {
    # id: (optimjax optimizer built with defaults, torch constructor)
    "adam": (lambda: oj.adam(), lambda p: T.Adam(p)),
    "adamw": (lambda: oj.adamw(), lambda p: T.AdamW(p)),
    "amsgrad": (lambda: oj.amsgrad(), lambda p: T.Adam(p, amsgrad=True)),
    "nadam": (lambda: oj.nadam(), lambda p: T.NAdam(p)),
    "nadamw": (lambda: oj.nadamw(), lambda p: T.NAdam(p, weight_decay=1e-2, decoupled_weight_decay=True)),
    "rmsprop": (lambda: oj.rmsprop(), lambda p: T.RMSprop(p)),
    "adagrad": (lambda: oj.adagrad(), lambda p: T.Adagrad(p)),
    "adadelta": (lambda: oj.adadelta(), lambda p: T.Adadelta(p)),
    "sgd": (lambda: oj.sgd(0.05), lambda p: T.SGD(p, lr=0.05)),
    # optimjax's documented defaults: momentum = 0.9 (torch's SGD has 0)
    "momentum": (lambda: oj.momentum(0.02), lambda p: T.SGD(p, lr=0.02, momentum=0.9)),
    "nesterov": (lambda: oj.nesterov(0.02), lambda p: T.SGD(p, lr=0.02, momentum=0.9, nesterov=True)),
    # the transforms' defaults, under torch's default learning rate
    "scale_by_adam": (lambda: lr(1e-3, oj.scale_by_adam()), lambda p: T.Adam(p)),
    "scale_by_nadam": (lambda: lr(2e-3, oj.scale_by_nadam()), lambda p: T.NAdam(p)),
    "scale_by_rms": (lambda: lr(1e-2, oj.scale_by_rms()), lambda p: T.RMSprop(p)),
    "scale_by_adagrad": (lambda: lr(1e-2, oj.scale_by_adagrad()), lambda p: T.Adagrad(p)),
    "scale_by_adadelta": (lambda: lr(1.0, oj.scale_by_adadelta()), lambda p: T.Adadelta(p)),
    "scale_by_momentum": (lambda: lr(0.02, oj.scale_by_momentum()), lambda p: T.SGD(p, lr=0.02, momentum=0.9)),
    "scale_by_nesterov_momentum": (lambda: lr(0.02, oj.scale_by_nesterov_momentum()),
                                   lambda p: T.SGD(p, lr=0.02, momentum=0.9, nesterov=True)),
    # every argument of the thin aliases reaches the optimizer
    "momentum_all_arguments": (lambda: oj.momentum(0.02, 0.8, dampening=0.3, weight_decay=0.05),
                               lambda p: T.SGD(p, lr=0.02, momentum=0.8, dampening=0.3, weight_decay=0.05)),
    "nesterov_all_arguments": (lambda: oj.nesterov(0.02, 0.7, weight_decay=0.05),
                               lambda p: T.SGD(p, lr=0.02, momentum=0.7, nesterov=True, weight_decay=0.05)),
    "amsgrad_all_arguments": (lambda: oj.amsgrad(1e-2, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1),
                              lambda p: T.Adam(p, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                                               amsgrad=True)),
}


@pytest.mark.parametrize("name", PAIRS)
def test_defaults_follow_torch(name):
    ours, theirs = PAIRS[name]
    with float64():
        problem = Problem(seed=6, steps=20, dtype=np.float64)
        reference = problem.run_torch(lambda params: _single_tensor(theirs, params))
        err = problem.relative_error(problem.run_optimjax(ours()), reference)
    assert err < TOL, f"{name}: {err:.2e} from torch"


def _single_tensor(make, params):
    """torch's optimizer on its single-tensor path (foreach=False), as every parity test uses."""
    optimizer = make(params)
    for group in optimizer.param_groups:
        group["foreach"] = False
    return optimizer


@pytest.mark.parametrize("name", ["adam", "adamw", "amsgrad", "nadam", "nadamw"])
def test_storage_dtypes_reach_the_state(name):
    """mu_dtype and nu_dtype, given separately, are the dtypes of the moments the alias's state holds."""
    params = {"w": jnp.zeros((3, 2), jnp.float32)}
    for mu_dtype, nu_dtype in [(jnp.bfloat16, None), (None, jnp.bfloat16)]:
        state = getattr(oj, name)(mu_dtype=mu_dtype, nu_dtype=nu_dtype).init(params)
        inner = next(s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
        assert inner.mu["w"].dtype == (mu_dtype or jnp.float32)
        for nu in [inner.nu] + ([inner.nu_max] if getattr(inner, "nu_max", None) is not None else []):
            assert nu["w"].dtype == (nu_dtype or jnp.float32)
