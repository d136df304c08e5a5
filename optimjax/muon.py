"""Muon, momentum orthogonalized by Newton-Schulz, for matrices: `scale_by_muon`, `muon`, `orthogonalize`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from optimjax._checks import check_beta, check_learning_rate, check_range, concrete_value
from optimjax._tree import cast_like, check_tree, lerp, like, real_leaves, zeros_like
from optimjax.learning_rate import maximizing, scale_by_learning_rate
from optimjax.weight_decay import add_decayed_weights

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's (and Keller Jordan's) quintic, steepest at 0


class ScaleByMuonState(NamedTuple):
    """State of `scale_by_muon`: the momentum buffer B (torch's `momentum_buffer`), in `mu_dtype` or the params'
    dtype."""

    momentum_buffer: Any


def orthogonalize(
    x: jax.Array,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    ns_dtype: Any = jnp.bfloat16,
) -> jax.Array:
    """Newton-Schulz approximation of the orthogonal factor U V^T of a matrix X = U S V^T, in `ns_dtype`:

        X_0 = X / max(||X||_F, eps)        (transposed first when X has more rows than columns)
        A_k = X_k X_k^T,   X_{k+1} = a X_k + (b A_k + c A_k A_k) X_k

    Each of torch's `addmm`s accumulates in float32 (or float64) and rounds once to `ns_dtype`, as torch's CPU
    bfloat16 matmul does. The singular values come out roughly in (0.7, 1.2), not exactly 1: that is the point
    of the quintic's coefficients (speed over exactness). Returns `ns_dtype`.

    Sharded X (jax's automatic or explicit mode): Newton-Schulz needs the whole matrix (its norm, and every
    product contracts a dimension that may be sharded), so X is cast to `ns_dtype`, gathered once onto every
    device of its mesh, iterated there exactly as on one device, and each device slices its own block of the
    result back out (see `gathered`). The step's only collective is that all-gather: for an (m, n) matrix split
    over D devices each device receives (1 - 1/D) m n elements (in `ns_dtype` where the backend gathers that
    dtype; XLA:CPU widens bfloat16 to float32 for the transfer). Keeping X sharded instead would all-reduce at
    least each Gram matrix X_k X_k^T, k^2 float32 sums with k = min(m, n), in each of the `ns_steps` iterations
    (a ring all-reduce moves about twice its size): more bytes than the gather unless max(m, n) / k exceeds
    about 2 * 4 * ns_steps / itemsize(ns_dtype) (10 in float32, 20 in bfloat16 at 5 steps), and sums in another
    order than one device. The price of the gather is compute: every device runs the whole iteration, about
    ns_steps (4 k^2 max(m, n) + 2 k^3) flops. Results equal one device's (bit for bit on XLA:CPU, measured by
    tests/test_sharding.py).
    """
    a, b, c = ns_coefficients
    accumulate = jnp.promote_types(ns_dtype, jnp.float32)
    x, put_back = gathered(x, ns_dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(accumulate)))).astype(ns_dtype)
    x = x / jnp.maximum(norm, like(eps, norm))

    def matmul(p, q):
        return jnp.matmul(p, q, preferred_element_type=accumulate)

    def iteration(_, x):
        gram = matmul(x, x.T).astype(ns_dtype)
        update = (like(b, gram.astype(accumulate)) * gram.astype(accumulate)
                  + like(c, gram.astype(accumulate)) * matmul(gram, gram)).astype(ns_dtype)
        return (like(a, x.astype(accumulate)) * x.astype(accumulate) + matmul(update, x)).astype(ns_dtype)

    x = jax.lax.fori_loop(0, ns_steps, iteration, x)  # ns_steps may be traced (inject_hyperparams)
    return put_back(x.T if tall else x)


def gathered(x: jax.Array, dtype: Any) -> tuple[jax.Array, Any]:
    """x in `dtype`, replicated on every device of the mesh in its type, and the function that puts a result
    shaped like x back in x's layout: one all-gather there (after the cast), a local slice on the way back.
    Unsharded (no mesh in x's type) or inside `shard_map` (manual axes: x is the caller's block), x in `dtype`
    and the identity.

    Explicit axes are gathered by `jax.sharding.reshard` (the layout is in the type, so the way back reshards to
    it); automatic axes by `with_sharding_constraint` on the input and the result, so that GSPMD cannot partition
    the matmuls in between, and `shard_alike` gives the result x's layout.
    """
    layout = jax.typeof(x).sharding
    explicit, auto = (kind in layout.mesh.axis_types for kind in (AxisType.Explicit, AxisType.Auto))
    everywhere = NamedSharding(layout.mesh, P())

    def replicated(y):
        y = jax.sharding.reshard(y, everywhere) if explicit else y
        return jax.lax.with_sharding_constraint(y, everywhere) if auto else y

    def put_back(y):
        y = jax.sharding.reshard(replicated(y), layout) if explicit else replicated(y)
        return shard_alike(y, x)[0] if auto else y

    return replicated(x.astype(dtype)), put_back


def kept_like(new: jax.Array, old: jax.Array) -> jax.Array:
    """The new momentum buffer, sharded like the old one where GSPMD chooses (automatic mesh axes): without it,
    when M_t is B_t itself (nesterov=False), the replicated layout `gathered` asks of M_t propagates back into
    B_t and the state comes out replicated. Unsharded or explicit: the buffer itself (its layout is its type's)."""
    return shard_alike(new, old)[0] if AxisType.Auto in jax.typeof(old).sharding.mesh.axis_types else new


def lr_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch's learning-rate adjustment for an (A, B) matrix: sqrt(max(1, A / B)) ("original", None) or
    0.2 sqrt(max(A, B)) ("match_rms_adamw", Liu et al., 2025, "Muon is Scalable for LLM Training")."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


def check_matrices(where: str, tree: Any) -> None:
    """Raise ValueError naming the first leaf that is not a matrix (Muon orthogonalizes 2-D leaves only)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.ndim(leaf) != 2:
            raise ValueError(
                f"{where}: Muon only takes 2-D leaves (matrices); the leaf {jax.tree_util.keystr(path)} has shape "
                f"{jnp.shape(leaf)}. Give the other leaves another optimizer, e.g. optax.partition with "
                f"optimjax.adamw (see the README), as torch.optim.Muon users do."
            )


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    ns_dtype: Any = jnp.bfloat16,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """Muon's direction: Jordan et al. (2024), "Muon: An optimizer for hidden layers in neural networks"
    (blog post), as torch.optim.Muon implements it, for each matrix leaf of shape (A, B):

        B_t = lerp(B_{t-1}, g_t, 1 - momentum)             (an EMA: torch's buf.lerp_(grad, 1 - momentum))
        M_t = lerp(g_t, B_t, momentum)  if nesterov  else  B_t
        d_t = ratio(A, B) * NS(M_t)                         `orthogonalize`, in `ns_dtype`

    Same as torch.optim.Muon's single-tensor path: no bias correction, Newton-Schulz in bfloat16 by default
    (`ns_dtype=None` runs it in the gradient's dtype, e.g. to check it exactly), torch's `adjust_lr_fn`.
    optax.contrib.muon differs: it bias-corrects the momentum, runs Newton-Schulz in float32, and sends
    non-2-D leaves to Adam; here they raise (as torch's constructor does), naming the leaf.

    Sharded matrices: the momentum buffer is sharded like its param (init and the lerps are elementwise, on
    each shard); `orthogonalize` gathers M_t once (one all-gather of the matrix per step, the only collective)
    and gives each device its block of d_t back.

    Complex parameters raise TypeError naming the leaf, as torch.optim.Muon raises.
    dtypes follow `optimjax._tree`'s policy: state dtype fixed at init, arithmetic in the promotion of the
    dtypes read, updates in the gradients' dtype; integer and bool leaves raise TypeError naming the leaf.

    Args:
      momentum: in [0, 1).
      nesterov: use the look-ahead M_t above.
      ns_coefficients: (a, b, c) of the quintic iteration.
      eps: floor of the Frobenius norm the input is divided by, >= 0.
      ns_steps: number of Newton-Schulz iterations, in [0, 100) (torch's bound).
      adjust_lr_fn: None or "original" (sqrt(max(1, A / B))), or "match_rms_adamw" (0.2 sqrt(max(A, B))).
      ns_dtype: dtype of the iteration (torch: bfloat16); None: the promotion of the gradient's and B's dtypes.
      mu_dtype: dtype to store B in; None keeps each param's dtype.
    """
    where = "scale_by_muon"
    check_beta(where, "momentum", momentum)
    check_range(where, "eps", eps)
    steps = concrete_value(ns_steps) if not isinstance(ns_steps, bool) else 0.5
    if steps is not None and (steps != int(steps) or not 0 <= steps < 100):
        raise ValueError(f"{where}: ns_steps must be an int in [0, 100), got {ns_steps!r}")
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"{where}: ns_coefficients must be three numbers (a, b, c), got {ns_coefficients!r}")
    if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
        raise ValueError(f"{where}: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")

    def init_fn(params):
        params = real_leaves(where, params, "parameter", "init()")
        check_matrices(where, params)
        return ScaleByMuonState(momentum_buffer=zeros_like(params, mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates = real_leaves(where, updates)
        check_tree(where, updates, state.momentum_buffer)

        def direction(g, buf):  # in the promotion of the gradient's and the buffer's dtype
            dtype = jnp.promote_types(g.dtype, buf.dtype)
            g, buf = g.astype(dtype), buf.astype(dtype)
            buf = lerp(buf, g, 1 - momentum)
            m = lerp(g, buf, momentum) if nesterov else buf
            o = orthogonalize(m, ns_coefficients, ns_steps, eps, dtype if ns_dtype is None else ns_dtype)
            return like(lr_ratio(adjust_lr_fn, g.shape), g) * o.astype(dtype), buf

        out = jax.tree.map(direction, updates, state.momentum_buffer)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)  # noqa: E731
        buffer = jax.tree.map(kept_like, cast_like(pick(1), state.momentum_buffer), state.momentum_buffer)
        return cast_like(pick(0), updates), ScaleByMuonState(momentum_buffer=buffer)

    return optax.GradientTransformation(init_fn, update_fn)


def muon(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    ns_dtype: Any = jnp.bfloat16,
    mu_dtype: Any = None,
    maximize: bool = False,
) -> optax.GradientTransformation:
    """Muon (Jordan et al., 2024) with decoupled weight decay, for a tree of matrices:

        theta_t = theta_{t-1} - lr_t * (d_t + weight_decay * theta_{t-1}),   d_t from `scale_by_muon`

    Same trajectory as `torch.optim.Muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
    adjust_lr_fn)` (torch multiplies theta by (1 - lr * weight_decay) first; the decay uses the unadjusted lr),
    with torch's defaults (weight_decay 0.1, Newton-Schulz in bfloat16). `maximize` negates the gradients first
    (torch's Muon has no such flag). Every leaf must be 2-D: partition the rest to another optimizer:

      >>> import jax, jax.numpy as jnp, optax, optimjax
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> labels = jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adamw", params)
      >>> tx = optax.partition({"muon": optimjax.muon(0.02), "adamw": optimjax.adamw(3e-4)}, labels)
      >>> state = tx.init(params)
    """
    check_learning_rate("muon", learning_rate)
    return optax.chain(
        *maximizing("muon", maximize),
        scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype, mu_dtype),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
