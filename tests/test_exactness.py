"""Checks that see the mistakes the trajectory tests are too coarse for (issue 14, mutation testing).

- eps_root against optax's `adam(eps_root=...)` (torch has no eps_root; optax and torch agree everywhere else);
- the first-moment buffers bit for bit against torch's `exp_avg` / `grad_avg` (the second moments to NU_RTOL), for
  decay weights on both sides of 0.5, where torch's `lerp` switches between its two rounding forms;
- `_tree.bias_correction` (1 - b**t) against a float64 closed form, for b up to 1 - 1e-7 and t up to 2**31 - 1.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from optimjax._tree import bias_correction
from cases import Problem, float64


@pytest.mark.parametrize("amsgrad", [False, True])
def test_eps_root_matches_optax_in_float64(amsgrad):
    """optax adds eps_root to the bias-corrected v inside the sqrt, as documented in scale_by_adam. A wrong
    scaling of eps_root (not multiplied by 1 - b2**t) leaves optax's trajectory by ~3e-2; float64 agreement is
    ~1e-15. AMSGrad (optax's takes the max of the corrected v) agrees with b2 = 0, where nothing is corrected."""
    b2 = 0.0 if amsgrad else 0.99
    ours = oj.adam(1e-2, b1=0.8, b2=b2, eps=1e-8, eps_root=1e-4, amsgrad=amsgrad)
    theirs = (optax.amsgrad if amsgrad else optax.adam)(1e-2, b1=0.8, b2=b2, eps=1e-8, eps_root=1e-4)
    with float64():
        problem = Problem(seed=5, dtype=np.float64)
        err = problem.relative_error(problem.run_optimjax(ours), problem.run_optimjax(theirs))
    assert err < 1e-11, f"{err:.2e} from optax"


def test_eps_root_matters_on_this_problem():
    """Guard for the test above: eps_root = 1e-4 moves the trajectory far beyond its tolerance."""
    with float64():
        problem = Problem(seed=5, dtype=np.float64)
        with_root = problem.run_optimjax(oj.adam(1e-2, b1=0.8, b2=0.99, eps_root=1e-4))
        err = problem.relative_error(problem.run_optimjax(oj.adam(1e-2, b1=0.8, b2=0.99)), with_root)
    assert err > 1e-6


# --- moment buffers bit for bit --------------------------------------------------------------------------------

STEPS = 7  # checked after the first step (from zero state) and after every later one
# The EMA of squares is torch's to one rounding per step, not bit for bit: torch's vectorized addcmul is a fused
# multiply-add, fma((1 - b2) g, g, v b2), while XLA:CPU contracts the other product, fma(v, b2, ((1 - b2) g) g)
# (and eager JAX rounds each operation). Neither is controllable from JAX; the difference, up to one rounding per
# step (3 ulp seen after 7 steps), is float32 rounding, far below any trajectory tolerance. The first step (v = 0)
# is exact.
NU_RTOL = 1e-6  # about 8 float32 ulp


def _gradients(n_steps, seed=0):
    """Gradients independent of the parameters, so both sides see the same sequence whatever their updates."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(-4, 3, size=(300,))).astype(np.float32)  # magnitudes over seven decades
    return [(scale * rng.normal(size=300)).astype(np.float32) for _ in range(n_steps)]


def _torch_states(make, grads):
    """torch's per-parameter state after each step: {name: array} for every 1-d tensor in optimizer.state."""
    p = torch.zeros(300, dtype=torch.float32, requires_grad=True)
    opt = make([p])
    out = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        state = opt.state[p]
        out.append({k: v.detach().numpy().copy() for k, v in state.items() if torch.is_tensor(v) and v.ndim == 1})
    return out


def _our_states(tx, grads):
    """Our transform's state after each step (jitted, as a training step runs it)."""
    params = jnp.zeros(300, jnp.float32)
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        _, state = update(jnp.asarray(g), state, params)
        out.append(state)
    return out


ADAM_FAMILY = [
    # (our transform, torch constructor, the pairs (our state field, torch state key))
    ("adam", lambda b1, b2: oj.scale_by_adam(b1, b2),
     lambda b1, b2: lambda p: torch.optim.Adam(p, lr=1e-3, betas=(b1, b2), foreach=False)),
    ("nadam", lambda b1, b2: oj.scale_by_nadam(b1, b2),
     lambda b1, b2: lambda p: torch.optim.NAdam(p, lr=1e-3, betas=(b1, b2), foreach=False)),
]


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.3, 0.4)], ids=["b1=0.9", "b1=0.3"])
@pytest.mark.parametrize("name,ours,theirs", ADAM_FAMILY, ids=[f[0] for f in ADAM_FAMILY])
def test_adam_moments_are_torchs_bit_for_bit(name, ours, theirs, b1, b2):
    """m = lerp(m, g, 1 - b1) with torch.lerp's rounding (start + w (end - start) for w < 0.5, end - (end - start)
    (1 - w) otherwise): torch's exp_avg, every bit. With b1 = 0.3 the weight 0.7 takes lerp's second form.
    v = v b2 + ((1 - b2) g) g: torch's exp_avg_sq to NU_RTOL (b2 = 0.4: the EMA of squares with a large weight)."""
    grads = _gradients(STEPS)
    for t, (state, reference) in enumerate(zip(_our_states(ours(b1, b2), grads), _torch_states(theirs(b1, b2), grads))):
        np.testing.assert_array_equal(np.asarray(state.mu), reference["exp_avg"], err_msg=f"step {t + 1}")
        np.testing.assert_allclose(np.asarray(state.nu), reference["exp_avg_sq"], rtol=NU_RTOL, atol=0,
                                   err_msg=f"step {t + 1}")


@pytest.mark.parametrize("decay", [0.9, 0.3])
def test_rmsprop_averages_are_torchs_bit_for_bit(decay):
    """Centered RMSprop: grad_avg = lerp(gbar, g, 1 - decay) bit for bit, square_avg = v decay + ((1 - decay) g) g
    to NU_RTOL."""
    grads = _gradients(STEPS, seed=1)
    ours = _our_states(oj.scale_by_rms(decay, centered=True), grads)
    theirs = _torch_states(lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=decay, centered=True, foreach=False),
                           grads)
    for t, (state, reference) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(np.asarray(state.mu_grad), reference["grad_avg"], err_msg=f"step {t + 1}")
        np.testing.assert_allclose(np.asarray(state.nu), reference["square_avg"], rtol=NU_RTOL, atol=0,
                                   err_msg=f"step {t + 1}")


def test_lerp_forms_differ_on_these_gradients():
    """Guard: at b1 = 0.3 the two rounding forms of lerp disagree on many entries of m, so the test above would
    see the wrong branch (the issue measured 43% of the entries)."""
    grads = _gradients(STEPS)
    m = np.zeros(300, np.float32)
    near_start, near_end = m, m
    w = np.float32(0.7)
    for g in grads:
        near_start = near_start + w * (g - near_start)
        near_end = g - (g - near_end) * (np.float32(1) - w)
    assert np.mean(near_start != near_end) > 0.1


# --- bias correction against float64 ---------------------------------------------------------------------------

DECAYS = [0.0, 0.3, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1 - 1e-7]
COUNTS = [1, 2, 3, 10, 1000, 123_457, 2**24 + 1, 2**31 - 1]


def _reference(decay: float, t: int) -> float:
    """1 - decay**t in float64 to ~1e-15 relative: -expm1(t log1p(-d)) with d = 1 - decay (exact for decay >= 0.5,
    by Sterbenz's lemma), so nothing cancels; for decay < 0.5, decay**t <= 0.3 and 1 - decay**t cancels nothing."""
    if decay < 0.5:
        return 1.0 - decay**t
    return -math.expm1(t * math.log1p(-(1.0 - decay)))


@pytest.mark.parametrize("decay", DECAYS)
def test_bias_correction_is_float64s_closed_form(decay):
    """1 - b**t to float32 precision (relative 1e-6) with float32 scalars, and to 1e-13 with x64. A float32 power
    (1 - jnp.float32(b) ** t) is 1.3e-2 relative off at b = 0.999999; the naive float64 power 1e-10."""
    counts = jnp.asarray(COUNTS, jnp.float32)
    got = np.asarray(bias_correction(decay, counts), np.float64)
    want = np.array([_reference(decay, t) for t in COUNTS])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    with jax.enable_x64(True):
        got64 = np.asarray(bias_correction(decay, jnp.asarray(COUNTS, jnp.float64)))
    np.testing.assert_allclose(got64, want, rtol=1e-12, atol=0)
