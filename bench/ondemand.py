"""``python -m bench.ondemand``: a client cycling through more committed models than the memory budget holds.

``python -m service`` with ``SERVE_MODEL_CONTROL=on_demand`` and ``--budget-mb`` (default: about three of the six
models' weights) serves nothing at start. One client asks mnist-cnn, fashion-cnn, mnist-autoencoder (a real
MNIST digit), sst2-gru, sst2-lstm and sst2-transformer (two sentences) in turn, ``--rounds`` times; after each
answer it reads the engine's resident weights from ``/metrics`` (``serve_model_resident_bytes``). It prints every
status, each request's seconds (with its model's load), the largest resident total against the budget, and the
loads and evictions counted. Issue 21's target: only 200s, resident never over the budget, evictions counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

from bench import samples, servers
from bench.servers import HOST, REPO_ROOT, ServerSpec

IMAGES = ["mnist-cnn", "fashion-cnn", "mnist-autoencoder"]
TEXTS = ["sst2-gru", "sst2-lstm", "sst2-transformer"]


def engine_figures(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {"resident": servers.metric(text, "serve_model_resident_bytes"),
            "loads": servers.metric(text, "serve_model_loads_total"),
            "evictions": servers.metric(text, "serve_model_evictions_total"),
            # the whole process (torch itself included), read once a second
            "engine_rss": servers.metric(text, "serve_process_resident_memory_bytes", process="engine")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ondemand", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-mb", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"ondemand-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = ServerSpec("ours", [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
                               str(REPO_ROOT / "weights"), "--model-control", "on_demand", "--memory-budget-mb",
                               str(args.budget_mb), "--log-level", "warning"], "/v2/health/ready")
    png = samples.load(1)[0].png
    budget = args.budget_mb * 1024 * 1024
    calls: list[dict[str, float | int | str]] = []
    peak = peak_rss = 0.0
    with servers.started(spec, args.out / f"{stamp}.log", 120) as server, httpx.Client(timeout=120) as http:
        for _ in range(args.rounds):
            for name in [*IMAGES, *TEXTS]:
                started = time.monotonic()
                if name in IMAGES:
                    answer = http.post(f"{server.base_url}/v1/models/{name}/predict", content=png,
                                       headers={"content-type": "image/png"})
                else:
                    answer = http.post(f"{server.base_url}/v1/models/{name}/predict",
                                       json={"inputs": ["a gripping, funny and moving film", "a waste of time"]})
                seconds = time.monotonic() - started
                figures = engine_figures(server.base_url)
                peak, peak_rss = max(peak, figures["resident"]), max(peak_rss, figures["engine_rss"])
                calls.append({"model": name, "status": answer.status_code, "seconds": round(seconds, 3),
                              "resident_mb": round(figures["resident"] / 2**20, 2)})
                print(json.dumps(calls[-1]), flush=True)
        final = engine_figures(server.base_url)
    result = {"budget_mb": args.budget_mb, "statuses": sorted({int(c["status"]) for c in calls}),
              "peak_resident_mb": round(peak / 2**20, 2), "within_budget": peak <= budget,
              "engine_rss_peak_mb": round(peak_rss / 2**20, 1),
              "loads": final["loads"], "evictions": final["evictions"], "calls": calls}
    print(json.dumps({k: v for k, v in result.items() if k != "calls"}))
    (args.out / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
