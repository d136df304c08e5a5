"""CI's smoke version of the mutation run (issue 14): a few plausible mistakes, Python and C++, each applied to a
temporary copy of the package and run against the tests that must catch it, in subprocesses. Each must be killed
(a failing test, not an error), so that neither the killing tests nor the set-up can rot unnoticed.

The mutants are defined in mutation/mutants.py (`python -m mutation.hand` runs all of them); the full
operator-by-operator run is mutmut's (CONTRIBUTING.md). The Python mutants run one process each; the kernel's
(one per family) all run from one build of the kernel, in one process (`kernel_schema`: a build costs 11 CPU
seconds, a process 8).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # mutation/ is not installed: import it from the checkout
from mutation.mutants import KERNEL, MUTANTS, ROOT, copy_with, kernel_schema, killed  # noqa: E402
from mutation.mutants import killed_in_schema, start, start_schema  # noqa: E402

SMOKE = [m for m in MUTANTS if m.smoke and not m.kernel]
SMOKE_KERNEL = [m for m in MUTANTS if m.smoke and m.kernel]
FAMILIES = ("kAdam", "kNadam", "kMomentum", "kRms", "kAdagrad", "kRadam", "kAdamax", "kRprop", "kAsgd")


def branch_markers(source: str) -> list[int]:
    """Where each family's branch of the kernel's UpdateRange begins, in FAMILIES' order, then where the last one
    ends. Each branch ends where the next begins (NAdam's is nested in Adam's: Adam's own direction, after NAdam's,
    counts as NAdam's, so Adam's smoke mutant must come before it)."""
    special = {"kAdam": "if constexpr (kFamily == kAdam ||", "kAsgd": "} else {  // kAsgd"}
    markers = [special.get(f, f"if constexpr (kFamily == {f}) {{") for f in FAMILIES] + ["if (kDecoupled)"]
    assert all(source.count(marker) == 1 for marker in markers), "update branch_markers to the current kernel"
    return [source.index(marker) for marker in markers]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_every_mutant_applies_to_the_current_source_exactly_once(mutant):
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.id}: update mutation/mutants.py to the current {mutant.path}"
    assert mutant.old != mutant.new


def test_the_smoke_run_has_a_kernel_mutant_per_family_in_one_schema():
    """Every family of fused_step.cc's `enum Family` has a smoke mutant in its branch, and they fit one schema."""
    source = (ROOT / KERNEL).read_text()
    assert "enum Family : int { " + ", ".join(FAMILIES) + ", kNumFamilies };" in source
    begins = branch_markers(source)
    assert begins == sorted(begins)
    branch = lambda at: next(f for f, b, e in zip(FAMILIES, begins, begins[1:]) if b < at < e)  # noqa: E731
    assert sorted(branch(source.index(m.old)) for m in SMOKE_KERNEL) == sorted(FAMILIES)
    assert kernel_schema(SMOKE_KERNEL).count("MutantIs(") == len(SMOKE_KERNEL) + 1


def test_smoke_mutants_are_killed(tmp_path):
    """All smoke mutants at once: one subprocess per Python mutant and one for the kernel's (in parallel: each is
    mostly imports, jit and, for the kernel, its build). Each kernel mutant is judged by its own tests' run."""
    assert SMOKE and SMOKE_KERNEL
    runs = {m.id: start(m, copy_with(m, tmp_path / m.id)) for m in SMOKE}
    kernel_run = start_schema(SMOKE_KERNEL, tmp_path / "kernel-schema")
    survivors = {}
    for mutant in SMOKE:
        dead, output = killed(runs[mutant.id])
        if not dead:
            survivors[mutant.id] = output[-3000:]
    verdicts, output = killed_in_schema(kernel_run)
    assert list(verdicts) == [m.id for m in SMOKE_KERNEL]
    for name, dead in verdicts.items():
        if not dead:
            survivors[name] = output[output.index(f"=== {name} "):][:3000]
    assert not survivors, "mutants not killed by their tests:\n" + "\n\n".join(
        f"--- {name}\n{output}" for name, output in survivors.items())
