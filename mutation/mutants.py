"""Hand-made mutants: plausible mistakes in the maths, each a text substitution with the tests that must catch it.

mutmut (configured in pyproject.toml) mutates the Python side operator by operator; these add the mistakes it
cannot make (a transform moved in a chain, a formula rewritten, the C++ kernel) and the ones issue 14 found
uncaught. `python -m mutation.hand` runs all of them; tests/test_mutation_smoke.py runs the `smoke` ones in CI.

Each mutant is applied to a copy of the package in a temporary directory, never to the checkout.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments selecting the tests that must fail (at least one of them)
    why: str  # the mistake it models
    smoke: bool = False  # part of the CI smoke run

    @property
    def kernel(self) -> bool:
        return self.path.endswith(".cc")


ONE_STEP = "tests/test_fused.py::test_one_step_is_the_documented_float32_arithmetic_bit_for_bit"
MUTANTS = [
    # --- the Python side -------------------------------------------------------------------------------------------
    Mutant("eps_root_unscaled", "optimjax/adam.py",
           "v = v + like(eps_root * bc2, v)", "v = v + like(eps_root, v)",
           ("tests/test_exactness.py::test_eps_root_matches_optax_in_float64[False]",),
           "eps_root added to the raw v instead of eps_root * (1 - b2**t) (the corrected v), 3.5e-2 off optax",
           smoke=True),
    Mutant("rmsprop_momentum_after_lr", "optimjax/rmsprop.py",
           "        *([] if momentum is None or is_zero(momentum) else [scale_by_momentum(momentum)]),\n"
           "        scale_by_learning_rate(learning_rate),\n",
           "        scale_by_learning_rate(learning_rate),\n"
           "        *([] if momentum is None or is_zero(momentum) else [scale_by_momentum(momentum)]),\n",
           ("tests/test_torch_parity.py::test_schedule_matches_torch_lr_scheduler[rmsprop_centered_momentum_wd]",),
           "RMSprop's momentum traced after the learning rate (optax's order): equal for a constant lr only",
           smoke=True),
    Mutant("lerp_one_form", "optimjax/_tree.py",
           "return near_start() if abs(weight) < 0.5 else near_end()", "return near_start()",
           ("tests/test_exactness.py::test_adam_moments_are_torchs_bit_for_bit[adam-b1=0.3]",),
           "torch.lerp's end-anchored form (weight >= 0.5, i.e. b1 < 0.5) never taken: rounding only, 2e-7",
           smoke=True),
    Mutant("bias_correction_float32_power", "optimjax/_tree.py",
           "return -jnp.expm1(t * log_of(decay))", "return 1 - jnp.asarray(decay, jnp.float32) ** t",
           ("tests/test_exactness.py::test_bias_correction_is_float64s_closed_form[0.99999]",
            "tests/test_torch_parity.py::test_float64_matches_torch[adam_b1_0.3_b2_0.99999]"),
           "1 - b**t as a float32 power: 2.4e-5 off torch at b2 = 0.99999, 1.3e-2 relative at b = 0.999999",
           smoke=True),
    Mutant("rmsprop_eps_inside_sqrt", "optimjax/rmsprop.py",
           "g / (jnp.sqrt(s) + like(eps, s))", "g / jnp.sqrt(s + like(eps, s))",
           ("tests/test_torch_parity.py::test_float64_matches_torch[rmsprop]",),
           "RMSprop's eps inside the sqrt (optax's default), 2.8e-5 off torch in float32"),
    Mutant("nesterov_old_velocity", "optimjax/sgd.py",
           "directions = leafwise(lambda g, v: g + like(beta, v) * v, updates, velocity)",
           "directions = leafwise(lambda g, v: g + like(beta, v) * v, updates, state.velocity)",
           ("tests/test_torch_parity.py::test_float32_matches_torch[nesterov]",),
           "Nesterov's look-ahead with the previous velocity"),
    Mutant("dampening_on_first_step", "optimjax/sgd.py",
           "damp = jnp.where(state.count == 0, 0.0, dampening)", "damp = jnp.where(state.count < 0, 0.0, dampening)",
           ("tests/test_torch_parity.py::test_float32_matches_torch[momentum_dampening_wd]",),
           "dampening applied on the first step (torch starts the buffer at g)"),
    Mutant("nadam_schedule_constant", "optimjax/nadam.py",
           "return b1 * (1 - 0.5 * power(0.96, t * momentum_decay))",
           "return b1 * (1 - 0.5 * power(0.96, (t + 1) * momentum_decay))",
           ("tests/test_torch_parity.py::test_float64_matches_torch[nadam]",),
           "Dozat's momentum schedule evaluated one step late"),
    Mutant("adagrad_lr_decay_off_by_one", "optimjax/adagrad.py",
           "/ (1 + count * lr_decay)", "/ (1 + (count + 1) * lr_decay)",
           ("tests/test_torch_parity.py::test_float32_matches_torch[adagrad_all_options]",),
           "Adagrad's lr / (1 + t lr_decay) instead of torch's lr / (1 + (t - 1) lr_decay)"),
    Mutant("fused_nadam_scalars_swapped", "optimjax/nadam.py",
           "return [1 - b1, b2, 1 - b2, grad_coef, momentum_coef, bc2, eps], fields",
           "return [1 - b1, b2, 1 - b2, momentum_coef, grad_coef, bc2, eps], fields",
           ("tests/test_fused.py::test_float32_matches_torch[nadam]",),
           "the fused NAdam's gradient and momentum coefficients swapped"),
    # --- the C++ kernel, one per family ------------------------------------------------------------------------------
    Mutant("kernel_adam_lerp_one_form", "optimjax/_kernels/fused_step.cc",
           "cc = c[5], eps = c[6];\n      T m = s0[i];\n      m = kFlag0 ? g - (g - m) * (T(1) - w1) : m + w1 * (g - m);",
           "cc = c[5], eps = c[6];\n      T m = s0[i];\n      m = m + w1 * (g - m);",
           (ONE_STEP + "[adam-learning_rate=0.03-b2=0.99-eps=1e-06-b1=0.3-weight_decay=0.0]",),
           "the kernel's lerp always in its start-anchored form: rounding only, seen by the bit-for-bit step",
           smoke=True),
    Mutant("kernel_nadam_coefficients_swapped", "optimjax/_kernels/fused_step.cc",
           "d = (a * g + b * m) / (std::sqrt(v / cc) + eps);", "d = (b * g + a * m) / (std::sqrt(v / cc) + eps);",
           (ONE_STEP + "[nadam-learning_rate=0.03-b2=0.99-eps=1e-06-b1=0.9-weight_decay=0.0-momentum_decay=0.004]",),
           "NAdam's gradient and momentum coefficients swapped in the kernel"),
    Mutant("kernel_nesterov_old_velocity", "optimjax/_kernels/fused_step.cc",
           "d = kFlag0 ? g + beta * u : u;", "d = kFlag0 ? g + beta * s0[i] : u;",
           (ONE_STEP + "[sgd-learning_rate=0.05-momentum=0.7-nesterov=True-weight_decay=0.05]",),
           "Nesterov's look-ahead with the previous velocity in the kernel"),
    Mutant("kernel_rmsprop_eps_inside_sqrt", "optimjax/_kernels/fused_step.cc",
           "d = g / (std::sqrt(v) + eps);", "d = g / std::sqrt(v + eps);",
           (ONE_STEP + "[rmsprop-learning_rate=0.01-decay=0.9-eps=1e-06]",),
           "RMSprop's eps inside the sqrt in the kernel"),
    Mutant("kernel_adagrad_old_sum", "optimjax/_kernels/fused_step.cc",
           "d = g / (std::sqrt(s) + eps);", "d = g / (std::sqrt(s0[i]) + eps);",
           (ONE_STEP + "[adagrad-learning_rate=0.1-eps=1e-10]",),
           "Adagrad's direction divided by the previous sum of squares in the kernel"),
]


def copy_with(mutant: Mutant | None, destination: Path) -> Path:
    """A copy of the package and its tests under `destination`, with `mutant` applied; returns the copy's root."""
    for name in ("optimjax", "tests"):
        shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    if mutant is not None:
        path = destination / mutant.path
        source = path.read_text()
        count = source.count(mutant.old)
        if count != 1:
            raise ValueError(f"mutant {mutant.id}: its text occurs {count} times in {mutant.path}, expected once")
        path.write_text(source.replace(mutant.old, mutant.new))
    return destination


# Runs pytest after checking that the package is imported from the copy (not an installed or editable one).
_RUN = "import sys, optimjax, pytest; assert optimjax.__file__.startswith(sys.argv[1]), optimjax.__file__; " \
       "sys.exit(pytest.main(sys.argv[2:]))"


def start(mutant: Mutant, root: Path) -> subprocess.Popen:
    """Run the mutant's tests in the copy at `root` (stop at the first failure), in a subprocess."""
    env = {**os.environ, "OPTIMJAX_CACHE_DIR": str(root / "kernel-cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    # -n 0: one process (pyproject's addopts spread the suite over xdist workers, whose -x exits 2, "interrupted")
    command = [sys.executable, "-c", _RUN, str(root), "-n", "0", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def killed(process: subprocess.Popen, timeout: float = 600) -> tuple[bool, str]:
    """Whether the tests failed (pytest's exit status 1: a test failed, not an error collecting or running them)."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode == 1 and " failed" in output, output
