"""Summaries across repeats (median, min-max), ratios ours/baseline, and the Markdown report."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.wrk import WrkResult

OURS = "ours"
METRICS = ("rps", "p50_ms", "p99_ms")
USAGE = ("cores", "rss_mib")  # the server's whole process tree, from /proc


@dataclass(frozen=True)
class Cell:
    server: str
    concurrency: int
    repeat: int
    result: WrkResult
    mean_batch: float | None = None  # ours only, from /metrics
    cores: float = 0.0  # CPU seconds of the server's process tree over the run / its wall seconds
    rss_mib: float = 0.0  # VmRSS summed over the tree, right after the run
    processes: int = 0  # in the tree, right after the run

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "concurrency": self.concurrency, "repeat": self.repeat,
                **asdict(self.result), "mean_batch": self.mean_batch, "cores": self.cores, "rss_mib": self.rss_mib,
                "processes": self.processes}


def write(out_dir: Path, stem: str, text: str, args: argparse.Namespace, measured: dict[str, Any]) -> None:
    """``<out_dir>/<stem>.md`` (the report) and ``.json`` (the arguments and every measurement); print the report."""
    (out_dir / f"{stem}.md").write_text(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (out_dir / f"{stem}.json").write_text(json.dumps({"args": settings, **measured}, indent=2))
    print(text, end="")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(cells: list[Cell]) -> list[dict[str, Any]]:
    """One row per (concurrency, server): the median and min-max of each metric across repeats."""
    rows = []
    for concurrency in sorted({c.concurrency for c in cells}):
        for server in dict.fromkeys(c.server for c in cells):
            runs = [c for c in cells if c.server == server and c.concurrency == concurrency]
            batches = [c.mean_batch for c in runs if c.mean_batch is not None]
            rows.append({"concurrency": concurrency, "server": server, "repeats": len(runs),
                         **{m: spread([getattr(c.result, m) for c in runs]) for m in METRICS},
                         **{m: spread([getattr(c, m) for c in runs]) for m in USAGE},
                         "processes": sorted({c.processes for c in runs}),
                         "non_2xx": sum(c.result.non_2xx for c in runs),
                         "socket_errors": sum(c.result.socket_errors for c in runs),
                         "mean_batch": spread(batches) if batches else None})
    return rows


def ratios(cells: list[Cell]) -> list[dict[str, Any]]:
    """Ours / baseline per concurrency: ratio of the medians, and min/max of the per-repeat ratios."""
    def value(server: str, concurrency: int, repeat: int, metric: str) -> float:
        return next(getattr(c.result, metric) for c in cells
                    if (c.server, c.concurrency, c.repeat) == (server, concurrency, repeat))

    rows = []
    repeats = sorted({c.repeat for c in cells})
    for concurrency in sorted({c.concurrency for c in cells}):
        for baseline in dict.fromkeys(c.server for c in cells if c.server != OURS):
            row: dict[str, Any] = {"concurrency": concurrency, "baseline": baseline}
            for metric in METRICS:
                ours = [value(OURS, concurrency, r, metric) for r in repeats]
                base = [value(baseline, concurrency, r, metric) for r in repeats]
                paired = [o / b for o, b in zip(ours, base, strict=True)]
                row[metric] = {"ratio_of_medians": statistics.median(ours) / statistics.median(base),
                               "min": min(paired), "max": max(paired)}
            rows.append(row)
    return rows


def _fmt(s: dict[str, float], digits: int) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _ratio(r: dict[str, float]) -> str:
    return f"{r['ratio_of_medians']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> str:
    s, m = meta["settings"], meta["machine"]
    lines = [
        f"# Benchmark {meta['started']}",
        "",
        f"`{meta['command']}`",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), load average at start {m['loadavg_start']}, "
        f"at end {m['loadavg_end']}",
        f"- torch {meta['versions']['torch']}, device cpu, {s['torch_threads']} torch thread(s) in every server "
        f"process; batching: ours max_batch_size {s['ours_batching'][0]}, max delay {s['ours_batching'][1]:g} ms; "
        f"litserve max_batch_size {s['litserve_max_batch_size']}, batch_timeout "
        f"{s['litserve_batch_timeout_ms']:g} ms; naive none (one forward per request)",
        "- processes: " + "; ".join(f"{name}: {what}" for name, what in s["processes"].items()),
        f"- load: {meta['versions']['wrk']}, {s['wrk_threads']} thread(s), {s['duration_s']:g} s per run after a "
        f"{s['warmup_s']:g} s warm-up per server start, {s['repeats']} repeats with the servers interleaved; "
        f"one real MNIST test digit (PNG, {s['png_bytes']} bytes, label {s['png_label']}) POSTed as image/png",
        "- cells: median (min-max) across repeats; latency from wrk --latency; cores = CPU time (utime + stime) of "
        "the server's whole process tree over the run / the run's wall time; RSS = VmRSS summed over that tree "
        "right after the run (shared pages count once per process); processes = the tree's size",
        "",
        "| concurrency | server | req/s | p50 ms | p99 ms | non-2xx | socket errors | mean batch | cores | RSS MiB "
        "| processes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        batch = _fmt(row["mean_batch"], 1) if row["mean_batch"] else "-"
        lines.append(f"| {row['concurrency']} | {row['server']} | {_fmt(row['rps'], 0)} | {_fmt(row['p50_ms'], 2)} "
                     f"| {_fmt(row['p99_ms'], 2)} | {row['non_2xx']} | {row['socket_errors']} | {batch} "
                     f"| {_fmt(row['cores'], 2)} | {_fmt(row['rss_mib'], 0)} "
                     f"| {'/'.join(map(str, row['processes']))} |")
    lines += [
        "",
        "Ours / baseline: ratio of the medians (min-max of the per-repeat ratios). "
        "req/s above 1 is better; latency below 1 is better.",
        "",
        "| concurrency | baseline | req/s | p50 | p99 |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in ratio_rows:
        lines.append(f"| {row['concurrency']} | {row['baseline']} | {_ratio(row['rps'])} | {_ratio(row['p50_ms'])} "
                     f"| {_ratio(row['p99_ms'])} |")
    return "\n".join(lines + _limit_lines(meta, summary)) + "\n"


def _limit_lines(meta: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    """The model's own speed in this process, and ours as a fraction of it."""
    limit = meta.get("limit")
    if not limit:
        return []
    best = limit["prepared_img_s"]
    lines = ["", f"In-process limit of mnist-cnn's forward alone (batch {limit['batch_size']}, the servers' torch "
             f"threads, measured after the runs): eager {limit['eager_img_s']:.0f} img/s, prepared "
             f"({limit['prepared_kind']}) {best:.0f} img/s. Ours as a share of the prepared limit:", "",
             "| concurrency | ours req/s | share of the limit |", "|---:|---:|---:|"]
    for row in summary:
        if row["server"] == "ours":
            rps = row["rps"]["median"]
            lines.append(f"| {row['concurrency']} | {rps:.0f} | {rps / best:.0%} |")
    return lines


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    """req/s and p99 against connections, one line per server (median, with the min-max as error bars)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    from matplotlib import pyplot

    figure, (throughput, tail) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for server in dict.fromkeys(row["server"] for row in summary):
        rows = sorted((row for row in summary if row["server"] == server), key=lambda row: row["concurrency"])
        x = [row["concurrency"] for row in rows]
        for axes, metric in ((throughput, "rps"), (tail, "p99_ms")):
            median = [row[metric]["median"] for row in rows]
            error = [[m - row[metric]["min"] for m, row in zip(median, rows, strict=True)],
                     [row[metric]["max"] - m for m, row in zip(median, rows, strict=True)]]
            axes.errorbar(x, median, yerr=error, marker="o", capsize=3, label=server)
    throughput.set(title="throughput", xlabel="connections", ylabel="requests/s", xscale="log")
    tail.set(title="p99 latency (lower is better)", xlabel="connections", ylabel="ms", xscale="log", yscale="log")
    for axes in (throughput, tail):
        axes.set_xticks(sorted({row["concurrency"] for row in summary}))
        axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
