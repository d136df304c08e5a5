"""Checkpoints: optimizer state survives Orbax, with optax-style state and with Flax nnx's state, bit for bit;
a checkpoint written for another optimizer or parameter tree is refused by `optimjax.checkpoint` with the
differing entries named.

Resuming: train N steps, save with `orbax.checkpoint`, restore in a fresh Python process (this file run as a
script), train M more there; the result must equal N + M uninterrupted steps exactly, for every optimizer of
tests/cases.py (optax state) and for three through `nnx.Optimizer`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cases import CASE_IDS, CASES

import optimjax
from optimjax import checkpoint

# Its module fixture runs once per worker that runs one of its tests: keep them on one worker (conftest.py).
pytestmark = pytest.mark.xdist_group("checkpoint_resumed")

N, M = 7, 5  # steps before and after the break
NNX_CASES = ["adamw", "nadamw", "nesterov_wd"]
CASES_BY_ID = {case.id: case for case in CASES}


# --- a small least-squares problem, identical in every process (numpy's seeded generator) -------------------------------------------------

_rng = np.random.default_rng(0)
X = _rng.normal(size=(64, 5)).astype(np.float32)
Y = np.tanh(X @ _rng.normal(size=(5, 3))).astype(np.float32)
PARAMS0 = {"w": (0.5 * _rng.normal(size=(5, 3))).astype(np.float32),
           "b": (0.1 * _rng.normal(size=(3,))).astype(np.float32)}


def initial_params() -> dict:
    return jax.tree.map(jnp.asarray, PARAMS0)


def batch(step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Batch `step` of 16 rows (so that the gradients, hence the trajectory, depend on the step count)."""
    start = (step % 4) * 16
    return jax.lax.dynamic_slice_in_dim(X, start, 16), jax.lax.dynamic_slice_in_dim(Y, start, 16)


def make_step(tx):
    @jax.jit
    def step(params, state, i):
        x, y = batch(i)
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"][None, :] - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def train(step, params, state, start: int, steps: int):
    for i in range(start, start + steps):
        params, state = step(params, state, jnp.asarray(i))
    return params, state


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def make_nnx(case_id: str, seed: int = 0) -> tuple[MLP, nnx.Optimizer]:
    model = MLP(nnx.Rngs(seed))
    return model, nnx.Optimizer(model, CASES_BY_ID[case_id].optimjax(), wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, i):
    x, y = batch(i)
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)


def nnx_train(model, optimizer, start: int, steps: int) -> None:
    for i in range(start, start + steps):
        nnx_step(model, optimizer, jnp.asarray(i))


def save(path: Path, tree) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.absolute(), tree)


def nnx_tree(model, optimizer) -> dict:
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


# --- the fresh process: restore every checkpoint under a directory, train M more steps, save the result --------

def resume_all(root: Path) -> None:
    params0 = initial_params()
    for i, case in enumerate(CASES):
        print(f"[{i + 1}/{len(CASES)}] resuming {case.id}", file=sys.stderr, flush=True)
        tx = case.optimjax()
        abstract = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params0)
        restored = checkpoint.restore((root / f"{case.id}_step{N}").absolute(), abstract)
        params, state = train(make_step(tx), restored["params"], restored["opt_state"], N, M)
        save(root / f"{case.id}_step{N + M}", {"params": params, "opt_state": state})
    for case_id in NNX_CASES:
        print(f"resuming nnx {case_id}", file=sys.stderr, flush=True)
        model, optimizer = make_nnx(case_id, seed=123)  # other initial values: the restore must overwrite them
        abstract = nnx.eval_shape(lambda: nnx_tree(*make_nnx(case_id)))
        restored = checkpoint.restore((root / f"nnx_{case_id}_step{N}").absolute(), abstract)
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["optimizer"])
        nnx_train(model, optimizer, N, M)
        save(root / f"nnx_{case_id}_step{N + M}", nnx_tree(model, optimizer))


# --- the tests ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, dict]:
    """Checkpoints after N steps, resumed in a fresh process; and the N + M uninterrupted runs, in memory."""
    root = tmp_path_factory.mktemp("checkpoints")
    uninterrupted = {}
    for case in CASES:
        tx = case.optimjax()
        step, params = make_step(tx), initial_params()
        params, state = train(step, params, tx.init(params), 0, N)
        save(root / f"{case.id}_step{N}", {"params": params, "opt_state": state})
        params, state = train(step, params, state, N, M)
        uninterrupted[case.id] = {"params": params, "opt_state": state}
    for case_id in NNX_CASES:
        model, optimizer = make_nnx(case_id)
        nnx_train(model, optimizer, 0, N)
        save(root / f"nnx_{case_id}_step{N}", nnx_tree(model, optimizer))
        nnx_train(model, optimizer, N, M)
        uninterrupted[f"nnx_{case_id}"] = nnx_tree(model, optimizer)
    proc = subprocess.run([sys.executable, __file__, "resume", str(root)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, uninterrupted


def assert_bit_identical(resumed_tree, uninterrupted_tree) -> None:
    """Same entries, dtypes, shapes and bits."""
    got, want = checkpoint._flatten(resumed_tree), checkpoint._flatten(uninterrupted_tree)
    assert got.keys() == want.keys()
    for path in want:
        a, b = np.asarray(got[path]), np.asarray(want[path])
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path, strict=True)


def load(path: Path, like):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path.absolute(), like)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_resume_in_fresh_process_is_bit_identical(resumed, case_id):
    root, uninterrupted = resumed
    want = uninterrupted[case_id]
    got = load(root / f"{case_id}_step{N + M}", want)
    assert_bit_identical(got, want)
    moved = np.max(np.abs(np.asarray(want["params"]["w"]) - np.asarray(initial_params()["w"])))
    assert moved > 1e-3, "the parameters did not move: the comparison would be vacuous"
    counts = [np.asarray(c) for _, c in optax.tree.get_all_with_path(want["opt_state"], "count")]
    assert all(c == N + M for c in counts), "step counts must carry over the break"


@pytest.mark.parametrize("case_id", NNX_CASES)
def test_resume_nnx_optimizer_in_fresh_process_is_bit_identical(resumed, case_id):
    root, uninterrupted = resumed
    want = uninterrupted[f"nnx_{case_id}"]
    got = load(root / f"nnx_{case_id}_step{N + M}", want)
    assert_bit_identical(got, want)
    assert int(want["optimizer"]["step"][...]) == N + M


# --- refusing a checkpoint written for something else -----------------------------------------------------------

@pytest.fixture(scope="module")
def adam_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adam") / "ckpt"
    params = initial_params()
    save(path, {"params": params, "opt_state": optimjax.adam(1e-3).init(params)})
    return path


def target_for(tx, params=None) -> dict:
    params = initial_params() if params is None else params
    return jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)


def test_restore_matching_checkpoint(adam_checkpoint):
    params = initial_params()
    restored = checkpoint.restore(adam_checkpoint, target_for(optimjax.adam(1e-3)))
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    assert checkpoint.differences(adam_checkpoint, target_for(optimjax.adam(5e-2, b1=0.5))) == [], (
        "hyperparameters are not state: a checkpoint fits any optimizer with the same state layout")


@pytest.mark.parametrize(
    "tx, expected",
    [
        (optimjax.nadam(), ["in the target but not in the checkpoint: opt_state.1.mu_product"]),
        (optimjax.amsgrad(), ["in the target but not in the checkpoint: opt_state.1.nu_max.b, opt_state.1.nu_max.w"]),
        (optimjax.adamw(), ["in the target but not in the checkpoint: opt_state.0.count, opt_state.0.mu.b",
                            "in the checkpoint but not in the target: opt_state.1.count, opt_state.1.mu.b"]),
        (optimjax.momentum(0.1), ["in the target but not in the checkpoint: opt_state.1.velocity.b",
                                  "in the checkpoint but not in the target: opt_state.1.mu.b, opt_state.1.mu.w, opt_state.1.nu.b"]),
        (optimjax.rmsprop(centered=True), ["in the target but not in the checkpoint: opt_state.1.mu_grad.b"]),
        (optimjax.adam(optax.linear_schedule(1e-3, 0.0, 100)),
         ["in the target but not in the checkpoint: opt_state.2.count"]),
    ],
    ids=["nadam", "amsgrad", "adamw", "momentum", "rmsprop_centered", "adam_with_schedule"],
)
def test_restore_into_another_optimizer_is_refused(adam_checkpoint, tx, expected):
    with pytest.raises(ValueError, match="does not match the target") as err:
        checkpoint.restore(adam_checkpoint, target_for(tx))
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"w": jnp.ones((5, 3)), "bias": jnp.ones(3)},
         ["in the target but not in the checkpoint: opt_state.1.mu.bias, opt_state.1.nu.bias, params.bias",
          "in the checkpoint but not in the target: opt_state.1.mu.b, opt_state.1.nu.b, params.b"]),
        ({"w": jnp.ones((4, 3)), "b": jnp.ones(3)},
         ["shape differs at params.w: checkpoint (5, 3), target (4, 3)",
          "shape differs at opt_state.1.mu.w: checkpoint (5, 3), target (4, 3)"]),
        ({"w": jnp.ones((5, 3), jnp.bfloat16), "b": jnp.ones(3)},
         ["dtype differs at params.w: checkpoint float32, target bfloat16"]),
        ({"w": jnp.ones((5, 3)), "b": jnp.ones(3), "extra": jnp.ones(2)},
         ["in the target but not in the checkpoint: opt_state.1.mu.extra"]),
    ],
    ids=["renamed_leaf", "other_shape", "other_dtype", "extra_leaf"],
)
def test_restore_into_another_parameter_tree_is_refused(adam_checkpoint, params, expected):
    with pytest.raises(ValueError, match="does not match the target") as err:
        checkpoint.restore(adam_checkpoint, target_for(optimjax.adam(1e-3), params))
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)


def test_orbax_alone_casts_a_different_dtype_silently(adam_checkpoint):
    """Why `check_compatible` compares dtypes: Orbax itself restores float32 into a bfloat16 target without a word."""
    params = {"w": jnp.ones((5, 3), jnp.bfloat16), "b": jnp.ones(3)}
    restored = load(adam_checkpoint, target_for(optimjax.adam(1e-3), params))
    assert restored["params"]["w"].dtype == jnp.bfloat16


def test_nnx_checkpoint_into_another_optimizer_is_refused(tmp_path):
    model, optimizer = make_nnx("adamw")
    save(tmp_path / "ckpt", nnx_tree(model, optimizer))
    abstract = nnx.eval_shape(lambda: nnx_tree(*make_nnx("nadamw")))
    with pytest.raises(ValueError, match=r"in the target but not in the checkpoint: optimizer\.opt_state\.0\.mu_product"):
        checkpoint.restore(tmp_path / "ckpt", abstract)


if __name__ == "__main__" and sys.argv[1:2] == ["resume"]:
    jax.config.update("jax_numpy_rank_promotion", "raise")  # as tests/conftest.py does for the pytest process
    resume_all(Path(sys.argv[2]))
