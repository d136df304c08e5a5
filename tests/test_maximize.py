"""`maximize=True` follows torch.optim's `maximize=True` for every optimizer in the table.

torch negates the gradient first, before weight decay. The problem hands both sides the negated gradient of the
quadratic, so an optimizer that maximizes descends on it, and a negation in the wrong place (after the coupled
weight decay) or a missing one shows as a different trajectory.
"""

import numpy as np
import pytest

import optimjax as oj
from _resume import run_optimjax
from cases import CASE_IDS, CASES, Problem, float64

F32_TOL = 1e-5
F64_TOL = 1e-11


class Ascent(Problem):
    """The same problem with every gradient negated (exactly: a sign flip)."""

    def grad(self, params, t):
        return {k: -g for k, g in super().grad(params, t).items()}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_maximize_matches_torch(case):
    problem = Ascent(seed=4, steps=30)
    ours, _ = run_optimjax(problem, case.optimjax(maximize=True))
    err = problem.relative_error(ours, problem.run_torch(lambda p: case.torch(p, maximize=True)))
    assert err < F32_TOL, f"{case.id}: {err:.2e} from torch(maximize=True)"
    with float64():
        problem = Ascent(seed=5, steps=30, dtype=np.float64)
        ours, _ = run_optimjax(problem, case.optimjax(maximize=True))
        err = problem.relative_error(ours, problem.run_torch(lambda p: case.torch(p, maximize=True)))
    assert err < F64_TOL, f"{case.id}: {err:.2e} from torch(maximize=True) in float64"


@pytest.mark.parametrize("factory", [oj.sgd, oj.momentum, oj.nesterov, oj.adam, oj.amsgrad, oj.adamw, oj.nadam,
                                     oj.nadamw, oj.rmsprop, oj.adagrad, oj.adadelta], ids=lambda f: f.__name__)
def test_maximize_must_be_a_bool(factory):
    with pytest.raises(ValueError, match=r"maximize must be True or False, got 'yes'"):
        factory(learning_rate=0.1, maximize="yes")
