"""The server's processes as /proc sees them: who they are, their resident memory and open descriptors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.service.test_processes import children


def roles(supervisor: int) -> dict[str, int]:
    """role -> pid: the supervisor, its engine and each front-end (named by its listening socket's descriptor)."""
    found = {"supervisor": supervisor}
    for pid, cmdline in children(supervisor).items():
        words = cmdline.split()
        role = words[words.index("-m") + 1].removeprefix("service.") if "-m" in words else words[0]
        found[" ".join([role, *words[words.index("--fd"):][:2]]) if "--fd" in words else role] = pid
    return found


def status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def usage(pids: dict[str, int]) -> dict[str, dict[str, Any]]:
    """role -> pid, resident memory (MB), open descriptors and threads."""
    return {role: {"pid": pid, "rss_mb": round(status_value(pid, "VmRSS") / 1024, 1),
                   "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())), "threads": status_value(pid, "Threads")}
            for role, pid in pids.items()}
