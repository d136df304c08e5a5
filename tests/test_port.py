"""optimjax.port: torch.optim state in and out, on torch's trajectory.

Round trips for every optimizer in the table: N steps in torch, `load_state_dict`, then M more steps in both
(torch continuing its own run is the reference); and N steps in optimjax, `state_dict`, `torch_optimizer.
load_state_dict`, M more steps in both. Then layouts, schedules through inject_hyperparams, and every bad input
with the error that names it.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimjax as oj
from _resume import run_optimjax, run_torch, torch_params
from cases import CASE_IDS, CASES, SHAPES, Problem, TorchMuonAndAdamW, float64
from optimjax import port

F32_TOL = 1e-5
F64_TOL = 1e-11
N, M = 10, 10
PATHS = list(SHAPES)  # the torch optimizer's parameters are the table's leaves, in this order
# the families added after Adam's (RAdam, Adamax, ASGD, Rprop, Adafactor, Muon)
NEW = [c for c in CASES if c.torch_cls in (torch.optim.RAdam, torch.optim.Adamax, torch.optim.ASGD, torch.optim.Rprop,
                                           torch.optim.Adafactor, TorchMuonAndAdamW)]


def muon_parts(case, params, optimizer):
    """The Muon rows are optax.partition({"muon": muon, "adamw": adamw}) and, in torch, two optimizers (Muon on the
    matrices, AdamW on the rest): each part is converted on its own, with the params its mask keeps, as a user with
    such a recipe does. Yields (label, its transformation, its params, its paths, its torch optimizer)."""
    adamw = oj.adamw(case.kwargs["learning_rate"], maximize=case.kwargs.get("maximize", False))
    parts = {"muon": (oj.muon(**case.kwargs), optimizer.muon), "adamw": (adamw, optimizer.adamw)}
    for label, (tx, torch_optimizer) in parts.items():
        paths = [k for k in PATHS if (np.ndim(params[k]) == 2) == (label == "muon")]
        masked = {k: params[k] if k in paths else optax.MaskedNode() for k in params}
        yield label, tx, masked, paths, torch_optimizer


def load(case, tx, params, optimizer, saved=None):
    """port.load_state_dict for the table's case (part by part for the Muon rows)."""
    if case.torch_cls is not TorchMuonAndAdamW:
        return port.load_state_dict(tx, params, optimizer.state_dict() if saved is None else saved, PATHS, step=N)
    inner = {label: optax.MaskedState(port.load_state_dict(part, masked, (saved or {}).get(label)
                                                           or torch_optimizer.state_dict(), paths, step=N))
             for label, part, masked, paths, torch_optimizer in muon_parts(case, params, optimizer)}
    return optax.PartitionState(inner_states=inner)


def save(case, tx, state, params, optimizer):
    """port.state_dict into the table's torch optimizer (part by part for the Muon rows)."""
    if case.torch_cls is not TorchMuonAndAdamW:
        optimizer.load_state_dict(port.state_dict(tx, state, params, PATHS, optimizer, step=N))
        return
    for label, part, masked, paths, torch_optimizer in muon_parts(case, params, optimizer):
        torch_optimizer.load_state_dict(port.state_dict(part, state.inner_states[label].inner_state, masked, paths,
                                                        torch_optimizer, step=N))


def saved_state(case, optimizer):
    if case.torch_cls is not TorchMuonAndAdamW:
        return copy.deepcopy(optimizer.state_dict())
    return {"muon": copy.deepcopy(optimizer.muon.state_dict()), "adamw": copy.deepcopy(optimizer.adamw.state_dict())}


def torch_then_optimjax(case, problem, tx=None):
    """(optimjax's M steps from torch's state after N, torch's own M steps)."""
    params = torch_params(problem.params0)
    optimizer = case.torch(list(params.values()))
    before = run_torch(problem, optimizer, params, 0, N)
    saved = saved_state(case, optimizer)
    reference = run_torch(problem, optimizer, params, N, M)
    if tx is None:  # the newer families' rows also check from_torch: the optimizer read from torch's is the case's
        tx = port.from_torch(optimizer) if case in NEW and case.torch_cls is not TorchMuonAndAdamW else case.optimjax()
    state = load(case, tx, before[-1], optimizer, saved)
    ours, _ = run_optimjax(problem, tx, before[-1], state, N, M)
    return ours, reference


def optimjax_then_torch(case, problem):
    """(torch's M steps from optimjax's state after N, optimjax's own M steps)."""
    tx = case.optimjax()
    before, state = run_optimjax(problem, tx, steps=N)
    reference, _ = run_optimjax(problem, tx, before[-1], state, N, M)
    params = torch_params(before[-1])
    optimizer = case.torch(list(params.values()))
    save(case, tx, state, before[-1], optimizer)
    return run_torch(problem, optimizer, params, N, M), reference


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_round_trips_continue_on_torchs_trajectory(case):
    for direction in (torch_then_optimjax, optimjax_then_torch):
        problem = Problem(seed=7, steps=N + M)
        err = problem.relative_error(*direction(case, problem))
        assert err < F32_TOL, f"{case.id}, {direction.__name__}: {err:.2e}"
        with float64():
            problem = Problem(seed=8, steps=N + M, dtype=np.float64)
            err = problem.relative_error(*direction(case, problem))
        assert err < F64_TOL, f"{case.id}, {direction.__name__}, float64: {err:.2e}"


def test_state_is_torchs_exactly():
    """Every array of the loaded state is torch's tensor, bit for bit, and comes back bit for bit."""
    case = next(c for c in CASES if c.id == "rmsprop_centered_momentum_wd")
    problem = Problem(seed=9, steps=N)
    params = torch_params(problem.params0)
    optimizer = case.torch(list(params.values()))
    run_torch(problem, optimizer, params)
    saved = optimizer.state_dict()
    current = {k: p.detach().numpy() for k, p in params.items()}
    tx = case.optimjax()
    state = port.load_state_dict(tx, current, saved, PATHS)
    rms, momentum = state[1], state[2]
    for i, k in enumerate(PATHS):
        np.testing.assert_array_equal(rms.nu[k], saved["state"][i]["square_avg"].numpy())
        np.testing.assert_array_equal(rms.mu_grad[k], saved["state"][i]["grad_avg"].numpy())
        np.testing.assert_array_equal(momentum.velocity[k], saved["state"][i]["momentum_buffer"].numpy())
    assert int(momentum.count) == N
    back = port.state_dict(tx, state, current, PATHS, optimizer)
    assert back["param_groups"] == saved["param_groups"]
    from_dict = port.state_dict(tx, state, current, PATHS, saved)  # the target given as a state_dict
    assert from_dict["param_groups"] == saved["param_groups"] and from_dict["state"].keys() == back["state"].keys()
    for i in range(len(PATHS)):
        assert set(back["state"][i]) == set(saved["state"][i])
        for key, value in saved["state"][i].items():
            assert back["state"][i][key].dtype == value.dtype and back["state"][i][key].shape == value.shape
            torch.testing.assert_close(back["state"][i][key], value, rtol=0, atol=0)


def test_transposed_layout():
    """JAX keeps 'w' transposed ((3, 4) for torch's (4, 3)): every per-element tensor is transposed both ways, and
    the continued run is torch's, transposed."""
    case = next(c for c in CASES if c.id == "adamw_amsgrad")
    problem = Problem(seed=10, steps=N + M)
    params = torch_params(problem.params0)
    optimizer = case.torch(list(params.values()))
    before = run_torch(problem, optimizer, params, 0, N)
    saved = copy.deepcopy(optimizer.state_dict())
    reference = run_torch(problem, optimizer, params, N, M)

    flip = lambda tree: {**tree, "w": np.asarray(tree["w"]).T}  # noqa: E731
    transposed_problem = Problem(seed=10, steps=N + M)
    transposed_problem.grad = lambda p, t: flip(problem.grad(flip(p), t))
    paths = [port.transposed("w"), "b", "conv", "scale"]
    tx = case.optimjax()
    state = port.load_state_dict(tx, flip(before[-1]), saved, paths)
    assert state[0].nu_max["w"].shape == (3, 4)
    ours, state = run_optimjax(transposed_problem, tx, flip(before[-1]), state, N, M)
    assert problem.relative_error([flip(p) for p in ours], reference) < F32_TOL
    back = port.state_dict(tx, state, ours[-1], paths, optimizer)
    assert back["state"][0]["exp_avg"].shape == (4, 3)
    np.testing.assert_array_equal(back["state"][0]["exp_avg"].numpy(), np.asarray(state[0].mu["w"]).T)


def test_transposed_axes_and_their_inverse():
    leaf = port.transposed(("conv", "kernel"), (2, 3, 1, 0))  # OIHW -> HWIO
    oihw = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert leaf.to_jax(oihw).shape == (4, 5, 3, 2)
    np.testing.assert_array_equal(leaf.to_torch(leaf.to_jax(oihw)), oihw)
    np.testing.assert_array_equal(leaf.to_jax(oihw)[1, 2, 0, 1], oihw[1, 0, 1, 2])


def test_schedule_count_resumes_with_torchs_scheduler():
    """inject_hyperparams(adamw)(learning_rate=schedule): the count comes from torch's step, so the schedule
    resumes where torch's LambdaLR is."""
    base = 1e-2
    schedule = optax.warmup_cosine_decay_schedule(0.0, base, warmup_steps=5, decay_steps=N + M, end_value=1e-3)
    case = next(c for c in CASES if c.id == "adamw")
    problem = Problem(seed=11, steps=N + M)
    params = torch_params(problem.params0)
    optimizer = case.torch(list(params.values()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: float(schedule(t)) / base)
    before = run_torch(problem, optimizer, params, 0, N, scheduler)
    saved = copy.deepcopy(optimizer.state_dict())
    reference = run_torch(problem, optimizer, params, N, M, scheduler)
    for tx in (optax.inject_hyperparams(oj.adamw)(learning_rate=schedule, weight_decay=0.1),
               oj.adamw(schedule, weight_decay=0.1)):
        state = port.load_state_dict(tx, before[-1], saved, PATHS)
        ours, state = run_optimjax(problem, tx, before[-1], state, N, M)
        assert problem.relative_error(ours, reference) < F32_TOL
        back = port.state_dict(tx, state, ours[-1], PATHS, optimizer)
        assert float(back["state"][0]["step"]) == N + M


def test_mu_dtype_and_fresh_state():
    """A bfloat16 first moment is loaded rounded to bfloat16 and saved back as float32 (torch casts it to the
    parameter's dtype); a torch optimizer that has not stepped is the fresh state (Adagrad's: its accumulator)."""
    problem = Problem(seed=12, steps=N)
    params = torch_params(problem.params0)
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-2, foreach=False)
    run_torch(problem, optimizer, params)
    current = {k: p.detach().numpy() for k, p in params.items()}
    tx = oj.adam(1e-2, mu_dtype=jnp.bfloat16)
    state = port.load_state_dict(tx, current, optimizer.state_dict(), PATHS)
    assert state[1].mu["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(state[1].mu["w"], optimizer.state_dict()["state"][0]["exp_avg"].numpy()
                                  .astype(jnp.bfloat16))
    back = port.state_dict(tx, state, current, PATHS, optimizer)
    assert back["state"][0]["exp_avg"].dtype == torch.float32

    fresh = torch.optim.Adagrad(list(torch_params(problem.params0).values()), initial_accumulator_value=0.5)
    state = port.load_state_dict(oj.adagrad(initial_accumulator_value=0.5), problem.params0, fresh.state_dict(), PATHS)
    np.testing.assert_array_equal(state[1].sum_of_squares["b"], np.full(3, 0.5, np.float32))
    fresh = torch.optim.Adam(list(torch_params(problem.params0).values()))
    state = port.load_state_dict(oj.adam(), problem.params0, fresh.state_dict(), PATHS)
    assert int(state[1].count) == 0
    assert port.state_dict(oj.adam(), state, problem.params0, PATHS, fresh)["state"] == {}


# --- bad input ------------------------------------------------------------------------------------------------


def stepped(make, steps=2, only=None):
    """A torch optimizer over the table's leaves after `steps` steps (gradients for the leaves in `only`)."""
    problem = Problem(seed=13, steps=steps)
    params = torch_params(problem.params0)
    optimizer = make(list(params.values()))
    for t in range(steps):
        for k, g in problem.grad({k: p.detach().numpy() for k, p in params.items()}, t).items():
            params[k].grad = torch.tensor(g) if only is None or k in only else None
        optimizer.step()
    return optimizer, {k: p.detach().numpy() for k, p in params.items()}


def adam(params):
    return torch.optim.Adam(params, lr=1e-2, foreach=False)


@pytest.mark.parametrize("make, tx, match", [
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), oj.adam(),
     r"state_dict is torch.optim.SGD's .* ScaleByAdamState, which holds torch.optim.Adam's"),
    (adam, oj.nadam(), r"state_dict is torch.optim.Adam's .* ScaleByNadamState"),
    (adam, oj.amsgrad(), r"torch parameter 0 = JAX leaf 'w'.*this optimizer needs \['max_exp_avg_sq'\]"),
    (lambda p: torch.optim.RMSprop(p, centered=True), oj.rmsprop(),
     r"torch parameter 0 = JAX leaf 'w'.*the state_dict has \['grad_avg'\]"),
    (lambda p: torch.optim.RMSprop(p), oj.rmsprop(momentum=0.9), r"needs \['momentum_buffer'\]"),
    (adam, oj.sgd(0.1), r"torch.optim.Adam.*the state_dict has \['exp_avg', 'exp_avg_sq'\]"),
    (lambda p: torch.optim.Adamax(p), oj.adam(), r"state_dict is torch.optim.Adamax's .* ScaleByAdamState"),
    (lambda p: torch.optim.RAdam(p), oj.adam(), r"state_dict is torch.optim.RAdam's .* ScaleByAdamState"),
    (lambda p: torch.optim.NAdam(p), oj.radam(), r"state_dict is torch.optim.NAdam's .* ScaleByRadamState"),
    (lambda p: torch.optim.RMSprop(p), oj.asgd(), r"state_dict is torch.optim.RMSprop's .* ScaleByAsgdState"),
    (lambda p: torch.optim.Adafactor(p), oj.adam(), r"state_dict is torch.optim.Adafactor's .* ScaleByAdamState"),
    (lambda p: torch.optim.Rprop(p), oj.adafactor(), r"state_dict is torch.optim.Rprop's .* ScaleByAdafactorState"),
])
def test_another_optimizer_is_named(make, tx, match):
    optimizer, params = stepped(make)
    with pytest.raises(ValueError, match=match):
        port.load_state_dict(tx, params, optimizer.state_dict(), PATHS)


def test_shape_mismatch_names_key_parameter_and_shapes():
    optimizer, params = stepped(adam)
    params = {**params, "w": params["w"].T}
    with pytest.raises(ValueError, match=r"torch's 'exp_avg(_sq)?' for torch parameter 0 = JAX leaf 'w' has shape "
                                         r"\(4, 3\), but the state entry it fills has shape \(3, 4\)"):
        port.load_state_dict(oj.adam(), params, optimizer.state_dict(), PATHS)


def test_parameters_missing_extra_or_unnamed():
    optimizer, params = stepped(adam)
    saved = optimizer.state_dict()
    with pytest.raises(ValueError, match=r"param_groups hold 4 parameters, `paths` names 3"):
        port.load_state_dict(oj.adam(), params, saved, PATHS[:3])
    with pytest.raises(ValueError, match=r"paths\[3\] = 'bias' is not a leaf of params"):
        port.load_state_dict(oj.adam(), params, saved, PATHS[:3] + ["bias"])
    with pytest.raises(ValueError, match=r"paths\[0\] and paths\[3\] are both 'w'"):
        port.load_state_dict(oj.adam(), params, saved, PATHS[:3] + ["w"])
    with pytest.raises(ValueError, match=r"entry for the JAX leaf 'extra', which no torch parameter in `paths`"):
        port.load_state_dict(oj.adam(), {**params, "extra": np.zeros(2, np.float32)}, saved, PATHS)
    with pytest.raises(ValueError, match=r"expected a torch.optim optimizer's state_dict\(\)"):
        port.load_state_dict(oj.adam(), params, {"exp_avg": 1}, PATHS)


def test_state_not_created_yet_and_unequal_steps():
    optimizer, params = stepped(adam, only={"w", "b"})
    with pytest.raises(ValueError, match=r"torch has no state yet for torch parameter 2 = JAX leaf 'conv'"):
        port.load_state_dict(oj.adam(), params, optimizer.state_dict(), PATHS)
    optimizer, params = stepped(adam)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][3]["step"] = torch.tensor(5.0)
    with pytest.raises(ValueError, match=r"'step' is 2 for torch parameter 0 = JAX leaf 'w' but 5 for torch "
                                         r"parameter 3 = JAX leaf 'scale'"):
        port.load_state_dict(oj.adam(), params, saved, PATHS)
    with pytest.raises(ValueError, match=r"step=3 but torch's state says 2"):
        port.load_state_dict(oj.adam(), params, optimizer.state_dict(), PATHS, step=3)
    optimizer, params = stepped(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match=r"counts steps but torch.optim.SGD keeps no 'step'; pass step=N"):
        port.load_state_dict(oj.momentum(0.1), params, optimizer.state_dict(), PATHS)


def test_complex_into_real_is_refused():
    optimizer, params = stepped(adam)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][1]["exp_avg"] = saved["state"][1]["exp_avg"].to(torch.complex64)
    with pytest.raises(ValueError, match=r"'exp_avg' for torch parameter 1 = JAX leaf 'b' is complex"):
        port.load_state_dict(oj.adam(), params, saved, PATHS)


def test_nothing_is_changed_by_a_failed_conversion():
    optimizer, params = stepped(adam)
    saved = optimizer.state_dict()
    snapshot = copy.deepcopy(saved)
    with pytest.raises(ValueError):
        port.load_state_dict(oj.amsgrad(), params, saved, PATHS)
    assert saved.keys() == snapshot.keys() and saved["param_groups"] == snapshot["param_groups"]
    for i, entry in snapshot["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(saved["state"][i][key], value, rtol=0, atol=0)


def test_state_dict_for_another_torch_optimizer_is_refused():
    tx = oj.adam(1e-2)
    problem = Problem(seed=14, steps=2)
    _, state = run_optimjax(problem, tx)
    params = torch_params(problem.params0)
    with pytest.raises(ValueError, match=r"state_dict is torch.optim.SGD's .* ScaleByAdamState"):
        port.state_dict(tx, state, problem.params0, PATHS, torch.optim.SGD(list(params.values()), lr=0.1))
    with pytest.raises(ValueError, match=r"torch parameter 0 = JAX leaf 'w'.*torch needs \['max_exp_avg_sq'\]"):
        port.state_dict(tx, state, problem.params0, PATHS, torch.optim.Adam(list(params.values()), amsgrad=True))
    with pytest.raises(ValueError, match=r"torch parameter 1 = JAX leaf 'b' has shape \(5,\) in torch, but \(3,\)"):
        port.state_dict(tx, state, problem.params0, PATHS,
                        torch.optim.Adam([params["w"], torch.zeros(5), params["conv"], params["scale"]]))
    with pytest.raises(ValueError, match=r"keeps a 'step' per parameter, which this optimizer's state does not "
                                         r"count; pass step=N"):
        _, state = run_optimjax(problem, oj.adadelta())
        port.state_dict(oj.adadelta(), state, problem.params0, PATHS, torch.optim.Adadelta(list(params.values())))
    with pytest.raises(ValueError, match=r"`state` is not the state of `tx`"):
        port.state_dict(oj.adam(amsgrad=True), tx.init(problem.params0), problem.params0, PATHS,
                        torch.optim.Adam(list(params.values()), amsgrad=True))


def test_importing_optimjax_does_not_import_torch():
    code = "import sys, optimjax, optimjax.port; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the families added after Adam's (RAdam, Adamax, ASGD, Rprop, Adafactor, Muon) ------------------------------


@pytest.mark.parametrize("case", NEW, ids=[c.id for c in NEW])
def test_new_families_state_is_torchs_exactly(case):
    """After N torch steps, the loaded state holds torch's tensors bit for bit (Adafactor: row_var and col_var for
    the matrix and the 3-D leaf, variance for the vector and the scalar; ASGD: eta and mu), and state_dict gives
    back torch's state_dict: the same keys per parameter, dtypes, shapes and values."""
    problem = Problem(seed=15, steps=N)
    params = torch_params(problem.params0)
    optimizer = case.torch(list(params.values()))
    run_torch(problem, optimizer, params)
    current = {k: p.detach().numpy() for k, p in params.items()}
    tx = case.optimjax()
    saved = saved_state(case, optimizer)
    state = load(case, tx, current, optimizer, saved)
    if case.torch_cls is torch.optim.Adafactor:
        inner = next(s for s in state if isinstance(s, oj.ScaleByAdafactorState))
        for i, k in enumerate(PATHS):
            torch_state = saved["state"][i]
            assert set(torch_state) == ({"step", "row_var", "col_var"} if np.ndim(current[k]) >= 2
                                        else {"step", "variance"})
            for field in ("row_var", "col_var", "variance"):
                if field in torch_state:
                    np.testing.assert_array_equal(getattr(inner, field)[k], torch_state[field].numpy())
    if case.torch_cls is torch.optim.ASGD:
        inner = next(s for s in state if isinstance(s, oj.ScaleByAsgdState))
        assert inner.eta == saved["state"][0]["eta"].item() and inner.mu == saved["state"][0]["mu"].item()
        assert inner.eta != case.kwargs["learning_rate"]  # has decayed: a loaded value, not the initial one
    if case.torch_cls is TorchMuonAndAdamW:  # Muon's state counts no steps, nor does torch's: no step=N needed
        _, part, masked, paths, _ = next(muon_parts(case, current, optimizer))
        alone = port.state_dict(part, state.inner_states["muon"].inner_state, masked, paths, optimizer.muon)
        torch.testing.assert_close(alone["state"][0]["momentum_buffer"], saved["muon"]["state"][0]["momentum_buffer"],
                                   rtol=0, atol=0)
    fresh = case.torch(list(torch_params(problem.params0).values()))
    save(case, tx, state, current, fresh)
    pairs = ([(fresh.muon, optimizer.muon), (fresh.adamw, optimizer.adamw)] if case.torch_cls is TorchMuonAndAdamW
             else [(fresh, optimizer)])
    for back, original in pairs:
        back, original = back.state_dict(), original.state_dict()
        assert back["param_groups"] == original["param_groups"]
        assert back["state"].keys() == original["state"].keys()
        for i, entry in original["state"].items():
            assert set(back["state"][i]) == set(entry)
            for key, value in entry.items():
                assert back["state"][i][key].dtype == value.dtype and back["state"][i][key].shape == value.shape
                torch.testing.assert_close(back["state"][i][key], value, rtol=0, atol=0)


MUON = [c for c in NEW if c.torch_cls is TorchMuonAndAdamW]


@pytest.mark.parametrize("case", MUON, ids=[c.id for c in MUON])
def test_muon_from_torch(case):
    """port.from_torch reads torch's Muon: a partition of from_torch(Muon) and from_torch(AdamW) follows torch from
    the start, against torch's own bfloat16 Newton-Schulz, which optimjax's muon also runs by default. (The other
    new families' rows check from_torch in their round trips.)"""
    problem = Problem(seed=16, steps=N)
    params = torch_params(problem.params0)
    if case.torch_cls is TorchMuonAndAdamW:
        if case.kwargs.get("maximize"):
            pytest.skip("torch's Muon has no maximize (the table negates its gradients): from_torch cannot read it")
        optimizer = case.torch(list(params.values()), ns_in_grad_dtype=False)
        labels = lambda tree: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", tree)  # noqa: E731
        tx = optax.partition({"muon": port.from_torch(optimizer.muon), "adamw": port.from_torch(optimizer.adamw)},
                             labels)
    else:
        optimizer = case.torch(list(params.values()))
        tx = port.from_torch(optimizer)
    reference = run_torch(problem, optimizer, params)
    ours, _ = run_optimjax(problem, tx)
    assert problem.relative_error(ours, reference) < F32_TOL


def test_classes_port_does_not_know_are_refused():
    """SparseAdam (betas but no weight_decay: not Adamax) and LBFGS (no per-parameter state in torch's sense: its
    state is one history for all parameters) are refused by name, at any step."""
    params = list(torch_params(Problem(seed=17, steps=1).params0).values())
    current = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    for optimizer in (torch.optim.SparseAdam(params), torch.optim.LBFGS(params)):
        with pytest.raises(ValueError, match=r"not those of any torch.optim class optimjax.port knows"):
            port.load_state_dict(oj.adamax(), current, optimizer.state_dict(), PATHS)
        with pytest.raises(ValueError, match=r"not those of any torch.optim class optimjax.port knows"):
            port.from_torch(optimizer)
