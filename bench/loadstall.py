"""``python -m bench.loadstall``: what serving clients see while other models load through the repository API.

``python -m service`` with ``SERVE_MODEL_CONTROL=explicit`` serves mnist-cnn alone; ``--clients`` closed-loop
clients (default 8) post real MNIST digits for ``--before`` seconds, then sst2-minilm, shakespeare-gpt and
mnist-ddpm are loaded one after another through ``POST /v2/repository/models/{name}/load`` (forwards prepared,
as by default), then the clients go on for ``--after`` seconds. It prints mnist-cnn's p50, p99, max and
requests/s before and during the loads, each load's own seconds, and writes them to
``bench/results/loadstall-<timestamp>.json``. Issue 21's target: during the loads, p99 at most 2x the p99
before + 20 ms, and no request over 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench import samples, servers
from bench.servers import HOST, REPO_ROOT, ServerSpec

LOADED = ["sst2-minilm", "shakespeare-gpt", "mnist-ddpm"]
ADMIN = {"authorization": "Bearer bench-admin"}


async def scenario(base: str, clients: int, before_s: float, after_s: float) -> dict[str, object]:
    bodies = [sample.png for sample in samples.load(64)]
    record: list[tuple[float, float, int]] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(servers.classify_digits(base, bodies, stop, record)) for _ in range(clients)]
    await asyncio.sleep(before_s)
    loads, load_start = {}, time.monotonic()
    async with httpx.AsyncClient(timeout=600) as admin:
        for name in LOADED:
            started = time.monotonic()
            answer = await admin.post(f"{base}/v2/repository/models/{name}/load", headers=ADMIN)
            assert answer.status_code == 200, answer.text
            loads[name] = round(time.monotonic() - started, 2)
    load_end = time.monotonic()
    await asyncio.sleep(after_s)
    stop.set()
    await asyncio.gather(*tasks)
    windows = {"before": (load_start - before_s + 1.0, load_start), "during": (load_start, load_end)}
    result: dict[str, object] = {"loads_s": loads, "clients": clients}
    for window, (start, end) in windows.items():
        latencies = np.array([seconds for at, seconds, _ in record if start <= at < end]) * 1000
        statuses = sorted({status for at, _, status in record if start <= at < end})
        result[window] = {"requests": len(latencies), "requests_per_s": round(len(latencies) / (end - start), 1),
                          "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                          "p99_ms": round(float(np.percentile(latencies, 99)), 1),
                          "max_ms": round(float(latencies.max()), 1), "statuses": statuses}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadstall", description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", type=float, default=6.0)
    parser.add_argument("--after", type=float, default=2.0)
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout to run (a baseline's worktree)")
    args = parser.parse_args()
    out = REPO_ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"loadstall-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = ServerSpec("ours", [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
                               str(REPO_ROOT / "weights"), "--model-control", "explicit", "--models", "mnist-cnn",
                               "--admin-keys", ADMIN["authorization"].removeprefix("Bearer "),
                               "--log-level", "warning"], "/v2/health/ready")
    with servers.started(spec, out / f"{stamp}.log", startup_timeout_s=120, cwd=args.repo) as server:
        result = asyncio.run(scenario(server.base_url, args.clients, args.before, args.after))
    result["repo"] = str(args.repo)
    print(json.dumps(result, indent=2))
    (out / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
