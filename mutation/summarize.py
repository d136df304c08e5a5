"""Summarize a mutmut run (mutants/ left by `mutmut run`): counts per module and every survivor as a one-line diff.

    python -m mutation.summarize > mutation/mutmut-survivors.txt

Reads mutmut's records (mutants/optimjax/*.py.meta: exit code per mutant; *.py.spans: where each mutated function
is) and names the exit codes as mutmut does.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status(code) -> str:
    """mutmut's name for an exit code: killed, survived, timeout, no tests, not checked, suspicious, ..."""
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def one_line_diff(source: list[str], spans: dict, name: str) -> str:
    function = name.rsplit("__mutmut_", 1)[0]
    original = source[spans[function + "__mutmut_orig"][0] - 1 : spans[function + "__mutmut_orig"][1]]
    start, end = spans[name]
    mutated = source[start - 1 : end]
    lines = [line for line in difflib.unified_diff(original[1:], mutated[1:], lineterm="", n=0)
             if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    return "  ".join(line.strip() for line in lines)


def main() -> int:
    counts: dict[str, Counter] = {}
    survivors = []
    for meta in sorted((ROOT / "mutants" / "optimjax").glob("*.py.meta")):
        module = meta.name[: -len(".py.meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        spans = json.loads(meta.with_name(module + ".py.spans").read_text())["spans"]
        source = meta.with_name(module + ".py").read_text().splitlines()
        counts[module] = Counter(status(code) for code in codes.values())
        for key, code in codes.items():
            if status(code) in ("survived", "no tests", "suspicious"):
                name = key.rsplit(".", 1)[1]
                survivors.append(f"{key} [{status(code)}]: {one_line_diff(source, spans, name)}")
    print("module            killed survived timeout no-tests not-run")
    total = Counter()
    for module, c in counts.items():
        total += c
        print(f"{module:17} {c['killed']:6} {c['survived']:8} {c['timeout']:7} {c['no tests']:8} {c['not checked']:7}")
    print(f"{'total':17} {total['killed']:6} {total['survived']:8} {total['timeout']:7} {total['no tests']:8} "
          f"{total['not checked']:7}")
    tested = total["killed"] + total["survived"] + total["timeout"]
    if tested:
        print(f"score (killed or timed out / tested): {(total['killed'] + total['timeout']) / tested:.1%} of {tested}")
    print("\nSurvivors:")
    print("\n".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
