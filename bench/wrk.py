"""Run wrk with the PNG-posting Lua script and parse its ``--latency`` report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post_png.lua")
COUNT_SCRIPT = Path(__file__).with_name("count_status.lua")  # also counts the responses per status
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


@dataclass(frozen=True)
class StatusCounts:
    seconds: float
    counts: dict[int, int]  # responses per HTTP status
    socket_errors: int  # connect + read + write + timeout

    def per_second(self, status: int) -> float:
        return self.counts.get(status, 0) / self.seconds


def _argv(url: str, script: Path, connections: int, seconds: int, threads: int, timeout_s: int) -> list[str]:
    return [require_wrk(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
            f"--timeout={timeout_s}s", "--latency", "-s", str(script), url]


def run(url: str, png: Path, connections: int, seconds: int, threads: int, timeout_s: int) -> WrkResult:
    """One wrk run against ``url``; bounded by its duration plus a margin."""
    argv = _argv(url, LUA_SCRIPT, connections, seconds, threads, timeout_s)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30,
                          env={**os.environ, "BENCH_PNG": str(png)}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)


@contextmanager
def counting(url: str, png: Path, connections: int, seconds: int, threads: int,
             timeout_s: int) -> Iterator[subprocess.Popen[str]]:
    """wrk with ``count_status.lua``, running in the background while the body runs; killed if still there after."""
    proc = subprocess.Popen(_argv(url, COUNT_SCRIPT, connections, seconds, threads, timeout_s), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "BENCH_PNG": str(png)})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def counts(proc: subprocess.Popen[str], wait_s: float) -> StatusCounts:
    """Wait (at most ``wait_s``) for a ``counting`` run to end and read its counts."""
    out, err = proc.communicate(timeout=wait_s)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    found = {m[1]: m[2] for m in re.finditer(r"^(duration_us|errors) (.*)$", out, re.MULTILINE)}
    if len(found) != 2:
        raise ValueError(f"no counts in wrk output:\n{out}")
    connect, read, write, _status, timeout = (int(n) for n in found["errors"].split())
    return StatusCounts(seconds=int(found["duration_us"]) / 1e6,
                        counts={int(m[1]): int(m[2]) for m in re.finditer(r"^status (\d+) (\d+)$", out, re.MULTILINE)},
                        socket_errors=connect + read + write + timeout)


def count(url: str, png: Path, connections: int, seconds: int, threads: int, timeout_s: int) -> StatusCounts:
    """One wrk run in the foreground, counting the responses per status."""
    with counting(url, png, connections, seconds, threads, timeout_s) as proc:
        return counts(proc, seconds + timeout_s + 30)


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
