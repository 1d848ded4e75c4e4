"""``python -m bench.mixed`` (``make bench SCENARIO=mixed``): one device, three models, the mix users run.

One ``python -m service`` serves mnist-cnn, mnist-ddpm and shakespeare-gpt (as committed). Each round runs,
``--seconds`` each: mnist-cnn alone (``--cnn-clients`` closed-loop clients posting real MNIST digits, a
``--pause-ms`` pause between requests); mnist-ddpm alone (``--ddpm-clients`` clients asking for ``--samples``
samples); the two together; shakespeare-gpt alone (``--gpt-clients`` clients streaming ``--tokens`` tokens);
the classifier beside it. It prints, per phase, mnist-cnn's p50 and p99, the other model's own rate (samples/s,
tokens/s), its ratio beside vs alone, its own p50 and p99 (a mnist-ddpm request's latency, a shakespeare-gpt
token's gap from the one before), and each model's share of the device's busy time in the phase (from
``serve_device_seconds_total`` in ``/metrics``, where the server has it). Issue 21's targets: mnist-cnn's p99
beside either at most 2x its p99 alone + 20 ms; the other's rate beside at least 0.7x its rate alone.
Results go to ``bench/results/mixed-<timestamp>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import samples, servers
from bench.servers import HOST, REPO_ROOT, ServerSpec

MODELS = ["mnist-cnn", "mnist-ddpm", "shakespeare-gpt"]
PHASES = ["cnn alone", "ddpm alone", "cnn + ddpm", "gpt alone", "cnn + gpt"]
DDPM_STEPS = 50  # mnist-ddpm's default: the samples are asked for without steps


@dataclass
class Phase:
    name: str
    cnn: list[tuple[float, float, int]] = field(default_factory=list)  # mnist-cnn's (sent at, seconds, status)
    produced: float = 0.0  # samples or tokens of the other model, from /metrics
    other_ms: list[float] = field(default_factory=list)  # mnist-ddpm: each request's; shakespeare-gpt: each token's gap
    seconds: float = 0.0
    device_s: dict[str, float] = field(default_factory=dict)


async def sample(base: str, n: int, seed: int, stop: asyncio.Event, phase: Phase) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        while not stop.is_set():
            started = time.perf_counter()
            response = await http.get(f"{base}/v1/models/mnist-ddpm/samples", params={"n": n, "seed": seed})
            if response.status_code != 200:
                raise RuntimeError(f"samples answered {response.status_code}: {response.text[:200]}")
            phase.other_ms.append((time.perf_counter() - started) * 1000)


async def generate(base: str, tokens: int, seed: int, stop: asyncio.Event, phase: Phase) -> None:
    body = {"prompt": "ROMEO:\n", "max_tokens": tokens, "seed": seed, "stream": True, "stop": None}
    async with httpx.AsyncClient(timeout=600) as http:
        while not stop.is_set():
            async with http.stream("POST", f"{base}/v1/models/shakespeare-gpt/generate", json=body) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"generate answered {response.status_code}")
                last = time.perf_counter()
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):  # a token's piece (or the end): the gap since the one before
                        now = time.perf_counter()
                        phase.other_ms.append((now - last) * 1000)
                        last = now


def counters(base: str) -> dict[str, float]:
    """From /metrics: each model's busy seconds on the device (``busy <model>``; 0 where the server does not count
    them), mnist-ddpm's rows advanced by one denoising step, and shakespeare-gpt's tokens generated, so far. Rates
    come from these rather than from finished requests: a 16-sample request takes seconds, too coarse for a phase."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = {f"busy {model}": servers.metric(text, "serve_device_seconds_total", model=model) for model in MODELS}
    return found | {"ddpm rows": servers.metric(text, "serve_batch_size_sum", model="mnist-ddpm"),
                    "gpt tokens": servers.metric(text, "serve_generated_tokens_total", model="shakespeare-gpt")}


async def run_phase(base: str, name: str, args: argparse.Namespace, bodies: list[bytes]) -> Phase:
    phase, stop = Phase(name), asyncio.Event()
    tasks = []
    if "cnn" in name:
        tasks += [servers.classify_digits(base, bodies, stop, phase.cnn, args.pause_ms / 1000)
                  for _ in range(args.cnn_clients)]
    if "ddpm" in name:
        tasks += [sample(base, args.samples, 100 + i, stop, phase) for i in range(args.ddpm_clients)]
    if "gpt" in name:
        tasks += [generate(base, args.tokens, 200 + i, stop, phase) for i in range(args.gpt_clients)]
    running = [asyncio.create_task(task) for task in tasks]
    await asyncio.sleep(1.0)  # into the steady state: every client's first request is in
    before = await asyncio.to_thread(counters, base)
    started = time.perf_counter()
    await asyncio.sleep(args.seconds)
    after = await asyncio.to_thread(counters, base)
    phase.seconds = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*running)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    phase.device_s = {key.removeprefix("busy "): value for key, value in delta.items() if key.startswith("busy ")}
    if "ddpm" in name:
        phase.produced = delta.get("ddpm rows", 0.0) / DDPM_STEPS  # samples
    elif "gpt" in name:
        phase.produced = delta.get("gpt tokens", 0.0)
    return phase


def figures(phase: Phase) -> dict[str, Any]:
    out: dict[str, Any] = {"phase": phase.name, "seconds": round(phase.seconds, 2)}
    if phase.cnn:  # (the classifier's requests over the whole phase, the first second too)
        latencies = np.array([seconds * 1000 for _, seconds, status in phase.cnn if status == 200])
        out |= {"cnn_requests": len(latencies), "cnn_errors": sum(1 for *_, status in phase.cnn if status != 200),
                "cnn_p50_ms": round(float(np.percentile(latencies, 50)), 1),
                "cnn_p99_ms": round(float(np.percentile(latencies, 99)), 1)}
    if "ddpm" in phase.name or "gpt" in phase.name:
        out["other_rate"] = round(phase.produced / phase.seconds, 1)
        if phase.other_ms:  # a request's latency (mnist-ddpm), a token's (shakespeare-gpt)
            out["other_p50_ms"] = round(float(np.percentile(phase.other_ms, 50)), 1)
            out["other_p99_ms"] = round(float(np.percentile(phase.other_ms, 99)), 1)
    busy = sum(phase.device_s.values())
    if busy > 0:
        out["device_busy"] = round(busy / phase.seconds, 2)  # of one device's time
        out["device_share"] = {model: round(seconds / busy, 2) for model, seconds in phase.device_s.items()
                               if seconds > 0}
    return out


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def markdown(rounds: list[list[dict[str, Any]]], command: str) -> str:
    by_phase = {name: [r for phases in rounds for r in phases if r["phase"] == name] for name in PHASES}
    alone_p99 = [r["cnn_p99_ms"] for r in by_phase["cnn alone"]]
    lines = [f"`{command}`, {len(rounds)} rounds; median (min-max) over rounds.", "",
             "| phase | mnist-cnn p50 ms | p99 ms | other's rate | beside / alone | other's p50 / p99 ms "
             "| device shares |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in PHASES:
        rows = by_phase[name]
        p50 = spread([r["cnn_p50_ms"] for r in rows]) if "cnn" in name else ""
        p99 = spread([r["cnn_p99_ms"] for r in rows]) if "cnn" in name else ""
        rate = spread([r["other_rate"] for r in rows]) if "other_rate" in rows[0] else ""
        ratio = ""
        if "+" in name:
            alone = by_phase["ddpm alone" if "ddpm" in name else "gpt alone"]
            ratio = spread([r["other_rate"] / a["other_rate"] for r, a in zip(rows, alone, strict=True)])
        shares = rows[-1].get("device_share", {})
        other = (f"{spread([r['other_p50_ms'] for r in rows])} / {spread([r['other_p99_ms'] for r in rows])}"
                 if "other_p50_ms" in rows[0] else "")
        lines.append(f"| {name} | {p50} | {p99} | {rate} | {ratio} | {other} | "
                     + ", ".join(f"{m} {s:.2f}" for m, s in sorted(shares.items())) + " |")
    target = 2 * float(np.median(alone_p99)) + 20
    lines += ["", f"Target: mnist-cnn p99 beside either <= 2 x {np.median(alone_p99):.1f} + 20 = {target:.1f} ms; "
              "the other's rate beside >= 0.7x alone. (other's rate: mnist-ddpm samples/s, shakespeare-gpt tokens/s; "
              "other's latency: a mnist-ddpm request's, a shakespeare-gpt token's gap from the one before; device "
              "shares: the last round's)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mixed", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="per phase")
    parser.add_argument("--cnn-clients", type=int, default=4)
    parser.add_argument("--pause-ms", type=float, default=10.0)
    parser.add_argument("--ddpm-clients", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--gpt-clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout to run (a baseline's worktree)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--server-flags", default="", help="more flags for python -m service (e.g. '--nice 0')")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"mixed-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = ServerSpec("ours", [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
                               str(REPO_ROOT / "weights"), "--models", ",".join(MODELS), "--log-level", "warning",
                               *args.server_flags.split()],
                      "/v2/health/ready")
    bodies = [s.png for s in samples.load(64)]
    rounds: list[list[dict[str, Any]]] = []
    with servers.started(spec, args.out / f"{stamp}.log", startup_timeout_s=300, cwd=args.repo) as server:
        asyncio.run(run_phase(server.base_url, "cnn + gpt", argparse.Namespace(**{**vars(args), "seconds": 2.0}),
                              bodies))  # warm-up: every path of every model once
        for _ in range(args.rounds):
            phases = [figures(asyncio.run(run_phase(server.base_url, name, args, bodies))) for name in PHASES]
            rounds.append(phases)
            print(json.dumps(phases), flush=True)
    command = " ".join(["python -m bench.mixed", *(argv if argv is not None else sys.argv[1:])])
    text = markdown(rounds, command)
    print(text)
    (args.out / f"{stamp}.md").write_text(text)
    (args.out / f"{stamp}.json").write_text(json.dumps({"repo": str(args.repo), "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
