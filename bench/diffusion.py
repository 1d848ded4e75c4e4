"""``python -m bench.diffusion``: seconds per 100 samples from a diffusion model, one request at a time
against several at once (batched between denoising steps).

Starts ``python -m service`` with the diffusion model only, then for each repeat and each number of
steps fetches 100 samples twice: as ``requests`` requests of ``100 / requests`` images one after
another, and as the same requests all at once. Every answer is checked (a PNG grid, the asked seed).
Reports the median (min-max) over repeats and the ratio; writes bench/results/diffusion-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

from bench import report
from bench.servers import HOST, REPO_ROOT, ServerSpec, running


async def fetch(client: httpx.AsyncClient, model: str, n: int, seed: int, steps: int) -> None:
    response = await client.get(f"/v1/models/{model}/samples", params={"n": n, "seed": seed, "steps": steps})
    if response.status_code != 200 or response.headers["x-seed"] != str(seed) or response.content[1:4] != b"PNG":
        raise RuntimeError(f"samples answered {response.status_code}: {response.text[:200]}")


async def seconds_per_100(base_url: str, model: str, requests: int, steps: int, at_once: bool, seed: int) -> float:
    n = 100 // requests
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        started = time.perf_counter()
        if at_once:
            await asyncio.gather(*(fetch(client, model, n, seed + i, steps) for i in range(requests)))
        else:
            for i in range(requests):
                await fetch(client, model, n, seed + i, steps)
        return (time.perf_counter() - started) * 100 / (n * requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.diffusion", description=__doc__)
    parser.add_argument("--model", default="mnist-ddpm")
    parser.add_argument("--steps", default="50,20", help="comma-separated DDIM step counts")
    parser.add_argument("--requests", type=int, default=4, help="requests per 100 samples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="rows per forward (a per-model override); default: the model's own (its manifest)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / "weights")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    step_counts = [int(s) for s in args.steps.split(",")]
    server = [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
              str(args.weights_dir), "--models", args.model, "--device", args.device, "--torch-threads",
              str(args.torch_threads), "--log-level", "warning"]
    overrides: dict[str, int] = {"timeout_ms": 600_000}
    if args.max_batch_size:
        overrides["max_batch_size"] = args.max_batch_size
    server += ["--model-overrides", json.dumps({args.model: overrides})]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seconds: dict[str, list[float]] = {f"{steps}/{mode}": [] for steps in step_counts for mode in ("one", "all")}
    with running(ServerSpec("ours", server, "/v2/health/ready"), args.out / f"diffusion-{stamp}.log", 120) as url:
        asyncio.run(seconds_per_100(url, args.model, args.requests, 2, True, 0))  # warm-up
        rows_per_forward = httpx.get(f"{url}/v1/models/{args.model}").json()["batching"]["max_batch_size"]
        for repeat in range(args.repeats):
            for steps in step_counts:
                for mode in ("one", "all"):
                    seconds[f"{steps}/{mode}"].append(asyncio.run(seconds_per_100(
                        url, args.model, args.requests, steps, mode == "all", 1000 * repeat)))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"CPU: {platform.processor() or platform.machine()}, {args.torch_threads} torch thread(s)")
    lines = [f"# Diffusion sampling: {args.model}, 100 samples as {args.requests} requests of "
             f"{100 // args.requests}, {args.repeats} repeats", "",
             f"{device}, torch {torch.__version__}, {rows_per_forward} rows per forward", "",
             "| DDIM steps | one request at a time: s / 100 samples | all at once: s / 100 samples | speed-up |",
             "|---:|---:|---:|---:|"]
    for steps in step_counts:
        one, together = seconds[f"{steps}/one"], seconds[f"{steps}/all"]
        lines.append(f"| {steps} | {statistics.median(one):.2f} ({min(one):.2f}-{max(one):.2f}) | "
                     f"{statistics.median(together):.2f} ({min(together):.2f}-{max(together):.2f}) | "
                     f"{statistics.median(one) / statistics.median(together):.2f}x "
                     f"({min(one) / max(together):.2f}-{max(one) / min(together):.2f}) |")
    report.write(args.out, f"diffusion-{stamp}", "\n".join(lines) + "\n", args, {"seconds": seconds})


if __name__ == "__main__":
    main()
