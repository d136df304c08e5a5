"""L-BFGS with torch.optim.LBFGS's `step(closure)` semantics, compiled: `lbfgs`, `LbfgsState`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec

from optimjax._checks import check_range
from optimjax._tree import float_leaves, one_dtype, placed_like


class LbfgsState(NamedTuple):
    """State of `lbfgs` (torch's `state[params[0]]`), on the flattened parameters (n entries).

    Attributes:
      func_evals: int32 number of loss evaluations so far (torch's `func_evals`).
      n_iter: int32 number of L-BFGS iterations so far, over all steps (torch's `n_iter`).
      loss: the loss at the start of the last step (what torch's `step` returns).
      d: the last search direction.
      t: the last step length.
      old_dirs, old_stps: (history_size, n) gradient and step differences y_i and s_i, oldest first; only the
        first `num_old` rows are in use.
      ro: 1 / (y_i . s_i) for each row.
      num_old: int32 number of rows in use.
      h_diag: the initial inverse-Hessian scale (y . s) / (y . y) of the last accepted pair.
      prev_flat_grad: the gradient at the start of the last iteration.
      prev_loss: the loss at the start of the last iteration.
    """

    func_evals: jax.Array
    n_iter: jax.Array
    loss: jax.Array
    d: jax.Array
    t: jax.Array
    old_dirs: jax.Array
    old_stps: jax.Array
    ro: jax.Array
    num_old: jax.Array
    h_diag: jax.Array
    prev_flat_grad: jax.Array
    prev_loss: jax.Array


class Lbfgs(NamedTuple):
    """An L-BFGS optimizer: `init(params) -> state` and `step(loss_fn, params, state) -> (params, state)`."""

    init: Callable[[Any], LbfgsState]
    step: Callable[[Callable[[Any], jax.Array], Any, LbfgsState], tuple[Any, LbfgsState]]


def _checked(params, phase: str):
    """`params` with Python floats as arrays; TypeError naming the leaf for an integer, bool or complex leaf and
    ValueError naming two leaves of different dtypes: the state is one vector of all the parameters (torch's flat
    view), which would promote a bfloat16 leaf to float32 inside the step (torch rounds it to bfloat16 after every
    iteration) and a real leaf to complex."""
    params = float_leaves("lbfgs", params, "parameter", phase)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jnp.iscomplexobj(leaf):
            raise TypeError(f"lbfgs: {phase} got a {leaf.dtype} parameter at {jax.tree_util.keystr(path) or 'the root'}"
                            "; optimjax.lbfgs takes real floating-point leaves only (torch.optim.LBFGS would run on its "
                            "view_as_real pairs): split it into its real and imaginary parts (two real leaves)")
    one_dtype(f"lbfgs: {phase}", params, "cast them (jax.tree.map(lambda p: p.astype(jnp.float32), params))")
    return params


def _spec(x) -> PartitionSpec:
    """The explicit sharding of `x` in its type (all None when not sharded or in jax's automatic mode)."""
    return jax.typeof(x).sharding.spec


def _replicated(params):
    """`params` with every explicitly sharded leaf resharded to replicated, so that `ravel_pytree` may join them
    into one vector (jax's explicit mode refuses to concatenate operands of different shardings)."""
    return jax.tree.map(lambda p: jax.sharding.reshard(p, PartitionSpec()) if any(_spec(p)) else p, params)


def _placed_like(new, params):
    """Each leaf of `new` sharded like its parameter: in explicit mode resharded to its spec, in automatic mode
    asked of the partitioner with `shard_alike` (otherwise the slices of the replicated vector come back
    replicated)."""
    return jax.tree.map(lambda x, p: jax.sharding.reshard(x, _spec(p)) if any(_spec(p)) else placed_like(x, p),
                        new, params)


def cubic_minimum(x1, f1, g1, x2, f2, g2, low=None, high=None):
    """The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), clamped to [low, high] (default: between
    x1 and x2); the middle of the interval when the cubic has no real minimiser (torch's `_cubic_interpolate`)."""
    if low is None:
        low, high = jnp.minimum(x1, x2), jnp.maximum(x1, x2)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    d2 = jnp.sqrt(jnp.maximum(d2_square, 0))
    min_pos = jnp.where(x1 <= x2, x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
                        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)))
    clamped = jnp.minimum(jnp.maximum(min_pos, low), high)
    return jnp.where(d2_square >= 0, clamped, (low + high) / 2)


def strong_wolfe(evaluate, t, d, f, g, gtd, max_ls, c1=1e-4, c2=0.9, tolerance_change=1e-9):
    """torch's `_strong_wolfe` line search along d from the current point (loss f, gradient g, slope gtd < 0):
    bracketing with cubic extrapolation, then zoom with cubic interpolation, until the strong Wolfe conditions
    f(t) <= f + c1 t gtd and |g(t) . d| <= -c2 gtd hold or `max_ls` evaluations are spent.
    `evaluate(t) -> (loss, gradient)` at x + t d. Returns (loss, gradient, t, evaluations)."""
    d_norm = jnp.max(jnp.abs(d), initial=0)
    zero = jnp.zeros_like(t)
    f_new, g_new = evaluate(t)
    gtd_new = g_new @ d
    # Bracketing. Outcome: bracket = two (t, f, g, gtd) slots; `done` when the first slot already satisfies
    # the conditions (then both slots hold it).
    init = dict(t=t, t_prev=zero, f_prev=f, g_prev=g, gtd_prev=gtd, f_new=f_new, g_new=g_new, gtd_new=gtd_new,
                ls_iter=jnp.zeros([], jnp.int32), evals=jnp.ones([], jnp.int32), stop=jnp.asarray(False),
                done=jnp.asarray(False))

    def bracket_cond(c):
        return jnp.logical_and(~c["stop"], c["ls_iter"] < max_ls)

    def bracket_body(c):
        armijo_fails = (c["f_new"] > f + c1 * c["t"] * gtd) | ((c["ls_iter"] > 1) & (c["f_new"] >= c["f_prev"]))
        wolfe = jnp.abs(c["gtd_new"]) <= -c2 * gtd
        stop = armijo_fails | wolfe | (c["gtd_new"] >= 0)
        done = ~armijo_fails & wolfe
        min_step = c["t"] + 0.01 * (c["t"] - c["t_prev"])
        t_next = cubic_minimum(c["t_prev"], c["f_prev"], c["gtd_prev"], c["t"], c["f_new"], c["gtd_new"],
                               min_step, c["t"] * 10)

        def extrapolate(c):
            f_next, g_next = evaluate(t_next)
            return dict(c, t=t_next, t_prev=c["t"], f_prev=c["f_new"], g_prev=c["g_new"], gtd_prev=c["gtd_new"],
                        f_new=f_next, g_new=g_next, gtd_new=g_next @ d, ls_iter=c["ls_iter"] + 1,
                        evals=c["evals"] + 1)

        return jax.lax.cond(stop, lambda c: dict(c, stop=True, done=done), extrapolate, c)

    c = jax.lax.while_loop(bracket_cond, bracket_body, init)
    exhausted = ~c["stop"]  # ls_iter == max_ls: bracket [0, t]
    first = lambda a, b: jnp.where(c["done"], a, b)  # noqa: E731
    bracket = jnp.stack([first(c["t"], jnp.where(exhausted, zero, c["t_prev"])), c["t"]])
    bracket_f = jnp.stack([first(c["f_new"], jnp.where(exhausted, f, c["f_prev"])), c["f_new"]])
    bracket_g = jnp.stack([first(c["g_new"], jnp.where(exhausted, g, c["g_prev"])), c["g_new"]])
    bracket_gtd = jnp.stack([first(c["gtd_new"], jnp.where(exhausted, gtd, c["gtd_prev"])), c["gtd_new"]])

    def positions(bracket_f):
        low = jnp.where(bracket_f[0] <= bracket_f[1], 0, 1)
        return low, 1 - low

    low, high = positions(bracket_f)
    zoom = dict(bracket=bracket, f=bracket_f, g=bracket_g, gtd=bracket_gtd, low=low, high=high,
                insuf_progress=jnp.asarray(False), done=c["done"], stop=jnp.asarray(False), ls_iter=c["ls_iter"],
                evals=c["evals"])

    def zoom_cond(z):
        return ~z["done"] & ~z["stop"] & (z["ls_iter"] < max_ls)

    def zoom_body(z):
        b = z["bracket"]
        small = jnp.abs(b[1] - b[0]) * d_norm < tolerance_change

        def one(z):
            b_max, b_min = jnp.max(b), jnp.min(b)
            t = cubic_minimum(b[0], z["f"][0], z["gtd"][0], b[1], z["f"][1], z["gtd"][1])
            eps = 0.1 * (b_max - b_min)
            near_edge = jnp.minimum(b_max - t, t - b_min) < eps
            move = near_edge & (z["insuf_progress"] | (t >= b_max) | (t <= b_min))
            t = jnp.where(move, jnp.where(jnp.abs(t - b_max) < jnp.abs(t - b_min), b_max - eps, b_min + eps), t)
            insuf_progress = near_edge & ~move
            f_new, g_new = evaluate(t)
            gtd_new = g_new @ d
            lo, hi = z["low"], z["high"]
            to_high = (f_new > f + c1 * t * gtd) | (f_new >= z["f"][lo])
            done = ~to_high & (jnp.abs(gtd_new) <= -c2 * gtd)
            flip = ~to_high & ~done & (gtd_new * (b[hi] - b[lo]) >= 0)

            def put(arrays, i, values):
                return [a.at[i].set(v) for a, v in zip(arrays, values)]

            arrays = [z["bracket"], z["f"], z["g"], z["gtd"]]
            # to_high: slot high <- new point; else: (flip: slot high <- slot low), then slot low <- new point.
            new_point = [t, f_new, g_new, gtd_new]
            low_point = [a[lo] for a in arrays]
            as_high = put(arrays, hi, new_point)
            flipped = [jnp.where(flip, x, y) for x, y in zip(put(arrays, hi, low_point), arrays)]
            as_low = put(flipped, lo, new_point)
            arrays = [jnp.where(to_high, x, y) for x, y in zip(as_high, as_low)]
            lo2, hi2 = positions(arrays[1])
            lo, hi = jnp.where(to_high, lo2, lo), jnp.where(to_high, hi2, hi)
            return dict(z, bracket=arrays[0], f=arrays[1], g=arrays[2], gtd=arrays[3], low=lo, high=hi,
                        insuf_progress=insuf_progress, done=done, ls_iter=z["ls_iter"] + 1, evals=z["evals"] + 1)

        return jax.lax.cond(small, lambda z: dict(z, stop=True), one, z)

    z = jax.lax.while_loop(zoom_cond, zoom_body, zoom)
    lo = z["low"]
    return z["f"][lo], z["g"][lo], z["bracket"][lo], z["evals"]


def lbfgs(
    learning_rate: float = 1.0,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> Lbfgs:
    """L-BFGS: Liu & Nocedal (1989), "On the Limited Memory BFGS Method for Large Scale Optimization", Math.
    Programming 45, as torch.optim.LBFGS runs it (after Schmidt's minFunc). One `step` is up to `max_iter`
    iterations of

        d = -H g        two-loop recursion over the last `history_size` pairs (s_i, y_i) with y_i . s_i > 1e-10,
                        H_0 = (y . s) / (y . y) of the newest pair (d = -g on the very first iteration)
        t = lr          (min(1, 1 / ||g||_1) * lr on the very first iteration), or the strong Wolfe line search
                        from that t (line_search_fn="strong_wolfe": cubic bracketing and zoom, c1 = 1e-4,
                        c2 = 0.9)
        x <- x + t d

    stopping, as torch does, when max|g| <= tolerance_grad, g . d > -tolerance_change, max|t d| <=
    tolerance_change, |loss change| < tolerance_change, or `max_eval` loss evaluations are spent. The history,
    d, t and the previous gradient carry over to the next `step`, as in torch. Same trajectory as
    `torch.optim.LBFGS(lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size, line_search_fn)`
    (measured to 1e-12 in float64), with `closure` replaced by `loss_fn(params) -> scalar` (differentiated with
    `jax.value_and_grad`).

    Everything is compiled: the iterations and the line search are `lax.while_loop`s, so a step is one XLA
    program, `jax.jit(lambda p, s: tx.step(loss_fn, p, s))`. Memory: 2 * history_size + 3 copies of the
    parameters, like torch.

    The parameters may be any pytree (None leaves are no parameter, as in optax; an empty tree gives an empty
    state and comes back as it came) of real floating-point leaves of ONE dtype, since the state is one vector of
    all of them (torch's flat view, `jax.flatten_util.ravel_pytree`) in that dtype, fixed at `init`. Params of
    two dtypes raise ValueError naming two leaves (one vector would promote a bfloat16 leaf to float32 inside the
    step, where torch rounds it back after every iteration); integer and complex leaves raise TypeError naming
    the leaf (torch would run a complex parameter as its `view_as_real` pairs; optimjax does not); `step` with
    params of another size or dtype than `init` saw raises ValueError.

    On a mesh, the flat state cannot follow each parameter's sharding. Under jit, `step` gathers the params into
    one replicated vector (an all-gather; in jax's explicit mode each leaf is resharded to replicated first),
    runs every iteration and the line search on that vector on every device, and returns each parameter sharded
    as it came (`shard_alike`, or a reshard in explicit mode). So the state, (2 * history_size + 3) n numbers,
    is replicated in full on every device, not divided among them, and the step's vector arithmetic is repeated
    on each; only the loss function's own work is split, by GSPMD in the automatic mode (whose sums then run in
    another order than on one device: all-reduces, all-to-alls, collective-permutes appear). Measured on a 4x2
    mesh of 8 CPU devices: explicit mode bit for bit the one-device run, automatic mode to 1e-5 of the
    displacement in float32. `jax.jit(tx.init)` without out_shardings may leave the state on one device; the
    first step replicates it.

    Why not an `optax.GradientTransformation`: a transformation sees one gradient per update and cannot
    evaluate the loss, so it can run neither the line search nor several iterations per step. The transformation
    form is one iteration with a fixed step (torch with max_iter=1 and no line search), which is what
    `optax.scale_by_lbfgs` is (and `optax.lbfgs` adds its own zoom line search through `value_fn`, one iteration
    per update, memory 10 by default).

    Args:
      learning_rate: lr >= 0, the step length (or the line search's first trial).
      max_iter: iterations per step, >= 1.
      max_eval: loss evaluations per step (default max_iter * 5 // 4, torch's), >= 1.
      tolerance_grad: stop when max|g| <= this, >= 0.
      tolerance_change: stop when the step or the loss change is below this, >= 0.
      history_size: number of (s, y) pairs kept, >= 1.
      line_search_fn: None or "strong_wolfe".

    Examples:
      On a quadratic, the strong Wolfe line search finds the minimum within one step of 20 iterations:

      >>> import jax.numpy as jnp, optimjax
      >>> loss_fn = lambda p: jnp.sum((p["x"] - jnp.array([1.0, -2.0])) ** 2 * jnp.array([1.0, 10.0]))
      >>> tx = optimjax.lbfgs(line_search_fn="strong_wolfe")
      >>> params = {"x": jnp.zeros(2)}
      >>> params, state = tx.step(loss_fn, params, tx.init(params))
      >>> print(params["x"].round(5), int(state.n_iter) <= 20)
      [ 1. -2.] True
    """
    where = "lbfgs"
    check_range(where, "learning_rate", learning_rate)
    check_range(where, "tolerance_grad", tolerance_grad)
    check_range(where, "tolerance_change", tolerance_change)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    for name, value in (("max_iter", max_iter), ("max_eval", max_eval), ("history_size", history_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"{where}: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")

    def init(params) -> LbfgsState:
        flat, _ = ravel_pytree(_replicated(_checked(params, "init()")))
        n, dtype = flat.shape[0], flat.dtype
        return LbfgsState(  # every leaf a buffer of its own: a jitted step may donate the state
            func_evals=jnp.zeros([], jnp.int32), n_iter=jnp.zeros([], jnp.int32), loss=jnp.zeros([], dtype),
            d=jnp.zeros(n, dtype), t=jnp.zeros([], dtype), old_dirs=jnp.zeros((history_size, n), dtype),
            old_stps=jnp.zeros((history_size, n), dtype), ro=jnp.zeros(history_size, dtype),
            num_old=jnp.zeros([], jnp.int32), h_diag=jnp.ones([], dtype), prev_flat_grad=jnp.zeros(n, dtype),
            prev_loss=jnp.zeros([], dtype),
        )

    def direction(s: LbfgsState, g):
        """The first iteration ever: -g and an empty history; later: push (y, s) if y . s > 1e-10, then the
        two-loop recursion."""
        y = g - s.prev_flat_grad
        step = s.d * s.t
        ys = y @ step
        accept = ys > 1e-10
        full = s.num_old == history_size

        def push(rows, new):
            rows = jnp.where(full, jnp.roll(rows, -1, axis=0), rows)
            return rows.at[jnp.where(full, history_size - 1, s.num_old)].set(new)

        old_dirs = jnp.where(accept, push(s.old_dirs, y), s.old_dirs)
        old_stps = jnp.where(accept, push(s.old_stps, step), s.old_stps)
        ro = jnp.where(accept, push(s.ro, 1.0 / ys), s.ro)
        num_old = jnp.where(accept & ~full, s.num_old + 1, s.num_old)
        h_diag = jnp.where(accept, ys / (y @ y), s.h_diag)

        def backward(j, carry):
            q, al = carry
            i = num_old - 1 - j
            a = (old_stps[i] @ q) * ro[i]
            return q - a * old_dirs[i], al.at[i].set(a)

        q, al = jax.lax.fori_loop(0, num_old, backward, (-g, jnp.zeros_like(ro)))

        def forward(i, r):
            be = (old_dirs[i] @ r) * ro[i]
            return r + (al[i] - be) * old_stps[i]

        d = jax.lax.fori_loop(0, num_old, forward, q * h_diag)
        first = s.n_iter == 1
        pick = lambda a, b: jnp.where(first, a, b)  # noqa: E731
        return s._replace(d=pick(-g, d), old_dirs=old_dirs, old_stps=old_stps, ro=ro,
                          num_old=pick(0, num_old), h_diag=pick(jnp.ones_like(h_diag), h_diag))

    def step(loss_fn, params, state: LbfgsState):
        params = _checked(params, "step()")
        flat0, unravel = ravel_pytree(_replicated(params))
        if flat0.shape != state.d.shape or flat0.dtype != state.d.dtype:
            raise ValueError(f"lbfgs: step() got {flat0.shape[0]} {flat0.dtype} parameter entries, but the state "
                             f"was made by init() for {state.d.shape[0]} {state.d.dtype} ones (the state's dtype "
                             "is fixed at init): pass the params the state was made for")
        value_and_grad = jax.value_and_grad(lambda x: loss_fn(unravel(x)))

        def evaluate(x):
            loss, g = value_and_grad(x)
            return jnp.asarray(loss, flat0.dtype), g

        loss, g = evaluate(flat0)
        state = state._replace(func_evals=state.func_evals + 1, loss=loss)
        opt_cond = jnp.max(jnp.abs(g), initial=0) <= tolerance_grad

        carry = dict(x=flat0, loss=loss, g=g, state=state, n_iter=jnp.zeros([], jnp.int32),
                     current_evals=jnp.ones([], jnp.int32), stop=opt_cond)

        def cond(c):
            return ~c["stop"]

        def body(c):
            s, g, loss = c["state"], c["g"], c["loss"]
            n_iter = c["n_iter"] + 1
            s = s._replace(n_iter=s.n_iter + 1)
            s = direction(s, g)
            d = s.d
            first = s.n_iter == 1
            t = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g))) * learning_rate,
                          jnp.asarray(learning_rate, g.dtype)).astype(g.dtype)
            s = s._replace(prev_flat_grad=g, prev_loss=loss, t=t)
            gtd = g @ d
            no_descent = gtd > -tolerance_change

            def move(c):
                x = c["x"]
                if line_search_fn == "strong_wolfe":
                    new_loss, new_g, t_ls, evals = strong_wolfe(
                        lambda t: evaluate(x + t * d), t, d, loss, g, gtd, max_eval - c["current_evals"])
                    x = x + t_ls * d
                    opt = jnp.max(jnp.abs(new_g), initial=0) <= tolerance_grad
                else:
                    t_ls = t
                    x = x + t * d
                    last = n_iter == max_iter
                    new_loss, new_g = jax.lax.cond(last, lambda x: (loss, g), evaluate, x)
                    opt = jnp.where(last, False, jnp.max(jnp.abs(new_g), initial=0) <= tolerance_grad)
                    evals = jnp.where(last, 0, 1).astype(jnp.int32)
                current_evals = c["current_evals"] + evals
                state = s._replace(t=t_ls, func_evals=s.func_evals + evals)
                stop = ((n_iter == max_iter) | (current_evals >= max_eval) | opt
                        | (jnp.max(jnp.abs(d * t_ls), initial=0) <= tolerance_change)
                        | (jnp.abs(new_loss - loss) < tolerance_change))
                return dict(x=x, loss=new_loss, g=new_g, state=state, n_iter=n_iter, current_evals=current_evals,
                            stop=stop)

            return jax.lax.cond(no_descent, lambda c: dict(c, state=s, n_iter=n_iter, stop=True), move, c)

        c = jax.lax.while_loop(cond, body, carry)
        return _placed_like(unravel(c["x"]), params), c["state"]

    return Lbfgs(init, step)
