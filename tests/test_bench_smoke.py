"""The benchmarks under bench/ run end to end on a tiny configuration (seconds), so that they cannot rot.

These tests check what the harness produces (every row, positive and finite timings, the floor's byte count, the
peak-memory bound of the issue, like-for-like optimizers, optimjax.fused's rows and columns); they never assert on
speed.
"""

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimjax.fused

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed; import it from the checkout
from bench import compile as compile_bench  # noqa: E402
from bench import matrix as matrix_bench  # noqa: E402
from bench import step as step_bench  # noqa: E402
from bench.harness import CONTENDERS, Config  # noqa: E402

# Bytes an ideal fp32 step moves per parameter (issue 4): params read + written, grads read, each state array
# read + written. SGD with momentum, RMSprop, Adagrad and ASGD (ax) keep one state array; the Adam family (Adamax:
# exp_avg, exp_inf; RAdam: m, v) and Rprop (prev, step_size) keep two.
FLOOR_BYTES = {"sgd_nesterov": 20, "adam": 28, "adamw": 28, "nadam": 28, "nadamw": 28, "rmsprop": 20, "adagrad": 20,
               "adamax": 28, "asgd": 20, "radam": 28, "rprop": 28}
# torch 2.13 has a fused CPU kernel for these and not for the others.
TORCH_FUSED = {"sgd_nesterov", "adam", "adamw", "adagrad"}
# optimjax.fused has a kernel for every benchmarked optimizer.
OPTIMJAX_FUSED = set(FLOOR_BYTES)
FUSED = "optimjax fused"


def _flat_params(run):
    if isinstance(run, step_bench.TorchStep):
        return np.concatenate([t.detach().numpy().ravel() for t in run.tensors])
    return np.concatenate([np.asarray(p).ravel() for p in run.params])


def _positive_finite(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_step_benchmark_writes_every_row(tmp_path):
    n_params, n_leaves, steps = 3001, 3, 2
    step_bench.run(configs=f"{n_params}/{n_leaves}", steps=steps, rounds=2, warmup=1, stream_mib=1, pause=0.0,
                   out=tmp_path)
    saved = json.loads((tmp_path / "step.json").read_text())
    assert (tmp_path / "step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table_lines = [line for line in (tmp_path / "step.md").read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in table_lines] == ["optimizer", *FLOOR_BYTES]
    header = table_lines[0][2:-2].split(" | ")
    for line in table_lines[1:]:  # optimjax.fused's cells: "n/a" exactly where the optimizer has no fused variant
        cells = dict(zip(header, line[2:-2].split(" | ")))
        for column in ("fused ms", "fused/optax", "fused %floor", "fused kernels/step"):
            assert (cells[column] == "n/a") == (cells["optimizer"] not in OPTIMJAX_FUSED), (column, cells)
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["jax_backend"] == "cpu"
    assert saved["machine"]["optimjax_fused"] == {"available": optimjax.fused.available(),
                                                  "unavailable_reason": optimjax.fused.unavailable_reason()}
    (config,) = saved["configs"]
    assert (config["n_params"], config["n_leaves"]) == (n_params, n_leaves)
    assert config["stream_in_place"] and _positive_finite(config["bandwidth_gb_s"])
    assert [row["optimizer"] for row in config["rows"]] == list(FLOOR_BYTES)
    for row in config["rows"]:
        name = row["optimizer"]
        jax_impls = {"optimjax", "optax"} | ({FUSED} if name in OPTIMJAX_FUSED else set())
        expected = jax_impls | {"optax A/A", "torch foreach"} | ({"torch fused"} if name in TORCH_FUSED else set())
        assert set(row["ms"]) == expected, name
        assert set(row["torch_unavailable"]) == {"torch foreach", "torch fused"} - expected, name
        for impl, ms in row["ms"].items():
            assert _positive_finite(ms), (name, impl, ms)
            assert len(row["samples_ms"][impl]) == steps and all(map(_positive_finite, row["samples_ms"][impl]))
        ratios = [row["ratio_to_optax"], row["aa_ratio"]] + [row["fused_ratio_to_optax"]] * (name in OPTIMJAX_FUSED)
        assert all(map(_positive_finite, ratios)), (name, ratios)
        assert (row["ratio_to_torch_fused"] is not None) == (name in TORCH_FUSED)
        assert (row["fused_ratio_to_optax"] is not None) == (name in OPTIMJAX_FUSED)
        assert (row["fused_ratio_to_torch_fused"] is not None) == (name in OPTIMJAX_FUSED & TORCH_FUSED)
        assert set(row["peak_bytes"]) == set(row["kernels_per_step"]) == set(row["loops_per_leaf"]) == jax_impls
        assert all(row["loops_per_leaf"][impl] >= 1 for impl in ("optimjax", "optax")), row["loops_per_leaf"]
        for impl, kernels in row["kernels_per_step"].items():
            assert row["loops_per_leaf"][impl] == pytest.approx(kernels / n_leaves)
        if name in OPTIMJAX_FUSED:
            # The custom call is counted: one kernel for all the leaves when the kernel runs, else XLA's loops.
            assert row["fused_kernel"] == optimjax.fused.available(), row
            kernels = row["kernels_per_step"]
            assert kernels[FUSED] == (1 if row["fused_kernel"] else kernels["optimjax"]), kernels
        else:
            assert row["fused_kernel"] is None
        assert row["floor_bytes_per_param"] == FLOOR_BYTES[name]
        bandwidth = config["bandwidth_gb_s"] * 1e9
        assert row["floor_ms"] == pytest.approx(1e3 * FLOOR_BYTES[name] * n_params / bandwidth)
        for impl in jax_impls:
            assert row["pct_of_floor"][impl] == pytest.approx(100 * row["floor_ms"] / row["ms"][impl])
        # Peak memory of a step: params + grads + state (fp32, state arrays = (floor - 12) / 8) + one leaf
        # (+ a few scalars: step counts, NAdam's mu product).
        state_arrays = (FLOOR_BYTES[name] - 12) // 8
        bound = 4 * n_params * (2 + state_arrays) + 4 * math.ceil(n_params / n_leaves) + 64
        for impl in jax_impls - {"optax"}:
            assert 0 < row["peak_bytes"][impl] <= bound, (name, impl, row["peak_bytes"], bound)


def test_step_benchmark_without_torch_with_in_loop_steps(tmp_path):
    results = step_bench.run(configs="1K/2", optimizers="adamw", steps=2, rounds=1, warmup=0, stream_mib=1,
                             no_torch=True, pause=0.0, in_loop=3, out=tmp_path)
    (row,) = results["configs"][0]["rows"]
    assert set(row["ms"]) == {"optimjax", "optax", "optax A/A", FUSED, "optimjax in-loop", "optax in-loop",
                              f"{FUSED} in-loop"}
    assert all(_positive_finite(ms) for ms in row["ms"].values()) and row["ratio_to_torch_fused"] is None
    assert _positive_finite(row["fused_ratio_to_optax"]) and row["fused_ratio_to_torch_fused"] is None
    assert row["torch_unavailable"] == {"torch foreach": "--no-torch", "torch fused": "--no-torch"}
    assert "n/a" in step_bench.table(results["configs"][0])


def test_compile_benchmark_writes_every_row(tmp_path):
    compile_bench.run(leaves="1,3", optimizers="sgd_nesterov,adamw", repeats=1, out=tmp_path)
    saved = json.loads((tmp_path / "compile.json").read_text())
    assert (tmp_path / "compile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(r["leaves"], r["optimizer"]) for r in saved["rows"]] == [
        (1, "sgd_nesterov"), (1, "adamw"), (3, "sgd_nesterov"), (3, "adamw")]
    for row in saved["rows"]:
        fused = row["optimizer"] in OPTIMJAX_FUSED
        assert (FUSED in row) == fused and (row["fused_ratio"] is not None) == fused, row
        for impl in ("optimjax", "optax") + ((FUSED,) if fused else ()):
            times = row[impl]
            assert all(_positive_finite(times[k]) for k in ("trace_s", "compile_s", "total_s")), row
            assert times["total_s"] == pytest.approx(times["trace_s"] + times["compile_s"])
        assert row["ratio"] == pytest.approx(row["optimjax"]["total_s"] / row["optax"]["total_s"])
        if fused:
            assert row["fused_ratio"] == pytest.approx(row[FUSED]["total_s"] / row["optax"]["total_s"])
            assert row["fused_kernel"] == optimjax.fused.available()


def test_compile_benchmark_takes_the_matrix_optimizers():
    """Adafactor and Muon (Muon on the matrices, Adam on the other leaves, as optax.contrib.muon) compile on the
    benchmark's tree of matrices and vectors; they have no optimjax.fused kernel, Rprop has one."""
    results = compile_bench.run(leaves="3", optimizers="rprop,adafactor,muon", repeats=1, out=None)
    assert [row["optimizer"] for row in results["rows"]] == ["rprop", "adafactor", "muon"]
    for row in results["rows"]:
        fused = row["optimizer"] == "rprop"
        assert (FUSED in row) == fused and (row["fused_ratio"] is not None) == fused, row
        assert all(_positive_finite(row[impl]["total_s"]) for impl in ("optimjax", "optax")), row
    assert compile_bench.abstract_params(3)[2].shape == (64, 192)  # the tree has a matrix for Muon
    presets = {"new": compile_bench.NEW_OPTIMIZERS}
    assert compile_bench.parse_names("--optimizers", "new", compile_bench.CHOICES, presets) == [
        "radam", "rprop", "adamax", "asgd", "adafactor", "muon"]


def test_bad_arguments_name_the_option():
    with pytest.raises(ValueError, match="--configs"):
        step_bench.run(configs="16M", out=None)
    with pytest.raises(ValueError, match="--optimizers.*adamx"):
        step_bench.run(configs="1K/1", optimizers="adamx", out=None)
    with pytest.raises(ValueError, match="--leaves"):
        compile_bench.run(leaves="ten", out=None)


@pytest.mark.parametrize("name", list(CONTENDERS))
def test_benchmarked_steps_compare_like_with_like(name):
    """The timed steps are the optimizer they claim to be: optimjax's, optimjax.fused's, torch's (foreach and
    fused) and, where optax has the same method (`optax_differs` empty), optax's end at the same parameters."""
    contender = CONTENDERS[name]
    params, grads = Config(3001, 3).arrays(seed=0), Config(3001, 3).arrays(seed=1)
    jax_grads = [jnp.asarray(g) for g in grads]
    runs = {"optimjax": step_bench.JaxStep(contender.optimjax(), params, jax_grads),
            "optax": step_bench.JaxStep(contender.optax(), params, jax_grads),
            "torch foreach": step_bench.TorchStep(torch, contender, params, grads, "foreach", "cpu")}
    assert (contender.fused is not None) == (name in OPTIMJAX_FUSED)
    if contender.fused is not None:
        runs[FUSED] = step_bench.JaxStep(contender.fused(), params, jax_grads)
    if name in TORCH_FUSED:
        runs["torch fused"] = step_bench.TorchStep(torch, contender, params, grads, "fused", "cpu")
    for _ in range(8):  # RAdam's rectified steps start at step 6
        for impl, run in runs.items():
            if impl.startswith("torch"):  # foreach SGD(nesterov=True) adds the momentum into .grad in place
                for tensor, grad in zip(run.tensors, grads):
                    tensor.grad.copy_(torch.from_numpy(grad))
            run()
    # The floor's state arrays are those of optimjax's state: the leaves shaped like a parameter, per parameter.
    shapes = {p.shape for p in params}
    per_param = sum(x.shape in shapes for x in jax.tree.leaves(runs["optimjax"].state)) / len(params)
    assert per_param == contender.state_arrays == (FLOOR_BYTES[name] - 12) // 8, (name, per_param)
    final = {impl: _flat_params(run) for impl, run in runs.items()}
    reference, start = final.pop("torch foreach"), np.concatenate(params)
    scale = np.max(np.abs(reference - start))
    assert scale > 1e-4, "the parameters should move"
    # Close: within a few float32 ulps of each parameter (AdamW's decay rounds differently in torch) plus 1e-5 of
    # the largest displacement.
    close = {impl: bool(np.all(np.abs(x - reference) <= 1e-6 * np.abs(reference) + 1e-5 * scale))
             for impl, x in final.items()}
    assert close["optimjax"] and close.get(FUSED, True) and close.get("torch fused", True), close
    assert close["optax"] != bool(contender.optax_differs), (
        f"{name}: optax {'agrees' if close['optax'] else 'disagrees'} with torch, but optax_differs says "
        f"{contender.optax_differs!r}")


def test_step_benchmark_times_fused_flat_state():
    results = step_bench.run(configs="3001/3", optimizers="adamw", steps=1, rounds=1, warmup=0, stream_mib=1,
                             no_torch=True, pause=0.0, out=None, fused_flat_state=True)
    assert results["settings"]["fused_flat_state"] is True
    (row,) = results["configs"][0]["rows"]
    assert _positive_finite(row["ms"]["optimjax fused"])
    assert "flat_state=True" in step_bench.fused_note(results)


def test_matrix_benchmark_writes_adafactor_and_muon(tmp_path):
    results = matrix_bench.run(quick=True, pause=0.0, out=tmp_path)
    saved = json.loads((tmp_path / "matrix.json").read_text())
    assert saved["machine"]["cores"] >= 1 and saved["settings"]["quick"] is True
    adafactor, muon = saved["rows"]
    assert (adafactor["optimizer"], muon["optimizer"]) == ("adafactor", "muon")
    matrices = [(64, 48), (64, 48), (96, 32)]  # matrix.QUICK_MATRICES, QUICK_VECTORS
    assert [tuple(s) for s in adafactor["shapes"]] == matrices + [(16,), (16,)]
    assert [tuple(s) for s in muon["shapes"]] == matrices  # Muon takes matrices only
    expected = {"adafactor": {"optimjax", "optax", "torch", "torch foreach"},
                "muon": {"optimjax bf16", "optimjax fp32", "optax", "torch"}}
    for row in saved["rows"]:
        assert set(row["ms"]) == expected[row["optimizer"]] and not row["torch_unavailable"], row["ms"]
        for impl, ms in row["ms"].items():
            assert _positive_finite(ms) and len(row["samples_ms"][impl]) == row["timed_steps"] == 2, (impl, row)
        assert row["ratio_to_optax"]["optax"] == 1.0 and all(map(_positive_finite, row["ratio_to_optax"].values()))
    # Adafactor's factored size, from the shapes: r + c floats per matrix, n per vector, an int32 count.
    factored = 4 * (2 * (64 + 48) + (96 + 32) + 2 * 16) + 4
    assert adafactor["factored_bytes"] == factored and adafactor["full_second_moment_bytes"] == 4 * 9248
    memory = adafactor["memory"]
    # The compiled step's arguments less params and grads: optimjax's whole state; optax's less the leaves that its
    # update returns unchanged (jit passes those around the computation).
    assert memory["optimjax"]["compiled_state_bytes"] == memory["optimjax"]["state_bytes"], memory["optimjax"]
    assert 0 < memory["optax"]["compiled_state_bytes"] <= memory["optax"]["state_bytes"], memory["optax"]
    for impl in ("optimjax", "optax"):
        assert memory[impl]["compiled_state_ratio"] == pytest.approx(memory[impl]["compiled_state_bytes"] / factored)
        assert memory[impl]["peak_bytes"] >= 2 * 4 * 9248 + memory[impl]["state_bytes"]  # params + grads + state
    # optimjax's and torch's state: the factored statistics plus a few bytes per leaf (0-d placeholders, counts).
    for impl in ("optimjax", "torch", "torch foreach"):
        assert factored <= memory[impl]["state_bytes"] <= factored + 8 * 5, (impl, memory[impl])
    # Muon: Newton-Schulz FLOPs 5 * (4 m^2 n + 2 m^3) per (m, n) matrix, m <= n, and GFLOP/s from them.
    flops = 5 * (2 * (4 * 48**2 * 64 + 2 * 48**3) + 4 * 32**2 * 96 + 2 * 32**3)
    assert muon["ns_flops"] == flops and muon["ns_steps"] == 5
    for impl, ms in muon["ms"].items():
        assert muon["ns_gflop_s"][impl] == pytest.approx(flops / ms / 1e6)
    assert muon["ns_dtype"] == {"optimjax bf16": "bf16", "optimjax fp32": "fp32", "optax": "fp32", "torch": "bf16"}
    assert set(muon["matmul_gflop_s"]) == {"jax bf16", "jax fp32", "torch bf16"}
    assert all(map(_positive_finite, muon["matmul_gflop_s"].values()))
    for impl in expected["muon"]:  # one momentum buffer per matrix (optax's adds a count and a few scalars)
        assert 4 * 9216 <= muon["memory"][impl]["state_bytes"] <= 4 * 9216 + 32, (impl, muon["memory"][impl])
    markdown = (tmp_path / "matrix.md").read_text()
    table_rows = [line.split(" | ")[0][2:] for line in markdown.splitlines() if line.startswith("| ")]
    assert table_rows == ["implementation", "optimjax", "optax", "torch", "torch foreach",
                          "implementation", "optimjax bf16", "optimjax fp32", "optax", "torch"]
    assert results["rows"][0]["optax_differs"] in markdown and "bias-corrects the momentum" in markdown


def test_matrix_benchmark_bad_arguments_name_the_option():
    with pytest.raises(ValueError, match="--matrices"):
        matrix_bench.run(matrices="1024", out=None)
    with pytest.raises(ValueError, match="--vectors"):
        matrix_bench.run(vectors="4*16x16", out=None)
    with pytest.raises(ValueError, match="--optimizers.*adafactor, muon"):
        matrix_bench.run(optimizers="shampoo", out=None)
