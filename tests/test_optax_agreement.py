"""Where optax defines an optimizer the same way as torch, optimjax gives optax's trajectory; where the
definitions differ (NAdam's schedule, AMSGrad's max, RMSprop's eps), optax leaves torch's trajectory and
optimjax stays on it."""

import optax
import pytest
import torch

import optimjax as oj
from cases import Problem

TOL = 1e-5

AGREE = {
    "sgd": (oj.sgd(0.05), optax.sgd(0.05)),
    "momentum": (oj.momentum(0.02, 0.9), optax.sgd(0.02, momentum=0.9)),
    "nesterov": (oj.nesterov(0.02, 0.9), optax.sgd(0.02, momentum=0.9, nesterov=True)),
    "adam": (oj.adam(1e-2, b1=0.8, b2=0.99), optax.adam(1e-2, b1=0.8, b2=0.99)),
    "adamw": (oj.adamw(1e-2, weight_decay=0.1), optax.adamw(1e-2, weight_decay=0.1)),
    # optax's default eps sits inside the sqrt; eps_in_sqrt=False is torch's (and our) definition.
    "rmsprop": (oj.rmsprop(1e-2, decay=0.9), optax.rmsprop(1e-2, decay=0.9, eps=1e-8, eps_in_sqrt=False)),
    "rmsprop_centered": (oj.rmsprop(1e-2, decay=0.9, centered=True),
                         optax.rmsprop(1e-2, decay=0.9, eps=1e-8, eps_in_sqrt=False, centered=True)),
    # eps inside (optax) or outside (torch) the sqrt is the same definition when eps = 0.
    "adagrad": (oj.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
                optax.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0)),
    "adadelta": (oj.adadelta(1.0, rho=0.9, eps=1e-6), optax.adadelta(1.0, rho=0.9, eps=1e-6)),
    # with b2 = 0 there is no bias correction of v, so the max of raw and of corrected v coincide.
    "amsgrad_b2_0": (oj.amsgrad(1e-2, b2=0.0), optax.amsgrad(1e-2, b2=0.0)),
}


@pytest.mark.parametrize("name", AGREE)
def test_same_trajectory_as_optax_where_definitions_agree(name):
    ours, theirs = AGREE[name]
    problem = Problem(seed=4)
    assert problem.relative_error(problem.run_optimjax(ours), problem.run_optimjax(theirs)) < TOL


DIFFER = {
    # name: (optimjax, optax, torch constructor)
    "nadam": (oj.nadam(1e-2), optax.nadam(1e-2), lambda p: torch.optim.NAdam(p, lr=1e-2, foreach=False)),
    "amsgrad": (oj.amsgrad(1e-2, b2=0.95), optax.amsgrad(1e-2, b2=0.95),
                lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.9, 0.95), amsgrad=True, foreach=False)),
    "rmsprop_default_eps": (oj.rmsprop(1e-2), optax.rmsprop(1e-2, decay=0.99, eps=1e-8),
                            lambda p: torch.optim.RMSprop(p, lr=1e-2, foreach=False)),
}


@pytest.mark.parametrize("name", DIFFER)
def test_where_optax_differs_from_torch(name):
    ours, theirs, make_torch = DIFFER[name]
    problem = Problem(seed=5)
    reference = problem.run_torch(make_torch)
    assert problem.relative_error(problem.run_optimjax(ours), reference) < TOL
    assert problem.relative_error(problem.run_optimjax(theirs), reference) > 10 * TOL


def test_nadam_differs_from_optax_by_its_schedule_alone():
    """The first step in closed form (v_1 / (1 - b2) = g**2, m_1 = (1 - b1) g): optimjax weights the gradient and
    the look-ahead momentum with Dozat's scheduled mu_1, mu_2 (about b1 / 2); optax.nadam with the constant b1."""
    import jax.numpy as jnp
    import numpy as np

    g = {"x": jnp.array([0.5, -2.0, 3.0])}
    b1, eps, lr = 0.9, 1e-8, 1e-2
    mu1 = b1 * (1 - 0.5 * 0.96 ** 0.004)
    mu2 = b1 * (1 - 0.5 * 0.96 ** 0.008)
    gn = np.asarray(g["x"])
    denom = np.abs(gn) + eps  # sqrt(v1 / (1 - b2)) = |g|
    m1 = (1 - b1) * gn
    closed_ours = -lr * ((1 - mu1) / (1 - mu1) * gn / denom + mu2 / (1 - mu1 * mu2) * m1 / denom)
    closed_optax = -lr * ((1 - b1) / (1 - b1) * gn / denom + b1 / (1 - b1 * b1) * m1 / denom)
    for tx, closed in ((oj.nadam(lr), closed_ours), (optax.nadam(lr), closed_optax)):
        u, _ = tx.update(g, tx.init(g), g)
        np.testing.assert_allclose(np.asarray(u["x"]), closed, rtol=1e-5)
    assert np.max(np.abs(closed_ours - closed_optax)) > 1e-3
