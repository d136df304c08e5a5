"""Run every hand-made mutant of mutation/mutants.py against its killing tests; print a Markdown table.

    python -m mutation.hand                  # all of them, two at a time
    python -m mutation.hand ID ...           # the named ones; an ID may be a shell pattern: 'kernel_*', 'adam*'

Each mutant runs in its own copy of the package (a temporary directory), so the checkout is never modified.
Exit status 1 if any mutant survives.
"""

from __future__ import annotations

import fnmatch
import sys
import tempfile
import time
from pathlib import Path

from mutation.mutants import MUTANTS, copy_with, killed, start

PARALLEL = 2


def select(patterns: list[str]) -> list:
    """The mutants whose id matches one of `patterns` (all of them for none), in MUTANTS' order; ValueError
    naming a pattern that matches no mutant."""
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(m.id, p) for m in MUTANTS)]
    if unknown:
        raise ValueError(f"mutation.hand: no mutant matches {unknown} (ids: {', '.join(m.id for m in MUTANTS)})")
    return [m for m in MUTANTS if not patterns or any(fnmatch.fnmatchcase(m.id, p) for p in patterns)]


def main(names: list[str]) -> int:
    try:
        chosen = select(names)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    rows, survivors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(chosen)
        running = []
        while pending or running:
            while pending and len(running) < PARALLEL:
                mutant = pending.pop(0)
                running.append((mutant, time.monotonic(), start(mutant, copy_with(mutant, Path(tmp) / mutant.id))))
            mutant, began, process = running.pop(0)
            dead, output = killed(process)
            seconds = time.monotonic() - began
            why = mutant.why.replace("|", r"\|")  # a | (as in |g|) would end the table's cell
            rows.append(f"| {mutant.id} | `{mutant.path}` | {'killed' if dead else '**survived**'} | {seconds:.0f} s "
                        f"| {why} |")
            if not dead:
                survivors.append((mutant.id, output[-2000:]))
            print(f"{mutant.id}: {'killed' if dead else 'SURVIVED'} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    print("| mutant | file | result | time | the mistake |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} killed")
    for name, output in survivors:
        print(f"\n--- {name}\n{output}", file=sys.stderr)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
