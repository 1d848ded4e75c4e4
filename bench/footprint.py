"""``python -m bench.footprint``: what the engine split costs and saves.

1. Memory: our server with every model in ``weights/`` and 1, then 2 front-ends; the resident memory
   (VmRSS) summed over its process tree once ready, and the ratio (target: at most 1.3x).
2. A lone request: wrk at one connection on mnist-cnn, the split server (engine process + front-ends)
   against the same server with ``--in-process true`` (one process): p50, p99 and req/s.
3. Batches under load: wrk at 64 connections on mnist-cnn with 2 front-ends; the cores the tree used,
   the mean batch size, and the share of batches holding inputs from both front-ends (from /metrics).

Each figure is the median (min-max) over ``--repeats`` server starts; the machine is shared, so read the
ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import proctree, report, samples, servers, wrk

OURS = [sys.executable, "-m", "service", "--host", servers.HOST, "--port", "{port}", "--device", "cpu",
        "--log-level", "warning"]


def spec(name: str, *flags: str) -> servers.ServerSpec:
    return servers.ServerSpec(name, [*OURS, *flags], "/v2/health/ready", has_metrics=True)


def memory(workers: int, logs: Path) -> float:
    """MiB over the tree, all models, once ready (and settled)."""
    with servers.started(spec(f"all-models-{workers}", "--workers", str(workers)), logs / f"memory-{workers}.log",
                         120) as server:
        time.sleep(2)
        return proctree.rss_bytes(proctree.tree(server.pid)) / 2**20


def lone(flags: list[str], name: str, png: Path, seconds: int, logs: Path) -> wrk.WrkResult:
    with servers.started(spec(name, "--models", "mnist-cnn", *flags), logs / f"{name}.log", 60) as server:
        url = server.base_url + servers.PREDICT_PATH
        wrk.run(url, png, 1, 2, 1, 10)  # warm-up
        return wrk.run(url, png, 1, seconds, 1, 10)


def loaded(png: Path, seconds: int, logs: Path) -> dict[str, float]:
    with servers.started(spec("loaded", "--models", "mnist-cnn", "--workers", "2"), logs / "loaded.log",
                         60) as server:
        url = server.base_url + servers.PREDICT_PATH
        wrk.run(url, png, 64, 2, 2, 10)
        before = servers.http(server.base_url + "/metrics")[1].decode()
        with proctree.usage(server.pid) as usage:
            result = wrk.run(url, png, 64, seconds, 2, 10)
        after = servers.http(server.base_url + "/metrics")[1].decode()

        def delta(name: str) -> float:
            return servers.metric(after, name, model="mnist-cnn") - servers.metric(before, name, model="mnist-cnn")

        batches = delta("serve_batch_size_count")
        return {"rps": result.rps, "cores": usage.cores, "mean_batch": delta("serve_batch_size_sum") / batches,
                "mixed_share": delta("serve_mixed_batches_total") / batches}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=servers.REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"footprint-{stamp}.logs"
    logs.mkdir(parents=True, exist_ok=True)
    png = logs / "digit.png"
    png.write_bytes(samples.load(1)[0].png)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        one, two = memory(1, logs), memory(2, logs)
        split = lone([], "split", png, args.duration, logs)
        single = lone(["--in-process", "true"], "in-process", png, args.duration, logs)
        runs.append({"rss_mib_1": one, "rss_mib_2": two, "rss_ratio": two / one,
                     "split_p50_ms": split.p50_ms, "split_p99_ms": split.p99_ms, "split_rps": split.rps,
                     "inprocess_p50_ms": single.p50_ms, "inprocess_p99_ms": single.p99_ms,
                     "inprocess_rps": single.rps,
                     **{f"c64_{k}": v for k, v in loaded(png, args.duration, logs).items()}})
        print(f"repeat {repeat + 1}: {runs[-1]}", flush=True)
    rows = [f"| {key} | {spread([run[key] for run in runs])} |" for key in runs[0]]
    text = "\n".join([f"# Footprint of the engine split ({args.repeats} repeats, median (min-max))", "",
                      f"`python -m bench.footprint --repeats {args.repeats} --duration {args.duration}`", "",
                      "| figure | value |", "|---|---:|", *rows, ""])
    report.write(args.out, f"footprint-{stamp}", text, args, {"runs": runs})


if __name__ == "__main__":
    main()
