"""``python -m bench.coldstart``: seconds from ``python -m service`` to ready with every committed model, and
from a killed engine back to ready.

Per repeat: start the server with its defaults (every model under weights/, forwards prepared), time until
/v2/health/ready answers 200; SIGKILL the engine process and time until ready again (the supervisor restarts
it after its first back-off). Reports the median (min-max) of both, and each model's prepared forward as the
metadata states it, into bench/results/coldstart-<timestamp>.{md,json}. The target: under 30 s for both.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from bench import report, servers
from bench.recovery import engine_pid
from bench.servers import HOST, REPO_ROOT, ServerSpec


def wait_ready(base_url: str, timeout_s: float) -> float:
    """Seconds until /v2/health/ready answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if servers.http(base_url + "/v2/health/ready", timeout=2.0)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout_s:g} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / "weights")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    argv_ = [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
             str(args.weights_dir), "--device", "cpu", "--log-level", "warning"]
    spec = ServerSpec("ours", argv_, "/v2/health/ready")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    starts, restarts, forwards = [], [], {}
    for repeat in range(args.repeats):
        started = time.monotonic()
        # servers.started waits for readiness itself: time it from just before the process starts
        with servers.started(spec, args.out / f"coldstart-{stamp}.log", 120) as server:
            starts.append(time.monotonic() - started)
            listing = json.loads(servers.http(server.base_url + "/v1/models")[1])
            for model in listing["data"]:
                detail = json.loads(servers.http(f"{server.base_url}/v1/models/{model['id']}")[1])
                forwards[model["id"]] = detail.get("forward", "?")
            os.kill(engine_pid(server.pid), signal.SIGKILL)
            time.sleep(0.3)  # readiness turns false within tens of ms; then time the way back
            restarts.append(0.3 + wait_ready(server.base_url, 120))
        print(f"repeat {repeat + 1}: ready after {starts[-1]:.1f} s, after an engine kill {restarts[-1]:.1f} s",
              file=sys.stderr, flush=True)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    lines = [f"# Cold start {stamp}: every model in {args.weights_dir.name}/ ({len(forwards)}), default settings",
             "", f"{len(os.sched_getaffinity(0))} CPUs; median (min-max) over {args.repeats} repeats.", "",
             "| | seconds to ready |", "|---|---:|", f"| start (`python -m service`) | {cell(starts)} |",
             f"| engine SIGKILLed, back to ready | {cell(restarts)} |", "", "| model | forward |", "|---|---|"]
    lines += [f"| {name} | {forward} |" for name, forward in sorted(forwards.items())]
    report.write(args.out, f"coldstart-{stamp}", "\n".join(lines) + "\n", args,
                 {"starts_s": starts, "restarts_s": restarts, "forwards": forwards})


if __name__ == "__main__":
    main()
