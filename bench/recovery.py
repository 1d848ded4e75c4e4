"""``python -m bench.recovery``: what clients see when the engine process is killed under load.

Per repeat, starts ``python -m service`` (mnist-cnn, default settings), waits until ready, then runs steady
traffic from 8 threads (each its own ``httpx.Client``, POST predict with one MNIST digit, timeout 10 s) while
another thread polls /v2/health/ready every 20 ms on a fresh connection (so every front-end gets asked). After
2 s it SIGKILLs the engine (the supervisor's child running ``-m service.engine``), waits until the server is
ready again and answers 200, keeps the traffic up 1 s more, then checks one prediction. Reports the statuses
seen (only 200 and 503 allowed), the longest request (must be < 1 s), the times from the kill until readiness
turned false, true again, and the first 200 of a request sent after the kill; median (min-max) over repeats,
into bench/results/recovery-<timestamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import proctree, report, samples, servers
from bench.servers import HOST, PREDICT_PATH, REPO_ROOT, ServerSpec

ENGINE_ARGS = "-m service.engine"
MAX_PER_THREAD = 100_000  # a bound on each loop besides its time


@dataclass(frozen=True)
class Call:
    started: float  # monotonic seconds
    ended: float
    status: int  # 0: no answer (connection error or timeout)


def send(stop: threading.Event, base_url: str, png: bytes, calls: list[Call]) -> None:
    """POST predict back to back until ``stop``."""
    with servers.client(base_url, 10) as client:
        for _ in range(MAX_PER_THREAD):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                status = client.post(PREDICT_PATH, content=png, headers={"content-type": "image/png"}).status_code
            except httpx.HTTPError:
                status = 0
            calls.append(Call(started, time.monotonic(), status))


def poll_ready(stop: threading.Event, base_url: str, interval_s: float, polls: list[Call]) -> None:
    """GET /v2/health/ready every ``interval_s``, each on a new connection, until ``stop``."""
    with servers.client(base_url, 2, keepalive=False) as client:
        for _ in range(MAX_PER_THREAD):
            started = time.monotonic()
            try:
                status = client.get("/v2/health/ready").status_code
            except httpx.HTTPError:
                status = 0
            polls.append(Call(started, time.monotonic(), status))
            if stop.wait(max(0.0, started + interval_s - time.monotonic())):
                return


def engine_pid(supervisor: int) -> int:
    found = [pid for pid in proctree.children(supervisor) if ENGINE_ARGS in " ".join(proctree.cmdline(pid))]
    if len(found) != 1:
        raise RuntimeError(f"expected one engine child of pid {supervisor}, found {found}")
    return found[0]


def first_after(calls: list[Call], after: float, ok: bool) -> Call | None:
    """The first call started after ``after`` that answered 200 (``ok``) or anything else, by its answer."""
    matching = [c for c in calls if c.started >= after and (c.status == 200) == ok]
    return min(matching, key=lambda c: c.ended, default=None)


def wait_recovered(calls: list[Call], polls: list[Call], killed_at: float, timeout_s: float) -> None:
    """Until readiness went false and back to true and a request sent after the kill got a 200."""
    deadline = killed_at + timeout_s
    while time.monotonic() < deadline:
        down = first_after(polls, killed_at, ok=False)
        if down and first_after(polls, down.ended, ok=True) and first_after(calls, killed_at, ok=True):
            return
        time.sleep(0.05)
    raise RuntimeError(f"not recovered {timeout_s:g} s after the kill")


def figures(calls: list[Call], polls: list[Call], killed_at: float) -> dict[str, Any]:
    """Times in ms from the kill; None where it never happened."""
    def since_kill(call: Call | None) -> float | None:
        return None if call is None else (call.ended - killed_at) * 1e3

    statuses = Counter(c.status for c in calls)
    down = first_after(polls, killed_at, ok=False)
    longest = max(calls, key=lambda c: c.ended - c.started, default=Call(killed_at, killed_at, 0))
    return {"requests": len(calls), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "only_200_503": set(statuses) <= {200, 503},
            "max_latency_ms": (longest.ended - longest.started) * 1e3,
            "max_latency_started_ms": (longest.started - killed_at) * 1e3,
            "not_ready_ms": since_kill(down),
            "ready_again_ms": since_kill(first_after(polls, down.ended, ok=True) if down else None),
            "first_200_ms": since_kill(first_after(calls, killed_at, ok=True)),
            "readiness_flips": sum(a.status != b.status for a, b in itertools.pairwise(polls)
                                   if a.started >= killed_at)}


def one_round(spec: ServerSpec, sample: samples.Sample, log_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    with servers.started(spec, log_path, args.startup_timeout) as server:
        stop = threading.Event()
        calls: list[Call] = []  # appended to by the threads
        polls: list[Call] = []
        threads = [threading.Thread(target=send, args=(stop, server.base_url, sample.png, calls), daemon=True)
                   for _ in range(args.threads)]
        threads.append(threading.Thread(target=poll_ready, args=(stop, server.base_url, args.poll_ms / 1e3, polls),
                                        daemon=True))
        for thread in threads:
            thread.start()
        try:
            time.sleep(args.kill_after)
            engine = engine_pid(server.pid)
            killed_at = time.monotonic()
            os.kill(engine, signal.SIGKILL)
            wait_recovered(calls, polls, killed_at, args.recovery_timeout)
            time.sleep(args.after)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=15)
        label = servers.predict(server.base_url, sample.png)["predictions"][0]["label"]
        result = {**figures(calls, polls, killed_at), "engine_pids": [engine, engine_pid(server.pid)],
                  "label_after": label, "label_expected": sample.label, "correct_after": label == sample.label}
    result["passed"] = result["only_200_503"] and result["max_latency_ms"] < 1000 and result["correct_after"]
    return result


def markdown(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> str:
    def times(key: str) -> str:
        values = [r[key] for r in rounds if r[key] is not None]
        if not values:
            return "-"
        s = report.spread(values)
        return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    lines = [f"# Recovery: SIGKILL of the engine under load (mnist-cnn, default settings), {len(rounds)} repeat(s)",
             "", f"`{' '.join(['python -m bench.recovery', *sys.argv[1:]])}`", "",
             f"- {args.threads} threads POSTing predict back to back (httpx, timeout 10 s); readiness polled every "
             f"{args.poll_ms:g} ms on fresh connections; kill {args.kill_after:g} s after ready; times in ms from "
             "the kill, median (min-max)", "",
             "| figure | value |", "|---|---:|"]
    lines += [f"| {name} | {times(key)} |" for name, key in (
        ("readiness false after", "not_ready_ms"), ("readiness true again after", "ready_again_ms"),
        ("first 200 (of a request sent after the kill) after", "first_200_ms"),
        ("longest request (ms)", "max_latency_ms"))]
    lines += ["", "| repeat | requests | statuses | only 200/503 | longest ms (< 1000) | label after (expected) "
              "| readiness flips | passed |", "|---:|---:|---|---|---:|---|---:|---|"]
    for i, r in enumerate(rounds, 1):
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(f"| {i} | {r['requests']} | {statuses} | {r['only_200_503']} | {r['max_latency_ms']:.0f} | "
                     f"{r['label_after']} ({r['label_expected']}) | {r['readiness_flips']} | {r['passed']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="R, each on a fresh server")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds of traffic before the kill")
    parser.add_argument("--after", type=float, default=1.0, help="seconds of traffic after the recovery")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="readiness poll interval")
    parser.add_argument("--recovery-timeout", type=float, default=60.0)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / "weights")
    parser.add_argument("--models", default="mnist-cnn", help="what the server serves (comma-separated; "
                        "'all': every model, so that the others load while mnist-cnn already serves again)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if min(args.repeats, args.threads) < 1 or min(args.kill_after, args.after, args.poll_ms) <= 0:
        parser.error("need --repeats, --threads >= 1 and --kill-after, --after, --poll-ms > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the server is stopped
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"recovery-{time.strftime('%Y%m%d-%H%M%S')}"
    sample = samples.load(1)[0]
    spec = ServerSpec("ours", [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
                               str(args.weights_dir), *(["--models", args.models] if args.models != "all" else []),
                               "--log-level", "warning"],
                      "/v2/health/ready")
    rounds = []
    for repeat in range(args.repeats):
        rounds.append(one_round(spec, sample, args.out / f"{stamp}.log", args))
        r = rounds[-1]
        times = ", ".join(f"{key} {r[key] or float('nan'):.0f} ms" for key in
                          ("not_ready_ms", "ready_again_ms", "first_200_ms", "max_latency_ms"))
        print(f"repeat {repeat + 1}/{args.repeats}: statuses {r['statuses']}, {times}", file=sys.stderr, flush=True)
    report.write(args.out, stamp, markdown(args, rounds), args,
                 {"server": spec.argv, "sample": {"index": sample.index, "label": sample.label}, "rounds": rounds})


if __name__ == "__main__":
    main()
