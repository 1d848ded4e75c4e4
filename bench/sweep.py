"""``python -m bench.sweep``: how our batching settings move throughput and latency, one setting at a time.

Starting from the defaults, it varies one of ``max_batch_size``, ``max_delay_ms``, ``SERVE_WORKERS``,
torch threads and ``SERVE_NICE`` (of the threads beside the inference thread) while the others keep their
defaults, starts the server with each setting (mnist-cnn, raw PNG, as ``python -m bench``), and measures
req/s, p50 and p99 at 1 connection and at 64. Repeats are interleaved. Writes
bench/results/sweep-<timestamp>.{md,json}; the README's defaults come from it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench import report, samples, servers, wrk
from bench.servers import HOST, REPO_ROOT, ServerSpec


@dataclass(frozen=True)
class Setting:
    max_batch_size: int
    max_delay_ms: float
    workers: int
    torch_threads: int
    nice: int

    @property
    def label(self) -> str:
        return (f"batch {self.max_batch_size}, delay {self.max_delay_ms:g} ms, {self.workers} front-ends, "
                f"{self.torch_threads} torch thread(s), nice {self.nice} but the inference thread")

    def spec(self, weights: Path) -> ServerSpec:
        argv = [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
                str(weights.parent.parent), "--models", weights.parent.name, "--device", "cpu",
                "--torch-threads", str(self.torch_threads), "--workers", str(self.workers), "--max-batch-size",
                str(self.max_batch_size), "--max-delay-ms", f"{self.max_delay_ms:g}", "--nice",
                str(self.nice), "--log-level", "warning"]
        return ServerSpec("ours", argv, "/v2/health/ready")


def one_at_a_time(default: Setting) -> list[Setting]:
    """The default, then each setting varied alone."""
    grid = [default]
    grid += [replace(default, max_batch_size=b) for b in (8, 16, 64)]
    grid += [replace(default, max_delay_ms=d) for d in (0, 1, 5)]
    grid += [replace(default, workers=w) for w in (1, 3)]
    grid += [replace(default, torch_threads=2)]
    grid += [replace(default, nice=n) for n in (0, 5, 19)]
    return [s for i, s in enumerate(grid) if s not in grid[:i]]


def main(argv: list[str] | None = None) -> None:
    from service.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "weights" / "mnist-cnn" / "1")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    defaults = Settings(weights_dir=REPO_ROOT / "weights")
    default = Setting(defaults.max_batch_size, defaults.max_delay_ms, defaults.workers, 1, defaults.nice)
    grid, levels = one_at_a_time(default), [int(c) for c in args.concurrency.split(",")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    digits = samples.load(3)
    png = args.out / f"sweep-{stamp}.png-input"
    png.write_bytes(digits[0].png)
    results: dict[str, dict[int, list[wrk.WrkResult]]] = {s.label: {c: [] for c in levels} for s in grid}
    try:
        for repeat in range(args.repeats):
            for setting in grid:
                with servers.started(setting.spec(args.weights), args.out / f"sweep-{stamp}.log", 120) as server:
                    samples.check("ours", server.base_url, digits)
                    url = server.base_url + servers.PREDICT_PATH
                    wrk.run(url, png, max(levels), 2, 1, 10)  # warm-up
                    for level in levels:
                        result = wrk.run(url, png, level, args.duration, 1, 10)
                        results[setting.label][level].append(result)
                        print(f"{repeat + 1}/{args.repeats} {setting.label} c={level}: {result.rps:.0f} req/s "
                              f"p50 {result.p50_ms:.2f} p99 {result.p99_ms:.2f} non-2xx {result.non_2xx}",
                              file=sys.stderr, flush=True)
    finally:
        png.unlink(missing_ok=True)
    lines = [f"# Batching sweep {stamp}: mnist-cnn, raw PNG, one setting varied at a time", "",
             f"Default: {default.label}. Median (min-max) over {args.repeats} interleaved repeats, "
             f"{args.duration} s per run.", "",
             "| setting | " + " | ".join(f"c{c} req/s | c{c} p50 ms | c{c} p99 ms" for c in levels) + " | non-2xx |",
             "|---|" + "---:|" * (3 * len(levels) + 1)]
    for setting in grid:
        cells, errors = [], 0
        for level in levels:
            runs = results[setting.label][level]
            errors += sum(r.non_2xx + r.socket_errors for r in runs)
            for metric, digits_after in (("rps", 0), ("p50_ms", 2), ("p99_ms", 2)):
                values = [getattr(r, metric) for r in runs]
                cells.append(f"{statistics.median(values):.{digits_after}f} ({min(values):.{digits_after}f}-"
                             f"{max(values):.{digits_after}f})")
        lines.append(f"| {setting.label} | " + " | ".join(cells) + f" | {errors} |")
    measured = {label: {c: [r.__dict__ for r in runs] for c, runs in by_level.items()}
                for label, by_level in results.items()}
    report.write(args.out, f"sweep-{stamp}", "\n".join(lines) + "\n", args, {"results": measured})


if __name__ == "__main__":
    main()
