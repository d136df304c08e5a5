"""Hand-made mutants: plausible mistakes in the maths, each a text substitution with the tests that must catch it.

mutmut (configured in pyproject.toml) mutates the Python side operator by operator; these add the mistakes it
cannot make (a transform moved in a chain, a formula rewritten, the C++ kernel) and the ones issue 14 found
uncaught. `python -m mutation.hand` runs all of them (or some: ids or shell patterns), each as a text substitution;
tests/test_mutation_smoke.py runs the `smoke` ones in CI, the kernel's (one per family) from one build of the
kernel in one process (`kernel_schema`).

Each mutant is applied to a copy of the package in a temporary directory, never to the checkout.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
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
NEW_ONE_STEP = "tests/test_fused.py::test_one_step_of_the_new_families_is_torchs_float32_arithmetic_bit_for_bit"
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
    # --- the Python side of the newer families ------------------------------------------------------------------------
    Mutant("radam_threshold_inclusive", "optimjax/radam.py",
           "if rho_inf - 2 * t * b2**t / (1 - b2**t) > 5:", "if rho_inf - 2 * t * b2**t / (1 - b2**t) >= 5:",
           ("tests/test_new_optimizers.py::test_radam_is_not_rectified_where_rho_t_is_exactly_5",),
           "RAdam rectified from rho_t >= 5 (optax's and the paper code's test) instead of torch's rho_t > 5"),
    Mutant("adamax_eps_after_max", "optimjax/adamax.py",
           "jnp.maximum(u * like(b2, u), jnp.abs(g) + like(eps, g))",
           "jnp.maximum(u * like(b2, u), jnp.abs(g)) + like(eps, g)",
           ("tests/test_torch_parity.py::test_float64_matches_torch[adamax_wd]",),
           "Adamax's eps added after the max (to u) instead of to |g| inside it, torch's max(b2 u, |g| + eps)"),
    Mutant("asgd_eta_one_step_late", "optimjax/asgd.py",
           "eta = lr / (1 + lambd * lr * t) ** alpha", "eta = lr / (1 + lambd * lr * (t - 1)) ** alpha",
           ("tests/test_torch_parity.py::test_float64_matches_torch[asgd_averaging_wd]",),
           "ASGD's eta_{t+1} from the step count before the increment (torch increments `step` first)"),
    Mutant("asgd_mu_one_step_late", "optimjax/asgd.py",
           "mu = 1 / jnp.maximum(1, t - t0)", "mu = 1 / jnp.maximum(1, t - 1 - t0)",
           ("tests/test_new_optimizers.py::test_asgd_averaged_params_match_torch_ax[float64]",),
           "ASGD's averaging weight mu_{t+1} one step late: the averaged parameters ax only, not theta"),
    Mutant("fused_asgd_next_eta", "optimjax/asgd.py",
           "return [1 - lambd * state.eta, state.eta, state.mu, state.mu == 1]",
           "return [1 - lambd * eta, eta, mu, mu == 1]",
           ("tests/test_fused.py::test_float32_matches_torch[asgd_averaging_wd]",),
           "the fused ASGD steps with the eta and mu computed for the next step, not the state's"),
    Mutant("rprop_etas_swapped", "optimjax/rprop.py",
           "clip(lax.mul(s, like(eta_plus, s))),\n"
           "                           lax.select(flipped, clip(lax.mul(s, like(eta_minus, s)))",
           "clip(lax.mul(s, like(eta_minus, s))),\n"
           "                           lax.select(flipped, clip(lax.mul(s, like(eta_plus, s)))",
           ("tests/test_torch_parity.py::test_float64_matches_torch[rprop]",),
           "Rprop's etas swapped (torch's etas=(eta_minus, eta_plus) read as (eta_plus, eta_minus))"),
    Mutant("rprop_flip_not_zeroed", "optimjax/rprop.py",
           "g = lax.select(flipped, zero_after(s), g)", "g = g",
           ("tests/test_torch_parity.py::test_float64_matches_torch[rprop]",),
           "Rprop steps on a sign flip and keeps the flipped gradient for the next sign test (torch zeroes it)"),
    Mutant("adafactor_beta2_one_step_late", "optimjax/adafactor.py",
           "w = jnp.exp(beta2_decay * jnp.log(t))", "w = jnp.exp(beta2_decay * jnp.log(t + 1))",
           ("tests/test_torch_parity.py::test_float64_matches_torch[adafactor]",),
           "Adafactor's 1 - beta2_t = t ** beta2_decay one step late (from t + 1; torch's is 1 at t = 1)"),
    Mutant("adafactor_no_eps1_floor", "optimjax/adafactor.py",
           "u = 1 / jnp.sqrt(jnp.maximum(estimate, like(e1 * e1, g))) * g", "u = 1 / jnp.sqrt(estimate) * g",
           ("tests/test_new_optimizers.py::test_adafactor_with_gradients_that_stay_zero_matches_torch",),
           "Adafactor's variance estimate not floored at eps1**2 before the rsqrt: 0 / 0 where a gradient stays 0"),
    Mutant("muon_ratio_transposed", "optimjax/muon.py",
           "return math.sqrt(max(1, rows / cols))", "return math.sqrt(max(1, cols / rows))",
           ("tests/test_torch_parity.py::test_float64_matches_torch[muon_nesterov_wd]",),
           "Muon's adjust_lr ratio sqrt(max(1, A / B)) with rows and columns swapped"),
    Mutant("muon_no_nesterov", "optimjax/muon.py",
           "m = lerp(g, buf, momentum) if nesterov else buf", "m = buf",
           ("tests/test_torch_parity.py::test_float64_matches_torch[muon_nesterov_wd]",),
           "Muon's Nesterov look-ahead lerp(g, B, momentum) dropped: B orthogonalized either way"),
    Mutant("lbfgs_every_pair_kept", "optimjax/lbfgs.py",
           "accept = ys > 1e-10", "accept = jnp.asarray(True)",
           ("tests/test_lbfgs.py::test_lbfgs_steps_match_torch_in_float64",),
           "L-BFGS keeps every (s, y) pair, also those with y . s <= 1e-10 (torch skips them: H must stay positive)"),
    Mutant("lbfgs_first_step_unscaled", "optimjax/lbfgs.py",
           "jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g))) * learning_rate", "1.0 * learning_rate",
           ("tests/test_lbfgs.py::test_lbfgs_steps_match_torch_in_float64",),
           "L-BFGS's very first step t = lr instead of min(1, 1 / ||g||_1) * lr"),
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
           "NAdam's gradient and momentum coefficients swapped in the kernel", smoke=True),
    Mutant("kernel_nesterov_old_velocity", "optimjax/_kernels/fused_step.cc",
           "d = kFlag0 ? g + beta * u : u;", "d = kFlag0 ? g + beta * s0[i] : u;",
           (ONE_STEP + "[sgd-learning_rate=0.05-momentum=0.7-nesterov=True-weight_decay=0.05]",),
           "Nesterov's look-ahead with the previous velocity in the kernel", smoke=True),
    Mutant("kernel_rmsprop_eps_inside_sqrt", "optimjax/_kernels/fused_step.cc",
           "d = g / (std::sqrt(v) + eps);", "d = g / std::sqrt(v + eps);",
           (ONE_STEP + "[rmsprop-learning_rate=0.01-decay=0.9-eps=1e-06]",),
           "RMSprop's eps inside the sqrt in the kernel", smoke=True),
    Mutant("kernel_adagrad_old_sum", "optimjax/_kernels/fused_step.cc",
           "d = g / (std::sqrt(s) + eps);", "d = g / (std::sqrt(s0[i]) + eps);",
           (ONE_STEP + "[adagrad-learning_rate=0.1-eps=1e-10]",),
           "Adagrad's direction divided by the previous sum of squares in the kernel", smoke=True),
    Mutant("kernel_radam_eps_on_corrected_v", "optimjax/_kernels/fused_step.cc",
           "d = (m_hat * (bc2_sqrt / (std::sqrt(v) + eps))) * r;",
           "d = (m_hat * (T(1) / (std::sqrt(v) / bc2_sqrt + eps))) * r;",
           (NEW_ONE_STEP + "[radam-9-learning_rate=0.01-b2=0.99-eps=1e-06]",),
           "RAdam's eps added to the bias-corrected sqrt(v / (1 - b2**t)) (optax's placement) in the kernel",
           smoke=True),
    Mutant("kernel_adamax_eps_after_max", "optimjax/_kernels/fused_step.cc",
           "const T u = MaxNan(s1[i] * b2, std::abs(g) + eps);", "const T u = MaxNan(s1[i] * b2, std::abs(g)) + eps;",
           (NEW_ONE_STEP + "[adamax-4-learning_rate=0.02]",),
           "Adamax's eps added after the max instead of to |g| inside it, in the kernel", smoke=True),
    Mutant("kernel_rprop_flip_not_zeroed", "optimjax/_kernels/fused_step.cc",
           "s0[i] = kept;", "s0[i] = g;",
           (NEW_ONE_STEP + "[rprop-4-learning_rate=0.01-etas=(0.5, 1.2)-step_sizes=(1e-06, 50.0)]",),
           "Rprop's stored gradient not zeroed after a sign flip in the kernel (the next step's sign test sees it)",
           smoke=True),
    Mutant("kernel_asgd_average_of_old_iterate", "optimjax/_kernels/fused_step.cc",
           "s0[i] = kFlag1 ? next : ax + (next - ax) * mu;", "s0[i] = kFlag1 ? next : ax + (theta - ax) * mu;",
           (NEW_ONE_STEP + "[asgd-4-learning_rate=0.05-lambd=0.05-alpha=0.6-t0=2.0-weight_decay=0.05]",),
           "ASGD's average moved towards the previous iterate instead of the new one, in the kernel", smoke=True),
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


# --- the kernel's mutants in one build: a mutant schema -----------------------------------------------------------
# Building the kernel costs about 11 CPU seconds and each test process about 8 (importing jax and torch), so CI
# runs every kernel mutant from one build in one process: each mutated statement `lhs = old;` becomes
# `lhs = (MutantIs(k) ? (new) : (old));`, and $OPTIMJAX_MUTANT, read at each call of the kernel, picks k (0: none).
# The kernel is compiled without contraction or fast-math, so with k picked every element is computed by `new`'s
# operations, rounded as in the text-substituted kernel (python -m mutation.hand builds that one, per mutant).

KERNEL = "optimjax/_kernels/fused_step.cc"
_SCHEMA_HEADER = """#include <cstdlib>
// Mutation testing (mutation/mutants.py): the mutant switched on, read from $OPTIMJAX_MUTANT at each call.
static int optimjax_mutant = 0;
static inline bool MutantIs(int k) { return optimjax_mutant == k; }
"""
_SCHEMA_ANCHOR = "  const size_t states = HasTwoStates(int(family)) ? 2 : 1;\n"  # the first line of Step()
_SCHEMA_SWITCH = '  { const char* k = std::getenv("OPTIMJAX_MUTANT"); optimjax_mutant = k ? std::atoi(k) : 0; }\n'
_ASSIGNMENT = re.compile(r"(\s*)(\S.*? = )(.+);")


def _changed_statement(source: str, mutant: Mutant) -> tuple[int, int, str]:
    """(start, end, replacement): the one-line assignment of `source` that `mutant` changes, as a switch."""
    at = source.index(mutant.old)
    prefix = len(os.path.commonprefix([mutant.old, mutant.new]))
    suffix = len(os.path.commonprefix([mutant.old[prefix:][::-1], mutant.new[prefix:][::-1]]))
    first, last = at + prefix, max(at + prefix, at + len(mutant.old) - suffix - 1)
    start, end = source.rfind("\n", 0, first) + 1, source.find("\n", last)
    mutated = source[:at] + mutant.new + source[at + len(mutant.old):]
    old = _ASSIGNMENT.fullmatch(source[start:end])
    new = _ASSIGNMENT.fullmatch(mutated[start:end + len(mutant.new) - len(mutant.old)])
    if not old or not new or old.group(1, 2) != new.group(1, 2) or " = " in old.group(3) + new.group(3):
        raise ValueError(f"mutant {mutant.id}: a schema needs it to change the right side of one one-line "
                         f"assignment, not {source[start:end]!r}")
    indent, lhs = old.group(1, 2)
    return start, end, f"{indent}{lhs}(MutantIs({{k}}) ? ({new.group(3)}) : ({old.group(3)}));"


def kernel_schema(mutants: list[Mutant]) -> str:
    """The kernel's source with the k-th of `mutants` (k = 1, 2, ...) switched on by OPTIMJAX_MUTANT=k."""
    source = (ROOT / KERNEL).read_text()
    if source.count(_SCHEMA_ANCHOR) != 1:
        raise ValueError(f"update mutation/mutants.py's _SCHEMA_ANCHOR to the current {KERNEL}")
    changes = []
    for k, mutant in enumerate(mutants, start=1):
        if mutant.path != KERNEL or source.count(mutant.old) != 1:
            raise ValueError(f"mutant {mutant.id}: its text must occur once in {KERNEL}")
        start, end, replacement = _changed_statement(source, mutant)
        changes.append((start, end, replacement.format(k=k), mutant.id))
    changes.sort()
    for (_, end, _, one), (start, _, _, other) in itertools.pairwise(changes):
        if start < end:
            raise ValueError(f"mutants {one} and {other} change the same statement: one schema cannot hold both")
    for start, end, replacement, _ in reversed(changes):
        source = source[:start] + replacement + source[end:]
    return _SCHEMA_HEADER + source.replace(_SCHEMA_ANCHOR, _SCHEMA_SWITCH + _SCHEMA_ANCHOR)


# Checks that the copy's kernel is built and used, then runs the tests of each mutant in turn with it switched on
# (k = 0 first: every test must pass without a mutant), printing pytest's exit status of each as a JSON line.
_RUN_SCHEMA = """
import json, os, sys
import optimjax, optimjax.fused, pytest
assert optimjax.__file__.startswith(sys.argv[1]), optimjax.__file__
assert optimjax.fused.available(), optimjax.fused.unavailable_reason()
status = {}
for k, (name, tests) in enumerate(json.loads(sys.argv[2])):
    os.environ["OPTIMJAX_MUTANT"] = str(k)
    print(f"\\n=== {name} (OPTIMJAX_MUTANT={k})", flush=True)
    status[name] = int(pytest.main(["-n", "0", "-x", "-q", "-p", "no:cacheprovider", *tests]))
print("STATUS " + json.dumps(status), flush=True)
"""
NO_MUTANT = "no mutant"


def start_schema(mutants: list[Mutant], root: Path) -> subprocess.Popen:
    """Run every kernel mutant of `mutants` from one build of `kernel_schema` in a copy at `root`, one process."""
    copy_with(None, root)
    (root / KERNEL).write_text(kernel_schema(mutants))
    plan = [(NO_MUTANT, sorted({t for m in mutants for t in m.tests}))] + [(m.id, list(m.tests)) for m in mutants]
    env = {**os.environ, "OPTIMJAX_CACHE_DIR": str(root / "kernel-cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("OPTIMJAX_MUTANT", None)
    command = [sys.executable, "-c", _RUN_SCHEMA, str(root), json.dumps(plan)]
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def killed_in_schema(process: subprocess.Popen, timeout: float = 600) -> tuple[dict[str, bool], str]:
    """{mutant id: killed} from a `start_schema` process (a test failed: pytest's exit status 1), and its output.
    ValueError when the tests fail without a mutant (or the kernel is not used): then no verdict holds."""
    output, _ = process.communicate(timeout=timeout)
    lines = [line for line in output.splitlines() if line.startswith("STATUS ")]
    if process.returncode != 0 or len(lines) != 1:
        raise ValueError(f"the schema's run did not finish (exit status {process.returncode}):\n{output[-3000:]}")
    status = json.loads(lines[0][len("STATUS "):])
    if status.pop(NO_MUTANT) != 0:
        raise ValueError(f"the killing tests fail with no mutant switched on:\n{output[-3000:]}")
    return {name: code == 1 for name, code in status.items()}, output
