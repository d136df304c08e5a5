"""Step time of every optimizer: optimjax against optax and torch.optim, and against the memory-bandwidth floor.

    python -m bench.step                       # the default run: 3 configurations x 7 optimizers, a few minutes
    python -m bench.step --configs 16M/8 --optimizers adamw,nadam --steps 40

An optimizer step is memory traffic: fp32 AdamW reads params, grads, m, v and writes params, m, v, 28 bytes per
parameter. The floor of a step is those bytes divided by the machine's streaming bandwidth, measured in the same
run as `x <- x * c` in place over a 256 MiB buffer on all cores.

How it times (see bench/README.md):
- A JAX step is `jit(update + apply_updates)` with params and state donated, compiled before timing; each
  implementation owns its buffers. Where the optimizer has a one-pass kernel (`Contender.fused`), "optimjax fused"
  (`fused` in the table) is `jit(optimjax.fused.of(optimizer).step)`: one C++ custom call over every leaf on CPU.
  torch.optim runs `step()` on tensors whose `.grad` holds the same gradients, with `foreach=True` and with
  `fused=True` where torch has a fused kernel ("torch fused").
- Implementations take turns, one step each, rotating which goes first, so that drift hits all alike. optax's
  compiled step also runs on a second set of buffers as if it were another implementation: the A/A ratio of the
  two is the noise of every ratio in the table.
- Before every step the stream pass runs (torch's own in the torch block), so that every step starts with cold
  caches, as in training after the backward pass, whichever implementation ran before it. The JAX stream passes
  are the bandwidth samples.
- torch runs in its own block after the JAX block of each round, then the run pauses, so that torch's OpenMP
  workers, which spin after a step, have stopped before JAX runs again.
- Reported: the median of the timed steps; "/optax" and "A/A" are medians of the ratio of two steps taken in
  the same turn; "/torch fused" is the ratio of medians (torch ran in another block).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import optimjax.fused
from bench.harness import CONTENDERS, RESULTS, Config, Contender, Progress, cores, jitted, machine, median
from bench.harness import parse_names, peak_bytes, tree_bytes, write_json

DEFAULT_CONFIGS = "16M/8,16M/512,1M/256"
FUSED = "optimjax fused"  # optimjax.fused's step, where the contender has one
JAX_IMPLS = ("optimjax", "optax", "optax A/A", FUSED)
TORCH_IMPLS = ("torch foreach", "torch fused")


class JaxStep:
    """One implementation's compiled step on its own params and state; a call runs one step, returns seconds.

    `tx` is an optax GradientTransformation or an `optimjax.fused` FusedOptimizer (see `bench.harness.jitted`).
    """

    def __init__(self, tx: Any, params: list[np.ndarray], grads: list[jax.Array], compiled: Any = None,
                 steps_per_call: int = 1):
        self.params = [jnp.array(p) for p in params]
        self.state = tx.init(self.params)
        self.grads = grads
        self.steps_per_call = steps_per_call
        self.compiled = compiled or jitted(tx, steps_per_call).lower(self.params, self.state, grads).compile()

    def __call__(self) -> float:
        """Seconds per step of one call."""
        start = time.perf_counter()
        self.params, self.state = self.compiled(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / self.steps_per_call


class Stream:
    """`x <- x * c` in place over an fp32 buffer on every core: each byte is read once and written once."""

    def __init__(self, mib: int):
        self.x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
        self.c = jnp.float32(-1.0)  # an argument, not a constant, so XLA cannot fold the multiply away
        self.compiled = jax.jit(lambda x, c: x * c, donate_argnums=0).lower(self.x, self.c).compile()
        stats = self.compiled.memory_analysis()
        self.in_place = stats is None or stats.alias_size_in_bytes >= self.x.nbytes
        self.bytes_moved = 2 * self.x.nbytes

    def __call__(self) -> float:
        start = time.perf_counter()
        self.x = self.compiled(self.x, self.c)
        self.x.block_until_ready()
        return time.perf_counter() - start


class TorchStream:
    """`x <- x * -1` in place with torch over an fp32 buffer: flushes the caches before each torch step."""

    def __init__(self, torch: Any, mib: int, device: str):
        self.x = torch.ones(mib * 2**20 // 4, device=device)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def __call__(self) -> float:
        start = time.perf_counter()
        self.x.mul_(-1.0)
        self.sync()
        return time.perf_counter() - start


class TorchStep:
    """torch.optim's `step()` on its own copy of the params, whose `.grad` holds the gradients; the optimizer is
    built with `flag=value` (e.g. foreach=True), or without either where `flag` is None.

    The gradients are not reset between steps (the JAX steps reuse theirs too). torch's foreach SGD with
    nesterov=True adds the momentum into `.grad` in place, so its values drift from step to step; its work does not.
    """

    def __init__(self, torch: Any, contender: Contender, params: list[np.ndarray], grads: list[np.ndarray],
                 flag: str | None, device: str, value: bool = True):
        self.tensors = [torch.tensor(p, device=device, requires_grad=True) for p in params]
        for tensor, grad in zip(self.tensors, grads):
            tensor.grad = torch.tensor(grad, device=device)
        optimizer_class = getattr(torch.optim, contender.torch_class)
        self.optimizer = optimizer_class(self.tensors, **contender.torch_kwargs, **({flag: value} if flag else {}))
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def __call__(self) -> float:
        start = time.perf_counter()
        self.optimizer.step()
        self.sync()
        return time.perf_counter() - start


def kernels_per_step(compiled: Any, min_elements: int) -> int:
    """Loops over leaf memory in the optimized HLO: kernels (fusions, copies, custom calls) with an array output of
    at least `min_elements` elements (the smallest leaf).

    Kernels whose outputs are all smaller (the per-step scalars; optimjax.fused stacks its ~10 coefficients into
    one small array) are not counted. optax's and optimjax's fp32 Adam step has 3 per leaf (m, v, then the
    parameters); optimjax.fused's has one custom call for all the leaves, which passes once over each of them.
    """
    entry = compiled.as_text().split("\nENTRY", 1)[1]
    kernels = re.findall(r"^\s*(?:ROOT )?%\S+ = (\([^)]*\)|\w+\[[^\]]*\]\S*) (?:fusion|copy|custom-call)\(", entry,
                         re.M)
    return sum(1 for shape in kernels
               if any(math.prod(map(int, dims.split(","))) >= min_elements
                      for dims in re.findall(r"\[(\d[\d,]*)\]", shape)))


def calls_fused_kernel(compiled: Any) -> bool:
    """Whether the compiled step calls optimjax.fused's kernel (False: it took the XLA fallback)."""
    return f'custom_call_target="{optimjax.fused.TARGET}"' in compiled.as_text()


def take_turns(runs: dict[str, Callable[[], float]], steps: int, first: int,
               flush: Callable[[], float]) -> tuple[dict[str, list[float]], list[float]]:
    """Run each implementation `steps` times, one step each in turn, rotating which one goes first.

    `flush` (a pass over a buffer larger than the caches) runs before every step, so that each step starts with
    cold caches, as after a forward and backward pass, whichever implementation ran before it. Returns the
    seconds of every step and of every flush.
    """
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    flushes = []
    for i in range(steps if names else 0):
        k = (first + i) % len(names)
        for name in names[k:] + names[:k]:
            flushes.append(flush())
            samples[name].append(runs[name]())
    return samples, flushes


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over steps of numerator[i] / denominator[i]: the two ran back to back, so drift cancels."""
    return median([a / b for a, b in zip(numerator, denominator)])


def load_torch(threads: int | None) -> tuple[Any, str, str]:
    """torch, the device it runs on and why it is skipped ("" when it runs)."""
    try:
        import torch
    except ImportError:
        return None, "", "torch is not installed"
    if jax.default_backend() != "cpu":
        if not torch.cuda.is_available():
            return None, "", f"JAX runs on {jax.default_backend()} and this torch build has no CUDA"
        device = "cuda"
    else:
        device = "cpu"
    if threads:
        torch.set_num_threads(threads)
    return torch, device, ""


def measure(contender: Contender, config: Config, params: list[np.ndarray], grads_np: list[np.ndarray],
            grads: list[jax.Array], stream: Stream, torch: Any, device: str, args: argparse.Namespace,
            progress: Progress) -> dict[str, Any]:
    """Time one optimizer in one configuration: JAX and torch blocks in alternation, `args.rounds` times."""
    progress(f"{config.name} {contender.name}: compiling", advance=False)
    ours = JaxStep(contender.optimjax(), params, grads)
    theirs = JaxStep(contender.optax(), params, grads)
    jax_runs = {"optimjax": ours, "optax": theirs,
                "optax A/A": JaxStep(contender.optax(), params, grads, compiled=theirs.compiled)}
    fused_factory = contender.fused and functools.partial(contender.fused, **args.fused_options)
    fused = JaxStep(fused_factory(), params, grads) if fused_factory else None
    if fused is not None:
        jax_runs[FUSED] = fused
    if args.in_loop > 1:
        for impl, factory in (("optimjax", contender.optimjax), ("optax", contender.optax), (FUSED, fused_factory)):
            if factory is not None:
                jax_runs[f"{impl} in-loop"] = JaxStep(factory(), params, grads, steps_per_call=args.in_loop)
    torch_runs, unavailable = {}, {}
    for name, flag in zip(TORCH_IMPLS, ("foreach", "fused")):
        if torch is None:
            unavailable[name] = args.torch_skipped
            continue
        try:
            torch_runs[name] = TorchStep(torch, contender, params, grads_np, flag, device)
            torch_runs[name]()  # a first step fails here, not in the timed loop, where torch has no such kernel
        except (TypeError, RuntimeError, ValueError) as err:
            unavailable[name] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    progress(f"{config.name} {contender.name}: timing {args.rounds} rounds of {args.per_round} steps", advance=False)
    take_turns(jax_runs, 1 + args.warmup, 0, stream)  # every implementation takes 1 + warmup + timed steps
    take_turns(torch_runs, args.warmup, 0, args.torch_stream)
    time.sleep(args.pause)
    samples: dict[str, list[float]] = {name: [] for name in [*jax_runs, *torch_runs]}
    stream_samples: list[float] = []
    for r in range(args.rounds):
        times, flushes = take_turns(jax_runs, args.per_round, r, stream)
        stream_samples += flushes
        time.sleep(args.pause)
        if torch_runs:
            torch_times, _ = take_turns(torch_runs, args.per_round, r, args.torch_stream)
            times.update(torch_times)
            time.sleep(args.pause)
        for name, t in times.items():
            samples[name].extend(t)
    ms = {name: 1e3 * median(times) for name, times in samples.items()}
    state = ours.state
    bound = tree_bytes(ours.params) + tree_bytes(grads) + tree_bytes(state) + max(p.nbytes for p in params)
    compiled = {"optimjax": ours.compiled, "optax": theirs.compiled}
    if fused is not None:
        compiled[FUSED] = fused.compiled
    kernels = {impl: kernels_per_step(c, min(p.size for p in params)) for impl, c in compiled.items()}
    row = {
        "optimizer": contender.name,
        "optax_differs": contender.optax_differs,
        "floor_bytes_per_param": contender.floor_bytes(params[0].itemsize),
        "ms": ms,
        "ratio_to_optax": paired_ratio(samples["optimjax"], samples["optax"]),
        "aa_ratio": paired_ratio(samples["optax A/A"], samples["optax"]),
        "ratio_to_torch_fused": ms["optimjax"] / ms["torch fused"] if "torch fused" in ms else None,
        "fused_ratio_to_optax": paired_ratio(samples[FUSED], samples["optax"]) if fused is not None else None,
        "fused_ratio_to_torch_fused": ms[FUSED] / ms["torch fused"] if FUSED in ms and "torch fused" in ms else None,
        "fused_kernel": calls_fused_kernel(fused.compiled) if fused is not None else None,
        "peak_bytes": {impl: peak_bytes(c) for impl, c in compiled.items()},
        "kernels_per_step": kernels,
        "loops_per_leaf": {impl: k / config.n_leaves for impl, k in kernels.items()},
        "peak_bound_bytes": bound,
        "torch_unavailable": unavailable,
        "samples_ms": {name: [1e3 * t for t in times] for name, times in samples.items()},
        "stream_samples_ms": [1e3 * t for t in stream_samples],
    }
    progress(f"{config.name} {contender.name}: optimjax {ms['optimjax']:.2f} ms, optimjax fused {_ms(ms.get(FUSED))}, "
             f"optax {ms['optax']:.2f}, torch fused {_ms(ms.get('torch fused'))}")
    return row


def finish_config(config: Config, rows: list[dict[str, Any]], stream: Stream) -> dict[str, Any]:
    """Bandwidth from every stream sample of the configuration, then each row's floor and % of floor."""
    stream_ms = median([t for row in rows for t in row.pop("stream_samples_ms")])
    bandwidth = stream.bytes_moved / (stream_ms / 1e3)
    for row in rows:
        row["floor_ms"] = 1e3 * row["floor_bytes_per_param"] * config.n_params / bandwidth
        row["pct_of_floor"] = {name: 100 * row["floor_ms"] / t for name, t in row["ms"].items()}
    return {"config": config.name, "n_params": config.n_params, "n_leaves": config.n_leaves, "dtype": "float32",
            "stream_mib": stream.x.nbytes // 2**20, "stream_in_place": stream.in_place, "stream_ms": stream_ms,
            "bandwidth_gb_s": bandwidth / 1e9, "rows": rows}


def _ms(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.0f}%"


COLUMNS = ("optimizer", "floor ms", "optimjax ms", "fused ms", "optax ms", "torch foreach ms", "torch fused ms",
           "A/A", "optimjax/optax", "fused/optax", "optimjax/torch fused", "fused/torch fused", "optimjax %floor",
           "fused %floor", "optax %floor", "torch fused %floor", "loops/leaf optimjax, optax", "fused kernels/step",
           "peak MiB optimjax, fused (bound)")
# "fused" is optimjax.fused ("optimjax fused" in the JSON); torch's fused=True is always "torch fused".
# "fused kernels/step": the kernels over leaf memory in optimjax.fused's compiled step, for all the leaves together
# (its one custom call passes once over each leaf); "loops/leaf" counts the same kernels per leaf.


IN_LOOP_COLUMN = "in-loop ms optimjax, fused, optax"


def columns(result: dict[str, Any]) -> tuple[str, ...]:
    in_loop = any("optimjax in-loop" in row["ms"] for row in result["rows"])
    return COLUMNS + ((IN_LOOP_COLUMN,) if in_loop else ())


def table_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One configuration's results, one tuple of formatted cells per optimizer (see `columns`); "n/a" where an
    implementation did not run (no optimjax.fused or torch fused=True variant, torch skipped)."""
    in_loop = IN_LOOP_COLUMN in columns(result)
    rows = []
    for row in result["rows"]:
        ms, pct, peak, loops = row["ms"], row["pct_of_floor"], row["peak_bytes"], row["loops_per_leaf"]
        fused_kernels = row.get("kernels_per_step", {}).get(FUSED)
        rows.append((
            row["optimizer"], _ms(row["floor_ms"]), _ms(ms["optimjax"]), _ms(ms.get(FUSED)), _ms(ms["optax"]),
            _ms(ms.get("torch foreach")), _ms(ms.get("torch fused")), _ratio(row["aa_ratio"]),
            _ratio(row["ratio_to_optax"]), _ratio(row.get("fused_ratio_to_optax")),
            _ratio(row["ratio_to_torch_fused"]), _ratio(row.get("fused_ratio_to_torch_fused")),
            _pct(pct.get("optimjax")), _pct(pct.get(FUSED)), _pct(pct.get("optax")), _pct(pct.get("torch fused")),
            f"{loops['optimjax']:.0f}, {loops['optax']:.0f}",
            "n/a" if fused_kernels is None else f"{fused_kernels}",
            f"{_mib(peak['optimjax'])}, {_mib(peak.get(FUSED))} ({_mib(row['peak_bound_bytes'])})",
        ) + ((", ".join(_ms(ms.get(f"{impl} in-loop")) for impl in ("optimjax", FUSED, "optax")),) if in_loop else ()))
    return rows


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.0f}"


def heading(result: dict[str, Any]) -> str:
    return (f"{result['config']} fp32 ({result['n_params']:,} params in {result['n_leaves']} leaves), stream bandwidth "
            f"{result['bandwidth_gb_s']:.1f} GB/s ({result['stream_mib']} MiB in place)")


def table(result: dict[str, Any]) -> str:
    """One configuration's results as a text table."""
    cells = [columns(result), *table_rows(result)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([heading(result), *lines])


def markdown(results: dict[str, Any]) -> str:
    """Every configuration's results as Markdown tables, with the machine they ran on."""
    m = results["machine"]
    parts = [f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['device']}; load average "
             f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end; torch threads "
             f"{m['torch_threads']}; XLA_FLAGS={m['xla_flags']!r}; {m['date']}", "", fused_note(results)]
    for result in results["configs"]:
        parts += ["", f"**{heading(result)}**", "", "| " + " | ".join(columns(result)) + " |",
                  "|" + "---|" * len(columns(result))]
        parts += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(parts) + "\n"


def fused_note(results: dict[str, Any]) -> str:
    """What the "fused" columns are, and whether optimjax.fused's kernel ran."""
    info = results["machine"].get("optimjax_fused", {})
    rows = [row for result in results["configs"] for row in result["rows"] if row.get("fused_kernel") is not None]
    if rows and all(row["fused_kernel"] for row in rows):
        ran = f"its C++ kernel ran (one custom call per {optimjax.fused.LEAVES_PER_CALL} leaves: `fused kernels/step`)"
    elif any(row["fused_kernel"] for row in rows):
        ran = "its C++ kernel ran in some rows only (see `fused_kernel` in step.json)"
    elif rows:
        ran = (f"its kernel did NOT run ({info.get('unavailable_reason') or 'not on a single CPU device'}): the fused "
               "columns time its XLA fallback")
    else:
        ran = "no optimizer here has a fused variant"
    names = ", ".join(name for name, contender in CONTENDERS.items() if contender.fused is not None)
    flat = ", flat_state=True" if results.get("settings", {}).get("fused_flat_state") else ""
    return (f"fused = optimjax.fused ({names}{flat}), torch fused = torch.optim's fused=True; "
            f"optimjax.fused available: {info.get('available')}; {ran}.")


def plot(results: dict[str, Any], path: Path) -> None:
    """ms per step of each implementation, one panel per configuration, the floor as a black bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = results["configs"]
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
    impls = ("optimjax", FUSED, "optax", *TORCH_IMPLS)
    width = 0.8 / len(impls)
    for ax, result in zip(axes[0], configs):
        names = [row["optimizer"] for row in result["rows"]]
        x = np.arange(len(names))
        for k, impl in enumerate(impls):
            heights = [row["ms"].get(impl, np.nan) for row in result["rows"]]
            ax.bar(x - 0.4 + (k + 0.5) * width, heights, width, label=impl)
        for i, row in enumerate(result["rows"]):
            ax.hlines(row["floor_ms"], i - 0.45, i + 0.45, colors="black", label="floor" if i == 0 else None)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("ms per step (log)")
        ax.set_title(f"{result['config']} fp32, stream {result['bandwidth_gb_s']:.1f} GB/s")
    axes[0][0].legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores, {m['device']}, load at start {m['load_average_at_start'][0]} "
                 f"({m['date'][:10]})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(configs: str = DEFAULT_CONFIGS, optimizers: str = "all", steps: int = 20, rounds: int = 4, warmup: int = 3,
        stream_mib: int = 256, torch_threads: int | None = None, no_torch: bool = False, pause: float = 0.2,
        in_loop: int = 0, out: Path | None = RESULTS, fused_flat_state: bool = False) -> dict[str, Any]:
    """Run the benchmark, print one table per configuration, write `step.json` and `step.png` to `out`."""
    if steps < 1 or rounds < 1 or warmup < 0 or stream_mib < 1:
        raise ValueError(f"steps and rounds must be >= 1, warmup >= 0, stream_mib >= 1; got steps={steps}, "
                         f"rounds={rounds}, warmup={warmup}, stream_mib={stream_mib}")
    config_list = [Config.parse(text) for text in configs.split(",")]
    names = parse_names("--optimizers", optimizers)
    torch, device, skipped = (None, "", "--no-torch") if no_torch else load_torch(torch_threads or cores())
    args = argparse.Namespace(rounds=rounds, per_round=math.ceil(steps / rounds), warmup=warmup, pause=pause,
                              torch_skipped=skipped, in_loop=in_loop,
                              fused_options={"flat_state": True} if fused_flat_state else {},
                              torch_stream=TorchStream(torch, stream_mib, device) if torch else None)
    results: dict[str, Any] = {
        "benchmark": "step",
        "machine": machine(torch),
        "settings": {"configs": configs, "optimizers": names, "timed_steps": args.per_round * rounds,
                     "rounds": rounds, "warmup": warmup, "stream_mib": stream_mib, "torch_device": device,
                     "torch_skipped": skipped, "pause_s": pause, "in_loop_steps_per_call": in_loop,
                     "fused_flat_state": fused_flat_state},
        "configs": [],
    }
    progress = Progress(len(config_list) * len(names))
    stream = Stream(stream_mib)
    for config in config_list:
        params, grads_np = config.arrays(seed=0), config.arrays(seed=1)
        grads = [jnp.asarray(g) for g in grads_np]
        rows = [measure(CONTENDERS[name], config, params, grads_np, grads, stream, torch, device, args, progress)
                for name in names]
        result = finish_config(config, rows, stream)
        results["configs"].append(result)
        print(table(result), flush=True)
        print(flush=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(fused_note(results), flush=True)
    if out is not None:
        write_json(Path(out) / "step.json", results)
        (Path(out) / "step.md").write_text(markdown(results))
        plot(results, Path(out) / "step.png")
        print(f"wrote step.json, step.md and step.png to {out}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="PARAMS/LEAVES,... (default %(default)s)")
    parser.add_argument("--optimizers", default="all", help="comma-separated names or 'all'")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="JAX/torch block alternations (default 4)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--stream-mib", type=int, default=256,
                        help="buffer of the bandwidth pass that also flushes the caches before every step; several "
                        "times the last-level cache (default 256)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: cores)")
    parser.add_argument("--no-torch", action="store_true", help="skip torch.optim")
    parser.add_argument("--in-loop", type=int, default=0, metavar="K",
                        help="also time K steps per call in a lax.fori_loop (step time without dispatch)")
    parser.add_argument("--fused-flat-state", action="store_true",
                        help="time optimjax.fused with flat_state=True (one state vector for all leaves)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where step.json, step.md and step.png go")
    a = parser.parse_args(argv)
    try:
        run(a.configs, a.optimizers, a.steps, a.rounds, a.warmup, a.stream_mib, a.torch_threads, a.no_torch,
            in_loop=a.in_loop, out=a.out, fused_flat_state=a.fused_flat_state)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
