"""Property-based tests (hypothesis): random pytrees, dtypes and in-range hyperparameters for every optimizer.

Pytrees nest dicts, lists and tuples with None leaves, 0-d and empty arrays; dtypes are float16, bfloat16,
float32 and, inside `jax.enable_x64(True)` (never flipped globally), float64. Properties:

- update keeps the tree structure, shapes and dtypes of the gradients, and the state keeps its own;
- a zero gradient on the initial state, without weight decay, gives an exactly zero update;
- the Adam family's update is invariant to scaling the gradients by c > 0 (eps = 0; with eps > 0 it is only up
  to eps);
- jit and eager agree, and vmap over a batch of states equals a Python loop over them;
- an out-of-range hyperparameter raises ValueError naming the argument; gradients whose tree or shapes differ
  from the state's raise ValueError.

Every property runs once per optimizer family. The profile is derandomized (a fixed sequence of examples, no
example database) and applied per test, not loaded globally: 8 examples per optimizer and property, 3 where
each example compiles new XLA programs (jit, vmap); about 90 s of CPU time on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import optimjax

settings.register_profile(
    "optimjax-properties", derandomize=True, database=None, deadline=None, max_examples=8, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("optimjax-properties")
FEW = settings(PROFILE, max_examples=3)  # for the properties that compile a new XLA program per example

DTYPES = ["float16", "bfloat16", "float32", "float64"]
TOLERANCE = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 2e-6, "float64": 1e-13}  # a few ulp of each dtype


# --- random pytrees ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Leaf:
    """A placeholder for an array leaf of `shape` (a plain tuple would read as a tuple node)."""

    shape: tuple[int, ...]


def trees(max_leaves: int = 6) -> st.SearchStrategy:
    """Nested dicts, lists and tuples of array leaves (0-d, empty and small) and None. The whole tree is never
    None: optax reads `params=None` as "no params given" (add_decayed_weights then asks for them)."""
    leaves = st.one_of(array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3).map(Leaf), st.none())
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), children, min_size=1, max_size=3),
            st.lists(children, min_size=1, max_size=3),
            st.lists(children, max_size=3).map(tuple),
        ),
        max_leaves=max_leaves,
    ).filter(lambda tree: tree is not None)


def materialise(tree: Any, dtype: str, rng: np.random.Generator, scale: float = 1.0) -> Any:
    """Arrays of `dtype` with normal random values in place of the Leaf placeholders."""
    return jax.tree.map(lambda leaf: jnp.asarray(scale * rng.normal(size=leaf.shape), dtype), tree,
                        is_leaf=lambda x: isinstance(x, Leaf))


def precision(dtype: str):
    """float64 needs x64, switched on for this block only."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


# --- the optimizers and their hyperparameter ranges --------------------------------------------------------------

def unit(lo: float = 0.0, hi: float = 0.999) -> st.SearchStrategy:
    return st.floats(lo, hi)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0 ** e)


def eps_for(dtype: str) -> st.SearchStrategy:
    """eps > 0 and representable in `dtype` (float16's smallest subnormal is 6e-8: a smaller eps rounds to 0 and
    0 / (0 + eps) is NaN; see tests/test_nonfinite.py)."""
    return log_uniform(1e-7 if dtype == "float16" else 1e-10, 1e-3)


@dataclasses.dataclass(frozen=True)
class Spec:
    """An optimizer, its in-range hyperparameters, and the ranges to step out of."""

    factory: Callable[..., optax.GradientTransformation]
    hyper: Callable[[str], st.SearchStrategy]  # dtype -> strategy of keyword arguments, weight decay included
    ranges: dict[str, str]  # argument -> "nonnegative" | "beta" | "unit_closed"
    adam_family: bool = False

    def __repr__(self):
        return self.factory.__name__


def kwargs(**strategies) -> st.SearchStrategy:
    return st.fixed_dictionaries(strategies)


LR = log_uniform(1e-4, 1.0)
WD = st.one_of(st.just(0.0), log_uniform(1e-4, 0.1))
ADAM_RANGES = {"learning_rate": "nonnegative", "b1": "beta", "b2": "beta", "eps": "nonnegative",
               "weight_decay": "nonnegative"}


def sgd_hyper(dtype):
    def build(momentum, nesterov, dampening, weight_decay, lr):
        nesterov = nesterov and momentum is not None and momentum > 0
        return dict(learning_rate=lr, momentum=momentum, nesterov=nesterov,
                    dampening=0.0 if nesterov else dampening, weight_decay=weight_decay)

    return st.builds(build, st.one_of(st.none(), unit(0.0, 0.99)), st.booleans(), unit(0.0, 1.0), WD, LR)


SPECS = [
    Spec(optimjax.sgd, sgd_hyper, {"learning_rate": "nonnegative", "dampening": "unit_closed",
                                   "weight_decay": "nonnegative"}),
    Spec(optimjax.adam, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                         weight_decay=WD, amsgrad=st.booleans()), ADAM_RANGES, adam_family=True),
    Spec(optimjax.amsgrad, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                            weight_decay=WD), ADAM_RANGES, adam_family=True),
    Spec(optimjax.adamw, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                          weight_decay=WD, amsgrad=st.booleans()), ADAM_RANGES, adam_family=True),
    Spec(optimjax.nadam, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                          momentum_decay=unit(0.0, 0.1), weight_decay=WD),
         {**ADAM_RANGES, "momentum_decay": "nonnegative"}, adam_family=True),
    Spec(optimjax.nadamw, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                           momentum_decay=unit(0.0, 0.1), weight_decay=WD),
         {**ADAM_RANGES, "momentum_decay": "nonnegative"}, adam_family=True),
    Spec(optimjax.rmsprop, lambda d: kwargs(learning_rate=LR, decay=unit(), eps=eps_for(d), centered=st.booleans(),
                                            momentum=st.one_of(st.none(), unit(0.0, 0.99)), weight_decay=WD),
         {"learning_rate": "nonnegative", "decay": "beta", "eps": "nonnegative", "weight_decay": "nonnegative"}),
    Spec(optimjax.adagrad, lambda d: kwargs(learning_rate=LR, lr_decay=unit(0.0, 0.1), weight_decay=WD,
                                            initial_accumulator_value=st.one_of(st.just(0.0), unit(0.0, 1.0)),
                                            eps=eps_for(d)),
         {"learning_rate": "nonnegative", "lr_decay": "nonnegative", "weight_decay": "nonnegative",
          "initial_accumulator_value": "nonnegative", "eps": "nonnegative"}),
    Spec(optimjax.adadelta, lambda d: kwargs(learning_rate=LR, rho=unit(), eps=eps_for(d), weight_decay=WD),
         {"learning_rate": "nonnegative", "rho": "beta", "eps": "nonnegative", "weight_decay": "nonnegative"}),
    Spec(optimjax.radam, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                          weight_decay=WD, decoupled_weight_decay=st.booleans()), ADAM_RANGES),
    Spec(optimjax.adamax, lambda d: kwargs(learning_rate=LR, b1=unit(), b2=unit(0, 0.9999), eps=eps_for(d),
                                           weight_decay=WD), ADAM_RANGES, adam_family=True),
    # lambd = 0: its decay term moves the parameters even with a zero gradient, like weight decay.
    Spec(optimjax.asgd, lambda d: kwargs(learning_rate=LR, lambd=st.just(0.0), alpha=unit(0.0, 1.0),
                                         t0=st.sampled_from([0.0, 1.0, 1e6]), weight_decay=WD),
         {"learning_rate": "nonnegative", "lambd": "nonnegative", "alpha": "nonnegative", "t0": "nonnegative",
          "weight_decay": "nonnegative"}),
    Spec(optimjax.rprop, lambda d: kwargs(learning_rate=LR, etas=st.tuples(unit(0.1, 0.9), unit(1.1, 2.0))),
         {"learning_rate": "nonnegative"}),
    Spec(optimjax.adafactor, lambda d: kwargs(learning_rate=LR, beta2_decay=st.floats(-1.0, 0.0), d=unit(1.0, 3.0),
                                              weight_decay=WD),
         {"learning_rate": "nonnegative", "d": "nonnegative", "weight_decay": "nonnegative"}),
]


def has_array(tree) -> bool:
    return any(isinstance(x, Leaf) for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Leaf)))


@st.composite
def problems(draw, spec: Spec, dtypes=DTYPES, weight_decay: bool = True, max_leaves: int = 6,
             needs_array: bool = False):
    """(kwargs of `spec`'s optimizer, dtype, params, list of gradients), all drawn; `needs_array`: at least one
    array leaf."""
    dtype = draw(st.sampled_from(dtypes))
    hyper = draw(spec.hyper(dtype))
    if not weight_decay and "weight_decay" in hyper:
        hyper["weight_decay"] = 0.0
    tree = draw(trees(max_leaves).filter(has_array) if needs_array else trees(max_leaves))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    with precision(dtype):
        params = materialise(tree, dtype, rng)
        grads = [materialise(tree, dtype, rng) for _ in range(3)]
    return hyper, dtype, params, grads


def run(tx, params, grads, transform=None):
    """The updates and states of len(grads) steps; init and update run through `transform` (jax.jit, jax.vmap)
    when given, eagerly otherwise."""
    init, update = (tx.init, tx.update) if transform is None else (transform(tx.init), transform(tx.update))
    state, out = init(params), []
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append((updates, state))
    return out


def signature(tree) -> tuple:
    """Tree structure, and every leaf's shape and dtype."""
    return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


def assert_close(got, want, dtype: str) -> None:
    """Equal up to a few ulp of `dtype`, relative to the largest value in `want` (jit may fuse a multiply-add)."""
    scale = max([float(jnp.max(jnp.abs(x.astype(jnp.float32)))) for x in jax.tree.leaves(want) if x.size] + [1e-30])
    chex.assert_trees_all_close(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)


# --- the properties ----------------------------------------------------------------------------------------------

BY_OPTIMIZER = pytest.mark.parametrize("spec", SPECS, ids=repr)

@BY_OPTIMIZER
@PROFILE
@given(data=st.data())
def test_update_keeps_structure_shape_and_dtype(spec, data):
    problem = data.draw(problems(spec), label="problem")
    hyper, dtype, params, grads = problem
    with precision(dtype):
        tx = spec.factory(**hyper)
        init_signature = signature(tx.init(params))
        for updates, state in run(tx, params, grads):
            assert signature(updates) == signature(grads[0])
            assert signature(state) == init_signature


@BY_OPTIMIZER
@PROFILE
@given(data=st.data())
def test_zero_gradient_from_initial_state_gives_zero_update(spec, data):
    problem = data.draw(problems(spec, weight_decay=False, needs_array=True), label="problem")
    hyper, dtype, params, _ = problem
    with precision(dtype):
        tx = spec.factory(**hyper)
        zeros = jax.tree.map(jnp.zeros_like, params)
        for updates, _ in run(tx, params, [zeros, zeros]):
            for u in jax.tree.leaves(updates):
                np.testing.assert_array_equal(u, np.zeros(u.shape, u.dtype), strict=True)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.adam_family], ids=repr)
@PROFILE
@given(data=st.data(), c=st.floats(-2.0, 2.0).map(lambda e: 10.0 ** e))
def test_adam_family_is_invariant_to_gradient_scale(spec, data, c):
    """With eps = 0 the direction m_hat / sqrt(v_hat) is homogeneous of degree 0 in g (gradient entries are kept
    away from 0, where 0 / 0 would be NaN)."""
    problem = data.draw(problems(spec, dtypes=["float32", "float64"], weight_decay=False, needs_array=True),
                        label="problem")
    hyper, dtype, params, grads = problem
    with precision(dtype):
        tx = spec.factory(**{**hyper, "eps": 0.0})
        grads = jax.tree.map(lambda g: jnp.where(jnp.abs(g) < 0.1, 0.1, g).astype(g.dtype), grads)
        scaled = jax.tree.map(lambda g: (c * g).astype(g.dtype), grads)
        for (u, _), (u_scaled, _) in zip(run(tx, params, grads), run(tx, params, scaled)):
            assert_close(u_scaled, u, dtype)


@BY_OPTIMIZER
@FEW
@given(data=st.data())
def test_jit_agrees_with_eager(spec, data):
    problem = data.draw(problems(spec, max_leaves=4, needs_array=True), label="problem")
    hyper, dtype, params, grads = problem
    with precision(dtype):
        tx = spec.factory(**hyper)
        eager = run(tx, params, grads)
        jitted = run(tx, params, grads, transform=jax.jit)
        for (u_eager, s_eager), (u_jit, s_jit) in zip(eager, jitted):
            assert_close(u_jit, u_eager, dtype)
            assert_close(s_jit, s_eager, dtype)


@BY_OPTIMIZER
@FEW
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_vmap_over_states_equals_a_loop(spec, data, seed):
    problem = data.draw(problems(spec, max_leaves=4, needs_array=True), label="problem")  # vmap needs an array
    hyper, dtype, params, grads = problem
    batch = 3
    rng = np.random.default_rng(seed)
    with precision(dtype):
        tx = spec.factory(**hyper)
        stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
        batch_params = [jax.tree.map(lambda p: (p + rng.normal(size=p.shape)).astype(p.dtype), params)
                        for _ in range(batch)]
        batch_grads = [[jax.tree.map(lambda g: (g * rng.uniform(0.5, 2)).astype(g.dtype), g_t) for g_t in grads]
                       for _ in range(batch)]
        # Both compiled (one program each, cheaper than op-by-op for a fresh tree): jit(vmap) against jit in a loop.
        looped = [run(tx, p, gs, transform=jax.jit) for p, gs in zip(batch_params, batch_grads)]
        vmapped = run(tx, stack(batch_params), [stack([gs[t] for gs in batch_grads]) for t in range(len(grads))],
                      transform=lambda f: jax.jit(jax.vmap(f)))
        for t, (u_vmap, s_vmap) in enumerate(vmapped):
            assert_close(u_vmap, stack([looped[b][t][0] for b in range(batch)]), dtype)
            assert_close(s_vmap, stack([looped[b][t][1] for b in range(batch)]), dtype)


# --- errors ------------------------------------------------------------------------------------------------------

OUT_OF_RANGE = {
    "nonnegative": st.one_of(st.floats(max_value=-5e-324), st.just(math.nan), st.just(math.inf)),
    "beta": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-5e-324), st.just(math.nan)),
    "unit_closed": st.one_of(st.floats(min_value=1.0, exclude_min=True), st.floats(max_value=-5e-324),
                             st.just(math.nan)),
}


@st.composite
def out_of_range(draw):
    """(factory, valid kwargs with one argument replaced by an out-of-range value, that argument's name)."""
    spec = draw(st.sampled_from(SPECS))
    hyper = draw(spec.hyper("float32"))
    name = draw(st.sampled_from(sorted(spec.ranges)))
    hyper[name] = draw(OUT_OF_RANGE[spec.ranges[name]])
    return spec.factory, hyper, name


@PROFILE
@given(out_of_range())
def test_out_of_range_hyperparameter_raises_naming_it(example):
    factory, hyper, name = example
    with pytest.raises(ValueError) as err:
        factory(**hyper)
    assert re.search(rf"\b{name}\b", str(err.value)), str(err.value)


@pytest.mark.parametrize("factory", [optimjax.sgd, optimjax.momentum, optimjax.nesterov, optimjax.rmsprop])
def test_out_of_range_momentum_raises_naming_momentum(factory):
    with pytest.raises(ValueError, match=r"\bmomentum\b"):
        factory(learning_rate=0.1, momentum=1.5)


@st.composite
def mismatches(draw):
    """(optimizer, params, gradients whose tree structure or one leaf's shape differs from the params')."""
    spec = draw(st.sampled_from(SPECS))
    hyper = draw(spec.hyper("float32"))
    tree = draw(trees().filter(has_array))
    rng = np.random.default_rng(0)
    params = materialise(tree, "float32", rng)
    leaves, treedef = jax.tree.flatten(params)
    i = draw(st.integers(0, len(leaves) - 1))
    kind = draw(st.sampled_from(["grow_a_dimension", "add_a_dimension", "drop_a_leaf", "wrap_the_tree"]))
    if kind == "wrap_the_tree":
        grads = (params,)
    elif kind == "drop_a_leaf":
        grads = jax.tree.unflatten(treedef, leaves[:i] + [None] + leaves[i + 1:])
    else:
        shape = leaves[i].shape
        shape = (*shape[:-1], shape[-1] + 1) if kind == "grow_a_dimension" and shape else (2, *shape)
        grads = jax.tree.unflatten(treedef, leaves[:i] + [jnp.zeros(shape)] + leaves[i + 1:])
    return spec.factory(**hyper), params, grads


@PROFILE
@given(mismatches())
def test_mismatched_gradient_tree_raises_a_clear_error(example):
    tx, params, grads = example
    with pytest.raises(ValueError, match=r"tree structure does not match|gradient of shape"):
        tx.update(grads, tx.init(params), params)


# --- hyperparameters given as 0-d arrays ---------------------------------------------------------------------------

@BY_OPTIMIZER
@FEW
@given(data=st.data())
def test_0d_array_hyperparameters_act_as_the_numbers_they_hold(spec, data):
    """Any floating dtype (as `optax.inject_hyperparams` stores them, in the params' dtype, or as a user passes
    them): the optimizer built with 0-d arrays gives the updates and state signature of the one built with the
    Python numbers the arrays hold, to the rounding of the coarser of the two dtypes; a value that rounds out of
    range (a decay rate to 1.0 in bfloat16) raises ValueError either way; the same values as arrays of shape (1,)
    raise ValueError naming the argument (they would broadcast the parameters)."""
    hyper, dtype, params, grads = data.draw(problems(spec, max_leaves=4, needs_array=True), label="problem")
    hyper_dtype = data.draw(st.sampled_from(DTYPES), label="hyperparameter dtype")
    names = sorted(k for k, v in hyper.items() if isinstance(v, float) and not isinstance(v, bool))
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="as arrays")
    coarser = max(dtype, hyper_dtype, key=lambda d: TOLERANCE[d])
    with jax.enable_x64(True) if "float64" in (dtype, hyper_dtype) else contextlib.nullcontext():
        arrays = {k: jnp.asarray(hyper[k], hyper_dtype) for k in chosen}
        numbers = {k: float(a) for k, a in arrays.items()}
        for name, value in arrays.items():
            with pytest.raises(ValueError, match=rf"\b{name}\b.*0-d"):
                spec.factory(**{**hyper, **numbers, name: value.reshape(1)})
        try:
            reference = spec.factory(**{**hyper, **numbers})
        except ValueError:
            with pytest.raises(ValueError):
                spec.factory(**{**hyper, **arrays})
            return
        tx = spec.factory(**{**hyper, **arrays})
        for (u, s), (u_ref, s_ref) in zip(run(tx, params, grads), run(reference, params, grads)):
            assert signature(u) == signature(u_ref)
            assert signature(s) == signature(s_ref) or "momentum" in arrays  # an array momentum keeps its buffer
            assert_close(u, u_ref, coarser)
