"""``python -m bench``: load-benchmark our server against a naive FastAPI app and LitServe, on the same weights.

Each (repeat, server) starts the server alone on a free 127.0.0.1 port, checks its answers on real MNIST
digits, warms it up, then runs wrk at each concurrency; servers are interleaved per repeat. Reports the
median (min-max) per cell and the ratios ours/baseline, into bench/results/<timestamp>.{json,md}, and
plots req/s and p99 against connections into <timestamp>.png.

Ours runs with its defaults unless --max-batch-size/--max-delay-ms say otherwise; LitServe with its
batching on (max batch 64, 5 ms); the naive FastAPI app runs one forward per request.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from bench.runner import Config, run
from bench.servers import REPO_ROOT


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--concurrency", default="1,16,64,128", help="comma-separated wrk connection counts")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per measured wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="whole seconds of wrk warm-up per server start")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every (server, concurrency) cell")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in every server process")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes per server: ours SERVE_WORKERS, naive uvicorn workers, LitServe "
                             "workers_per_device; default: each server's own (ours SERVE_WORKERS' default, naive 1, "
                             "LitServe 1)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="ours (default: its own default, SERVE_MAX_BATCH_SIZE's)")
    parser.add_argument("--max-delay-ms", type=float, default=None,
                        help="ours (default: its own default, SERVE_MAX_DELAY_MS's)")
    parser.add_argument("--litserve-max-batch-size", type=int, default=64, help="LitServe's max_batch_size")
    parser.add_argument("--litserve-batch-timeout-ms", type=float, default=5.0, help="LitServe's batch_timeout")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (it shares the CPUs with the server)")
    parser.add_argument("--wrk-timeout", type=int, default=10, help="seconds before wrk counts a request lost")
    parser.add_argument("--check-images", type=int, default=10, help="MNIST test images each server must label right")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds for a server to turn ready")
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "weights" / "mnist-cnn" / "1")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if min(concurrency, default=0) < 1 or min(args.repeats, args.duration, args.torch_threads, args.workers or 1) < 1 \
            or args.warmup < 0:
        parser.error("need concurrency levels, --repeats, --duration, --torch-threads and --workers >= 1 "
                     "and --warmup >= 0")
    return Config(concurrency=concurrency, duration_s=args.duration, warmup_s=args.warmup, repeats=args.repeats,
                  torch_threads=args.torch_threads, max_batch_size=args.max_batch_size,
                  max_delay_ms=args.max_delay_ms, litserve_max_batch_size=args.litserve_max_batch_size,
                  litserve_batch_timeout_ms=args.litserve_batch_timeout_ms, wrk_threads=args.wrk_threads,
                  wrk_timeout_s=args.wrk_timeout,
                  check_images=args.check_images, startup_timeout_s=args.startup_timeout,
                  weights=args.weights.resolve(), out_dir=args.out.resolve(), workers=args.workers)


def main() -> None:
    config = parse_args()
    # SIGTERM unwinds like Ctrl-C, so every server is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(run(config, shlex.join(["python", "-m", "bench", *sys.argv[1:]])), end="")


if __name__ == "__main__":
    main()
