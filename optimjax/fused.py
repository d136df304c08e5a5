"""Fused steps: one pass over memory per parameter on CPU, an opt-in like torch's `fused=True`.

An optimizer step is memory traffic. `optimjax.adamw` is an `optax.GradientTransformation`: its update is
applied by `optax.apply_updates`, and XLA's CPU backend compiles the pair into a loop per output array (m, v, then
the parameters), 40 bytes moved per fp32 parameter. The floor is 28 (read p, g, m, v; write p, m, v), which
torch's `fused=True` reaches with hand-written kernels. `optimjax.fused` does the same: a small C++ kernel,
called through XLA's FFI, updates the parameters and the state of every leaf in one pass, in place (the outputs
alias the inputs), on all the cores of XLA's CPU thread pool, in one call per 32 leaves.
For `adam`, `adamw`, `nadam`, `nadamw`, `sgd` / `momentum` / `nesterov`, `rmsprop` (plain) and `adagrad`:

    opt = optimjax.fused.adamw(learning_rate=1e-3, weight_decay=1e-2)
    state = opt.init(params)                       # the state of optimjax.adamw(...), exactly

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        return opt.step(grads, state, params)      # -> (new params, new state)

Same numbers: the kernel does the per-element arithmetic written in the transforms' docstrings (torch.optim's
single-tensor path) operation by operation, in the same order, each operation rounded once (no contraction into
FMA, no fast-math), with the per-step scalars (bias corrections, NAdam's momentum products, the learning rate)
computed by the transforms' own JAX functions. One step is bit-identical to a numpy float32 transcription of the
equations, and trajectories follow torch.optim as closely as the plain optimizers do (tests/test_fused.py). The
plain optimizer's compiled XLA program agrees to a few float32 ulp, not bit for bit: XLA:CPU contracts some
multiply-adds into FMAs and turns a division by sqrt(1 - b2**t) into a multiplication by its rsqrt.

The price of the pass: `step` takes and returns the parameters, so it is not a `GradientTransformation` and does
not chain (no clipping before it, no `MultiSteps` around it): for those, use `opt.optimizer`, the plain optimjax
optimizer with the same hyperparameters and the same state, which it can hand over to at any step.

`flat_state=True` (every constructor) keeps each state array as one vector for all the leaves, the state of
`optax.flatten(plain optimizer)` (which is then `opt.optimizer`): the same numbers, bit for bit, with far fewer
arrays passed in and out of a jitted step, which is what dominates a step over hundreds of small leaves (AdamW
at 16M parameters in 512 leaves: bench/README.md). All leaves must then share one dtype.

When the kernel cannot run, `step` falls back to that optimizer (`update` + `apply_updates`, still one jitted
program): on GPU and TPU (where XLA's own fusion already makes one pass), with more than one device (the kernel
has no sharding rule), for leaves that are not all float32 or all float64, and when the kernel cannot be built.
Every fallback but the accelerator one warns once, with the reason; `available()` and `unavailable_reason()` say
whether the kernel is ready.

The kernel is compiled from `optimjax/_kernels/fused_step.cc` on first use, with the machine's C++ compiler
(`$CXX`, split as a shell would, e.g. `ccache c++`; else `c++`; about 10 s) against the FFI headers that ship
inside jaxlib, and cached in `$OPTIMJAX_CACHE_DIR` (default `~/.cache/optimjax`), else, when that directory cannot
be written or could be written by someone else, in a private directory under the system's temporary directory.
No extra package is needed; `OPTIMJAX_FUSED=0` turns it off.

The cache loads nothing but what this user's build wrote: a directory is used only if it belongs to the user and
no one else can write it; the library only if it and the digest its build recorded next to it (`<library>.sha256`)
are the user's files that no one else can write, and its content has that digest, checked on the very descriptor
that is then loaded. Anything else (a truncated or replaced file, a file planted by another user) is rebuilt or
the next location is used, with a warning. A build writes under temporary names and renames them into place,
under a lock, so that concurrent processes build once and never see half a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimjax._checks import is_zero
from optimjax._tree import check_tree, next_count
from optimjax.adagrad import adagrad as _adagrad
from optimjax.adagrad import decayed_learning_rate
from optimjax.adam import adam as _adam
from optimjax.adam import adam_scalars
from optimjax.adam import adamw as _adamw
from optimjax.nadam import nadam as _nadam
from optimjax.nadam import nadam_scalars
from optimjax.nadam import nadamw as _nadamw
from optimjax.rmsprop import rmsprop as _rmsprop
from optimjax.sgd import sgd as _sgd

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


def _private_fallback() -> Path:
    """The cache of last resort: a directory of this user's under the system's temporary directory."""
    return Path(tempfile.gettempdir()) / f"optimjax-{os.getuid()}"


def _compiler() -> list[str]:
    """`$CXX` split as a shell would (`ccache c++` is a command and an argument), else `c++`."""
    try:
        return shlex.split(os.environ.get("CXX", "")) or ["c++"]
    except ValueError as error:
        raise RuntimeError(f"$CXX={os.environ['CXX']!r} is not a command line: {error}") from None


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (Linux), so that a cache shared by two machines keeps one library each."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _library_name() -> str:
    """The library's file name: a digest of the source, compiler, flags, jaxlib and CPU it is built for."""
    import jaxlib

    key = "\0".join([*_compiler(), *CXXFLAGS, jaxlib.__version__, platform.machine(), platform.system(), _cpu_flags()])
    return f"fused_step-{hashlib.sha256(SOURCE.read_bytes() + key.encode()).hexdigest()[:16]}.so"


def _not_private(path: Path, info: os.stat_result, is_kind: Callable[[int], bool], kind: str) -> str | None:
    """Why `path` (stat `info`) could have been written by someone else, or None: it is a `kind` of this user's
    that no other user can write."""
    if not is_kind(info.st_mode):
        return f"{path} is not a {kind}"
    if info.st_uid != os.getuid():
        return f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    if info.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _open_private(path: Path) -> int:
    """A read-only descriptor of the regular file `path` (not followed if a link), checked to be this user's and
    writable by no one else; OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    reason = _not_private(path, os.fstat(fd), stat.S_ISREG, "regular file")
    if reason:
        os.close(fd)
        raise PermissionError(reason)
    return fd


def _open_verified(library: Path) -> int:
    """A descriptor of `library` if it and its recorded digest (`<library>.sha256`, written after its build) are
    this user's private files and its content has that digest; OSError saying why not otherwise.

    The digest is computed over the descriptor that is then loaded, so the check and the load see the same file.
    """
    fd = _open_private(library.with_name(library.name + ".sha256"))
    with os.fdopen(fd, "rb") as record:
        recorded = record.read(100).decode(errors="replace").strip()
    fd = _open_private(library)
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != recorded:
        os.close(fd)
        raise PermissionError(f"{library} is not the file its build wrote (its digest differs from the recorded one)")
    return fd


@contextlib.contextmanager
def _build_lock(directory: Path, name: str):
    """Hold an exclusive lock on `directory` for building `name`, so that concurrent processes build it once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builds are still safe (atomic renames), merely repeated
        yield
        return
    fd = os.open(directory / f".{name}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _compile(library: Path) -> None:
    """Compile the kernel into a temporary name next to `library`, record its digest, then rename both into place
    (atomic: a concurrent reader sees the old files or the new ones, never half of one)."""
    compiler = _compiler()
    print(f"optimjax.fused: compiling the CPU kernel into {library.parent} (once per machine, about 10 s)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=library.parent, prefix=".build-") as tmp:
        built, record = Path(tmp) / library.name, Path(tmp) / "sha256"
        command = [*compiler, *CXXFLAGS, "-isystem", jax.ffi.include_dir(), "-o", str(built), str(SOURCE)]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        except (FileNotFoundError, PermissionError):
            raise RuntimeError(f"no C++ compiler: `{shlex.join(compiler)}` cannot be run (set $CXX)") from None
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"`{shlex.join(command)}` failed:\n{error.stderr[-2000:]}") from None
        os.chmod(built, 0o755)  # whatever the umask: writable by this user only
        record.write_text(hashlib.sha256(built.read_bytes()).hexdigest() + "\n")
        os.chmod(record, 0o644)
        os.replace(built, library)
        os.replace(record, library.with_name(library.name + ".sha256"))


def _library() -> tuple[int, Path]:
    """A descriptor of the verified kernel library and its path, built first if no cache location holds a valid one.

    Tries `cache_dir()`, then a private directory under the system's temporary directory. A location is used only
    if the directory is this user's and no one else can write it; a library only if it and its digest file are this
    user's private files and its content has the recorded digest. Anything else is never loaded: the library is
    rebuilt (under a lock, into a temporary name renamed into place) or the next location is tried, with a warning.
    """
    name, problems = _library_name(), []
    for directory in dict.fromkeys([cache_dir(), _private_fallback()]):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            reason = _not_private(directory, directory.stat(), stat.S_ISDIR, "directory")
            if reason:
                raise PermissionError(reason)
            library = directory / name
            try:
                return _open_verified(library), library
            except FileNotFoundError:
                pass  # not built here yet
            except OSError as error:
                warnings.warn(f"optimjax.fused: not loading the cached kernel, rebuilding it: {error}", stacklevel=2)
            with _build_lock(directory, name):
                try:
                    return _open_verified(library), library  # built meanwhile by another process
                except OSError:
                    _compile(library)
                return _open_verified(library), library
        except OSError as error:  # this location cannot hold the kernel safely: the next one
            problems.append(f"{directory}: {error}")
            if directory != _private_fallback():
                warnings.warn(f"optimjax.fused: not using the cache directory {directory} ({error}); trying "
                              f"{_private_fallback()}", stacklevel=2)
    raise RuntimeError("no private cache directory for the kernel: " + "; ".join(problems))


def _load_library() -> ctypes.CDLL:
    """The kernel library, verified (and built if need be) by `_library`, loaded into this process."""
    fd, path = _library()
    try:  # load the very file that was verified (Linux), not whatever its path names by now
        proc = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(proc if os.path.exists(proc) else str(path))
    finally:
        os.close(fd)


@functools.cache
def unavailable_reason() -> str | None:
    """None when the CPU kernel is built and registered (building it on the first call), else the reason."""
    if os.environ.get("OPTIMJAX_FUSED", "1") == "0":
        return "turned off by OPTIMJAX_FUSED=0"
    if not hasattr(jax, "ffi"):
        return f"jax {jax.__version__} has no jax.ffi (jax >= 0.4.38 has)"
    try:
        library = _load_library()
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.OptimjaxFusedStep), platform="cpu")
    except Exception as error:  # noqa: BLE001 - the kernel is an optimization: any failure means the XLA path
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


# Leaves per kernel call. XLA's compile time grows faster than linearly in the outputs of one custom call (1000
# leaves in one call: 98 s; in calls of 32: 2 s, under optax's 10 s), while a call costs microseconds to run.
LEAVES_PER_CALL = 32


def _fused_update(coefs: list[Any], params: Any, grads: Any, states: list[Any], family: int, flags: int,
                  flat: bool):
    """The kernel over every leaf: new params and state arrays, each aliased to its input buffer.

    `flat`: each state array is one vector for all leaves (optax.flatten's layout), threaded through the calls.
    """
    p, treedef = jax.tree.flatten(params)
    g = jax.tree.leaves(grads)
    dtype = p[0].dtype
    coefs = jnp.stack([jnp.asarray(c, dtype) for c in coefs])
    call_kernel = functools.partial(_call_kernel, coefs, dtype, family=family, flags=flags)
    if flat:
        new_p, offset = [], 0
        for start in range(0, len(p), LEAVES_PER_CALL):
            leaves = list(zip(p[start : start + LEAVES_PER_CALL], g[start : start + LEAVES_PER_CALL]))
            out = call_kernel([(s,) for s in states], leaves, written=(0,), flat_offset=offset)
            states, new_p = out[: len(states)], new_p + out[len(states) :]
            offset += sum(x.size for x, _ in leaves)
        return [jax.tree.unflatten(treedef, new_p), *states]
    per_leaf = list(zip(p, g, *(jax.tree.leaves(s) for s in states)))
    written = (0, *range(2, 2 + len(states)))  # p and the state arrays are written in place; g is only read
    out = []
    for start in range(0, len(per_leaf), LEAVES_PER_CALL):
        out += call_kernel([], per_leaf[start : start + LEAVES_PER_CALL], written=written, flat_offset=-1)
    return [jax.tree.unflatten(treedef, out[k :: len(written)]) for k in range(len(written))]


def _call_kernel(coefs, dtype, head: list[tuple], leaves: list[tuple], written: tuple[int, ...], **attributes):
    """One custom call on `coefs`, the `head` groups of arrays, then each leaf's arrays; the outputs are the
    arrays at positions `written` of every group, in order, each aliased to its input."""
    operands, results, aliases = [coefs], [], {}
    for arrays, outputs in [(a, range(len(a))) for a in head] + [(a, written) for a in leaves]:
        for k in outputs:
            aliases[len(operands) + k] = len(results)
            results.append(jax.ShapeDtypeStruct(arrays[k].shape, dtype))
        operands.extend(arrays)
    call = jax.ffi.ffi_call(TARGET, results, input_output_aliases=aliases, vmap_method="sequential")
    return list(call(*operands, **attributes))


def _hyperparameter(value: Any, state: Any) -> tuple[Any, Any]:
    """A float or a schedule's value at this step, and the sub-state advanced as the optax transform does."""
    if callable(value):
        return value(state.count), state._replace(count=optax.safe_increment(state.count))
    return value, state


# The kernel's families (fused_step.cc, enum Family) and its eight family coefficients per step: a function of the
# direction transform's state returning them and the new values of that state's non-array fields.
ADAM, NADAM, MOMENTUM, RMS, ADAGRAD = range(5)


class _Family(NamedTuple):
    kernel: int
    arrays: tuple[str, ...]  # the direction state's per-parameter fields, in the kernel's order
    coefficients: Callable[[Any], tuple[list[Any], dict[str, Any]]]
    flags: tuple[bool, bool] = (False, False)  # Adam family: torch.lerp's second form; momentum: Nesterov, dampening


def _fused(name: str, optimizer: optax.GradientTransformation, family: _Family | None, *, coupled: bool,
           learning_rate: Any, weight_decay: Any, flat_state: bool) -> FusedOptimizer:
    """The fused step of `optimizer`: chain(decay, direction, lr) if `coupled`, else chain(direction, decay, lr).

    `family` None: a step without state (SGD without momentum), one pass already in XLA, which runs it.
    `flat_state`: the state of `optax.flatten(optimizer)`, one vector per state array for all the leaves.
    """
    if flat_state:
        optimizer = optax.flatten(optimizer)
    decays = not is_zero(weight_decay)
    flags = family and 8 * family.flags[0] + 4 * family.flags[1] + 2 * (coupled and decays) + (decays and not coupled)

    def step(grads, state, params):
        if family is None:
            reason = ""
        else:
            decay_state, inner, lr_state = state if coupled else (state[1], state[0], state[2])
            arrays = [getattr(inner, field) for field in family.arrays]
            if flat_state:
                check_tree(name, grads, params, "the params", call="step()")
                size = sum(jnp.size(p) for p in jax.tree.leaves(params))
                if jnp.shape(arrays[0]) != (size,):
                    raise ValueError(f"{name}: flat_state=True expects a state made by init() for params of {size} "
                                     f"elements, got state arrays of shape {jnp.shape(arrays[0])}.")
            else:
                check_tree(name, grads, arrays[0], call="step()")
                check_tree(name, params, arrays[0], what="param", call="step()")
            reason = _why_not_fused(jax.tree.leaves((params, grads, arrays)))
        if reason is not None:
            if reason:
                warnings.warn(f"optimjax.fused.{name}: XLA path instead of the fused kernel: {reason}", stacklevel=2)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        if not jax.tree.leaves(params):
            return params, optimizer.update(grads, state, params)[1]

        coefficients, fields = family.coefficients(inner)
        decay, decay_state = _hyperparameter(weight_decay, decay_state) if decays else (0.0, decay_state)
        lr, lr_state = _hyperparameter(learning_rate, lr_state)
        coefficients = [*coefficients, *[0.0] * (8 - len(coefficients)), decay, -lr]  # each cast as `like` does
        params, *arrays = _fused_update(coefficients, params, grads, arrays, family.kernel, flags, flat_state)
        inner = inner._replace(**fields, **dict(zip(family.arrays, arrays)))
        return params, ((decay_state, inner, lr_state) if coupled else (inner, decay_state, lr_state))

    return FusedOptimizer(optimizer.init, step, optimizer)


def _adam_family(b1: float, b2: float, eps: float, momentum_decay: float | None = None) -> _Family:
    """Adam (momentum_decay None) or NAdam: m <- lerp(m, g, 1 - b1), v <- EMA of g**2, and the direction."""

    def coefficients(inner):
        count, t = next_count(inner.count)
        if momentum_decay is None:
            a, _, b = adam_scalars(b1, b2, t)
            return [1 - b1, b2, 1 - b2, a, b, 0.0, eps], {"count": count}
        mu_product, a, b, c = nadam_scalars(b1, b2, momentum_decay, t, inner.mu_product)
        fields = {"count": count, "mu_product": mu_product.astype(inner.mu_product.dtype)}
        return [1 - b1, b2, 1 - b2, a, b, c, eps], fields

    kernel = ADAM if momentum_decay is None else NADAM
    return _Family(kernel, ("mu", "nu"), coefficients, (abs(1 - b1) >= 0.5, False))


def adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.adam` (Kingma & Ba, 2014; coupled L2 weight decay): its arithmetic, one pass on CPU.

    `torch.optim.Adam(..., fused=True)`. AMSGrad, eps_root and bf16 moments: use `optimjax.adam`.
    """
    optimizer = _adam(learning_rate, b1, b2, eps, weight_decay=weight_decay)
    return _fused("adam", optimizer, _adam_family(b1, b2, eps), coupled=True, learning_rate=learning_rate,
                  weight_decay=weight_decay, flat_state=flat_state)


def adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.adamw` (Loshchilov & Hutter, 2019; decoupled decay): its arithmetic, one pass on CPU.

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
    return _fused("adamw", optimizer, _adam_family(b1, b2, eps), coupled=False, learning_rate=learning_rate,
                  weight_decay=weight_decay, flat_state=flat_state)


def nadam(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    weight_decay: float = 0.0,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.nadam` (Dozat, 2016, with the momentum schedule): its arithmetic, one pass on CPU.

    torch has no fused NAdam. bf16 moments: use `optimjax.nadam`.
    """
    optimizer = _nadam(learning_rate, b1, b2, eps, momentum_decay, weight_decay)
    return _fused("nadam", optimizer, _adam_family(b1, b2, eps, momentum_decay), coupled=True,
                  learning_rate=learning_rate, weight_decay=weight_decay, flat_state=flat_state)


def nadamw(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.nadamw` (NAdam with decoupled decay): its arithmetic, one pass on CPU.

    A decay mask and bf16 moments: use `optimjax.nadamw`.
    """
    optimizer = _nadamw(learning_rate, b1, b2, eps, momentum_decay, weight_decay)
    return _fused("nadamw", optimizer, _adam_family(b1, b2, eps, momentum_decay), coupled=False,
                  learning_rate=learning_rate, weight_decay=weight_decay, flat_state=flat_state)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.sgd` (heavy-ball or Nesterov momentum, dampening, coupled L2 decay): one pass on CPU.

    `torch.optim.SGD(..., fused=True)`. Without momentum there is no state and XLA already makes one pass: `step`
    is then the plain optimizer's update and apply.
    """
    optimizer = _sgd(learning_rate, momentum, nesterov, dampening, weight_decay)
    family = None
    if momentum is not None and not is_zero(momentum):

        def coefficients(inner):  # torch starts the buffer at g: no dampening on the first step
            one_minus_dampening = 1 - jnp.where(inner.count == 0, 0.0, dampening) if dampening else 1.0
            return [momentum, one_minus_dampening], {"count": optax.safe_increment(inner.count)}

        family = _Family(MOMENTUM, ("velocity",), coefficients, (nesterov, not is_zero(dampening)))
    return _fused("sgd", optimizer, family, coupled=True, learning_rate=learning_rate, weight_decay=weight_decay,
                  flat_state=flat_state)


def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.momentum` (heavy ball): one pass on CPU."""
    return sgd(learning_rate, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
               flat_state=flat_state)


def nesterov(
    learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0, flat_state: bool = False
) -> FusedOptimizer:
    """Fused `optimjax.nesterov` (Sutskever et al.'s form of Nesterov momentum): one pass on CPU."""
    return sgd(learning_rate, momentum=momentum, nesterov=True, weight_decay=weight_decay, flat_state=flat_state)


def rmsprop(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    decay: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.rmsprop` (Hinton's RMSprop, coupled L2 decay): one pass on CPU.

    torch has no fused RMSprop. Centered RMSprop and RMSprop with momentum: use `optimjax.rmsprop`.
    """
    optimizer = _rmsprop(learning_rate, decay, eps, weight_decay=weight_decay)
    family = _Family(RMS, ("nu",), lambda inner: ([decay, 1 - decay, eps], {}))
    return _fused("rmsprop", optimizer, family, coupled=True, learning_rate=learning_rate,
                  weight_decay=weight_decay, flat_state=flat_state)


def adagrad(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    flat_state: bool = False,
) -> FusedOptimizer:
    """Fused `optimjax.adagrad` (Duchi et al., 2011, with torch's lr_decay): one pass on CPU.

    `torch.optim.Adagrad(..., fused=True)`.
    """
    optimizer = _adagrad(learning_rate, lr_decay, weight_decay, initial_accumulator_value, eps)
    family = _Family(ADAGRAD, ("sum_of_squares",), lambda inner: ([0.0, 0.0, eps], {}))
    return _fused("adagrad", optimizer, family, coupled=True,
                  learning_rate=decayed_learning_rate(learning_rate, lr_decay), weight_decay=weight_decay,
                  flat_state=flat_state)
