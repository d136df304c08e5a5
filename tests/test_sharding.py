"""Sharded optimizer state on a 4x2 mesh of 8 CPU devices, for every optimizer of tests/cases.py.

jax fixes the device count at import, so the multi-device work runs in subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8: tests/_sharding_worker.py measures, these tests assert.
Checked, in jax's automatic (GSPMD) and explicit sharding modes:

- `tx.init(params)`, eagerly and under `jax.jit` without out_shardings, gives every params-shaped state leaf
  (mu, nu, velocity, ...) the sharding of its param, and scalars (counts, NAdam's mu_product) are replicated;
- the compiled update + apply contains no all-gather, all-reduce, collective-permute, all-to-all or
  reduce-scatter (the elementwise optimizers), only all-reduces (Adafactor) or only all-gathers (Muon), and
  leaves params and state sharded as they came;
- three sharded steps give bit-identical parameters to the same steps on one device (Adafactor: within float32
  rounding of its cross-shard sums).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cases import CASE_IDS

# Its module fixture runs once per worker that runs one of its tests: keep them on one worker (conftest.py).
pytestmark = pytest.mark.xdist_group("sharding_report")

# Adafactor reduces across shards (row and column sums of g**2, the mean of the row factor, the norms of the params
# and of the update): its step all-reduces, and sums in another order than on one device.
REDUCING = {"adafactor", "adafactor_all_options"}
# Muon (the table's rows: Muon on the matrices, AdamW on the rest) gathers each sharded matrix once and runs
# Newton-Schulz on all of it on every device, as on one device: all-gathers only, and the same numbers.
GATHERING = {"muon_nesterov_wd", "muon_momentum_match_rms_adamw"}

TESTS = Path(__file__).parent
EIGHT_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
MODES = ["auto", "explicit"]


def run_on_eight_devices(args: list[str], timeout: int = 600) -> str:
    """Run `python *args` with 8 CPU devices; return stdout, or fail the test with the subprocess's stderr."""
    proc = subprocess.run([sys.executable, *args], env=EIGHT_DEVICES, capture_output=True, text=True,
                          timeout=timeout, cwd=TESTS.parent)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def report() -> dict:
    """The worker's measurements (one subprocess for the whole module: about a minute)."""
    out = run_on_eight_devices([str(TESTS / "_sharding_worker.py")])
    report = json.loads(out.strip().splitlines()[-1])
    assert report["devices"] == 8
    return report


def test_plain_jnp_zeros_like_under_jit_loses_the_sharding(report):
    """Why optimjax's init places its state explicitly: in jax 0.10 plain optax's jitted init puts the moments on
    one device (the zeros do not depend on the params, so nothing propagates their sharding). If this starts
    failing, jax propagates by itself and `optimjax._tree.placed_like` can go."""
    assert any("mu['kernel']" in m for m in report["optax_adam_jit_init"]), report["optax_adam_jit_init"]


def test_collective_detector_fires_on_a_global_norm(report):
    """The no-collectives check can fail: a global-norm clip needs an all-reduce across shards."""
    assert "all-reduce" in report["control_clip_by_global_norm"]


def test_sharded_checkpoint_restores_onto_the_target_shardings(report):
    """Orbax save of sharded params and state, then `optimjax.checkpoint.restore` into abstract arrays that ask for
    another layout (replicated): every params and NAdamW state entry comes back in that layout, with its values."""
    assert report["checkpoint_roundtrip"] == []


@pytest.mark.parametrize("mode", MODES)
def test_orthogonalize_gathers_once_and_keeps_the_layout(report, mode):
    """Muon's Newton-Schulz (bfloat16, the default) on matrices sharded on both mesh axes, on one, on the other:
    the result has the input's layout, the only collective is the gather, and the values are one device's."""
    facts = report["orthogonalize"][mode]
    assert facts["layout_mismatches"] == []
    assert facts["collectives"] == ["all-gather"]
    assert facts["max_abs_diff_vs_one_device"] == 0.0


def facts_of(report: dict, case_id: str, mode: str) -> dict:
    """The worker's facts for one optimizer in one mode; fails the test with the error if its run raised."""
    facts = report["cases"][case_id][mode]
    assert "error" not in facts, facts.get("error")
    return facts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_state_is_sharded_like_params(report, case_id, mode):
    facts = facts_of(report, case_id, mode)
    assert facts["eager_init"] == [], "eager init"
    assert facts["jit_init"] == [], "jit(tx.init) without out_shardings"
    assert facts["after_steps"] == [], "state after three jitted steps"
    assert facts["params_after_steps"] == [], "params after three jitted steps"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_update_has_only_the_expected_collectives(report, case_id, mode):
    """None for the elementwise optimizers, all-reduces for Adafactor, all-gathers for Muon."""
    expected = ["all-reduce"] if case_id in REDUCING else ["all-gather"] if case_id in GATHERING else []
    assert facts_of(report, case_id, mode)["collectives"] == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_sharded_steps_equal_one_device_steps(report, case_id, mode):
    """Bit for bit, Muon included: after its gather every device runs the one-device program on the whole
    matrix. Adafactor's cross-shard float32 sums round differently: within 1e-6 of the displacement."""
    case = report["cases"][case_id]
    assert case["max_abs_move"] > 1e-3, "the parameters did not move: the comparison would be vacuous"
    tolerance = 1e-6 * case["max_abs_move"] if case_id in REDUCING else 0.0
    assert facts_of(report, case_id, mode)["max_abs_diff_vs_one_device"] <= tolerance


def test_sharded_training_example():
    """The README's example: `python -m optimjax.examples.sharded_training` on a 4x2 mesh trains, and its
    optimizer state, created under nnx.jit, is sharded like each parameter."""
    out = run_on_eight_devices(["-m", "optimjax.examples.sharded_training", "--steps", "60"])
    assert "mesh: data=4 x model=2" in out
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if re.match(r"(hidden|out)\.", line)]
    assert len(rows) == 4, out
    for row in rows:
        param, mu, nu = row[-3:]
        assert param == mu == nu, row
    assert any(row[0] == "hidden.kernel" and row[2] == "P(None, 'model')" for row in rows), rows
    losses = [float(m) for m in re.findall(r"loss (\S+)", out)]
    assert losses[-1] < 0.5 * losses[0], losses
