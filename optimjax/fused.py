"""Fused steps: one pass over memory per parameter on CPU, an opt-in like torch's `fused=True`.

An optimizer step is memory traffic. `optimjax.adamw` is an `optax.GradientTransformation`: its update is
applied by `optax.apply_updates`, and XLA's CPU backend compiles the pair into a loop per output array (m, v, then
the parameters), 40 bytes moved per fp32 parameter. The floor is 28 (read p, g, m, v; write p, m, v), which
torch's `fused=True` reaches with hand-written kernels. `optimjax.fused` does the same: a small C++ kernel,
called through XLA's FFI, updates the parameters and the state of every leaf in one pass, in place (the outputs
alias the inputs), on all the cores of XLA's CPU thread pool, in one call per 32 leaves. `of` takes the optimjax
optimizer itself; the kernel runs `adam`, `adamw`, `nadam`, `nadamw`, `sgd` / `momentum` / `nesterov`, `rmsprop`
(plain), `adagrad`, `radam`, `adamax`, `rprop` and `asgd`, with their hyperparameters, schedules and `maximize`:

    opt = optimjax.fused.of(optimjax.adamw(learning_rate=1e-3, weight_decay=1e-2))
    state = opt.init(params)                       # the state of optimjax.adamw(...), exactly

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        return opt.step(grads, state, params)      # -> (new params, new state)

Each optimizer family owns its kernel's description (optimjax/_kernels/__init__.py: the kernel family, the state's
arrays, the per-step coefficients from the transform's own JAX functions, the learning rate and weight decay);
this module is the generic machinery that builds, caches and calls the kernel. Adding an optimizer touches its own
file and the kernel. Other transformations, and options the kernel lacks, take the plain path with a warning.

Same numbers: the kernel does the per-element arithmetic written in the transforms' docstrings (torch.optim's
single-tensor path) operation by operation, in the same order, each operation rounded once (no contraction into
FMA, no fast-math), with the per-step scalars (bias corrections, NAdam's momentum products, RAdam's
rectification, ASGD's step size, the learning rate) computed by the transforms' own JAX functions. One step is bit-identical to a numpy float32 transcription of the
equations, and trajectories follow torch.optim as closely as the plain optimizers do (tests/test_fused.py). The
plain optimizer's compiled XLA program agrees to a few float32 ulp, not bit for bit: XLA:CPU contracts some
multiply-adds into FMAs and turns a division by sqrt(1 - b2**t) into a multiplication by its rsqrt.

The price of the pass: `step` takes and returns the parameters, so it is not a `GradientTransformation` and does
not chain (no clipping before it, no `MultiSteps` around it): for those, use `opt.optimizer`, the plain optimjax
optimizer with the same hyperparameters and the same state, which it can hand over to at any step.

`flat_state=True` keeps each state array as one vector for all the leaves, the state of
`optax.flatten(plain optimizer)` (which is then `opt.optimizer`): the same numbers, bit for bit, with far fewer
arrays passed in and out of a jitted step, which is what dominates a step over hundreds of small leaves (AdamW
at 16M parameters in 512 leaves: bench/README.md). All leaves must then share one dtype.

When the kernel cannot run, `step` is that optimizer's `update` + `apply_updates` (still one jitted program):
on GPU and TPU (where XLA's own fusion already makes one pass), with more than one device (the kernel
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
from optimjax._kernels import FAMILY_COEFFICIENTS, Kernel, kernel_of
from optimjax._tree import check_tree, one_dtype

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
    if not all(hasattr(x, "dtype") for x in arrays):
        return "Python-number leaves: the kernel takes arrays (the XLA path takes them as arrays)"
    if any(jnp.iscomplexobj(x) for x in arrays):
        return ("complex leaves: the kernel takes real float32/float64 arrays (the XLA path steps the real and "
                "imaginary parts as separate parameters, as torch does)")
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


def _chain_parts(kernel: Kernel, state: Any) -> tuple[int, int, int | None]:
    """Where the decay, direction and learning-rate states are in the chain's state (see `Kernel`); no
    learning-rate state (None) when the direction holds the learning rate."""
    parts = tuple(state)
    direction = next(i for i, part in enumerate(parts) if isinstance(part, kernel.state))
    decay = direction - 1 if kernel.coupled else direction + 1
    return decay, direction, None if kernel.learning_rate is None else len(parts) - 1


def of(optimizer: optax.GradientTransformation, *, flat_state: bool = False) -> FusedOptimizer:
    """The fused step of an optimjax optimizer: its update and `optax.apply_updates` in one pass on CPU.

    `optimizer` is the optimizer as its function returns it: `optimjax.adam`, `adamw`, `nadam`, `nadamw`, `sgd`
    with momentum (`momentum`, `nesterov`), plain `rmsprop`, `adagrad`, `radam`, `adamax`, `rprop` and `asgd`,
    with any of their hyperparameters, schedules and `maximize`. Anything else steps with `optimizer.update` and `optax.apply_updates` (one jitted
    program still), with a warning naming why: another transformation (optax's own, one chained or wrapped by
    optax), or an option the kernel lacks (AMSGrad, eps_root, a decay mask, centered RMSprop, RMSprop with
    momentum). Plain SGD falls back silently: without state, XLA already makes one pass.

    Args:
      optimizer: an `optax.GradientTransformation`, ideally one of the optimjax optimizers above.
      flat_state: keep each state array as one vector for all the leaves: the state of
        `optax.flatten(optimizer)`, which is then `.optimizer`. All leaves must share one dtype (else ValueError).

    Returns:
      `FusedOptimizer(init, step, optimizer)`: `init(params)` is `optimizer.init(params)` and `step(grads, state,
      params) -> (params, state)` equals `updates, state = optimizer.update(grads, state, params)` followed by
      `optax.apply_updates(params, updates)`.
    """
    if not callable(getattr(optimizer, "init", None)) or not callable(getattr(optimizer, "update", None)):
        raise TypeError(f"optimjax.fused.of: optimizer must be an optax.GradientTransformation, got {optimizer!r}")
    if not isinstance(flat_state, bool):
        raise TypeError(f"optimjax.fused.of: flat_state must be True or False, got {flat_state!r}")
    kernel = kernel_of(optimizer)
    if flat_state:
        optimizer = _one_dtype(f"optimjax.fused.of({getattr(kernel, 'name', 'optimizer')}, flat_state=True)",
                               optax.flatten(optimizer))
    if not isinstance(kernel, Kernel):
        if kernel is None:
            kernel = ("the optimizer is not one of optimjax's optimizers with a kernel (adam, adamw, nadam, nadamw, "
                      "sgd with momentum, rmsprop, adagrad, radam, adamax, rprop, asgd) as its function returns it")
        if kernel:
            warnings.warn(f"optimjax.fused.of: the XLA path (update, then apply_updates) instead of the fused "
                          f"kernel: {kernel}", stacklevel=2)
        return FusedOptimizer(optimizer.init, functools.partial(_plain_step, optimizer), optimizer)
    name = kernel.name
    decays = not is_zero(kernel.weight_decay)
    coupled, decoupled = kernel.coupled and decays, decays and not kernel.coupled
    flags = 8 * kernel.flags[0] + 4 * kernel.flags[1] + 2 * coupled + decoupled  # fused_step.cc's four flags

    def step(grads, state, params):
        decay_at, direction_at, lr_at = _chain_parts(kernel, state)
        inner = state[direction_at]
        arrays = [getattr(inner, field) for field in kernel.arrays]
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
                warnings.warn(f"optimjax.fused.of({name}): XLA path instead of the fused kernel: {reason}",
                              stacklevel=2)
            return _plain_step(optimizer, grads, state, params)
        if not jax.tree.leaves(params):
            return params, optimizer.update(grads, state, params)[1]

        state = list(state)
        coefficients, fields = kernel.coefficients(inner)
        if len(coefficients) > FAMILY_COEFFICIENTS:  # a family's description that fused_step.cc cannot hold
            raise ValueError(f"{name}: {len(coefficients)} kernel coefficients, at most {FAMILY_COEFFICIENTS}")
        decay = 0.0
        if decays:
            decay, state[decay_at] = _hyperparameter(kernel.weight_decay, state[decay_at])
        lr = 0.0  # unused by a family that holds its learning rate
        if lr_at is not None:
            lr, state[lr_at] = _hyperparameter(kernel.learning_rate, state[lr_at])
        coefficients = [*coefficients, *[0.0] * (FAMILY_COEFFICIENTS - len(coefficients)), decay, -lr,
                        -1.0 if kernel.maximize else 1.0]  # each cast to the params' dtype, as `like` does
        params, *arrays = _fused_update(coefficients, params, grads, arrays, kernel.family, flags, flat_state)
        state[direction_at] = inner._replace(**fields, **dict(zip(kernel.arrays, arrays)))
        return params, tuple(state)

    return FusedOptimizer(optimizer.init, step, optimizer)


def _one_dtype(where: str, flat: optax.GradientTransformation) -> optax.GradientTransformation:
    """`flat` (an optax.flatten) whose init and update refuse params of several dtypes: one state vector for all
    the leaves would promote them (complex state for a real leaf, float32 state for a bfloat16 one), which the
    per-leaf step does not."""

    def check(params):
        one_dtype(where, params, "use flat_state=False")

    def init(params):
        check(params)
        return flat.init(params)

    def update(updates, state, params=None, **extra_args):
        check(params if params is not None else updates)
        return flat.update(updates, state, params, **extra_args)

    return optax.GradientTransformation(init, update)


def _plain_step(optimizer: optax.GradientTransformation, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
    """The optimizer's update and `optax.apply_updates`: the step when the kernel does not run."""
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state
