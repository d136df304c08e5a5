"""Fused steps for the Adam family: one pass over memory per parameter on CPU, an opt-in like torch's `fused=True`.

An optimizer step is memory traffic. `optimjax.adamw` is an `optax.GradientTransformation`: its update is
applied by `optax.apply_updates`, and XLA's CPU backend compiles the pair into three loops per leaf (m, v, then
the parameters), 40 bytes moved per fp32 parameter. The floor is 28 (read p, g, m, v; write p, m, v), which
torch's `fused=True` reaches with a hand-written kernel. `optimjax.fused` does the same: a small C++ kernel,
called through XLA's FFI, updates p, m and v of every leaf in one pass, in place (the outputs alias the inputs),
on all the cores of XLA's CPU thread pool, in one call per step however many leaves there are.

    opt = optimjax.fused.adamw(learning_rate=1e-3, weight_decay=1e-2)
    state = opt.init(params)                       # the state of optimjax.adamw(...), exactly

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        return opt.step(grads, state, params)      # -> (new params, new state)

Same numbers: the kernel does the arithmetic of `optimizer.update` + `optax.apply_updates` operation by operation,
in the same order, without floating-point contraction or fast-math, with the per-step scalars computed by the
same JAX functions (`adam_scalars`, `nadam_scalars`): `opt.step` is bit-identical to
`opt.optimizer.update` followed by `optax.apply_updates` (tested), and so on torch.optim's trajectory.

The price of the pass: `step` takes and returns the parameters, so it is not a `GradientTransformation` and does
not chain (no clipping before it, no `MultiSteps` around it): for those, use `opt.optimizer`, the plain optimjax
optimizer with the same hyperparameters and the same state, which it can hand over to at any step.

When the kernel cannot run, `step` falls back to that optimizer (`update` + `apply_updates`, still one jitted
program): on GPU and TPU (where XLA's own fusion already makes one pass), with more than one device (the kernel
has no sharding rule), for leaves that are not all float32 or all float64, and when the kernel cannot be built.
Every fallback but the accelerator one warns once, with the reason; `available()` and `unavailable_reason()` say
whether the kernel is ready.

The kernel is compiled from `optimjax/_kernels/fused_step.cc` on first use, with the machine's C++ compiler
(`$CXX`, else `c++`; about 6 s) against the FFI headers that ship inside jaxlib, and cached in
`$OPTIMJAX_CACHE_DIR` (default `~/.cache/optimjax`). No extra package is needed; `OPTIMJAX_FUSED=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimjax._checks import is_zero
from optimjax._tree import check_tree, next_count
from optimjax.adam import ScaleByAdamState, adam_scalars
from optimjax.adam import adam as _adam
from optimjax.adam import adamw as _adamw
from optimjax.nadam import ScaleByNadamState, nadam_scalars
from optimjax.nadam import nadam as _nadam
from optimjax.nadam import nadamw as _nadamw

TARGET = "optimjax_fused_step"
SOURCE = Path(__file__).with_name("_kernels") / "fused_step.cc"
# Built for this CPU's vector units (the cache key holds its instruction-set flags). No fast-math, no contraction
# into FMA: each operation rounds once, as written. -fno-math-errno lets sqrt vectorize; results are unchanged.
CXXFLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=off"]


class FusedOptimizer(NamedTuple):
    """A fused optimizer: `init(params) -> state`, `step(grads, state, params) -> (params, state)`.

    `optimizer` is the equivalent `optax.GradientTransformation` (same hyperparameters, same state), which
    `step` falls back to when the kernel cannot run, and which chains with optax where `step` cannot.
    """

    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]
    optimizer: optax.GradientTransformation


def cache_dir() -> Path:
    """Where the compiled kernel is kept: `$OPTIMJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/optimjax` or ~/.cache."""
    if os.environ.get("OPTIMJAX_CACHE_DIR"):
        return Path(os.environ["OPTIMJAX_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optimjax"


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (Linux), so that a cache shared by two machines keeps one library each."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build() -> Path:
    """Compile the kernel (once per source, compiler, flags and jaxlib; cached) and return the library's path."""
    import jaxlib

    compiler = os.environ.get("CXX", "c++")
    include = jax.ffi.include_dir()
    source = SOURCE.read_bytes()
    key = "\0".join([compiler, *CXXFLAGS, jaxlib.__version__, platform.machine(), platform.system(), _cpu_flags()])
    digest = hashlib.sha256(source + key.encode()).hexdigest()[:16]
    library = cache_dir() / f"fused_step-{digest}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        command = [compiler, *CXXFLAGS, "-isystem", include, "-o", str(built), str(SOURCE)]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise RuntimeError(f"no C++ compiler: `{compiler}` not found (set $CXX)") from None
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"`{' '.join(command)}` failed:\n{error.stderr[-2000:]}") from None
        os.replace(built, library)  # atomic: a concurrent process sees no half-written library
    return library


@functools.cache
def unavailable_reason() -> str | None:
    """None when the CPU kernel is built and registered (building it on the first call), else the reason."""
    if os.environ.get("OPTIMJAX_FUSED", "1") == "0":
        return "turned off by OPTIMJAX_FUSED=0"
    if not hasattr(jax, "ffi"):
        return f"jax {jax.__version__} has no jax.ffi (jax >= 0.4.38 has)"
    try:
        library = ctypes.cdll.LoadLibrary(str(_build()))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.OptimjaxFusedStep), platform="cpu")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        return f"the fused kernel could not be built or loaded: {error}"
    return None


def available() -> bool:
    """Whether `step` can run the fused CPU kernel in this process (builds it on the first call)."""
    return unavailable_reason() is None


def _why_not_fused(arrays: list[jax.Array]) -> str | None:
    """Why these leaves take the fallback, "" for a silent fallback (an accelerator), None to run the kernel."""
    if jax.default_backend() != "cpu":
        return ""  # XLA's GPU/TPU backends fuse the step into one pass themselves
    if jax.device_count() > 1:
        return "more than one device: the fused kernel has no sharding rule, the XLA path keeps the sharding"
    dtypes = {jnp.dtype(x.dtype) for x in arrays}
    if len(dtypes) > 1 or not dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)}:
        return f"the kernel takes params, grads and state all float32 or all float64, got {sorted(map(str, dtypes))}"
    return unavailable_reason()


def _fused_update(coefs: list[Any], params: Any, grads: Any, mu: Any, nu: Any, **flags: int):
    """One call of the kernel over every leaf: new (params, mu, nu), each aliased to its input buffer."""
    p, treedef = jax.tree.flatten(params)
    g, m, v = jax.tree.leaves(grads), jax.tree.leaves(mu), jax.tree.leaves(nu)
    dtype = p[0].dtype
    operands = [jnp.stack([jnp.asarray(c, dtype) for c in coefs])]
    results, aliases = [], {}
    for i, leaf in enumerate(zip(p, g, m, v)):
        operands.extend(leaf)
        for j, k in enumerate((0, 2, 3)):  # p, m, v are written in place
            aliases[1 + 4 * i + k] = 3 * i + j
            results.append(jax.ShapeDtypeStruct(leaf[k].shape, dtype))
    call = jax.ffi.ffi_call(TARGET, results, input_output_aliases=aliases, vmap_method="sequential")
    out = call(*operands, **flags)
    new_p, new_m, new_v = out[0::3], out[1::3], out[2::3]
    return tuple(jax.tree.unflatten(treedef, x) for x in (new_p, new_m, new_v))


def _hyperparameter(value: Any, state: Any) -> tuple[Any, Any]:
    """A float or a schedule's value at this step, and the sub-state advanced as the optax transform does."""
    if callable(value):
        return value(state.count), state._replace(count=optax.safe_increment(state.count))
    return value, state


def _fused(
    name: str,
    optimizer: optax.GradientTransformation,
    *,
    nadam: bool,
    coupled: bool,
    learning_rate: Any,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: Any,
    momentum_decay: float = 0.0,
) -> FusedOptimizer:
    """The fused step of `optimizer` = chain(scale_by_adam or scale_by_nadam, weight decay, learning rate)."""
    decays = not is_zero(weight_decay)
    flags = dict(nadam=int(nadam), lerp_near_end=int(abs(1 - b1) >= 0.5), coupled=int(coupled and decays))
    flags["decoupled"] = int(decays and not coupled)

    def step(grads, state, params):
        if coupled:
            decay_state, inner, lr_state = state
        else:
            inner, decay_state, lr_state = state
        check_tree(name, grads, inner.mu)
        check_tree(name, params, inner.mu, "the state's params")
        reason = _why_not_fused(jax.tree.leaves((params, grads, inner.mu, inner.nu)))
        if reason is not None:
            if reason:
                warnings.warn(f"optimjax.fused.{name}: XLA path instead of the fused kernel: {reason}", stacklevel=2)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        if not jax.tree.leaves(params):
            return params, optimizer.update(grads, state, params)[1]

        count, t = next_count(inner.count)
        if nadam:
            mu_product, a, b, c = nadam_scalars(b1, b2, momentum_decay, t, inner.mu_product)
        else:
            a, c, b = adam_scalars(b1, b2, t)
        decay, decay_state = _hyperparameter(weight_decay, decay_state) if decays else (0.0, decay_state)
        lr, lr_state = _hyperparameter(learning_rate, lr_state)
        # The kernel's coefficient order (fused_step.cc, enum Coef); each is cast as `_tree.like` casts it.
        coefs = [1 - b1, b2, 1 - b2, a, b, c, eps, decay, decay, -lr]
        params, mu, nu = _fused_update(coefs, params, grads, inner.mu, inner.nu, **flags)
        if nadam:
            inner = ScaleByNadamState(count, mu_product.astype(inner.mu_product.dtype), mu, nu)
        else:
            inner = ScaleByAdamState(count, mu, nu, None)
        return params, ((decay_state, inner, lr_state) if coupled else (inner, decay_state, lr_state))

    return FusedOptimizer(optimizer.init, step, optimizer)


def adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> FusedOptimizer:
    """Fused `optimjax.adam` (Kingma & Ba, 2014; coupled L2 weight decay): same numbers, one pass on CPU.

    `torch.optim.Adam(..., fused=True)`. AMSGrad, eps_root and bf16 moments: use `optimjax.adam`.
    """
    optimizer = _adam(learning_rate, b1, b2, eps, weight_decay=weight_decay)
    return _fused("adam", optimizer, nadam=False, coupled=True, learning_rate=learning_rate, b1=b1, b2=b2,
                  eps=eps, weight_decay=weight_decay)


def adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
) -> FusedOptimizer:
    """Fused `optimjax.adamw` (Loshchilov & Hutter, 2019; decoupled decay): same numbers, one pass on CPU.

    `torch.optim.AdamW(..., fused=True)`. A decay mask, AMSGrad, eps_root and bf16 moments: use `optimjax.adamw`.

    Examples:
      Adam's first direction is m_1 / sqrt(v_1) = sign(g); the decay adds weight_decay * theta, and both are
      scaled by lr: theta_1 = theta_0 - 0.1 * (1 + 0.5 * theta_0), i.e. 1 -> 0.85 and -2 -> -2.
      >>> import jax.numpy as jnp, optimjax
      >>> opt = optimjax.fused.adamw(learning_rate=0.1, weight_decay=0.5)
      >>> params = jnp.array([1.0, -2.0])
      >>> params, state = opt.step(jnp.array([0.5, 0.5]), opt.init(params), params)
      >>> print(params)
      [ 0.85 -2.  ]
    """
    optimizer = _adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay)
    return _fused("adamw", optimizer, nadam=False, coupled=False, learning_rate=learning_rate, b1=b1, b2=b2,
                  eps=eps, weight_decay=weight_decay)


def nadam(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    weight_decay: float = 0.0,
) -> FusedOptimizer:
    """Fused `optimjax.nadam` (Dozat, 2016, with the momentum schedule): same numbers, one pass on CPU.

    torch has no fused NAdam. bf16 moments: use `optimjax.nadam`.
    """
    optimizer = _nadam(learning_rate, b1, b2, eps, momentum_decay, weight_decay)
    return _fused("nadam", optimizer, nadam=True, coupled=True, learning_rate=learning_rate, b1=b1, b2=b2,
                  eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay)


def nadamw(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
) -> FusedOptimizer:
    """Fused `optimjax.nadamw` (NAdam with decoupled decay): same numbers, one pass on CPU.

    A decay mask and bf16 moments: use `optimjax.nadamw`.
    """
    optimizer = _nadamw(learning_rate, b1, b2, eps, momentum_decay, weight_decay)
    return _fused("nadamw", optimizer, nadam=True, coupled=False, learning_rate=learning_rate, b1=b1, b2=b2,
                  eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay)
