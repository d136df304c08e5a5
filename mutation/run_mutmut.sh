#!/usr/bin/env bash
# The operator-by-operator mutation run over the maths modules (mutmut 3, configured in pyproject.toml), then the
# hand-made mutants (mutation/mutants.py). Hours on 2 busy cores; not part of CI (tests/test_mutation_smoke.py
# is its smoke version). Run from the repository root: bash mutation/run_mutmut.sh
# Leaves mutants/ (ignored by git); `mutmut results` lists the survivors, `mutmut show NAME` shows one, and
# `python -m mutation.summarize` counts them per module with a one-line diff of each survivor.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf mutants  # a fresh run; to resume a stopped one, run the rest without this line
# Every maths module. fused.py: its dispatch only (of, the kernel call, the fallback), not the building and caching
# of the kernel (cache_dir ... available), which tests/test_kernel_cache.py checks in subprocesses. Modules one
# after another, so that a run stopped early leaves whole modules done (each `mutmut run` keeps earlier results).
# One thread per test process: the machine is shared.
export OMP_NUM_THREADS=1
set -f  # the mutant patterns below are for mutmut, not for the shell
FUSED_DISPATCH="optimjax.fused.x_of__* optimjax.fused.x__fused_update* optimjax.fused.x__call_kernel*
    optimjax.fused.x__why_not_fused* optimjax.fused.x__hyperparameter* optimjax.fused.x__chain_parts*
    optimjax.fused.x__one_dtype* optimjax.fused.x__plain_step*"
for names in "optimjax.adam.*" "optimjax.sgd.*" "optimjax.weight_decay.*" "optimjax.learning_rate.*" \
    "optimjax._tree.*" "optimjax.rmsprop.*" "optimjax.adagrad.*" "optimjax.adadelta.*" "optimjax.nadam.*" \
    "$FUSED_DISPATCH" "optimjax.radam.*" "optimjax.adamax.*" "optimjax.asgd.*" "optimjax.rprop.*" \
    "optimjax.adafactor.*" "optimjax.muon.*" "optimjax.lbfgs.*" "optimjax.schedules.*" "optimjax.plateau.*" \
    "optimjax.clipping.*"; do
    # shellcheck disable=SC2086  # $names may be several patterns (word splitting wanted; mutmut expands the *)
    nice -n 10 mutmut run --max-children 2 $names || true
done
python -m mutation.summarize > mutation/mutmut-summary.txt
nice -n 10 python -m mutation.hand > mutation/hand-results.md
