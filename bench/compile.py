"""Compile time of one optimizer step, optimjax (and optimjax.fused) against optax, for 10, 100 and 1000 leaves.

    python -m bench.compile                                    # SGD Nesterov, AdamW, NAdam; 10, 100, 1000 leaves
    python -m bench.compile --optimizers all --leaves 1000 --repeats 5
    python -m bench.compile --optimizers new                   # RAdam, Rprop, Adamax, ASGD, Adafactor, Muon

The step is the one `python -m bench.step` times, `jit(update + apply_updates)` with params and state donated,
and where the optimizer has a one-pass kernel (`Contender.fused`) also `jit(optimjax.fused.of(optimizer).step)`,
which compiles to one custom call over every leaf (its C++ kernel is built, or loaded from its cache, before any timing).
Tracing and lowering (`jax.jit(step).lower(...)`, Python and JAX) and XLA's compilation (`.compile()`) are timed
separately, on abstract arguments (no arrays are allocated), with a fresh `jax.jit` each time so that nothing is
reused from a cache. One untimed compilation per tree size comes first (the first one of a size is slower);
then the implementations take turns, which one goes first rotating. Reported: medians over `--repeats`.
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
import optax
import optax.contrib

import optimjax
import optimjax.fused
from bench.harness import CONTENDERS, RESULTS, Contender, Progress, jitted, machine, median, parse_names, write_json

DEFAULT_LEAVES = "10,100,1000"
DEFAULT_OPTIMIZERS = "sgd_nesterov,adamw,nadam"  # one of each family; a 1000-leaf compilation takes ~10 s here
# `--optimizers new`: the optimizers of issue 12 (elementwise, and the two matrix ones below).
NEW_OPTIMIZERS = "radam,rprop,adamax,asgd,adafactor,muon"


def _muon_and_adam(muon: optax.GradientTransformation, adam: optax.GradientTransformation):
    """`muon` for the matrices of the tree, `adam` for its other leaves (as optax.contrib.muon splits them)."""
    return optax.partition({"muon": muon, "adam": adam},
                           lambda params: jax.tree.map(lambda p: "muon" if p.ndim == 2 else "adam", params))


# Adafactor and Muon are not elementwise, so they are not in bench.step's CONTENDERS (1-D leaves); the trees here
# have matrices. torch_class/torch_kwargs are unused by this benchmark (see bench.matrix for their step times).
MATRIX_CONTENDERS = {
    "adafactor": Contender(
        "adafactor", 0,
        lambda: optimjax.adafactor(1e-2),
        lambda: optax.adafactor(1e-2),
        "Adafactor", dict(lr=1e-2),
        "optax.adafactor is another algorithm (see bench/matrix.py)",
    ),
    # Muon takes matrices only: its matrices get Muon, the other leaves Adam, in optimjax as in optax.contrib.muon.
    "muon": Contender(
        "muon", 1,
        lambda: _muon_and_adam(optimjax.muon(0.02, ns_coefficients=(3.4445, -4.7750, 2.0315), ns_steps=5),
                               optimjax.adam(0.02)),
        lambda: optax.contrib.muon(0.02, ns_coeffs=(3.4445, -4.7750, 2.0315), ns_steps=5, beta=0.95, eps=1e-7,
                                   weight_decay=0.1),
        "Muon", dict(lr=0.02),
        "optax.contrib.muon bias-corrects the momentum and runs Newton-Schulz in float32 (see bench/matrix.py)",
    ),
}
CHOICES = {**CONTENDERS, **MATRIX_CONTENDERS}
FUSED = "optimjax fused"
IMPLS = ("optimjax", "optax", FUSED)  # FUSED where the contender has an optimjax.fused variant


# The leaves of one block of a small transformer (width 64): layer-norm scale and bias, attention QKV and output
# projections, layer-norm scale and bias, MLP in and out. A tree of n leaves repeats them.
BLOCK_SHAPES = [(64,), (64,), (64, 192), (192,), (64, 64), (64,), (64,), (64,), (64, 256), (256,), (256, 64), (64,)]


def abstract_params(n_leaves: int) -> list[jax.ShapeDtypeStruct]:
    """`n_leaves` fp32 leaves shaped like the parameters of a stack of small transformer blocks."""
    return [jax.ShapeDtypeStruct(BLOCK_SHAPES[i % len(BLOCK_SHAPES)], jnp.float32) for i in range(n_leaves)]


def implementations(contender: Contender) -> dict[str, Any]:
    """Factory of each implementation of `contender` that is timed: optimjax, optax and optimjax.fused's if any."""
    factories = {"optimjax": contender.optimjax, "optax": contender.optax, FUSED: contender.fused}
    return {impl: factories[impl] for impl in IMPLS if factories[impl] is not None}


def compile_seconds(tx: Any, params: list[jax.ShapeDtypeStruct]) -> tuple[float, float, Any]:
    """Seconds to trace and lower one step, seconds for XLA to compile it, and the lowered step (`tx`: a
    GradientTransformation or a FusedOptimizer)."""
    state = jax.eval_shape(tx.init, params)
    start = time.perf_counter()
    lowered = jitted(tx).lower(params, state, params)
    traced = time.perf_counter()
    lowered.compile()
    return traced - start, time.perf_counter() - traced, lowered


def table(rows: list[dict[str, Any]]) -> str:
    """Median seconds (trace + lower + compile, and trace + lower alone) per row; "fused" is optimjax.fused."""
    cols = ("leaves", "optimizer", "optimjax s", "(trace)", "fused s", "(trace)", "optax s", "(trace)",
            "optimjax/optax", "fused/optax")
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    for row in rows:
        cells = [row["leaves"], row["optimizer"]]
        for impl in ("optimjax", FUSED, "optax"):
            times = row.get(impl)
            cells += [f"{times['total_s']:.2f}", f"{times['trace_s']:.2f}"] if times else ["n/a", "n/a"]
        cells += [f"{row['ratio']:.2f}", "n/a" if row["fused_ratio"] is None else f"{row['fused_ratio']:.2f}"]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Total compile time against the number of leaves, one colour per optimizer, optax dashed, fused dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = results["rows"]
    for k, name in enumerate(dict.fromkeys(row["optimizer"] for row in rows)):
        mine = [row for row in rows if row["optimizer"] == name]
        leaves = [row["leaves"] for row in mine]
        for impl, style, marker in zip(IMPLS, ("-", "--", ":"), ("o", "o", "s")):
            if impl in mine[0]:
                ax.plot(leaves, [row[impl]["total_s"] for row in mine], style, marker=marker, color=f"C{k}",
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
    names = parse_names("--optimizers", optimizers, CHOICES, {"new": NEW_OPTIMIZERS})
    description = machine()  # before the run: its load average is the one at the start
    progress = Progress(len(leaf_counts) * len(names))
    rows = []
    for n_leaves in leaf_counts:
        params = abstract_params(n_leaves)
        compile_seconds(CHOICES[names[0]].optax(), params)  # untimed: the first compilation of a size is slower
        for i, name in enumerate(names):
            factories = implementations(CHOICES[name])
            impls = list(factories)
            samples: dict[str, dict[str, list[float]]] = {impl: {"trace_s": [], "compile_s": []} for impl in impls}
            fused_kernel = None  # whether the fused step calls optimjax.fused's kernel (False: its XLA fallback)
            for r in range(repeats):
                k = (i + r) % len(impls)
                for impl in impls[k:] + impls[:k]:
                    traced, compiled, lowered = compile_seconds(factories[impl](), params)
                    samples[impl]["trace_s"].append(traced)
                    samples[impl]["compile_s"].append(compiled)
                    if impl == FUSED and fused_kernel is None:
                        fused_kernel = optimjax.fused.TARGET in lowered.as_text()
            row: dict[str, Any] = {"leaves": n_leaves, "optimizer": name}
            for impl in impls:
                totals = [a + b for a, b in zip(samples[impl]["trace_s"], samples[impl]["compile_s"])]
                row[impl] = {"trace_s": median(samples[impl]["trace_s"]),
                             "compile_s": median(samples[impl]["compile_s"]), "total_s": median(totals),
                             "samples_total_s": totals}
            row["ratio"] = row["optimjax"]["total_s"] / row["optax"]["total_s"]
            row["fused_ratio"] = row[FUSED]["total_s"] / row["optax"]["total_s"] if FUSED in row else None
            row["fused_kernel"] = fused_kernel
            rows.append(row)
            fused = f", optimjax fused {row[FUSED]['total_s']:.2f} s" if FUSED in row else ""
            progress(f"{n_leaves} leaves, {name}: optimjax {row['optimjax']['total_s']:.2f} s{fused}, "
                     f"optax {row['optax']['total_s']:.2f} s")
    results = {"benchmark": "compile", "machine": description,
               "settings": {"leaves": leaf_counts, "optimizers": names, "repeats": repeats,
                            "leaf_shapes": f"float32, cycling through {BLOCK_SHAPES}"},
               "rows": rows}
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(rows))
    for n_leaves in leaf_counts:
        ratios = [row["ratio"] for row in rows if row["leaves"] == n_leaves]
        fused = [row["fused_ratio"] for row in rows if row["leaves"] == n_leaves and row["fused_ratio"] is not None]
        print(f"{n_leaves} leaves: optimjax/optax median {np.median(ratios):.2f}, worst {max(ratios):.2f}"
              + (f"; optimjax fused/optax median {np.median(fused):.2f}, worst {max(fused):.2f}" if fused else ""))
    if out is not None:
        write_json(Path(out) / "compile.json", results)
        plot(results, Path(out) / "compile.png")
        print(f"wrote {Path(out) / 'compile.json'} and {Path(out) / 'compile.png'}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", default=DEFAULT_LEAVES, help="comma-separated leaf counts (default %(default)s)")
    parser.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, help="comma-separated names, 'all', or 'new' "
                        f"({NEW_OPTIMIZERS}) (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="compilations per implementation (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where compile.json and compile.png go")
    a = parser.parse_args(argv)
    try:
        run(a.leaves, a.optimizers, a.repeats, a.out)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
