"""The survivors of the last mutmut run (mutation/RESULTS.md) as text substitutions on the current code, each run
against the test added for it, which must fail:  python -m mutation.survivors [ID ...]"""

import sys
import tempfile
from pathlib import Path

from mutation.mutants import Mutant, copy_with, killed, start

D = "tests/test_defaults.py::"
F = "tests/test_fused.py::"
S = [
 ("amsgrad_lr_default", "optimjax/adam.py", "learning_rate: optax.ScalarOrSchedule = 1e-3,\n    b1: float = 0.9,\n    b2: float = 0.999,\n    eps: float = 1e-8,\n    weight_decay: float = 0.0,\n    mu_dtype", "learning_rate: optax.ScalarOrSchedule = 1.001,\n    b1: float = 0.9,\n    b2: float = 0.999,\n    eps: float = 1e-8,\n    weight_decay: float = 0.0,\n    mu_dtype", D+"test_defaults_follow_torch[amsgrad]"),
 ("amsgrad_b2_default", "optimjax/adam.py", "b2: float = 0.999,\n    eps: float = 1e-8,\n    weight_decay: float = 0.0,\n    mu_dtype", "b2: float = 1.999,\n    eps: float = 1e-8,\n    weight_decay: float = 0.0,\n    mu_dtype", D+"test_defaults_follow_torch[amsgrad]"),
 ("amsgrad_mu_dtype_none", "optimjax/adam.py", "True, mu_dtype, nu_dtype, maximize)", "True, None, nu_dtype, maximize)", D+"test_storage_dtypes_reach_the_state[amsgrad]"),
 ("amsgrad_nu_dtype_none", "optimjax/adam.py", "True, mu_dtype, nu_dtype, maximize)", "True, mu_dtype, None, maximize)", D+"test_storage_dtypes_reach_the_state[amsgrad]"),
 ("momentum_default", "optimjax/sgd.py", "    momentum: float = 0.9,\n    dampening", "    momentum: float = 1.9,\n    dampening", D+"test_defaults_follow_torch[momentum]"),
 ("momentum_drops_dampening", "optimjax/sgd.py", "return sgd(learning_rate, momentum=momentum, dampening=dampening, weight_decay=weight_decay, maximize=maximize)", "return sgd(learning_rate, momentum=momentum, weight_decay=weight_decay, maximize=maximize)", D+"test_defaults_follow_torch[momentum_all_arguments]"),
 ("momentum_drops_weight_decay", "optimjax/sgd.py", "return sgd(learning_rate, momentum=momentum, dampening=dampening, weight_decay=weight_decay, maximize=maximize)", "return sgd(learning_rate, momentum=momentum, dampening=dampening, maximize=maximize)", D+"test_defaults_follow_torch[momentum_all_arguments]"),
 ("nesterov_default", "optimjax/sgd.py", "learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0, maximize", "learning_rate: optax.ScalarOrSchedule, momentum: float = 1.9, weight_decay: float = 0.0, maximize", D+"test_defaults_follow_torch[nesterov]"),
 ("nesterov_drops_weight_decay", "optimjax/sgd.py", "return sgd(learning_rate, momentum=momentum, nesterov=True, weight_decay=weight_decay, maximize=maximize)", "return sgd(learning_rate, momentum=momentum, nesterov=True, maximize=maximize)", D+"test_defaults_follow_torch[nesterov_all_arguments]"),
 ("scale_by_adagrad_eps_default", "optimjax/adagrad.py", "def scale_by_adagrad(eps: float = 1e-10,", "def scale_by_adagrad(eps: float = 1.0000000001,", D+"test_defaults_follow_torch[scale_by_adagrad]"),
 ("adagrad_lr_default", "optimjax/adagrad.py", "learning_rate: optax.ScalarOrSchedule = 1e-2,",
  "learning_rate: optax.ScalarOrSchedule = 1.01,", D+"test_defaults_follow_torch[adagrad]"),
 ("scale_by_adagrad_initial_default", "optimjax/adagrad.py", "initial_accumulator_value: float = 0.0) -> optax", "initial_accumulator_value: float = 1.0) -> optax", D+"test_defaults_follow_torch[scale_by_adagrad]"),
 # mutmut's run of the session of 2026-12-01 (mutation/RESULTS.md): sgd's survivors that change what a test outside
 # mutmut's selection (or a new one) must see
 ("sgd_count_float32", "optimjax/sgd.py", "MomentumState(count=jnp.zeros([], jnp.int32), velocity",
  "MomentumState(count=jnp.zeros([]), velocity", "tests/test_optimizers.py::test_step_counters_are_int32[momentum]"),
 ("sgd_count_dropped", "optimjax/sgd.py", "MomentumState(optax.safe_increment(state.count), velocity)",
  "MomentumState(None, velocity)", "tests/test_optimizers.py::test_scan_matches_loop[momentum]"),
 ("sgd_kernel_without_momentum", "optimjax/sgd.py", "if momentum is None or is_zero(momentum):\n        return \"\"",
  "if momentum is None and is_zero(momentum):\n        return \"\"",
  F+"test_sgd_without_momentum_is_the_plain_single_pass_silently[None]"),
 ("sgd_kernel_zero_momentum", "optimjax/sgd.py", "if momentum is None or is_zero(momentum):\n        return \"\"",
  "if momentum is None or is_zero(None):\n        return \"\"",
  F+"test_sgd_without_momentum_is_the_plain_single_pass_silently[0.0]"),
 ("sgd_kernel_reason_not_empty", "optimjax/sgd.py", "is_zero(momentum):\n        return \"\"",
  "is_zero(momentum):\n        return \"XXXX\"", F+"test_sgd_without_momentum_is_the_plain_single_pass_silently[None]"),
 ("tree_complex_dtype_none", "optimjax/_tree.py", "canonicalize_dtype(jnp.complex128)", "canonicalize_dtype(None)",
  "tests/test_complex.py::test_python_complex_leaves_equal_complex64_arrays[adam]"),
 ("sgd_kernel_drops_maximize", "optimjax/sgd.py", "not is_zero(dampening)), maximize=maximize)",
  "not is_zero(dampening)), )", F+"test_maximize_negates_the_gradient_in_the_kernel[sgd-kwargs3]"),
]


def main(names):
    failed = 0
    mutants = [Mutant(i, p, o, n, (t,), "mutmut survivor") for i, p, o, n, t in S if not names or i in names]
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(0, len(mutants), 2):
            batch = mutants[k:k + 2]
            procs = [(m, start(m, copy_with(m, Path(tmp) / m.id))) for m in batch]
            for m, p in procs:
                dead, out = killed(p)
                print(f"{m.id}: {'killed' if dead else 'SURVIVED'} by {m.tests[0]}", flush=True)
                if not dead:
                    print(out[-1500:])
                    failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
