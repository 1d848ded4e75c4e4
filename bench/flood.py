"""``python -m bench.flood``: does a flood keep our server's throughput, and are its refusals as cheap as a probe?

Starts ``python -m service`` (mnist-cnn only, ``--max-queue 8``) and, per repeat: (i) wrk at 64 connections
without a flood: successful predictions/s; (ii) wrk at 200 connections (the flood), counting the answers per
status (``count_status.lua``), while one Python thread alternates a POST predict and a GET /v2/health/live,
back to back, each on its own keep-alive connection, timing every answer. Reports the successful predictions/s
with and without the flood, the probe's 503 and health latencies (p50/p95/p99), the criterion
p95(503) <= 1.5 * p95(live) + 10 ms, and the share of probe predictions answered 200 / 503; median (min-max)
over repeats, into bench/results/flood-<timestamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import report, samples, servers, wrk
from bench.servers import HOST, PREDICT_PATH, REPO_ROOT, ServerSpec

LIVE_PATH = "/v2/health/live"
MAX_PROBES = 200_000  # a bound on the probe loop besides its time


@dataclass(frozen=True)
class Answer:
    kind: str  # "predict" or "live"
    status: int  # 0: no answer (connection error or timeout)
    latency_ms: float


def timed(client: httpx.Client, kind: str, png: bytes) -> Answer:
    started = time.perf_counter()
    try:
        if kind == "predict":
            status = client.post(PREDICT_PATH, content=png, headers={"content-type": "image/png"}).status_code
        else:
            status = client.get(LIVE_PATH).status_code
    except httpx.HTTPError:
        status = 0
    return Answer(kind, status, (time.perf_counter() - started) * 1e3)


def probe(base_url: str, png: bytes, until: float) -> list[Answer]:
    """Predict, live, predict, live ... until ``until`` (monotonic), each kind on its own keep-alive connection."""
    with servers.client(base_url, 10) as predict_client, servers.client(base_url, 10) as live_client:
        answers: list[Answer] = []
        while time.monotonic() < until and len(answers) < MAX_PROBES:
            answers += [timed(predict_client, "predict", png), timed(live_client, "live", png)]
        return answers


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else None


def latencies(answers: list[Answer], kind: str, status: int) -> dict[str, Any]:
    values = [a.latency_ms for a in answers if a.kind == kind and a.status == status]
    return {"count": len(values), **{f"p{q}": percentile(values, q) for q in (50, 95, 99)}}


def shares(answers: list[Answer]) -> dict[str, float]:
    statuses = [a.status for a in answers if a.kind == "predict"]
    n = max(len(statuses), 1)
    return {"200": statuses.count(200) / n, "503": statuses.count(503) / n,
            "other": sum(s not in (200, 503) for s in statuses) / n}


def round_figures(baseline: wrk.StatusCounts, flood: wrk.StatusCounts, answers: list[Answer]) -> dict[str, Any]:
    """One repeat's figures; ``criterion`` is None when the probe got no 503."""
    refused, live = latencies(answers, "predict", 503), latencies(answers, "live", 200)
    criterion = None
    if refused["p95"] is not None and live["p95"] is not None:
        criterion = refused["p95"] <= 1.5 * live["p95"] + 10.0
    return {"ok_per_s_no_flood": baseline.per_second(200), "ok_per_s_flood": flood.per_second(200),
            "flood_ratio": flood.per_second(200) / max(baseline.per_second(200), 1e-9),
            "probe_503_ms": refused, "probe_live_ms": live, "criterion": criterion,
            "probe_predict_shares": shares(answers), "probe_requests": len(answers),
            "wrk_no_flood": asdict(baseline), "wrk_flood": asdict(flood)}


def one_round(base_url: str, png: Path, args: argparse.Namespace) -> dict[str, Any]:
    url, wait_s = base_url + PREDICT_PATH, args.duration + args.wrk_timeout + 30
    baseline = wrk.count(url, png, args.connections, args.duration, args.wrk_threads, args.wrk_timeout)
    with wrk.counting(url, png, args.flood_connections, args.duration, args.wrk_threads, args.wrk_timeout) as proc:
        started = time.monotonic()
        time.sleep(args.settle)  # probe the flood at full strength: not while it starts or ends
        answers = probe(base_url, png.read_bytes(), started + args.duration - args.settle)
        flood = wrk.counts(proc, wait_s)
    figures = round_figures(baseline, flood, answers)
    p95 = {kind: figures[f"probe_{kind}_ms"]["p95"] or float("nan") for kind in ("503", "live")}
    print(f"  no flood {figures['ok_per_s_no_flood']:.0f} ok/s, flood {figures['ok_per_s_flood']:.0f} ok/s, "
          f"probe p95: 503 {p95['503']:.1f} ms, live {p95['live']:.1f} ms, criterion {figures['criterion']}",
          file=sys.stderr, flush=True)
    return figures


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and min-max of each figure across repeats (figures a repeat lacks are left out of it)."""
    def values(*keys: str) -> list[float]:
        found = []
        for figures in rounds:
            value: Any = figures
            for key in keys:
                value = value[key]
            if value is not None:
                found.append(float(value))
        return found

    paths = [("ok_per_s_no_flood",), ("ok_per_s_flood",), ("flood_ratio",),
             *((kind, k) for kind in ("probe_503_ms", "probe_live_ms") for k in ("count", "p50", "p95", "p99")),
             *(("probe_predict_shares", s) for s in ("200", "503", "other"))]
    out: dict[str, Any] = {"/".join(p): report.spread(v) for p in paths if (v := values(*p))}
    out["criterion_passed"] = sum(bool(r["criterion"]) for r in rounds)
    out["criterion_undecided"] = sum(r["criterion"] is None for r in rounds)
    return out


def _cell(s: dict[str, Any], key: str, digits: int, scale: float = 1.0) -> str:
    if key not in s:
        return "-"
    v = s[key]
    return f"{v['median'] * scale:.{digits}f} ({v['min'] * scale:.{digits}f}-{v['max'] * scale:.{digits}f})"


def markdown(args: argparse.Namespace, spec: ServerSpec, s: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    crit = ", ".join({True: "pass", False: "FAIL", None: "no 503s"}[r["criterion"]] for r in rounds)
    lines = [f"# Flood: ours, mnist-cnn, max_queue {args.max_queue}, {spec.processes}", "",
             f"`{' '.join(['python -m bench.flood', *sys.argv[1:]])}`", "",
             f"- wrk {args.duration} s at {args.connections} connections (no flood), then {args.duration} s at "
             f"{args.flood_connections} (the flood), {args.wrk_threads} wrk thread(s); the probe runs from "
             f"{args.settle:g} s into the flood to {args.settle:g} s before its end: one thread, predict and live "
             "back to back, one keep-alive connection each",
             f"- {args.repeats} repeat(s) on one server start; median (min-max); latencies in ms", "",
             "| figure | value |", "|---|---:|",
             f"| successful predictions/s, no flood | {_cell(s, 'ok_per_s_no_flood', 0)} |",
             f"| successful predictions/s, flood | {_cell(s, 'ok_per_s_flood', 0)} |",
             f"| flood / no flood | {_cell(s, 'flood_ratio', 2)} |"]
    for kind, name in (("probe_503_ms", "probe 503"), ("probe_live_ms", "probe live")):
        lines += [f"| {name}: answers | {_cell(s, f'{kind}/count', 0)} |",
                  *(f"| {name} p{q} | {_cell(s, f'{kind}/p{q}', 2)} |" for q in (50, 95, 99))]
    lines += [f"| probe predictions answered {k} (%) | {_cell(s, f'probe_predict_shares/{k}', 1, 100)} |"
              for k in ("200", "503", "other")]
    lines += [f"| p95(503) <= 1.5 * p95(live) + 10 ms | {s['criterion_passed']} of {len(rounds)} ({crit}) |"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per wrk run (D)")
    parser.add_argument("--repeats", type=int, default=3, help="R")
    parser.add_argument("--workers", type=int, default=None, help="our front-ends; default: not passed")
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: not passed (the server's)")
    parser.add_argument("--server-flags", default="", help="more flags for python -m service")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections without flood")
    parser.add_argument("--flood-connections", type=int, default=200)
    parser.add_argument("--settle", type=float, default=0.5,
                        help="the probe starts this long after the flood and stops this long before its end")
    parser.add_argument("--warmup", type=int, default=2, help="whole seconds of wrk at --connections after start")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--wrk-timeout", type=int, default=10)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / "weights")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if min(args.duration, args.repeats, args.max_queue, args.workers or 1) < 1 \
            or not 0 <= 2 * args.settle < args.duration:
        parser.error("need --duration, --repeats, --max-queue, --workers >= 1 and 0 <= 2 * --settle < --duration")
    return args


def server_spec(args: argparse.Namespace) -> ServerSpec:
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    if args.max_batch_size is not None:
        workers += ["--max-batch-size", str(args.max_batch_size)]
    workers += args.server_flags.split()
    argv = [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
            str(args.weights_dir), "--models", "mnist-cnn", "--max-queue", str(args.max_queue), *workers,
            "--log-level", "warning"]
    front_ends = f"{servers.default_workers()} front-ends (default)" if args.workers is None else \
        f"{args.workers} front-ends"
    return ServerSpec("ours", argv, "/v2/health/ready", processes=front_ends)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the server is stopped
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"flood-{time.strftime('%Y%m%d-%H%M%S')}"
    sample = samples.load(1)[0]
    png = args.out / f"{stamp}.png"
    png.write_bytes(sample.png)
    spec = server_spec(args)
    rounds = []
    with servers.started(spec, args.out / f"{stamp}.log", args.startup_timeout) as server:
        samples.check("ours", server.base_url, [sample])
        if args.warmup:
            wrk.count(server.base_url + PREDICT_PATH, png, args.connections, args.warmup, args.wrk_threads,
                      args.wrk_timeout)
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
            rounds.append(one_round(server.base_url, png, args))
    s = summary(rounds)
    report.write(args.out, stamp, markdown(args, spec, s, rounds), args,
                 {"server": spec.argv, "summary": s, "rounds": rounds})


if __name__ == "__main__":
    main()
