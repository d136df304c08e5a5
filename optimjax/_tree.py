"""Tree math shared by every optimizer family.

The formulas follow torch.optim's single-tensor code path operation by operation (torch's `lerp` rounding, bias
corrections computed once per step as scalars), so that the trajectories agree to float rounding.
"""

from __future__ import annotations

import math
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


def zeros_like(params: Any, dtype: Any = None) -> Any:
    """Zeros shaped and sharded like `params`, in `dtype` or, when None, in each leaf's own dtype."""
    return jax.tree.map(lambda p: placed_like(jnp.zeros_like(p, dtype=dtype), p), params)


def full_like(params: Any, value: Any) -> Any:
    """`value` broadcast to every leaf of `params`, in the leaf's dtype and sharding."""
    return jax.tree.map(lambda p: placed_like(jnp.full_like(p, value), p), params)


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


def ema_of_square(avg: jax.Array, g: jax.Array, decay: Any) -> jax.Array:
    """`decay * avg + (1 - decay) * g**2`, in torch's order (`avg.mul_(decay).addcmul_(g, g, value=1 - decay)`)."""
    return avg * like(decay, avg) + like(1 - decay, g) * g * g


def moments(updates: Any, mu: Any, nu: Any, b1: Any, b2: Any) -> tuple[Any, Any]:
    """Adam's two moment updates, in the gradients' dtype (whatever dtype the state is stored in):
    m <- lerp(m, g, 1 - b1) and v <- b2 * v + (1 - b2) * g**2."""
    mu = jax.tree.map(lambda g, m: lerp(m.astype(g.dtype), g, 1 - b1), updates, mu)
    nu = jax.tree.map(lambda g, v: ema_of_square(v.astype(g.dtype), g, b2), updates, nu)
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
