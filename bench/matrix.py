"""Step time and memory of the matrix optimizers, Adafactor and Muon: optimjax against optax and torch.optim.

    python -m bench.matrix                  # 8 matrices 1024x1024 + one 4096x1024 (+ 4 biases for Adafactor)
    python -m bench.matrix --quick          # tiny matrices, a few seconds (what tests/test_bench_smoke.py runs)
    python -m bench.matrix --optimizers muon --matrices 4*2048x2048 --ns-steps 5

Adafactor and Muon are not elementwise (Adafactor keeps row and column statistics of each matrix, Muon
orthogonalizes each matrix by Newton-Schulz iterations), so `bench.step`'s 1-D leaves do not suit them. Here the
parameters are fp32 matrices (and, for Adafactor only, a few 1-D biases, which keep a full second moment).

- **Adafactor**: `optimjax.adafactor` against `optax.adafactor` (another algorithm, see ADAFACTOR_DIFFERS) and
  `torch.optim.Adafactor` (foreach=False and foreach=True). Besides the step time: the bytes of the optimizer's
  state, as a tree and as the compiled step holds it (`memory_analysis()`: arguments minus params and grads), against
  the factored size: r + c floats of second moment per (r, c) matrix, n per bias, plus the int32 step count.
- **Muon**: `optimjax.muon` with its default bfloat16 Newton-Schulz and with `ns_dtype=jnp.float32`, against
  `optax.contrib.muon` and `torch.optim.Muon` at the same `ns_steps` and coefficients (see MUON_DIFFERS). Besides the
  step time: GFLOP/s of the Newton-Schulz iterations (for an m x n matrix, m <= n: X X^T 2 m^2 n, A A 2 m^3,
  B X 2 m^2 n, i.e. 4 m^2 n + 2 m^3 per iteration) next to the machine's matmul rate in the same dtype, measured in
  the same run on each shape's (m x n)(n x m) product (jitted; torch's own bfloat16 matmul for torch's row).

How it times, as `bench.step` does: each JAX step is `jit(update + apply_updates)` with params and state donated,
compiled before timing, on buffers owned by that implementation; implementations take turns one step at a time,
rotating which goes first, with a pass over a buffer larger than the caches before every step; torch runs in its
own block after the JAX block of each round, then a pause. Reported: medians; "/optax" is the median of the ratio
of two steps taken back to back. Writes `matrix.json` (every sample, the machine, the settings) and `matrix.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import time
import types
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

import optimjax
from bench.harness import RESULTS, Progress, cores, machine, median, peak_bytes, tree_bytes, write_json
from bench.step import JaxStep, Stream, TorchStep, TorchStream, load_torch, paired_ratio, take_turns

DEFAULT_MATRICES = "8*1024x1024,4096x1024"
DEFAULT_VECTORS = "4*1024"
QUICK_MATRICES = "2*64x48,96x32"
QUICK_VECTORS = "2*16"
OPTIMIZERS = ("adafactor", "muon")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's default quintic, passed to all three
MUON_LR, MUON_WEIGHT_DECAY, MUON_MOMENTUM, MUON_EPS = 0.02, 0.1, 0.95, 1e-7  # torch's defaults but lr

ADAFACTOR_DIFFERS = (
    "optax.adafactor is another algorithm (the paper's and T5's choices): a fixed learning rate times the "
    "parameters' RMS (torch: the relative step min(lr, 1/sqrt(t)) times it), the two largest dims factored only "
    "where both are >= 128 (torch: the last two dims of every tensor with >= 2 dims), eps 1e-30 added to g**2 "
    "(torch: a clamp at eps1**2); the same 1 - t**-0.8 second-moment rate and clipping of the update at RMS 1. "
    "Its rows compare similar, not identical, work."
)
MUON_DIFFERS = (
    "optax.contrib.muon bias-corrects the momentum, runs Newton-Schulz in the gradient's dtype (float32 here; "
    "torch and optimjax's default: bfloat16), scales the update of an (r, c) matrix by sqrt(max(1, c / r)) (torch: "
    "sqrt(max(1, r / c))) and would send non-2-D leaves to Adam (torch and optimjax raise); same ns_steps, "
    "coefficients, eps, momentum, nesterov and decoupled weight decay here."
)


def parse_shapes(option: str, text: str, ndim: int) -> tuple[tuple[int, ...], ...]:
    """'8*1024x1024,4096x1024' -> eight (1024, 1024) and one (4096, 1024); '' -> none. `ndim` dims per shape."""
    shapes: list[tuple[int, ...]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(?:(\d+)\*)?(\d+(?:x\d+)*)", part)
        dims = tuple(int(d) for d in match.group(2).split("x")) if match else ()
        count = int(match.group(1) or 1) if match else 0
        if len(dims) != ndim or count < 1 or min(dims) < 1:
            example = "8*1024x1024,4096x1024" if ndim == 2 else "4*1024"
            raise ValueError(f"{option}: expected [COUNT*]{'ROWSxCOLS' if ndim == 2 else 'SIZE'},... like {example}, "
                             f"got {part!r}")
        shapes += [dims] * count
    return tuple(shapes)


@dataclasses.dataclass(frozen=True)
class MatrixConfig:
    """fp32 matrices (every optimizer) and 1-D leaves (Adafactor only; Muon takes matrices only)."""

    matrices: tuple[tuple[int, int], ...]
    vectors: tuple[tuple[int], ...]

    def shapes(self, optimizer: str) -> list[tuple[int, ...]]:
        return list(self.matrices) + (list(self.vectors) if optimizer == "adafactor" else [])

    def arrays(self, optimizer: str, seed: int) -> list[np.ndarray]:
        """Standard-normal float32 leaves (numpy, so that JAX and torch start from the same numbers)."""
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(shape, dtype=np.float32) for shape in self.shapes(optimizer)]

    def describe(self, optimizer: str) -> str:
        counts: dict[tuple[int, ...], int] = {}
        for shape in self.shapes(optimizer):
            counts[shape] = counts.get(shape, 0) + 1
        return " + ".join(f"{n} x {'x'.join(map(str, s))}" for s, n in counts.items())


def factored_bytes(shapes: list[tuple[int, ...]], itemsize: int = 4) -> int:
    """Adafactor's factored second moment: r + c floats per (r, c) matrix, n per vector, plus an int32 count."""
    return itemsize * sum(sum(s) if len(s) == 2 else math.prod(s) for s in shapes) + 4


def ns_flops(shape: tuple[int, int], ns_steps: int) -> int:
    """FLOPs of `ns_steps` Newton-Schulz iterations on an (r, c) matrix: 4 m^2 n + 2 m^3 each, m = min(r, c)."""
    m, n = sorted(shape)
    return ns_steps * (4 * m * m * n + 2 * m ** 3)


def implementations(optimizer: str, ns_steps: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """JAX implementations (name -> factory of the GradientTransformation) and torch's (name -> how to build it)."""
    if optimizer == "adafactor":
        jax_impls = {"optimjax": lambda: optimjax.adafactor(1e-2),
                     "optax": lambda: optax.adafactor(1e-2)}
        spec = types.SimpleNamespace(torch_class="Adafactor", torch_kwargs=dict(lr=1e-2))
        return jax_impls, {"torch": (spec, "foreach", False), "torch foreach": (spec, "foreach", True)}
    common = dict(weight_decay=MUON_WEIGHT_DECAY, nesterov=True, eps=MUON_EPS, ns_steps=ns_steps)
    jax_impls = {
        "optimjax bf16": lambda: optimjax.muon(MUON_LR, momentum=MUON_MOMENTUM, ns_coefficients=NS_COEFFICIENTS,
                                               **common),
        "optimjax fp32": lambda: optimjax.muon(MUON_LR, momentum=MUON_MOMENTUM, ns_coefficients=NS_COEFFICIENTS,
                                               ns_dtype=jnp.float32, **common),
        "optax": lambda: optax.contrib.muon(MUON_LR, ns_coeffs=NS_COEFFICIENTS, beta=MUON_MOMENTUM, **common),
    }
    spec = types.SimpleNamespace(torch_class="Muon", torch_kwargs=dict(lr=MUON_LR, momentum=MUON_MOMENTUM,
                                                                      ns_coefficients=NS_COEFFICIENTS, **common))
    return jax_impls, {"torch": (spec, None, None)}


# The dtype each implementation's Newton-Schulz matmuls run in (bf16: bfloat16 inputs, float32 accumulation).
NS_DTYPE = {"optimjax bf16": "bf16", "optimjax fp32": "fp32", "optax": "fp32", "torch": "bf16"}


class Matmul:
    """A jitted (m x n)(n x m) product in bf16 (float32 accumulation, as optimjax's Newton-Schulz) or fp32, or
    torch's in bf16; a call returns seconds."""

    def __init__(self, shape: tuple[int, int], dtype: str, torch: Any = None):
        m, n = sorted(shape)
        self.flops = 2 * m * m * n
        self.torch = torch
        if torch is not None:
            self.a = torch.ones(m, n, dtype=torch.bfloat16)
            return
        jdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        self.a = jnp.full((m, n), 0.5, jdtype)
        self.compiled = jax.jit(lambda a: jnp.matmul(a, a.T, preferred_element_type=jnp.float32)).lower(
            self.a).compile()

    def __call__(self) -> float:
        start = time.perf_counter()
        if self.torch is not None:
            self.a @ self.a.T
        else:
            self.compiled(self.a).block_until_ready()
        return time.perf_counter() - start


def jax_memory(step: JaxStep, params: list[np.ndarray], grads: list[jax.Array]) -> dict[str, int | None]:
    """The state's bytes as a tree and as the compiled step holds it (its arguments less params and grads; state
    leaves that the update returns unchanged are passed around the computation by jit and not counted there), the
    step's temporaries and its peak."""
    stats = step.compiled.memory_analysis()
    state = tree_bytes(step.state)
    if stats is None:
        return {"state_bytes": state, "compiled_state_bytes": None, "temp_bytes": None, "peak_bytes": None}
    return {"state_bytes": state,
            "compiled_state_bytes": stats.argument_size_in_bytes - tree_bytes(params) - tree_bytes(grads),
            "temp_bytes": stats.temp_size_in_bytes, "peak_bytes": peak_bytes(step.compiled)}


def torch_state_bytes(run: TorchStep) -> int:
    """Bytes of the tensors in a torch optimizer's state (after a step), step counters included."""
    return sum(v.numel() * v.element_size() for state in run.optimizer.state.values() for v in state.values()
               if hasattr(v, "element_size"))


def measure(optimizer: str, config: MatrixConfig, stream: Stream, torch: Any, device: str,
            args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Time one optimizer: JAX and torch blocks in alternation, `args.rounds` times; then its memory."""
    shapes = config.shapes(optimizer)
    params, grads_np = config.arrays(optimizer, seed=0), config.arrays(optimizer, seed=1)
    grads = [jnp.asarray(g) for g in grads_np]
    progress(f"{optimizer}: compiling", advance=False)
    factories, torch_specs = implementations(optimizer, args.ns_steps)
    jax_runs = {name: JaxStep(factory(), params, grads) for name, factory in factories.items()}
    for run in jax_runs.values():
        # Every state leaf its own buffer: optimjax.adafactor's eager init puts one 0-d zero in both the row_var
        # and the col_var slot of a 1-D leaf, which a step that donates the state refuses ("donate the same
        # buffer twice").
        run.state = jax.tree.map(jnp.copy, run.state)
    torch_runs, unavailable = {}, {}
    for name, (spec, flag, value) in torch_specs.items():
        if torch is None:
            unavailable[name] = args.torch_skipped
            continue
        try:
            run = TorchStep(torch, spec, params, grads_np, flag, device, value)
            run()  # a first step fails here, not in the timed loop
            torch_runs[name] = run
        except (TypeError, RuntimeError, ValueError) as err:
            unavailable[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    matmuls: dict[str, Callable[[], float]] = {}
    if optimizer == "muon":
        for shape in sorted(set(shapes)):
            for dtype in ("bf16", "fp32"):
                matmuls[f"jax {dtype} {shape[0]}x{shape[1]}"] = Matmul(shape, dtype)
            if torch is not None and device == "cpu":
                matmuls[f"torch bf16 {shape[0]}x{shape[1]}"] = Matmul(shape, "bf16", torch)
    steps = args.steps if args.steps else (6 if optimizer == "muon" else 20)
    per_round = math.ceil(steps / args.rounds)
    progress(f"{optimizer}: timing {args.rounds} rounds of {per_round} steps", advance=False)
    take_turns(jax_runs, args.warmup, 0, stream)
    take_turns(torch_runs, args.warmup, 0, args.torch_stream)
    take_turns(matmuls, 1, 0, lambda: 0.0)  # one untimed call each
    time.sleep(args.pause)
    samples: dict[str, list[float]] = {name: [] for name in [*jax_runs, *torch_runs, *matmuls]}
    for r in range(args.rounds):
        times, _ = take_turns(jax_runs, per_round, r, stream)
        matmul_times, _ = take_turns(matmuls, 5, r, lambda: 0.0)
        times.update(matmul_times)
        time.sleep(args.pause)
        if torch_runs:
            torch_times, _ = take_turns(torch_runs, per_round, r, args.torch_stream)
            times.update(torch_times)
            time.sleep(args.pause)
        for name, t in times.items():
            samples[name].extend(t)
    step_names = [*jax_runs, *torch_runs]
    ms = {name: 1e3 * median(samples[name]) for name in step_names}
    row: dict[str, Any] = {
        "optimizer": optimizer,
        "shapes": [list(s) for s in shapes],
        "n_params": sum(math.prod(s) for s in shapes),
        "optax_differs": ADAFACTOR_DIFFERS if optimizer == "adafactor" else MUON_DIFFERS,
        "timed_steps": per_round * args.rounds,
        "ms": ms,
        "ratio_to_optax": {name: paired_ratio(samples[name], samples["optax"]) for name in jax_runs},
        "torch_unavailable": unavailable,
        "samples_ms": {name: [1e3 * t for t in samples[name]] for name in step_names},
    }
    if optimizer == "adafactor":
        factored = factored_bytes(shapes)
        memory: dict[str, dict[str, Any]] = {name: jax_memory(run, params, grads) for name, run in jax_runs.items()}
        for name, run in torch_runs.items():
            memory[name] = {"state_bytes": torch_state_bytes(run)}
        for entry in memory.values():
            for key in ("state_bytes", "compiled_state_bytes"):
                if entry.get(key) is not None:
                    entry[key.replace("bytes", "ratio")] = entry[key] / factored
        row.update(factored_bytes=factored, full_second_moment_bytes=4 * row["n_params"], memory=memory)
    else:
        flops = sum(ns_flops(s, args.ns_steps) for s in shapes)
        rates = {name: matmul_rate(samples, name, shapes, args.ns_steps)
                 for name in ("jax bf16", "jax fp32", "torch bf16")
                 if all(f"{name} {s[0]}x{s[1]}" in samples for s in shapes)}
        row.update(ns_steps=args.ns_steps, ns_flops=flops,
                   ns_gflop_s={name: flops / (t / 1e3) / 1e9 for name, t in ms.items()},
                   ns_dtype={name: NS_DTYPE[name] for name in step_names},
                   matmul_gflop_s={name: rate / 1e9 for name, rate in rates.items()},
                   matmul_samples_ms={name: [1e3 * t for t in samples[name]] for name in matmuls},
                   memory={name: jax_memory(run, params, grads) for name, run in jax_runs.items()})
        for name, run in torch_runs.items():
            row["memory"][name] = {"state_bytes": torch_state_bytes(run)}
    progress(f"{optimizer}: " + ", ".join(f"{name} {t:.1f} ms" for name, t in ms.items()))
    return row


def matmul_rate(samples: dict[str, list[float]], name: str, shapes: list[tuple[int, ...]], ns_steps: int) -> float:
    """FLOP/s of the `name` matmuls ("jax bf16", ...) weighted as the step's Newton-Schulz work is: its FLOPs over
    the time they would take at each shape's measured (m x n)(n x m) rate."""
    seconds = 0.0
    for s in shapes:
        m, n = sorted(s)
        seconds += ns_flops(s, ns_steps) / (2 * m * m * n / median(samples[f"{name} {s[0]}x{s[1]}"]))
    return sum(ns_flops(s, ns_steps) for s in shapes) / seconds


def _ms(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.3f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def adafactor_table(row: dict[str, Any]) -> list[list[str]]:
    cells = [["implementation", "ms", "/optax", "state MiB", "state / factored", "compiled state MiB",
              "compiled state / factored", "temporaries MiB", "peak MiB"]]
    for name, t in row["ms"].items():
        mem = row["memory"].get(name, {})
        ratio = row["ratio_to_optax"].get(name)
        cells.append([name, _ms(t), _ms(ratio), _mib(mem.get("state_bytes")), _ratio(mem.get("state_ratio")),
                      _mib(mem.get("compiled_state_bytes")), _ratio(mem.get("compiled_state_ratio")),
                      _mib(mem.get("temp_bytes")), _mib(mem.get("peak_bytes"))])
    return cells


def muon_table(row: dict[str, Any]) -> list[list[str]]:
    cells = [["implementation", "NS dtype", "ms", "/optax", "NS GFLOP/s", "matmul GFLOP/s (same dtype)",
              "% of matmul rate", "state MiB"]]
    for name, t in row["ms"].items():
        dtype = row["ns_dtype"][name]
        rate = row["matmul_gflop_s"].get(f"{'torch' if name == 'torch' else 'jax'} {dtype}")
        gflops = row["ns_gflop_s"][name]
        cells.append([name, dtype, _ms(t), _ms(row["ratio_to_optax"].get(name)), f"{gflops:.1f}",
                      "n/a" if rate is None else f"{rate:.1f}",
                      "n/a" if rate is None else f"{100 * gflops / rate:.0f}%",
                      _mib(row["memory"].get(name, {}).get("state_bytes"))])
    return cells


def heading(row: dict[str, Any]) -> str:
    shapes = " + ".join(f"{n} x {s}" for s, n in _counts(row["shapes"]).items())
    text = f"{row['optimizer']}, fp32 {shapes} ({row['n_params']:,} params)"
    if row["optimizer"] == "adafactor":
        return (f"{text}: factored state {row['factored_bytes']:,} B (full second moment would be "
                f"{row['full_second_moment_bytes']:,} B)")
    return f"{text}: {row['ns_steps']} Newton-Schulz steps, {row['ns_flops'] / 1e9:.2f} GFLOP per step"


def _counts(shapes: list[list[int]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in shapes:
        counts["x".join(map(str, s))] = counts.get("x".join(map(str, s)), 0) + 1
    return counts


def cells_of(row: dict[str, Any]) -> list[list[str]]:
    return adafactor_table(row) if row["optimizer"] == "adafactor" else muon_table(row)


def table(row: dict[str, Any]) -> str:
    cells = cells_of(row)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join([heading(row), *("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)])


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['device']}; load average "
             f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end; torch threads "
             f"{m['torch_threads']}; XLA_FLAGS={m['xla_flags']!r}; {m['date']}"]
    for row in results["rows"]:
        cells = cells_of(row)
        parts += ["", f"**{heading(row)}**", "", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        parts += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        parts += ["", f"How optax's differs: {row['optax_differs']}"]
        if row["torch_unavailable"]:
            parts += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in row["torch_unavailable"].items())]
    return "\n".join(parts) + "\n"


def run(optimizers: str = ",".join(OPTIMIZERS), matrices: str = DEFAULT_MATRICES, vectors: str = DEFAULT_VECTORS,
        ns_steps: int = 5, steps: int | None = None, rounds: int = 2, warmup: int = 1, stream_mib: int = 256,
        torch_threads: int | None = None, no_torch: bool = False, pause: float = 0.2, quick: bool = False,
        out: Path | None = RESULTS) -> dict[str, Any]:
    """Run the benchmark, print a table per optimizer, write `matrix.json` and `matrix.md` to `out`.

    `quick`: tiny matrices (QUICK_MATRICES, QUICK_VECTORS), 2 timed steps, a 1 MiB flush: seconds, for the smoke
    test; never for figures."""
    if quick:
        matrices, vectors, steps, rounds, warmup, stream_mib = QUICK_MATRICES, QUICK_VECTORS, 2, 1, 1, 1
    names = [n.strip() for n in optimizers.split(",") if n.strip()]
    if not names or any(n not in OPTIMIZERS for n in names):
        raise ValueError(f"--optimizers: expected a comma-separated subset of {', '.join(OPTIMIZERS)}, got "
                         f"{optimizers!r}")
    config = MatrixConfig(parse_shapes("--matrices", matrices, 2), parse_shapes("--vectors", vectors, 1))
    if not config.matrices:
        raise ValueError("--matrices: at least one matrix is needed")
    if (steps is not None and steps < 1) or rounds < 1 or warmup < 0 or stream_mib < 1 or not 1 <= ns_steps < 100:
        raise ValueError(f"steps and rounds must be >= 1, warmup >= 0, stream_mib >= 1, ns_steps in [1, 100); got "
                         f"steps={steps}, rounds={rounds}, warmup={warmup}, stream_mib={stream_mib}, "
                         f"ns_steps={ns_steps}")
    torch, device, skipped = (None, "", "--no-torch") if no_torch else load_torch(torch_threads or cores())
    args = argparse.Namespace(ns_steps=ns_steps, steps=steps, rounds=rounds, warmup=warmup, pause=pause,
                              torch_skipped=skipped,
                              torch_stream=TorchStream(torch, stream_mib, device) if torch else None)
    results: dict[str, Any] = {
        "benchmark": "matrix",
        "machine": machine(torch),
        "settings": {"optimizers": names, "matrices": matrices, "vectors": vectors, "ns_steps": ns_steps,
                     "steps": steps, "rounds": rounds, "warmup": warmup, "stream_mib": stream_mib, "quick": quick,
                     "torch_device": device, "torch_skipped": skipped, "pause_s": pause},
        "rows": [],
    }
    progress = Progress(len(names))
    stream = Stream(stream_mib)
    for name in names:
        row = measure(name, config, stream, torch, device, args, progress)
        results["rows"].append(row)
        print(table(row), flush=True)
        print(flush=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if out is not None:
        write_json(Path(out) / "matrix.json", results)
        (Path(out) / "matrix.md").write_text(markdown(results))
        print(f"wrote matrix.json and matrix.md to {out}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="adafactor, muon or both (default both)")
    parser.add_argument("--matrices", default=DEFAULT_MATRICES, help="[COUNT*]ROWSxCOLS,... (default %(default)s)")
    parser.add_argument("--vectors", default=DEFAULT_VECTORS,
                        help="[COUNT*]SIZE,... 1-D leaves for Adafactor (default %(default)s; '' for none)")
    parser.add_argument("--ns-steps", type=int, default=5, help="Newton-Schulz iterations of every Muon (default 5)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per implementation (default 20 for Adafactor, 6 for Muon)")
    parser.add_argument("--rounds", type=int, default=2, help="JAX/torch block alternations (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--stream-mib", type=int, default=256, help="cache-flush buffer before every step (MiB)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: cores)")
    parser.add_argument("--no-torch", action="store_true", help="skip torch.optim")
    parser.add_argument("--quick", action="store_true", help="tiny matrices and 2 steps: checks that it runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where matrix.json and matrix.md go")
    a = parser.parse_args(argv)
    try:
        run(a.optimizers, a.matrices, a.vectors, a.ns_steps, a.steps, a.rounds, a.warmup, a.stream_mib,
            a.torch_threads, a.no_torch, quick=a.quick, out=a.out)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
