"""One benchmark run: every (repeat, server, concurrency) cell, servers interleaved, results written to disk."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import limit, proctree, report, samples, servers, wrk

PACKAGES = ("torch", "fastapi", "uvicorn", "litserve")


@dataclass(frozen=True)
class Config:
    concurrency: list[int]
    duration_s: int  # wrk takes whole seconds
    warmup_s: int
    repeats: int
    torch_threads: int
    max_batch_size: int | None  # ours; None: its default
    max_delay_ms: float | None
    litserve_max_batch_size: int
    litserve_batch_timeout_ms: float
    wrk_threads: int
    wrk_timeout_s: int
    check_images: int
    startup_timeout_s: float
    weights: Path
    out_dir: Path
    workers: int | None = None  # per server (ours: SERVE_WORKERS; LitServe: workers per device); None: its default


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batch_totals(base_url: str) -> tuple[float, float]:
    """(sum, count) of our serve_batch_size histogram, over every model version."""
    status, body = servers.http(base_url + "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    text = body.decode()
    return servers.metric(text, "serve_batch_size_sum"), servers.metric(text, "serve_batch_size_count")


def run_server(spec: servers.ServerSpec, repeat: int, config: Config, png: Path, digits: list[samples.Sample],
               log_path: Path) -> list[report.Cell]:
    cells = []
    with servers.started(spec, log_path, config.startup_timeout_s) as server:
        samples.check(spec.name, server.base_url, digits)
        url = server.base_url + servers.PREDICT_PATH
        if config.warmup_s:
            wrk.run(url, png, max(config.concurrency), config.warmup_s, config.wrk_threads, config.wrk_timeout_s)
        for concurrency in config.concurrency:
            cells.append(measure(spec, server, repeat, concurrency, config, png))
    return cells


def measure(spec: servers.ServerSpec, server: servers.Server, repeat: int, concurrency: int, config: Config,
            png: Path) -> report.Cell:
    """One wrk run, with the server tree's cores and memory and (ours) the mean batch size over it."""
    before = batch_totals(server.base_url) if spec.has_metrics else None
    with proctree.usage(server.pid) as usage:
        result = wrk.run(server.base_url + servers.PREDICT_PATH, png, concurrency, config.duration_s,
                         config.wrk_threads, config.wrk_timeout_s)
    mean_batch = None
    if before is not None:
        after = batch_totals(server.base_url)
        mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1.0)
    log(f"  {spec.name:>8} c={concurrency:<3} {result.rps:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  non-2xx {result.non_2xx}  cores {usage.cores:.2f}  "
        f"RSS {usage.rss_mib:.0f} MiB ({usage.processes} processes)"
        + (f"  mean batch {mean_batch:.1f}" if mean_batch is not None else ""))
    return report.Cell(spec.name, concurrency, repeat, result, mean_batch, usage.cores, usage.rss_mib,
                       usage.processes)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": model,
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=servers.REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    return git("rev-parse", "HEAD") + (" (dirty)" if git("status", "--porcelain") else "")


def run(config: Config, command: str) -> str:
    """Run every cell and write <out_dir>/<timestamp>.{json,md}; return the Markdown report."""
    wrk_version = wrk.version()  # fails early, with how to install it, when wrk is missing
    started = time.strftime("%Y%m%d-%H%M%S")
    logs = config.out_dir / f"{started}.logs"
    logs.mkdir(parents=True, exist_ok=True)
    digits = samples.load(max(1, config.check_images))
    png = logs / "digit.png"
    png.write_bytes(digits[0].png)
    ours_batching = servers.ours_batching(config.max_batch_size, config.max_delay_ms)
    specs = servers.specs(config.weights, config.torch_threads, ours_batching,
                          (config.litserve_max_batch_size, config.litserve_batch_timeout_ms), config.workers)
    meta: dict[str, Any] = {
        "started": started, "command": command, "machine": machine(), "git_commit": git_commit(),
        "versions": {"wrk": wrk_version, **{p: metadata.version(p) for p in PACKAGES}},
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                     "device": "cpu", "png_bytes": len(digits[0].png), "png_label": digits[0].label,
                     "png_test_index": digits[0].index, "servers": {s.name: shlex.join(s.argv) for s in specs},
                     "processes": {s.name: s.processes for s in specs},
                     "ours_batching": list(ours_batching)},
    }
    cells: list[report.Cell] = []
    for repeat in range(config.repeats):
        order = specs[repeat % len(specs):] + specs[:repeat % len(specs)]  # rotate, so no server always goes first
        log(f"repeat {repeat + 1}/{config.repeats}: {', '.join(s.name for s in order)}")
        for spec in order:
            cells += run_server(spec, repeat, config, png, digits, logs / f"{spec.name}.log")
    meta["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["correctness"] = f"every server labelled MNIST test images 0..{len(digits) - 1} as the dataset does, " \
                          "at every start"
    meta["limit"] = limit.measure(config.weights, config.torch_threads, ours_batching[0])
    summary, ratio_rows = report.summarize(cells), report.ratios(cells)
    text = report.markdown(meta, summary, ratio_rows)
    result = {**meta, "summary": summary, "ratios": ratio_rows, "runs": [c.to_json() for c in cells]}
    (config.out_dir / f"{started}.json").write_text(json.dumps(result, indent=2) + "\n")
    (config.out_dir / f"{started}.md").write_text(text)
    report.plot(summary, config.out_dir / f"{started}.png", f"mnist-cnn, raw PNG, {meta['machine']['nproc']} CPUs")
    log(f"wrote {config.out_dir / started}.json, .md and .png (server logs in {logs})")
    return text
