"""A server's process tree from /proc: its pids, CPU time (utime + stime) and resident memory (VmRSS).

Processes come and go while we read, so a vanished pid counts as absent, never as an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, so index i is field i + 3 of proc(5)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the name may hold spaces and parentheses


def _parents() -> dict[int, int]:
    """pid -> ppid of every process now."""
    parents = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (``root`` alone when it has none; empty when it is gone)."""
    parents = _parents()
    if root not in parents:
        return []
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def children(pid: int) -> list[int]:
    return [child for child, ppid in _parents().items() if ppid == pid]


def cmdline(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each pid still there, in seconds."""
    seconds = {}
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def rss_bytes(pids: list[int]) -> int:
    """The sum of VmRSS over ``pids`` (shared pages count once per process, as top shows them)."""
    total = 0
    for pid in pids:
        try:
            lines = (PROC / str(pid) / "status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)
    return total


@dataclass
class Usage:
    cores: float = 0.0  # CPU seconds of the tree / wall seconds
    rss_mib: float = 0.0  # of the tree, right after the measured span
    processes: int = 0


@contextmanager
def usage(root: int) -> Iterator[Usage]:
    """Measure the tree of ``root`` over the ``with`` body; the figures are filled in when it ends.

    A process that starts inside the span counts in full; one that ends inside it is lost (its time unread).
    """
    result = Usage()
    before, started = cpu_seconds(tree(root)), time.monotonic()
    yield result
    pids = tree(root)
    after, wall = cpu_seconds(pids), time.monotonic() - started
    result.cores = sum(t - before.get(pid, 0.0) for pid, t in after.items()) / max(wall, 1e-9)
    result.rss_mib = rss_bytes(pids) / 2**20
    result.processes = len(pids)
