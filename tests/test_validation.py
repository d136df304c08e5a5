"""Arguments and inputs that are wrong, or right but unusual, get either the right answer or a clear error.

- hyperparameters: 0-d arrays of any floating dtype (bfloat16 and float16 included) work like the Python number
  they hold; arrays of another shape raise ValueError naming the argument (they would broadcast the params);
  wrong types raise TypeError naming it; `mu_dtype` / `nu_dtype` are checked at construction;
- `optax.inject_hyperparams(optimizer)` keeps the state structure of `optimizer`, and works on bfloat16 params;
- `update` given another optimizer's state, or gradients whose tree differs, names the optimizer the user called,
  the other optimizer and the first differing key path;
- `optimjax.checkpoint.restore` of a missing, relative or corrupted path; `python -m optimjax.demo --out` to a
  place it cannot write.

Expected values come from optax (`optax.adam`, which agrees with torch with these defaults) or closed forms.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optimjax
from optimjax import checkpoint
from cases import CASES, CASE_IDS

PARAMS = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]), "b": jnp.array([0.1, -0.2, 0.3])}
GRADS = {"w": jnp.array([[0.3, -0.1, 0.2], [-0.4, 0.5, 0.05]]), "b": jnp.array([-0.2, 0.1, 0.6])}


def one_step(tx, params=PARAMS, grads=GRADS):
    state = tx.init(params)
    return tx.update(grads, state, params)


# --- hyperparameters -----------------------------------------------------------------------------------------------

# (factory, the argument, the other arguments it needs)
ARGUMENTS = [
    (optimjax.sgd, "learning_rate", {}),
    (optimjax.sgd, "momentum", {"learning_rate": 0.1}),
    (optimjax.sgd, "weight_decay", {"learning_rate": 0.1}),
    (optimjax.adam, "learning_rate", {}),
    (optimjax.adam, "b1", {}),
    (optimjax.adam, "b2", {}),
    (optimjax.adam, "eps", {}),
    (optimjax.adamw, "weight_decay", {}),
    (optimjax.nadam, "momentum_decay", {}),
    (optimjax.rmsprop, "decay", {}),
    (optimjax.adagrad, "lr_decay", {}),
    (optimjax.adagrad, "initial_accumulator_value", {}),
    (optimjax.adadelta, "rho", {}),
]
ARGUMENT_IDS = [f"{f.__name__}-{name}" for f, name, _ in ARGUMENTS]
VALUE = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01, "b1": 0.9, "b2": 0.99, "eps": 1e-3,
         "momentum_decay": 4e-3, "decay": 0.9, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "rho": 0.9}


@pytest.mark.parametrize("shape", [(1,), (1, 1), (3,)], ids=str)
@pytest.mark.parametrize("factory, name, others", ARGUMENTS, ids=ARGUMENT_IDS)
def test_hyperparameter_array_that_is_not_0d_raises_naming_it(factory, name, others, shape):
    """Before: `sgd(np.array([[0.1]]))` turned a (3,) parameter into (1, 3), `adam(b1=np.array([0.9]))` 0-d state
    into shape (1,)."""
    value = np.full(shape, VALUE[name])
    with pytest.raises(ValueError, match=rf"\b{name}\b.*0-d.*shape {re.escape(str(shape))}"):
        factory(**{**others, name: value})


@pytest.mark.parametrize("wrong", ["0.1", [0.1], (0.1,), 1j, True, object()], ids=lambda w: "object()" if type(w) is object else repr(w))
@pytest.mark.parametrize("factory, name, others", ARGUMENTS, ids=ARGUMENT_IDS)
def test_hyperparameter_of_a_wrong_type_raises_type_error_naming_it(factory, name, others, wrong):
    """Before: ValueError, and a list [0.1] was accepted."""
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        factory(**{**others, name: wrong})


@pytest.mark.parametrize("factory", [optimjax.sgd, optimjax.adam, optimjax.rmsprop, optimjax.adagrad])
def test_learning_rate_none_raises_type_error(factory):
    with pytest.raises(TypeError, match=r"\blearning_rate\b.*None"):
        factory(learning_rate=None)


def test_a_callable_is_refused_where_no_schedule_is_taken():
    with pytest.raises(TypeError, match=r"\beps\b.*callable"):
        optimjax.adam(eps=lambda count: 1e-8)


@pytest.mark.parametrize("factory, name", [(optimjax.adam, "amsgrad"), (optimjax.adamw, "amsgrad"),
                                           (optimjax.rmsprop, "centered"), (optimjax.sgd, "nesterov")])
def test_a_switch_that_is_not_a_bool_raises_type_error(factory, name):
    """Before: amsgrad="no" was truthy and turned AMSGrad on."""
    others = {"learning_rate": 0.1, "momentum": 0.9} if factory is optimjax.sgd else {}
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        factory(**others, **{name: "no"})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_0d_array_hyperparameters_of_any_floating_dtype_act_as_their_value(dtype):
    """Before: `adam(learning_rate=jnp.asarray(1e-3, jnp.bfloat16))` raised "must be a real number". The update
    equals optax.adam's with the same values as Python floats (the array's value, rounded to its dtype)."""
    with jax.enable_x64(dtype == "float64"):
        lr, b1, b2, eps = (jnp.asarray(x, dtype) for x in (1e-2, 0.9, 0.99, 1e-3))
        tx = optimjax.adam(learning_rate=lr, b1=b1, b2=b2, eps=eps)
        reference = optax.adam(float(lr), b1=float(b1), b2=float(b2), eps=float(eps))
        for _ in range(2):
            got, _ = one_step(tx)
            want, _ = one_step(reference)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), got, want)


@pytest.mark.parametrize("dtype", ["float17", "int8", "int32", "bool", jnp.int8, bool, "not a dtype"], ids=str)
@pytest.mark.parametrize("factory", [optimjax.adam, optimjax.adamw, optimjax.nadam, optimjax.scale_by_adam])
@pytest.mark.parametrize("name", ["mu_dtype", "nu_dtype"])
def test_state_dtype_that_is_not_floating_is_refused_at_construction(factory, name, dtype):
    """Before: 'float17' failed only at init, int8 and bool were accepted (and stored integer moments)."""
    with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b.*floating dtype"):
        factory(**{name: dtype})


@pytest.mark.parametrize("dtype", ["bfloat16", jnp.float16, np.float32])
def test_state_dtype_floating_is_accepted(dtype):
    state = optimjax.adam(mu_dtype=dtype).init(PARAMS)
    assert state[1].mu["w"].dtype == jnp.dtype(dtype)


# --- inject_hyperparams --------------------------------------------------------------------------------------------

def structure_and_dtypes(tree):
    return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_injected_and_plain_optimizers_have_the_same_state(case):
    """Their states (and checkpoints) can be swapped. Before: `inject_hyperparams(adagrad)` added a learning-rate
    count once lr_decay was an array."""
    plain = case.optimjax()
    injected = optax.inject_hyperparams(case.factory)(**case.kwargs)
    _, plain_state = one_step(plain)
    _, injected_state = one_step(injected)
    assert structure_and_dtypes(injected_state.inner_state) == structure_and_dtypes(plain_state)
    # and the plain state runs in the injected optimizer
    swapped = injected_state._replace(inner_state=plain_state)
    injected.update(GRADS, swapped, PARAMS)


def bf16(tree):
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)


#: one case per family and option (inject_hyperparams compiles nothing here, but 22 cases would repeat themselves)
FAMILIES = ["sgd", "momentum_dampening_wd", "nesterov", "adam", "amsgrad", "adamw", "nadam", "nadamw",
            "rmsprop_centered_momentum_wd", "adagrad_all_options", "adadelta_wd"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in FAMILIES], ids=FAMILIES)
def test_inject_hyperparams_works_on_bfloat16_params(case):
    """`optax.inject_hyperparams` stores hyperparameters in the params' dtype. Before: "must be a real number" for
    every optimizer. With hyperparam_dtype=float32 every optimizer runs; with the default (bfloat16), those whose
    hyperparameters survive the rounding run, and the others (b2 = 0.999 rounds to 1.0) say what to do (optax.adam
    gives NaN there)."""
    params, grads = bf16(PARAMS), bf16(GRADS)
    tx = optax.inject_hyperparams(case.factory, hyperparam_dtype=jnp.float32)(**case.kwargs)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(u.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))

    rounded = {k: float(jnp.asarray(v, jnp.bfloat16)) for k, v in case.kwargs.items()
               if isinstance(v, float) and k in ("b2", "decay", "rho")}
    defaults = {"b2": 0.999} if "b2" not in case.kwargs and case.factory in (
        optimjax.adam, optimjax.adamw, optimjax.amsgrad, optimjax.nadam, optimjax.nadamw) else {}
    tx = optax.inject_hyperparams(case.factory)(**case.kwargs)
    if any(v >= 1.0 for v in rounded.values()) or defaults:
        with pytest.raises(ValueError, match="hyperparam_dtype=jnp.float32"):
            tx.init(params)
    else:
        updates, _ = tx.update(grads, tx.init(params), params)
        assert all(u.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_inject_hyperparams_under_nnx_optimizer_with_bfloat16_params():
    """nnx.Optimizer calls init eagerly; before: "must be a real number"."""
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    tx = optax.inject_hyperparams(optimjax.sgd)(learning_rate=0.5, momentum=0.9)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = np.asarray(model.kernel[...], np.float32)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    np.testing.assert_allclose(np.asarray(model.kernel[...], np.float32), before - 0.5, atol=1e-2)  # v_1 = g = 1


# --- update's errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, other, other_name", [
    ("adam", optimjax.sgd(0.1), "another optimizer"),
    ("adam", optimjax.momentum(0.1), "sgd with momentum"),
    ("adamw", optimjax.nadamw(), "nadam"),
    ("nadam", optimjax.adam(), "adam"),
    ("sgd", optimjax.rmsprop(), "rmsprop"),
    ("rmsprop", optimjax.adagrad(), "adagrad"),
    ("adagrad", optimjax.adadelta(), "adadelta"),
    ("adadelta", optax.adam(0.1), "optax.ScaleByAdamState"),
])
def test_update_with_another_optimizers_state_names_both(name, other, other_name):
    """Before: AttributeError: 'EmptyState' object has no attribute 'mu'."""
    tx = getattr(optimjax, name)(0.1)
    with pytest.raises(TypeError, match=rf"^{name}: update\(\) got a state made by .*{re.escape(other_name)}"):
        tx.update(GRADS, other.init(PARAMS), PARAMS)


MISMATCHES = [
    ("missing leaf", {"w": GRADS["w"]}, r"no leaf at \['b'\]"),
    ("extra leaf", {**GRADS, "c": jnp.zeros(2)}, r"a leaf at \['c'\] that the expected tree does not have"),
    ("wrapped", (GRADS,), r"a leaf at \[0\]\['b'\] where the expected tree has one at \['b'\]"),
    ("renamed", {"w": GRADS["w"], "bias": GRADS["b"]}, r"a leaf at \['bias'\] where the expected tree has one at "
                                                         r"\['b'\]"),
    ("shape", {**GRADS, "b": jnp.zeros(4)}, r"gradient of shape \(4,\) at \['b'\]"),
]


@pytest.mark.parametrize("name", ["adam", "adamw", "nadamw", "sgd", "rmsprop", "adagrad"])
@pytest.mark.parametrize("kind, grads, message", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_mismatched_gradient_tree_names_the_optimizer_and_the_key_path(name, kind, grads, message, jit=False):
    """Issue 13: before, adam's mismatch was an `add_decayed_weights` error printing two tree structures."""
    tx = getattr(optimjax, name)(0.1, weight_decay=0.01)
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match=rf"^{name}: update\(\) got .*{message}") as err:
        update(grads, tx.init(PARAMS), PARAMS)
    assert "PyTreeDef" not in str(err.value)


# --- checkpoint ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    tree = {"params": PARAMS, "opt_state": optimjax.adam().init(PARAMS)}
    path = tmp_path_factory.mktemp("ckpt") / "adam"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
    return path, tree


def test_restore_of_a_missing_path_raises_file_not_found_naming_it(tmp_path, saved):
    """Before: AttributeError: 'NoneType' object has no attribute 'tree'."""
    missing = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        checkpoint.restore(missing, saved[1])


def test_restore_of_a_relative_path_reads_it_from_the_working_directory(saved, monkeypatch):
    """Before: AttributeError (Orbax needs an absolute path)."""
    path, tree = saved
    monkeypatch.chdir(path.parent)
    restored = checkpoint.restore(path.name, jax.eval_shape(lambda: tree))
    jax.tree.map(np.testing.assert_array_equal, restored, tree)
    with pytest.raises(FileNotFoundError, match=re.escape(str(path.parent / "missing"))):
        checkpoint.restore("missing", tree)


def test_restore_of_a_file_or_an_empty_directory_raises_naming_it(tmp_path, saved):
    afile = tmp_path / "file"
    afile.write_text("not a checkpoint")
    with pytest.raises(NotADirectoryError, match=re.escape(str(afile))):
        checkpoint.restore(afile, saved[1])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*cannot be read"):
        checkpoint.restore(empty, saved[1])


@pytest.mark.parametrize("damage", ["metadata", "data"])
def test_restore_of_a_corrupted_checkpoint_raises_naming_it(tmp_path, saved, damage):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(saved[0], path)
    if damage == "metadata":
        (path / "_METADATA").write_text("{ truncated")
    else:  # every data file of the array store cut to a few bytes
        for file in path.rglob("*"):
            if file.is_file() and file.parent.name == "d":
                file.write_bytes(file.read_bytes()[:5])
    with pytest.raises((ValueError, OSError), match=re.escape(str(path))):
        checkpoint.restore(path, jax.eval_shape(lambda: saved[1]))


# --- demo ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["directory", "unwritable"])
def test_demo_with_an_out_it_cannot_write_fails_before_training(tmp_path, capsys, where):
    """Before: trained every optimizer, then a traceback when writing the PNG. Now an argument error at once (with
    --steps 1 a missed check would train briefly and then fail with an OSError instead)."""
    from optimjax import demo

    out = tmp_path if where == "directory" else Path("/proc/optimjax-demo/curves.png")  # even root cannot
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--steps", "1", "--optimizers", "sgd", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot write the PNG there" in err
    assert "train loss" not in err


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_mismatched_gradient_tree_under_jit_names_the_optimizer(name):
    test_mismatched_gradient_tree_names_the_optimizer_and_the_key_path(name, *MISMATCHES[0], jit=True)


@pytest.mark.parametrize("inject", [False, True], ids=["array", "injected"])
def test_array_momentum_of_zero_ignores_dampening_as_torch_does(inject):
    """torch.optim.SGD(momentum=0, dampening=d) keeps no buffer: each step is -lr * g. An array momentum (as
    `inject_hyperparams` passes it) keeps the buffer; before, its dampening then scaled g by (1 - d) from step 2."""
    params, g = jnp.array([1.0, 2.0]), jnp.array([0.3, -0.2])
    if inject:
        tx = optax.inject_hyperparams(optimjax.sgd)(learning_rate=0.1, momentum=0.0, dampening=0.5)
    else:
        tx = optimjax.sgd(0.1, momentum=jnp.asarray(0.0), dampening=0.5)
    state, p = tx.init(params), params
    for _ in range(3):
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_allclose(p, params - 3 * 0.1 * g, rtol=1e-6)
