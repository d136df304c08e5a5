"""What the benchmarks share: the optimizers compared, parameter trees, the jitted step, the machine, the output."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import optax

import optimjax
import optimjax.fused
from optimjax._kernels import Kernel, kernel_of

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Contender:
    """One optimizer as optimjax, optax (its closest equivalent) and torch.optim build it, same hyperparameters.

    Attributes:
      name: the row's name.
      state_arrays: per-parameter arrays in the state (1 for a momentum or accumulator buffer, 2 for Adam's m, v).
      optimjax, optax: factories of the GradientTransformation.
      torch_class, torch_kwargs: the torch optimizer is `getattr(torch.optim, torch_class)(params, **torch_kwargs)`.
      optax_differs: how optax's method differs from torch's (and optimjax's), "" when it is the same method.
    """

    name: str
    state_arrays: int
    optimjax: Callable[[], optax.GradientTransformation]
    optax: Callable[[], optax.GradientTransformation]
    torch_class: str
    torch_kwargs: dict[str, Any]
    optax_differs: str = ""

    @property
    def fused(self) -> Callable[..., optimjax.fused.FusedOptimizer] | None:
        """Factory of `optimjax.fused.of(optimjax())` (keyword options such as flat_state=True are passed on), None
        where the optimjax optimizer has no one-pass kernel."""
        if not isinstance(kernel_of(self.optimjax()), Kernel):
            return None
        return lambda **options: optimjax.fused.of(self.optimjax(), **options)

    def floor_bytes(self, itemsize: int) -> int:
        """Bytes an ideal step moves per parameter: read params, grads and state once, write params and state."""
        return itemsize * (3 + 2 * self.state_arrays)


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in [
        Contender(
            "sgd_nesterov", 1,
            lambda: optimjax.nesterov(1e-2, momentum=0.9),
            lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True),
            "SGD", dict(lr=1e-2, momentum=0.9, nesterov=True),
        ),
        Contender(
            "adam", 2,
            lambda: optimjax.adam(1e-3),
            lambda: optax.adam(1e-3),
            "Adam", dict(lr=1e-3),
        ),
        Contender(
            "adamw", 2,
            lambda: optimjax.adamw(1e-3, weight_decay=1e-2),
            lambda: optax.adamw(1e-3, weight_decay=1e-2),
            "AdamW", dict(lr=1e-3, weight_decay=1e-2),
        ),
        Contender(
            "nadam", 2,
            lambda: optimjax.nadam(2e-3),
            lambda: optax.nadam(2e-3),
            "NAdam", dict(lr=2e-3),
            "optax.nadam has a constant momentum b1, no momentum schedule",
        ),
        Contender(
            "nadamw", 2,
            lambda: optimjax.nadamw(2e-3, weight_decay=1e-2),
            lambda: optax.nadamw(2e-3, weight_decay=1e-2),
            "NAdam", dict(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True),
            "optax.nadamw has a constant momentum b1, no momentum schedule",
        ),
        Contender(
            "rmsprop", 1,
            lambda: optimjax.rmsprop(1e-2),
            lambda: optax.rmsprop(1e-2, decay=0.99, eps=1e-8, eps_in_sqrt=False),
            "RMSprop", dict(lr=1e-2),
        ),
        Contender(
            "adagrad", 1,
            lambda: optimjax.adagrad(1e-2),
            lambda: optax.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10),
            "Adagrad", dict(lr=1e-2),
            "optax.adagrad puts eps inside the sqrt",
        ),
        Contender(
            "adamax", 2,
            lambda: optimjax.adamax(2e-3),
            lambda: optax.adamax(2e-3),
            "Adamax", dict(lr=2e-3),
        ),
        Contender(
            "asgd", 1,
            lambda: optimjax.asgd(1e-2, t0=0.0),
            lambda: optax.sgd(1e-2),
            "ASGD", dict(lr=1e-2, t0=0.0),
            "optax has no ASGD: its column is plain SGD (no decay term, no averaging)",
        ),
        Contender(
            "radam", 2,
            # eps=1e-3 (not the default 1e-8) so that optax's placement of eps shows in the like-for-like check
            # (tests/test_bench_smoke.py); the work per step is the same for any eps.
            lambda: optimjax.radam(1e-3, eps=1e-3),
            lambda: optax.radam(1e-3, eps=1e-3),
            "RAdam", dict(lr=1e-3, eps=1e-3),
            "optax.radam rectifies from rho_t >= 5 (torch: > 5) and adds eps to the bias-corrected sqrt(v) "
            "(torch: to the raw sqrt(v))",
        ),
        Contender(
            "rprop", 2,
            lambda: optimjax.rprop(1e-2),
            lambda: optax.rprop(1e-2),
            "Rprop", dict(lr=1e-2),
            "optax.rprop emits the previous step's update (its first update is 0): one step behind torch",
        ),
    ]
}


def parse_names(option: str, text: str, choices: dict[str, Any] | None = None,
                presets: dict[str, str] | None = None) -> list[str]:
    """Comma-separated optimizer names, each checked against `choices` (default CONTENDERS); "all" selects every
    one, and a name in `presets` stands for its comma-separated list."""
    choices = CONTENDERS if choices is None else choices
    presets = {"all": ",".join(choices), **(presets or {})}
    names = [name for n in text.split(",") if n.strip()
             for name in (presets[n.strip()].split(",") if n.strip() in presets else [n.strip()])]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise ValueError(f"{option}: unknown optimizer(s) {unknown or text!r}; choose from {', '.join(choices)}"
                         + "".join(f", or {name} ({names})" for name, names in presets.items()))
    return list(dict.fromkeys(names))


def parse_count(option: str, text: str) -> int:
    """A positive count such as 1000, 64K or 16M (K = 2**10, M = 2**20)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{option}: expected a positive count like 1000, 64K or 16M, got {text!r}")
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20}[match.group(2).lower()]


@dataclasses.dataclass(frozen=True)
class Config:
    """`n_params` fp32 parameters split into `n_leaves` 1-D leaves of (nearly) equal size."""

    n_params: int
    n_leaves: int

    @classmethod
    def parse(cls, text: str) -> "Config":
        """'16M/8' -> 16 * 2**20 parameters in 8 leaves."""
        parts = text.split("/")
        if len(parts) != 2:
            raise ValueError(f"--configs: expected PARAMS/LEAVES like 16M/8, got {text!r}")
        config = cls(parse_count("--configs", parts[0]), parse_count("--configs", parts[1]))
        if config.n_leaves > config.n_params:
            raise ValueError(f"--configs: {text!r} has more leaves than parameters")
        return config

    @property
    def name(self) -> str:
        return f"{_short(self.n_params)}/{self.n_leaves}"

    def leaf_sizes(self) -> list[int]:
        base, extra = divmod(self.n_params, self.n_leaves)
        return [base + (i < extra) for i in range(self.n_leaves)]

    def arrays(self, seed: int) -> list[np.ndarray]:
        """Standard-normal float32 leaves (numpy, so that JAX and torch start from the same numbers)."""
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(n, dtype=np.float32) for n in self.leaf_sizes()]


def _short(n: int) -> str:
    for suffix, scale in (("M", 2**20), ("K", 2**10)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def jitted_step(tx: optax.GradientTransformation, steps_per_call: int = 1) -> Callable:
    """`jit(step)` with params and state donated, as in a training loop: step(params, state, grads) -> both new.

    With `steps_per_call` > 1, one call runs that many steps in a `lax.fori_loop`: the time per step without
    JAX's per-call dispatch (which grows with the number of arrays passed in and out).
    """

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return _jit_steps(step, steps_per_call)


def jitted_fused_step(fused: optimjax.fused.FusedOptimizer, steps_per_call: int = 1) -> Callable:
    """`jitted_step` for an `optimjax.fused` optimizer: the step is `fused.step(grads, state, params)`."""
    return _jit_steps(lambda params, state, grads: fused.step(grads, state, params), steps_per_call)


def jitted(optimizer: optax.GradientTransformation | optimjax.fused.FusedOptimizer,
           steps_per_call: int = 1) -> Callable:
    """`jitted_fused_step` for a FusedOptimizer, else `jitted_step`."""
    if isinstance(optimizer, optimjax.fused.FusedOptimizer):
        return jitted_fused_step(optimizer, steps_per_call)
    return jitted_step(optimizer, steps_per_call)


def _jit_steps(step: Callable, steps_per_call: int) -> Callable:
    """jit(step), or of `steps_per_call` steps in a `lax.fori_loop`, with params and state (arguments 0, 1) donated."""

    def steps(params, state, grads):
        return jax.lax.fori_loop(0, steps_per_call, lambda _, carry: step(*carry, grads), (params, state))

    return jax.jit(step if steps_per_call == 1 else steps, donate_argnums=(0, 1))


def tree_bytes(tree: Any) -> int:
    """Bytes held by the array leaves of `tree` (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def peak_bytes(compiled: Any) -> int | None:
    """Peak device memory of a compiled computation: arguments + outputs not aliased to them + temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes)


def median(samples: list[float]) -> float:
    return float(np.median(samples)) if samples else math.nan


def machine(torch: Any = None) -> dict[str, Any]:
    """The machine, the device JAX runs on, the package versions and the load when the run started."""
    versions = {}
    for package in ("jax", "jaxlib", "optax", "optimjax", "numpy", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    device = jax.devices()[0]
    return {
        "cpu": _cpu_model(),
        "cores": cores(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "device": f"{device.platform}: {device.device_kind}",
        "device_count": jax.device_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # Whether optimjax.fused's CPU kernel is built and registered (this builds it, once, if not cached), so
        # that building it is never part of a timed compilation or step. Even when available, the kernel only
        # runs on a single CPU device; see each row's `fused_kernel` for whether a timed step called it.
        "optimjax_fused": {"available": optimjax.fused.available(),
                           "unavailable_reason": optimjax.fused.unavailable_reason()},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")


class Progress:
    """Prints `[done/total] elapsed message` to stderr as a long run goes."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, message: str, advance: bool = True) -> None:
        self.done += advance
        elapsed = time.perf_counter() - self.start
        print(f"[{self.done:>3}/{self.total}] {elapsed:6.1f}s  {message}", file=sys.stderr, flush=True)
