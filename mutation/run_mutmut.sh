#!/usr/bin/env bash
# The operator-by-operator mutation run over the maths modules (mutmut 3, configured in pyproject.toml), then the
# hand-made mutants (mutation/mutants.py). Hours on 2 busy cores; not part of CI (tests/test_mutation_smoke.py
# is its smoke version). Run from the repository root: bash mutation/run_mutmut.sh
# Leaves mutants/ (ignored by git); `mutmut results` lists the survivors, `mutmut show NAME` shows one, and
# `python -m mutation.summarize` counts them per module with a one-line diff of each survivor.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf mutants
# Every maths module; fused.py is the dispatch (its build and cache code is optimjax/_kernels/__init__.py, not
# mutated: tests/test_kernel_cache.py checks it in subprocesses). One thread per test process: the machine is shared.
export OMP_NUM_THREADS=1
nice -n 10 mutmut run --max-children 2 \
    "optimjax._tree.*" "optimjax.adam.*" "optimjax.nadam.*" "optimjax.sgd.*" "optimjax.rmsprop.*" \
    "optimjax.adagrad.*" "optimjax.adadelta.*" "optimjax.weight_decay.*" "optimjax.learning_rate.*" \
    "optimjax.fused.*" "optimjax.schedules.*" "optimjax.plateau.*" "optimjax.clipping.*" \
    "optimjax.radam.*" "optimjax.adamax.*" "optimjax.asgd.*" "optimjax.rprop.*" "optimjax.adafactor.*" \
    "optimjax.muon.*" "optimjax.lbfgs.*" || true
python -m mutation.summarize > mutation/mutmut-summary.txt
nice -n 10 python -m mutation.hand > mutation/hand-results.md
