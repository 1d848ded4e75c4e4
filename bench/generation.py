"""``python -m bench.generation``: tokens/s of one stream against N concurrent streams on the same model.

Starts ``python -m service`` with one language model, then for each repeat runs the stream counts in
turn: each stream POSTs ``/v1/models/{model}/generate`` with ``stream: true`` and reads its Server-Sent
Events to the end. Aggregate tokens/s = all tokens / wall time of the round. In the same run, after
each round, the in-process limit: the model's own work for as many rows as there were streams, the
same tokens each (see ``bench.limit.decoding_tokens_per_second``), with the same torch threads. Reports
the medians (min-max) over repeats and the service's share of the limit; writes
bench/results/gen-<timestamp>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

from bench import report
from bench.limit import decoding_tokens_per_second
from bench.servers import HOST, REPO_ROOT, ServerSpec, running


async def one_stream(client: httpx.AsyncClient, model: str, tokens: int, seed: int) -> int:
    body = {"prompt": "ROMEO:\n", "max_tokens": tokens, "seed": seed, "stream": True, "stop": None}
    count = 0
    async with client.stream("POST", f"/v1/models/{model}/generate", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"text"' in line:
                count += 1
            elif line.startswith("data: {") and '"error"' in line:
                raise RuntimeError(line)
    if count != tokens:
        raise RuntimeError(f"a stream got {count} of {tokens} tokens")
    return count


async def round_rate(base_url: str, model: str, streams: int, tokens: int, seed: int) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one_stream(client, model, tokens, seed + i) for i in range(streams)))
        return sum(counts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__)
    parser.add_argument("--model", default="shakespeare-gpt")
    parser.add_argument("--streams", default="1,16,64", help="comma-separated concurrent stream counts")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / "weights")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    counts = [int(s) for s in args.streams.split(",")]
    argv = [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
            str(args.weights_dir), "--models", args.model, "--device", "cpu", "--torch-threads",
            str(args.torch_threads), "--max-batch-size", str(max(counts)), "--log-level", "warning"]
    spec = ServerSpec("ours", argv, "/v2/health/ready")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rates: dict[int, list[float]] = {n: [] for n in counts}
    limits: dict[int, list[float]] = {n: [] for n in counts}
    weights = next(p.parent for p in sorted((args.weights_dir / args.model).glob("*/manifest.json"))[-1:])
    with running(spec, args.out / f"gen-{stamp}.log", 120) as base_url:
        asyncio.run(round_rate(base_url, args.model, 1, 20, 0))  # warm-up
        for repeat in range(args.repeats):
            for n in counts:  # the service and the limit alternate, so both see the same machine
                rates[n].append(asyncio.run(round_rate(base_url, args.model, n, args.tokens, 1000 * repeat)))
                limits[n].append(decoding_tokens_per_second(weights, args.torch_threads, n, args.tokens, max(counts)))
    lines = [f"# Generation: {args.model}, {args.tokens} tokens per stream, {args.repeats} repeats",
             "", f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{args.torch_threads} torch thread(s), device cpu", "",
             "| streams | service tokens/s | per stream | limit tokens/s (same rows) | service / limit |",
             "|---:|---:|---:|---:|---:|"]
    for n in counts:
        shares = [rate / limit for rate, limit in zip(rates[n], limits[n], strict=True)]
        lines.append(f"| {n} | {statistics.median(rates[n]):.0f} ({min(rates[n]):.0f}-{max(rates[n]):.0f}) | "
                     f"{statistics.median(rates[n]) / n:.0f} | {statistics.median(limits[n]):.0f} "
                     f"({min(limits[n]):.0f}-{max(limits[n]):.0f}) | {statistics.median(shares):.0%} "
                     f"({min(shares):.0%}-{max(shares):.0%}) |")
    lines += ["", "The limit is the model's own share of the same work (prepared as the engine prepares it): a batched "
              "prefill of the prompts, one cached step per token and, past a GPT's context, the same batched refill; "
              "no sampling, detokenizing or hand-offs. It is timed in this process between the service's rounds; "
              "each share pairs a round with the limit measured right after it."]
    report.write(args.out, f"gen-{stamp}", "\n".join(lines) + "\n", args, {"rates": rates, "limits": limits})


if __name__ == "__main__":
    main()
