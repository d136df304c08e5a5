"""CI's smoke version of the mutation run (issue 14): a few plausible mistakes, Python and C++, each applied to a
temporary copy of the package and run against the tests that must catch it, in subprocesses. Each must be killed
(a failing test, not an error), so that neither the killing tests nor the set-up can rot unnoticed.

The mutants are defined in mutation/mutants.py (`python -m mutation.hand` runs all of them); the full
operator-by-operator run is mutmut's (CONTRIBUTING.md).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # mutation/ is not installed: import it from the checkout
from mutation.mutants import MUTANTS, ROOT, copy_with, killed, start  # noqa: E402

SMOKE = [m for m in MUTANTS if m.smoke]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_every_mutant_applies_to_the_current_source_exactly_once(mutant):
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.id}: update mutation/mutants.py to the current {mutant.path}"
    assert mutant.old != mutant.new


def test_smoke_mutants_are_killed(tmp_path):
    """All smoke mutants at once, one subprocess each (they run in parallel: each is mostly imports and jit)."""
    assert any(m.kernel for m in SMOKE) and any(not m.kernel for m in SMOKE)
    runs = {m.id: start(m, copy_with(m, tmp_path / m.id)) for m in SMOKE}
    survivors = {}
    for mutant in SMOKE:
        dead, output = killed(runs[mutant.id])
        if not dead:
            survivors[mutant.id] = output[-3000:]
    assert not survivors, "mutants not killed by their tests:\n" + "\n\n".join(
        f"--- {name}\n{output}" for name, output in survivors.items())
