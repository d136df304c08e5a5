"""Complex parameters follow torch.optim, which steps `torch.view_as_real` of the parameter, the gradient and every
state tensor: the real and imaginary parts are separate parameters, and the state stays complex."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax
from cases import CASES as ALL_CASES, SHAPES, Problem, float64

# The families whose transforms follow the dtype policy and complex rule of optimjax._tree (issue 10: every
# optimizer). Adafactor and Muon take real leaves only, as torch's (see test_complex's
# test_real_only_optimizers_raise_on_complex_leaves), so they are in the dtype policy's set and not the complex one.
COVERED = {optimjax.sgd, optimjax.momentum, optimjax.nesterov, optimjax.adam, optimjax.amsgrad, optimjax.adamw,
           optimjax.nadam, optimjax.nadamw, optimjax.rmsprop, optimjax.adagrad, optimjax.adadelta,
           optimjax.radam, optimjax.adamax, optimjax.asgd, optimjax.rprop}
CASES = [c for c in ALL_CASES if c.factory in COVERED]
CASE_IDS = [c.id for c in CASES]


F32_TOL = 1e-5
F64_TOL = 1e-11
STEPS = 30


class ComplexProblem(Problem):
    """`Problem` with complex parameters, targets and noise (and a real, positive curvature), so that the
    gradient c * (theta - target) + noise has independent real and imaginary parts."""

    def __init__(self, seed: int = 0, steps: int = STEPS, dtype=np.complex64):
        rng = np.random.default_rng(seed)
        self.dtype, self.steps = dtype, steps

        def draw(shape, scale=1.0):
            return (scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape))).astype(dtype)

        self.params0 = {k: draw(s) for k, s in SHAPES.items()}
        self.target = {k: draw(s) for k, s in SHAPES.items()}
        self.curvature = {k: np.exp(rng.uniform(-3, 2, size=s)).astype(dtype) for k, s in SHAPES.items()}
        self.noise = [{k: draw(s, 0.3) for k, s in SHAPES.items()} for _ in range(steps)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_complex64_matches_torch(case):
    problem = ComplexProblem(seed=4)
    ours = problem.run_optimjax(case.optimjax())
    assert ours[-1]["w"].dtype == np.complex64
    err = problem.relative_error(ours, problem.run_torch(case.torch))
    assert err < F32_TOL, f"{case.id}: {err:.2e} from torch in complex64"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_complex128_matches_torch(case):
    with float64():
        problem = ComplexProblem(seed=5, dtype=np.complex128)
        ours = problem.run_optimjax(case.optimjax())
        assert ours[-1]["w"].dtype == np.complex128
        err = problem.relative_error(ours, problem.run_torch(case.torch))
    assert err < F64_TOL, f"{case.id}: {err:.2e} from torch in complex128"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_imaginary_gradient_moves_only_the_imaginary_part(case):
    """From p = 0 a purely imaginary gradient leaves the real part exactly 0 (the bug was g * g = -|g|**2 feeding
    the real part of Adam's v), for two steps, and every state leaf stays complex and shaped like p."""
    tx = case.optimjax()
    p = jnp.zeros(3, jnp.complex64)
    state = tx.init(p)
    for g in (jnp.array([1j, -2j, 0.5j], jnp.complex64), jnp.array([0.3j, 1j, -1j], jnp.complex64)):
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        assert p.dtype == jnp.complex64
        np.testing.assert_array_equal(np.real(p), np.zeros(3, np.float32))
        assert np.all(np.isfinite(np.asarray(p))) and np.all(np.imag(p) != 0)
    for leaf in jax.tree.leaves(state):
        if jnp.ndim(leaf) == 1:
            assert leaf.dtype == jnp.complex64 and leaf.shape == (3,)


def test_adam_on_an_imaginary_gradient_steps_minus_lr_times_i():
    """torch and optax: Adam's first step is -lr * sign, here of the imaginary part: 0j -> -0.1j."""
    tx = optimjax.adam(0.1)
    p = jnp.asarray(0j, jnp.complex64)
    updates, _ = tx.update(jnp.asarray(1j, jnp.complex64), tx.init(p), p)
    assert complex(optax.apply_updates(p, updates)) == pytest.approx(-0.1j, abs=1e-7)
    assert float(jnp.real(updates)) == 0.0


def test_amsgrad_complex_is_finite_and_takes_lr_steps():
    """The max is taken per part (jnp.maximum of complex numbers compares lexicographically): with g = 1j at
    every step each step is -lr * 1j (m_hat / sqrt(vmax_hat) = 1), never the 1e7 of vmax stuck at 0."""
    tx = optimjax.amsgrad(0.1)
    p = jnp.asarray(0j, jnp.complex64)
    state = tx.init(p)
    for step in range(1, 4):
        updates, state = tx.update(jnp.asarray(1j, jnp.complex64), state, p)
        p = optax.apply_updates(p, updates)
        assert np.isfinite(complex(p))
        assert complex(p) == pytest.approx(-0.1j * step, abs=1e-6)


def _named_state(state):
    """The fields of every NamedTuple inside an optax.chain state, by name."""
    out = {}
    for part in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "_fields")):
        if hasattr(part, "_fields"):
            out.update({f: getattr(part, f) for f in part._fields})
    return out


STATE_NAMES = {  # optimjax state field -> torch state key, for the families the torch converter will map
    "adam_wd": {"mu": "exp_avg", "nu": "exp_avg_sq"},
    "amsgrad": {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
    "nadamw": {"mu": "exp_avg", "nu": "exp_avg_sq"},
    "rmsprop_centered": {"nu": "square_avg", "mu_grad": "grad_avg"},
    "adagrad_all_options": {"sum_of_squares": "sum"},
    "adadelta_wd": {"grad_sq_avg": "square_avg", "delta_sq_avg": "acc_delta"},
    "momentum": {"velocity": "momentum_buffer"},
}


@pytest.mark.parametrize("case", [c for c in CASES if c.id in STATE_NAMES], ids=lambda c: c.id)
def test_complex_state_equals_torch_state(case):
    """State of a complex parameter: complex, the parameter's shape and dtype, and equal to torch's tensor (e.g.
    the real part of v is the EMA of re(g)**2; Adagrad starts both parts at initial_accumulator_value)."""
    problem = ComplexProblem(seed=6, steps=8)
    params = {k: jnp.asarray(v) for k, v in problem.params0.items()}
    torch_params = {k: torch.tensor(v) for k, v in problem.params0.items()}
    tx, torch_opt = case.optimjax(), case.torch(list(torch_params.values()))
    state = tx.init(params)
    for t in range(problem.steps):
        updates, state = tx.update(jax.tree.map(jnp.asarray, problem.grad(params, t)), state, params)
        params = optax.apply_updates(params, updates)
        for k, g in problem.grad({k: p.detach().numpy() for k, p in torch_params.items()}, t).items():
            torch_params[k].grad = torch.tensor(g)
        torch_opt.step()
    ours = _named_state(state)
    for field, key in STATE_NAMES[case.id].items():
        for k, p in torch_params.items():
            want = torch_opt.state[p][key].numpy()
            got = np.asarray(ours[field][k])
            assert got.dtype == want.dtype == np.complex64 and got.shape == want.shape == SHAPES[k]
            scale = max(float(np.max(np.abs(want))), 1e-30)
            assert float(np.max(np.abs(got - want))) <= 2e-6 * scale, f"{case.id}: {field}[{k}] != torch {key}"


def test_mu_dtype_of_a_complex_parameter_is_complex():
    with jax.enable_x64(True):
        p = jnp.zeros(2, jnp.complex128)
        inner = _named_state(optimjax.adam(mu_dtype=jnp.float32).init(p))
        assert inner["mu"].dtype == jnp.complex64 and inner["nu"].dtype == jnp.complex128
    with pytest.raises(TypeError, match="complex"):
        optimjax.adam(mu_dtype=jnp.bfloat16).init(jnp.zeros(2, jnp.complex64))


def test_fused_falls_back_for_complex_with_the_reason():
    fused = optimjax.fused.of(optimjax.adam(0.1))
    plain = optimjax.adam(0.1)
    p = jnp.asarray([0.5 + 1j, -1j], jnp.complex64)
    g = jnp.asarray([1j, 2.0 - 1j], jnp.complex64)
    with pytest.warns(UserWarning, match="complex"):
        new_p, _ = fused.step(g, fused.init(p), p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        updates, _ = plain.update(g, plain.init(p), p)
    np.testing.assert_array_equal(new_p, optax.apply_updates(p, updates))


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("adam_wd", "rmsprop_centered_momentum_wd")],
                         ids=lambda c: c.id)
def test_complex_maximize_matches_torch(case):
    """torch negates the complex gradient before viewing it as real; so does `maximize=True` here."""
    problem = ComplexProblem(seed=7, steps=10)
    err = problem.relative_error(problem.run_optimjax(case.optimjax(maximize=True)),
                                 problem.run_torch(lambda params: case.torch(params, maximize=True)))
    assert err < F32_TOL, f"{case.id}: {err:.2e} from torch with maximize=True"


REAL_ONLY = {"adafactor": (optimjax.adafactor, torch.optim.Adafactor), "muon": (optimjax.muon, torch.optim.Muon)}


@pytest.mark.parametrize("name", REAL_ONLY)
def test_real_only_optimizers_raise_on_complex_leaves(name):
    """torch's Adafactor and Muon refuse complex parameters (their row norms and matrix products would mix the
    real and imaginary parts, so view_as_real is no answer); ours raise TypeError naming the leaf, at init and at
    update, instead of running a complex step that torch has no definition of."""
    ours, theirs = REAL_ONLY[name]
    p = torch.zeros(3, 2, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        theirs([p], lr=0.01).step()

    tx = ours(learning_rate=0.01)
    with pytest.raises(TypeError, match=r"init\(\) got a complex64 parameter at \['layer'\]\['z'\]"):
        tx.init({"layer": {"z": jnp.zeros((3, 2), jnp.complex64), "w": jnp.ones((3, 2))}})
    params = {"layer": {"z": jnp.zeros((3, 2)), "w": jnp.ones((3, 2))}}
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"update\(\) got a complex64 gradient at \['layer'\]\['z'\]"):
        tx.update({"layer": {"z": jnp.ones((3, 2), jnp.complex64), "w": jnp.ones((3, 2))}}, state, params)


@pytest.mark.parametrize("factory", [optimjax.adam, optimjax.sgd])
def test_python_complex_leaves_equal_complex64_arrays(factory):
    """A Python complex leaf is an array of JAX's default complex dtype (complex64 without x64), as a Python float
    is one of float32: the same steps as the same values in complex64 arrays."""
    def run(as_leaf):
        tx = factory(learning_rate=0.1)
        params = {"z": as_leaf(1.5 - 0.5j)}
        state = tx.init(params)
        updates, state = tx.update({"z": as_leaf(0.25 + 1j)}, state, params)
        return optax.apply_updates(params, updates)["z"]

    got, want = run(lambda x: x), run(lambda x: jnp.asarray(x, jnp.complex64))
    assert got.dtype == want.dtype == jnp.complex64
    np.testing.assert_array_equal(got, want)
