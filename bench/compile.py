"""Compile time of one optimizer step, optimjax against optax, for pytrees of 10, 100 and 1000 leaves.

    python -m bench.compile                                    # SGD Nesterov, AdamW, NAdam; 10, 100, 1000 leaves
    python -m bench.compile --optimizers all --leaves 1000 --repeats 5

The step is the one `python -m bench.step` times, `jit(update + apply_updates)` with params and state donated.
Tracing and lowering (`jax.jit(step).lower(...)`, Python and JAX) and XLA's compilation (`.compile()`) are timed
separately, on abstract arguments (no arrays are allocated), with a fresh `jax.jit` each time so that nothing is
reused from a cache. One untimed compilation per tree size comes first (the first one of a size is slower);
then optimjax and optax take turns, which one goes first alternating. Reported: medians over `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench.harness import CONTENDERS, RESULTS, Progress, jitted_step, machine, median, parse_names, write_json

DEFAULT_LEAVES = "10,100,1000"
DEFAULT_OPTIMIZERS = "sgd_nesterov,adamw,nadam"  # one of each family; a 1000-leaf compilation takes ~10 s here
IMPLS = ("optimjax", "optax")


# The leaves of one block of a small transformer (width 64): layer-norm scale and bias, attention QKV and output
# projections, layer-norm scale and bias, MLP in and out. A tree of n leaves repeats them.
BLOCK_SHAPES = [(64,), (64,), (64, 192), (192,), (64, 64), (64,), (64,), (64,), (64, 256), (256,), (256, 64), (64,)]


def abstract_params(n_leaves: int) -> list[jax.ShapeDtypeStruct]:
    """`n_leaves` fp32 leaves shaped like the parameters of a stack of small transformer blocks."""
    return [jax.ShapeDtypeStruct(BLOCK_SHAPES[i % len(BLOCK_SHAPES)], jnp.float32) for i in range(n_leaves)]


def compile_seconds(tx: Any, params: list[jax.ShapeDtypeStruct]) -> tuple[float, float]:
    """Seconds to trace and lower one step, and seconds for XLA to compile it."""
    state = jax.eval_shape(tx.init, params)
    start = time.perf_counter()
    lowered = jitted_step(tx).lower(params, state, params)
    traced = time.perf_counter()
    lowered.compile()
    return traced - start, time.perf_counter() - traced


def table(rows: list[dict[str, Any]]) -> str:
    cols = ("leaves", "optimizer", "optimjax s", "(trace)", "optax s", "(trace)", "optimjax/optax")
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    for row in rows:
        ours, theirs = row["optimjax"], row["optax"]
        cells = (row["leaves"], row["optimizer"], f"{ours['total_s']:.2f}", f"{ours['trace_s']:.2f}",
                 f"{theirs['total_s']:.2f}", f"{theirs['trace_s']:.2f}", f"{row['ratio']:.2f}")
        lines.append("  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Total compile time against the number of leaves, one colour per optimizer, optax dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = results["rows"]
    for k, name in enumerate(dict.fromkeys(row["optimizer"] for row in rows)):
        mine = [row for row in rows if row["optimizer"] == name]
        leaves = [row["leaves"] for row in mine]
        for impl, style in zip(IMPLS, ("-", "--")):
            ax.plot(leaves, [row[impl]["total_s"] for row in mine], style, marker="o", color=f"C{k}",
                    label=f"{name} ({impl})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("leaves in the parameter tree")
    ax.set_ylabel("trace + lower + compile, s")
    m = results["machine"]
    ax.set_title(f"jit compile time of one step: {m['cpu']}, {m['cores']} cores ({m['date'][:10]})", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(leaves: str = DEFAULT_LEAVES, optimizers: str = DEFAULT_OPTIMIZERS, repeats: int = 3,
        out: Path | None = RESULTS) -> dict[str, Any]:
    """Time the compilation of every optimizer's step; print a table; write compile.json and compile.png."""
    try:
        leaf_counts = [int(n) for n in leaves.split(",")]
    except ValueError:
        leaf_counts = []
    if not leaf_counts or min(leaf_counts) < 1:
        raise ValueError(f"--leaves: expected comma-separated positive integers, got {leaves!r}")
    if repeats < 1:
        raise ValueError(f"--repeats: must be >= 1, got {repeats}")
    names = parse_names("--optimizers", optimizers)
    description = machine()  # before the run: its load average is the one at the start
    progress = Progress(len(leaf_counts) * len(names))
    rows = []
    for n_leaves in leaf_counts:
        params = abstract_params(n_leaves)
        compile_seconds(CONTENDERS[names[0]].optax(), params)  # untimed: the first compilation of a size is slower
        for i, name in enumerate(names):
            contender = CONTENDERS[name]
            samples: dict[str, dict[str, list[float]]] = {impl: {"trace_s": [], "compile_s": []} for impl in IMPLS}
            for r in range(repeats):
                order = IMPLS if (i + r) % 2 == 0 else IMPLS[::-1]
                for impl in order:
                    traced, compiled = compile_seconds(getattr(contender, impl)(), params)
                    samples[impl]["trace_s"].append(traced)
                    samples[impl]["compile_s"].append(compiled)
            row: dict[str, Any] = {"leaves": n_leaves, "optimizer": name}
            for impl in IMPLS:
                totals = [a + b for a, b in zip(samples[impl]["trace_s"], samples[impl]["compile_s"])]
                row[impl] = {"trace_s": median(samples[impl]["trace_s"]),
                             "compile_s": median(samples[impl]["compile_s"]), "total_s": median(totals),
                             "samples_total_s": totals}
            row["ratio"] = row["optimjax"]["total_s"] / row["optax"]["total_s"]
            rows.append(row)
            progress(f"{n_leaves} leaves, {name}: optimjax {row['optimjax']['total_s']:.2f} s, "
                     f"optax {row['optax']['total_s']:.2f} s")
    results = {"benchmark": "compile", "machine": description,
               "settings": {"leaves": leaf_counts, "optimizers": names, "repeats": repeats,
                            "leaf_shapes": f"float32, cycling through {BLOCK_SHAPES}"},
               "rows": rows}
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(rows))
    for n_leaves in leaf_counts:
        ratios = [row["ratio"] for row in rows if row["leaves"] == n_leaves]
        print(f"{n_leaves} leaves: optimjax/optax median {np.median(ratios):.2f}, worst {max(ratios):.2f}")
    if out is not None:
        write_json(Path(out) / "compile.json", results)
        plot(results, Path(out) / "compile.png")
        print(f"wrote {Path(out) / 'compile.json'} and {Path(out) / 'compile.png'}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", default=DEFAULT_LEAVES, help="comma-separated leaf counts (default %(default)s)")
    parser.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, help="comma-separated names or 'all' "
                        "(default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="compilations per implementation (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where compile.json and compile.png go")
    a = parser.parse_args(argv)
    try:
        run(a.leaves, a.optimizers, a.repeats, a.out)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
