"""Tree math shared by every optimizer family.

The formulas follow torch.optim's single-tensor code path operation by operation (torch's `lerp` rounding, bias
corrections computed once per step as scalars), so that the trajectories agree to float rounding.

The dtype policy, the same for every optimizer:

- Leaves are floating-point (float16, bfloat16, float32, float64, ...) or complex. Python floats are taken as
  arrays of JAX's default float dtype (float32; float64 under `jax_enable_x64`) and Python complex numbers as
  the default complex dtype, as optax takes them. Integer and bool leaves, Python ints and bools included (JAX
  makes them int32 / bool, and `optax.apply_updates` would round an int parameter's step away), raise
  TypeError naming the leaf's path, at `init` and at `update`; leave them out with `optax.masked` or
  `optax.partition`.
- State dtype is fixed at `init`: each state leaf has its parameter's dtype, or `mu_dtype` / `nu_dtype` where an
  optimizer has them (for a complex parameter, the complex dtype of that precision). `update` never changes it,
  whatever dtype the gradients have, so a jitted step does not recompile and `lax.scan` over steps works.
- Arithmetic runs per leaf in the promotion of the dtypes of the arrays the step reads (gradient, state, and the
  parameter where the formula uses it): float32 parameters with bfloat16 gradients compute and keep their
  moments in float32, as optax does; bfloat16 moments (`mu_dtype`) of float32 parameters are computed in float32
  and rounded when stored. Hyperparameters and per-step scalars are cast to that dtype and never promote it.
- Updates come out in the gradients' dtype (each transform returns the dtype it received), so an update tree
  costs the memory of the gradient tree; `optax.apply_updates` casts them to the parameters' dtype.
- Complex parameters follow torch.optim, which runs its step on `torch.view_as_real` of the parameter, the
  gradient and every state tensor: the real and imaginary parts are two independent real parameters. So the
  state of a complex parameter is complex, shaped like it, and e.g. Adam's v holds the EMA of re(g)**2 in its
  real part and of im(g)**2 in its imaginary part (`elementwise` does this for every family).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.shard_alike import shard_alike


def scalar_dtype() -> jnp.dtype:
    """dtype of per-step scalars (bias corrections, NAdam's mu): float64 when `jax_enable_x64` is on, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def like(x: Any, leaf: jax.Array) -> jax.Array:
    """`x` (a Python number or a scalar array) in `leaf`'s dtype, so that a scalar never promotes a leaf.

    A Python number becomes a numpy constant and an array already in that dtype is returned as is: neither adds
    an operation to trace, which matters when every leaf of a large tree asks for the same scalars.
    """
    dtype = leaf.dtype
    if isinstance(x, (int, float)):
        return np.asarray(x, dtype)
    if isinstance(x, jax.Array) and x.dtype == dtype:
        return x
    return jnp.asarray(x, dtype=dtype)


def placed_like(x: jax.Array, p: Any) -> jax.Array:
    """`x` (a new state leaf shaped like `p`), sharded like the parameter `p` also when traced by `jit`.

    Eagerly, `jnp.zeros_like` already copies a committed array's sharding. Under `jit` it cannot: the zeros do not
    depend on `p`, so XLA puts them on one device (or replicates them). `shard_alike` asks the partitioner to give
    both the same sharding, so `jax.jit(tx.init)(params)` returns state sharded like the params without
    `out_shardings`.
    """
    return shard_alike(x, p)[0] if isinstance(p, jax.core.Tracer) else x


def complex_dtype() -> jnp.dtype:
    """JAX's default complex dtype: complex128 when `jax_enable_x64` is on, else complex64."""
    return jax.dtypes.canonicalize_dtype(jnp.complex128)


def _leaf_as_array(x: Any) -> Any:
    """A Python float (complex) as an array of the default float (complex) dtype; None for a leaf that is not a
    floating or complex number or array; anything else as is."""
    if isinstance(x, jax.Array | np.ndarray | np.generic):
        return x if jnp.issubdtype(x.dtype, jnp.inexact) else None
    if isinstance(x, float):
        return jnp.asarray(x, scalar_dtype())
    if isinstance(x, complex):
        return jnp.asarray(x, complex_dtype())
    dtype = getattr(x, "dtype", None)  # a tracer or another array type
    return x if dtype is not None and jnp.issubdtype(dtype, jnp.inexact) else None


def float_leaves(where: str, tree: Any, what: str = "gradient", phase: str = "update()") -> Any:
    """`tree` with its Python float and complex leaves as arrays (see the module docstring); TypeError naming the
    leaf's path for an integer, bool or non-numeric leaf. Runs at trace time: it reads dtypes, never values."""
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [_leaf_as_array(x) for x in leaves]
    if all(a is not None for a in arrays):
        return tree if all(a is x for a, x in zip(arrays, leaves)) else jax.tree.unflatten(treedef, arrays)
    for (path, x), a in zip(jax.tree_util.tree_leaves_with_path(tree), arrays):
        if a is None:
            kind = str(x.dtype) if hasattr(x, "dtype") else type(x).__name__
            article = "an" if kind[0] in "aeiou" else "a"
            at = jax.tree_util.keystr(path) or "the root"
            raise TypeError(
                f"{where}: {phase} got {article} {kind} {what} {x!r:.60} at {at}; "
                "optimjax's optimizers take floating-point or complex leaves (Python floats included): cast it "
                "(x.astype(jnp.float32)) or keep it out of the optimizer (optax.masked, optax.partition)."
            )
    raise AssertionError("unreachable")


def real_leaves(where: str, tree: Any, what: str = "gradient", phase: str = "update()") -> Any:
    """`float_leaves(...)`, and TypeError naming the leaf's path for a complex leaf: for the optimizers that, like
    their torch.optim counterparts (Adafactor, Muon), are defined on real matrices only, so that the real and
    imaginary parts cannot be taken as two independent parameters (a row norm, a matrix product mixes them)."""
    tree = float_leaves(where, tree, what, phase)
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.iscomplexobj(x):
            at = jax.tree_util.keystr(path) or "the root"
            raise TypeError(
                f"{where}: {phase} got a {x.dtype} {what} at {at}; this optimizer takes real floating-point leaves "
                "only (torch.optim raises too): split the leaf into its real and imaginary parts (two real "
                "leaves) or give it another optimizer (optax.partition)."
            )
    return tree


def state_dtype(leaf: Any, dtype: Any = None) -> jnp.dtype:
    """The dtype of a state leaf for parameter `leaf`: its own dtype, or `dtype` (mu_dtype / nu_dtype) made
    complex of the same precision for a complex parameter (float32 -> complex64, float64 -> complex128)."""
    if dtype is None:
        return jnp.dtype(leaf.dtype)
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    if not jnp.iscomplexobj(leaf) or jnp.issubdtype(dtype, jnp.complexfloating):
        return dtype
    if dtype == jnp.float32 or dtype == jnp.float64:
        return jax.dtypes.canonicalize_dtype(jnp.complex64 if dtype == jnp.float32 else jnp.complex128)
    raise TypeError(f"a complex parameter ({leaf.dtype}) cannot keep its state in {dtype}: there is no complex "
                    f"{dtype}; use mu_dtype / nu_dtype float32, float64 or None for complex parameters")


def one_dtype(where: str, tree: Any, advice: str) -> None:
    """Raise ValueError naming two leaves of `tree` with different dtypes: for a state that is one vector of all
    the leaves, which would promote them (a bfloat16 leaf's state to float32, a real leaf's to complex)."""
    first: dict = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        first.setdefault(jnp.result_type(leaf), jax.tree_util.keystr(path) or "the root")
        if len(first) > 1:
            (a, at_a), (b, at_b) = first.items()
            raise ValueError(f"{where}: one state vector for all the leaves needs them to share one dtype, got {a} "
                             f"at {at_a} and {b} at {at_b}; {advice}")


def zeros_like(params: Any, dtype: Any = None) -> Any:
    """Zeros shaped and sharded like `params`, in `dtype` or, when None, in each leaf's own dtype (`state_dtype`)."""
    return jax.tree.map(lambda p: placed_like(jnp.zeros_like(p, dtype=state_dtype(p, dtype)), p), params)


def full_like(params: Any, value: Any) -> Any:
    """`value` broadcast to every leaf of `params`, in the leaf's dtype and sharding; value + value * 1j for a
    complex leaf (its real and imaginary parts are two parameters, as in torch's Adagrad)."""

    def full(p):
        fill = jax.lax.complex(*[jnp.asarray(value, jnp.real(p).dtype)] * 2) if jnp.iscomplexobj(p) else value
        return placed_like(jnp.full_like(p, fill, dtype=p.dtype), p)

    return jax.tree.map(full, params)


def elementwise(fn: Callable[..., Any], *leaves: jax.Array) -> Any:
    """`fn(*leaves)` for an elementwise `fn`, in the promotion of the leaves' dtypes, with complex leaves split
    into their real and imaginary parts, each run through `fn` as its own parameter (torch.optim's
    `view_as_real`); the results are put back together as complex arrays. `fn` may return a tuple of arrays."""
    dtype = functools.reduce(jnp.promote_types, [x.dtype for x in leaves])
    leaves = [x if x.dtype == dtype else x.astype(dtype) for x in leaves]
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        return fn(*leaves)
    real, imag = fn(*map(jnp.real, leaves)), fn(*map(jnp.imag, leaves))
    return jax.tree.map(jax.lax.complex, real, imag)


def leafwise(fn: Callable[..., Any], *trees: Any) -> Any:
    """`elementwise(fn, ...)` on each leaf of `trees` (which share the first tree's structure)."""
    return jax.tree.map(lambda *leaves: elementwise(fn, *leaves), *trees)


def cast_like(tree: Any, reference: Any) -> Any:
    """Each leaf of `tree` in the dtype of the same leaf of `reference` (state back to its init dtype, updates
    back to the gradients' dtype)."""
    return jax.tree.map(lambda x, r: x if x.dtype == r.dtype else x.astype(r.dtype), tree, reference)


def lerp(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """`start + weight * (end - start)` with torch.lerp's rounding (the `end`-anchored form for weight >= 0.5).

    The exponential moving average `m <- beta * m + (1 - beta) * g` is `lerp(m, g, 1 - beta)`, as in torch.optim.
    """
    w = like(weight, start)

    def near_start():
        return start + w * (end - start)

    def near_end():
        return end - (end - start) * (1 - w)

    if isinstance(weight, (int, float)):  # known when tracing: build only the branch torch takes
        return near_start() if abs(weight) < 0.5 else near_end()
    return jnp.where(jnp.abs(w) < 0.5, near_start(), near_end())


def lerp_end_form(b1: Any) -> bool:
    """Whether torch.lerp takes its `end`-anchored form for the moving average `lerp(m, g, 1 - b1)`: the flag the
    fused kernel needs to round as `lerp` does (weight `1 - b1` >= 0.5, that is b1 <= 0.5)."""
    return bool(abs(1 - b1) >= 0.5)


def ema_of_square(avg: jax.Array, g: jax.Array, decay: Any) -> jax.Array:
    """`decay * avg + (1 - decay) * g**2`, in torch's order (`avg.mul_(decay).addcmul_(g, g, value=1 - decay)`)."""
    return avg * like(decay, avg) + like(1 - decay, g) * g * g


def moments(updates: Any, mu: Any, nu: Any, b1: Any, b2: Any) -> tuple[Any, Any]:
    """Adam's two moment updates, m <- lerp(m, g, 1 - b1) and v <- b2 * v + (1 - b2) * g**2, each leaf in the
    promotion of the gradient's and the state's dtype (cast them back with `cast_like` to store them)."""
    mu = leafwise(lambda g, m: lerp(m, g, 1 - b1), updates, mu)
    nu = leafwise(lambda g, v: ema_of_square(v, g, b2), updates, nu)
    return mu, nu


def log_of(decay: Any) -> Any:
    """log(decay), in float64 for a Python number (with log(0) = -inf), traced otherwise."""
    if isinstance(decay, (int, float)):
        return math.log(decay) if decay > 0 else -math.inf
    return jnp.log(jnp.asarray(decay, scalar_dtype()))


def power(decay: Any, t: jax.Array) -> jax.Array:
    """decay ** t for a float step count t >= 1."""
    return jnp.exp(t * log_of(decay))


def bias_correction(decay: Any, t: jax.Array) -> jax.Array:
    """1 - decay ** t, computed as -expm1(t log decay): accurate to a few ulp even when decay is close to 1."""
    return -jnp.expm1(t * log_of(decay))


def next_count(count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The incremented int32 step count (saturating at 2**31 - 1) and the same count as a float scalar."""
    count = optax.safe_increment(count)
    return count, count.astype(scalar_dtype())


class TreeMismatchError(ValueError):
    """Gradients whose tree or leaf shapes differ from what the optimizer holds. `detail` is the message without
    the name of the function that found it, so that an optimizer built by chaining transforms can report the
    mismatch under its own name (the one the user called)."""

    def __init__(self, where: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.where, self.detail = where, detail


def first_difference(got: Any, want: Any) -> str:
    """Where the trees `got` and `want` first differ, by key path: a leaf one has and the other has not, or a
    container of another type (a list for a tuple). Empty when the trees have the same structure."""
    if jax.tree.structure(got) == jax.tree.structure(want):
        return ""
    got_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(got)[0]]
    want_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
    missing = [path for path in want_paths if path not in got_paths]
    extra = [path for path in got_paths if path not in want_paths]
    if missing and extra:
        return f"a leaf at {jax.tree_util.keystr(extra[0]) or '(the root)'} where the expected tree has one at " \
               f"{jax.tree_util.keystr(missing[0]) or '(the root)'}"
    if missing:
        return f"no leaf at {jax.tree_util.keystr(missing[0])}"
    if extra:
        return f"a leaf at {jax.tree_util.keystr(extra[0])} that the expected tree does not have"
    return (f"the same leaves in other containers (e.g. a list for a tuple, or a None): "
            f"{jax.tree.structure(got)} instead of {jax.tree.structure(want)}")


def check_tree(where: str, updates: Any, reference: Any, reference_name: str = "the state made by init()",
               what: str = "gradient", call: str = "update()") -> None:
    """Raise TreeMismatchError (a ValueError) if `updates` do not have the tree structure and leaf shapes of
    `reference` (the state), naming the first key path where they differ.

    `what` names the checked leaves in the message (a gradient, a param) and `call` the function that got them.

    Runs at trace time (shapes are static), so a mismatch is reported before XLA sees it, never broadcast away.
    """
    difference = first_difference(updates, reference)
    if difference:
        raise TreeMismatchError(
            where, f"{call} got {what}s whose tree structure does not match {reference_name}: they have "
                   f"{difference}."
        )
    for path_and_g, r in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(reference)):
        path, g = path_and_g
        if jnp.shape(g) != jnp.shape(r):
            raise TreeMismatchError(
                where, f"{call} got a {what} of shape {jnp.shape(g)} at {jax.tree_util.keystr(path)}, "
                       f"but {reference_name} has shape {jnp.shape(r)} there."
            )
