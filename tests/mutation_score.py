"""The score of ``make mutate``: per module, how many of mutmut's mutants the tests kill, and how many of the
survivors are not equivalent (tests/mutation_equivalent.toml names the equivalent ones and why).

``python -m tests.mutation_score`` after ``mutmut run``; it exits 1 when a module's share of non-equivalent
survivors is above the bar (15%), or when an entry of the equivalents file names a mutant that no longer
survives (the code or the tests changed: look at it again).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

EQUIVALENTS = Path(__file__).with_name("mutation_equivalent.toml")
BAR = 0.15  # at most this share of the non-equivalent mutants may survive
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}


def module_of(mutant: str) -> str:
    """``service.engine.batcher.xǁBatcherǁsubmit__mutmut_3`` -> ``service.engine.batcher``."""
    for marker in (".xǁ", ".x_"):
        if marker in mutant:
            return mutant.split(marker, 1)[0]
    return mutant.rsplit(".", 1)[0]


def results() -> dict[str, str]:
    """Every mutant's status, from ``mutmut results --all true``."""
    listed = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                            text=True, check=True).stdout
    statuses = {}
    for line in listed.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def main() -> int:
    statuses = results()
    if not statuses:
        print("no mutants: run `make mutate` (mutmut run) first")
        return 1
    equivalent: dict[str, str] = tomllib.loads(EQUIVALENTS.read_text())["equivalent"]
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in statuses.items():
        module = by_module[module_of(name)]
        module["mutants"] += 1
        if status in DETECTED:
            module["killed"] += 1
        elif status in ("survived", "no tests") and name in equivalent:
            module["equivalent"] += 1
        else:  # survived, no tests, not checked, suspicious: the tests did not notice it
            module["survived"] += 1
    failed = False
    print(f"{'module':40} {'mutants':>8} {'killed':>7} {'equiv.':>7} {'survived':>9} {'of non-equiv.':>14}")
    for module, counts in sorted(by_module.items()):
        judged = counts["mutants"] - counts["equivalent"]
        share = counts["survived"] / judged if judged else 0.0
        failed |= share > BAR
        print(f"{module:40} {counts['mutants']:8} {counts['killed']:7} {counts['equivalent']:7} "
              f"{counts['survived']:9} {share:13.1%}{'  > 15%' if share > BAR else ''}")
    total = sum(by_module.values(), Counter())
    judged = total["mutants"] - total["equivalent"]
    print(f"{'all':40} {total['mutants']:8} {total['killed']:7} {total['equivalent']:7} {total['survived']:9} "
          f"{total['survived'] / judged:13.1%}")
    stale = sorted(name for name in equivalent if statuses.get(name) not in ("survived", "no tests"))
    if stale:
        failed = True
        print(f"\n{len(stale)} entries of {EQUIVALENTS.name} name no surviving mutant (look at them again):")
        print("\n".join(f"  {name}: {statuses.get(name, 'no such mutant')}" for name in stale))
    survivors = sorted(name for name, status in statuses.items()
                       if status not in DETECTED and name not in equivalent)
    if survivors:
        print(f"\nnot equivalent and not killed ({len(survivors)}; `mutmut show NAME` shows each):")
        print("\n".join(f"  {name}: {statuses[name]}" for name in survivors))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
