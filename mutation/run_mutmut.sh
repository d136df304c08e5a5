#!/usr/bin/env bash
# The operator-by-operator mutation run over the maths modules (mutmut 3, configured in pyproject.toml), then the
# hand-made mutants (mutation/mutants.py). About an hour on 2 cores; not part of CI (tests/test_mutation_smoke.py
# is its smoke version). Run from the repository root: bash mutation/run_mutmut.sh
# Leaves mutants/ (ignored by git); `mutmut results` lists the survivors, `mutmut show NAME` shows one.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf mutants
# fused.py: its maths and dispatch; not the build and cache machinery (_build, cache_dir, _cpu_flags,
# unavailable_reason, available), which tests/test_fused.py checks in subprocesses.
nice -n 10 mutmut run --max-children 2 \
    "optimjax._tree.*" "optimjax.adam.*" "optimjax.nadam.*" "optimjax.sgd.*" "optimjax.rmsprop.*" \
    "optimjax.adagrad.*" "optimjax.adadelta.*" "optimjax.weight_decay.*" "optimjax.learning_rate.*" \
    "optimjax.fused.x__fused*" "optimjax.fused.x__call_kernel*" "optimjax.fused.x__hyperparameter*" \
    "optimjax.fused.x__adam_family*" "optimjax.fused.x__why_not_fused*" "optimjax.fused.x_adam*" \
    "optimjax.fused.x_nadam*" "optimjax.fused.x_sgd*" "optimjax.fused.x_momentum*" "optimjax.fused.x_nesterov*" \
    "optimjax.fused.x_rmsprop*" "optimjax.fused.x_adagrad*" || true
mutmut results --all true > mutation/mutmut-results.txt || mutmut results > mutation/mutmut-results.txt
nice -n 10 python -m mutation.hand
