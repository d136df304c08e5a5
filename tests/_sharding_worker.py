"""Subprocess of tests/test_sharding.py: runs every optimizer of tests/cases.py on a 4x2 mesh of 8 CPU devices
and prints one JSON object of measured facts (placements, collectives, differences); the test asserts on them.

jax reads the device count once, at import, so the pytest process (1 device) cannot host the mesh itself. Run as

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/_sharding_worker.py

Both of jax's sharding modes are covered: automatic (GSPMD propagation, no mesh context) and explicit (sharding in
the types, mesh set with `jax.set_mesh`, as jax requires for explicit axes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

TESTS = os.path.dirname(os.path.abspath(__file__))
# The table, and the optimjax of this checkout (not whichever one is installed: a git worktree shares the venv).
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]
from cases import CASES  # noqa: E402  (the shared optimizer table)

import optimjax.checkpoint  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Mixed layouts on the ("data", "model") mesh: sharded on both axes, on one axis, and replicated leaves.
SPECS = {
    "kernel": ((8, 6), P("data", "model")),
    "embedding": ((16, 4), P("data", None)),
    "projection": ((4, 6), P(None, "model")),
    "bias": ((6,), P("model")),
    "norm_scale": ((5,), P()),
    "temperature": ((), P()),
}
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
STEPS = 3


def spec_of(x) -> str:
    """A printable description of an array's placement."""
    sharding = x.sharding
    name = str(sharding.spec) if isinstance(sharding, NamedSharding) else type(sharding).__name__
    return f"{name} on {len(sharding.device_set)} devices"


def reduced_sharding(p, shape) -> NamedSharding | None:
    """The sharding of p with the dims that `shape` reduces to 1 unsharded (a 0-d shape: replicated); None when
    `shape` is not such a reduction of p's shape."""
    mesh = p.sharding.mesh
    if shape == ():
        return NamedSharding(mesh, P())
    if len(shape) != p.ndim or any(n not in (1, m) for n, m in zip(shape, p.shape)):
        return None
    spec = tuple(p.sharding.spec) + (None,) * (p.ndim - len(p.sharding.spec))
    return NamedSharding(mesh, P(*(axis if n == m else None for axis, n, m in zip(spec, shape, p.shape))))


def placement_mismatches(state, params, eager: bool) -> list[str]:
    """State leaves not placed as required: a subtree keyed like the (flat dict of) `params` must be sharded leaf
    by leaf like the params, except the leaves an optax.partition masks out (optax.MaskedNode, no array); any
    other leaf (step counts, NAdam's mu_product) must be a scalar replicated on all the params' devices or, when
    `eager`, may also be uncommitted (jit then places it wherever the params are)."""
    n_devices = len(jax.tree.leaves(params)[0].sharding.device_set)
    bad = []

    def is_param_shaped(node):
        return isinstance(node, dict) and node.keys() == params.keys()

    for path, node in jax.tree_util.tree_leaves_with_path(state, is_leaf=is_param_shaped):
        where = jax.tree_util.keystr(path)
        if is_param_shaped(node):
            for key, s in node.items():
                if isinstance(s, optax.MaskedNode):
                    continue
                leaf_path, p = (jax.tree_util.DictKey(key),), params[key]
                if s.shape != p.shape:  # Adafactor's factors and placeholders: sharded like p on the dims kept
                    kept = reduced_sharding(p, s.shape)
                    if s.shape == () and eager and not s.committed:
                        continue
                    if kept is None or not s.sharding.is_equivalent_to(kept, s.ndim):
                        bad.append(f"{where}{jax.tree_util.keystr(leaf_path)}: {spec_of(s)} with shape {s.shape}, "
                                   f"param: {spec_of(p)}")
                elif not s.sharding.is_equivalent_to(p.sharding, p.ndim):
                    bad.append(f"{where}{jax.tree_util.keystr(leaf_path)}: {spec_of(s)}, param: {spec_of(p)}")
        elif node.shape != ():
            bad.append(f"{where}: shape {node.shape} is neither shaped like the params nor a scalar")
        elif not (eager and not node.committed) and not (
            node.sharding.is_fully_replicated and len(node.sharding.device_set) == n_devices
        ):
            bad.append(f"{where}: {spec_of(node)}, expected a scalar replicated on {n_devices} devices")
    return bad


def step_fn(tx):
    """One training step: update and apply."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def collectives(compiled) -> list[str]:
    """The cross-device operations in a compiled computation's HLO."""
    hlo = compiled.as_text()
    return sorted({c for c in COLLECTIVES if re.search(rf"\b{c}(-start)?\(", hlo)})


def run_sharded(tx, mesh, host_params, host_grads) -> tuple[dict, dict]:
    """Init eagerly and under jit, run the jitted steps on the mesh; return the facts and the final params."""
    shardings = {k: NamedSharding(mesh, spec) for k, (_, spec) in SPECS.items()}
    explicit = mesh.axis_types[0] == AxisType.Explicit
    with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
        params = jax.device_put(host_params, shardings)
        grads = [jax.device_put(g, shardings) for g in host_grads]
        eager_state = tx.init(params)
        jit_state = jax.jit(tx.init)(params)
        compiled = jax.jit(step_fn(tx)).lower(params, jit_state, grads[0]).compile()
        new_params, state = params, jit_state
        for g in grads:
            new_params, state = compiled(new_params, state, g)
    facts = {
        "eager_init": placement_mismatches(eager_state, params, eager=True),
        "jit_init": placement_mismatches(jit_state, params, eager=False),
        "after_steps": placement_mismatches(state, params, eager=False),
        "params_after_steps": [f"{k}: {spec_of(v)}" for k, v in new_params.items()
                               if not v.sharding.is_equivalent_to(shardings[k], v.ndim)],
        "collectives": collectives(compiled),
    }
    return facts, new_params


def orthogonalized_matrices(mesh, host_params) -> dict:
    """`optimjax.orthogonalize` with its default bfloat16 Newton-Schulz, jitted, on each sharded matrix of `SPECS`:
    the layouts it returns that are not its input's, its collectives, and its largest difference from the same
    call on one device."""
    orthogonalize = jax.jit(optimjax.orthogonalize)
    explicit = mesh.axis_types[0] == AxisType.Explicit
    facts = {"layout_mismatches": [], "collectives": set(), "max_abs_diff_vs_one_device": 0.0}
    with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
        for key, (shape, spec) in SPECS.items():
            if len(shape) != 2 or spec == P():
                continue
            x = jax.device_put(host_params[key], NamedSharding(mesh, spec))
            compiled = orthogonalize.lower(x).compile()
            out = compiled(x)
            if not out.sharding.is_equivalent_to(x.sharding, 2):
                facts["layout_mismatches"].append(f"{key}: {spec_of(out)}, input {spec_of(x)}")
            facts["collectives"].update(collectives(compiled))
            one_device = np.asarray(orthogonalize(host_params[key]), np.float32)
            facts["max_abs_diff_vs_one_device"] = max(
                facts["max_abs_diff_vs_one_device"], float(np.max(np.abs(np.asarray(out, np.float32) - one_device))))
    return {**facts, "collectives": sorted(facts["collectives"])}


def checkpoint_roundtrip(params) -> list[str]:
    """Save sharded params and NAdamW state with Orbax, restore them with `optimjax.checkpoint.restore` into
    abstract arrays that ask for another layout (replicated on the mesh); return every entry that comes back
    with another layout than asked for, or with other values."""
    tx = optimjax.nadamw(1e-2)
    tree = {"params": params, "opt_state": jax.jit(tx.init)(params)}
    replicated = NamedSharding(jax.tree.leaves(params)[0].sharding.mesh, P())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)
    with tempfile.TemporaryDirectory() as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, "ckpt"), tree)
        restored = optimjax.checkpoint.restore(os.path.join(tmp, "ckpt"), target)
    bad = []
    for (path, saved), want, got in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(target),
                                        jax.tree.leaves(restored)):
        if not got.sharding.is_equivalent_to(want.sharding, saved.ndim):
            bad.append(f"{jax.tree_util.keystr(path)}: restored {spec_of(got)}, asked for {want.sharding.spec}")
        elif not np.array_equal(np.asarray(got), np.asarray(saved)):
            bad.append(f"{jax.tree_util.keystr(path)}: values differ")
    return bad


def main() -> None:
    assert jax.device_count() == 8, f"needs 8 devices, got {jax.device_count()}: set XLA_FLAGS"
    meshes = {mode: jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
              for mode, kind in (("auto", AxisType.Auto), ("explicit", AxisType.Explicit))}
    rng = np.random.default_rng(0)
    host_params = {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in SPECS.items()}
    host_grads = [{k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in SPECS.items()}
                  for _ in range(STEPS)]

    auto_params = jax.device_put(host_params, {k: NamedSharding(meshes["auto"], s) for k, (_, s) in SPECS.items()})
    clip = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    report = {
        "devices": jax.device_count(),
        "checkpoint_roundtrip": checkpoint_roundtrip(auto_params),
        # What plain optax gives under jit: the reason optimjax's init places its state with shard_alike.
        "optax_adam_jit_init": placement_mismatches(jax.jit(optax.adam(1e-3).init)(auto_params), auto_params, False),
        # A control that must communicate (a global norm): shows that the collective detector can fire.
        "control_clip_by_global_norm": run_sharded(clip, meshes["auto"], host_params, host_grads)[0]["collectives"],
        "orthogonalize": {mode: orthogonalized_matrices(mesh, host_params) for mode, mesh in meshes.items()},
        "cases": {},
    }
    for i, case in enumerate(CASES):
        print(f"[{i + 1}/{len(CASES)}] {case.id}", file=sys.stderr, flush=True)
        tx = case.optimjax()
        # The reference: the same steps on one device, from the same host numbers.
        reference, state = jax.device_put(host_params), tx.init(host_params)
        single_step = jax.jit(step_fn(tx))
        for g in host_grads:
            reference, state = single_step(reference, state, g)
        result = {"max_abs_move": max(float(np.max(np.abs(reference[k] - host_params[k]))) for k in SPECS)}
        for mode, mesh in meshes.items():
            try:  # one optimizer failing in one mode is a fact to report, not the end of the report
                facts, params = run_sharded(tx, mesh, host_params, host_grads)
            except Exception as error:  # noqa: BLE001
                result[mode] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                continue
            facts["max_abs_diff_vs_one_device"] = max(
                float(np.max(np.abs(np.asarray(params[k]) - np.asarray(reference[k])))) for k in SPECS)
            result[mode] = facts
        report["cases"][case.id] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
