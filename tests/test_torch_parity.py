"""Every optimizer follows torch.optim's trajectory (single-tensor path) on a 60-step noisy problem."""

import numpy as np
import optax
import pytest

from cases import CASE_IDS, CASES, Problem, float64

F32_TOL = 1e-5
F64_TOL = 1e-11


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_matches_torch(case):
    problem = Problem(seed=1)
    err = problem.relative_error(problem.run_optimjax(case.optimjax()), problem.run_torch(case.torch))
    assert err < F32_TOL, f"{case.id}: {err:.2e} from torch"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float64_matches_torch(case):
    with float64():
        problem = Problem(seed=2, dtype=np.float64)
        ours = problem.run_optimjax(case.optimjax())
        assert ours[-1]["w"].dtype == np.float64
        err = problem.relative_error(ours, problem.run_torch(case.torch))
    assert err < F64_TOL, f"{case.id}: {err:.2e} from torch in float64"


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("adamw", "nadamw", "momentum", "adagrad_all_options")],
                         ids=lambda c: c.id)
def test_schedule_matches_torch_lr_scheduler(case):
    """An optax schedule as learning_rate == torch's LambdaLR stepping the same factor (decay uses lr_t too)."""
    base = case.kwargs["learning_rate"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, base, warmup_steps=10, decay_steps=60, end_value=base / 10)
    problem = Problem(seed=3)
    ours = problem.run_optimjax(case.optimjax(learning_rate=schedule))
    reference = problem.run_torch(case.torch, lr_lambda=lambda t: float(schedule(t)) / base)
    assert problem.relative_error(ours, reference) < F32_TOL
