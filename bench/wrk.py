"""Run wrk with the PNG-posting Lua script and parse its ``--latency`` report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post_png.lua")
INSTALL_HINT = "wrk is not installed: run `apt-get update && apt-get install -y wrk` (Debian/Ubuntu) and try again"
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int  # connect + read + write + timeout


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(INSTALL_HINT)
    return path


def version() -> str:
    done = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True, timeout=10)
    return (done.stdout + done.stderr).splitlines()[0].split(" [")[0].strip()  # "wrk 4.1.0"


def run(url: str, png: Path, connections: int, seconds: int, threads: int, timeout_s: int) -> WrkResult:
    """One wrk run against ``url``; bounded by its duration plus a margin."""
    argv = [require_wrk(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
            f"--timeout={timeout_s}s", "--latency", "-s", str(LUA_SCRIPT), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30,
                          env={**os.environ, "BENCH_PNG": str(png)}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse(text: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"no {pattern!r} in wrk output:\n{text}")
        return match

    latency = r"^\s+{}%\s+([\d.]+)(us|ms|s|m|h)\s*$"
    total = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=int(total[1]),
        seconds=_ms(total[2], total[3]) / 1e3,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        p50_ms=_ms(*find(latency.format(50)).groups()),
        p99_ms=_ms(*find(latency.format(99)).groups()),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )
