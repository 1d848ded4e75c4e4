"""``python -m bench.dashboard``: the dashboard under the benchmark's load, as a screenshot and as figures.

Starts ``python -m service`` with its defaults on the committed mnist-cnn and shakespeare-gpt, Debian's
Prometheus scraping it every 2 s with deploy/monitoring/prometheus.yml (its target pointed at the server),
then drives the load of ``make bench`` for ours: wrk posting one raw MNIST PNG to mnist-cnn at each
concurrency (16, 64, 128 connections, ``--duration`` s each, after a 3 s warm-up), with, throughout, a few
generation streams on shakespeare-gpt and a few bad requests (400s and 404s) a second, so that every panel
has something to show (alone first, for ``--calm`` s). After a calm spell it reads the figures of each run
from Prometheus, renders deploy/monitoring/dashboard.html (the Grafana dashboard's panels and PromQL, drawn by a
page of ours: Grafana does not run here) over the whole run in headless Chromium, and saves a screenshot.

This is not ``make bench``'s measurement: its own timed runs start the server with mnist-cnn alone and
nothing else running; here the generations and errors share the CPU with the predictions.

Writes the screenshot (``--screenshot``, default docs/dashboard.png) and
bench/results/dashboard-<timestamp>.{json,md}. Needs wrk, prometheus and chromium (Debian's packages) and
Playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import proctree, samples, servers, wrk
from bench.runner import git_commit, log, machine

MONITORING = servers.REPO_ROOT / "deploy" / "monitoring"
GENERATE_PATH = "/v1/models/shakespeare-gpt/generate"
SCRAPE_S = 2


@dataclass(frozen=True)
class Options:
    concurrency: list[int]
    duration_s: int
    warmup_s: int
    calm_s: int
    streams: int
    stream_tokens: int
    errors_per_s: float
    screenshot: Path
    out_dir: Path
    width: int
    startup_timeout_s: float


@dataclass
class Phase:
    name: str  # "calm" (streams and errors only), "c16" ...
    connections: int  # wrk's; 0 for "calm"
    start: float  # unix seconds
    end: float
    wrk: dict[str, float] = field(default_factory=dict)
    cores: float = 0.0  # the server's processes
    others_cores: float = 0.0  # processes of neither this run nor its server: other work on the machine
    figures: dict[str, float | None] = field(default_factory=dict)  # from Prometheus, over the phase


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="16,64,128", help="comma-separated wrk connection counts")
    parser.add_argument("--duration", type=int, default=25, help="seconds of wrk at each concurrency")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk warm-up at the highest concurrency")
    parser.add_argument("--calm", type=int, default=15, help="seconds before the load (streams and errors only: "
                                                             "the 'calm' row) and after it (nothing)")
    parser.add_argument("--streams", type=int, default=2, help="concurrent generation streams on shakespeare-gpt")
    parser.add_argument("--stream-tokens", type=int, default=64, help="max_tokens of each generation")
    parser.add_argument("--errors-per-s", type=float, default=4.0, help="bad requests a second (400s and 404s)")
    parser.add_argument("--screenshot", type=Path, default=servers.REPO_ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1500, help="the browser window's width in px")
    parser.add_argument("--out", type=Path, default=servers.REPO_ROOT / "bench" / "results")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds for the server to turn ready")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concurrency or min(concurrency) < 1 or args.duration < 10 or args.calm < 10 or args.streams < 0:
        parser.error("need concurrency levels >= 1, --duration and --calm >= 10 and --streams >= 0")
    return Options(concurrency, args.duration, args.warmup, args.calm, args.streams, args.stream_tokens,
                   args.errors_per_s, args.screenshot.resolve(), args.out.resolve(), args.width,
                   args.startup_timeout)


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SystemExit(f"{binary} is not installed: apt-get install -y {package}")
    return path


# ---- the pieces: Prometheus, the page's HTTP server, background traffic -------------------------------------

@contextlib.contextmanager
def prometheus(target: str, workdir: Path) -> Iterator[str]:
    """Debian's Prometheus with the repository's scrape configuration, pointed at ``target``, every 2 s."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = f"{SCRAPE_S}s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = servers.free_port()
    with (workdir / "prometheus.log").open("wb") as out:
        proc = subprocess.Popen([require("prometheus", "prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'tsdb'}",
                                 f"--web.listen-address={servers.HOST}:{port}"],
                                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    base = f"http://{servers.HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start; see {workdir / 'prometheus.log'}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """deploy/monitoring/ over HTTP (the page fetches serve.json beside it; file:// would not let it)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(MONITORING))
    with http.server.ThreadingHTTPServer((servers.HOST, 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{servers.HOST}:{server.server_address[1]}"
        finally:
            server.shutdown()


def streams(base: str, tokens: int, seed: int, stop: threading.Event, done: list[int]) -> None:
    """Generation streams one after another until ``stop``; counts the finished ones in ``done``."""
    body: dict[str, Any] = {"prompt": "ROMEO:\n", "max_tokens": tokens, "stream": True, "stop": None}
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            seed += 1
            with contextlib.suppress(httpx.HTTPError), \
                    client.stream("POST", GENERATE_PATH, json={**body, "seed": seed}) as response:
                for _ in response.iter_lines():
                    pass
                done[0] += response.status_code == 200


def errors(base: str, per_s: float, stop: threading.Event, sent: list[int]) -> None:
    """Bad requests, alternately: a body that is not a PNG (400) and a model that does not exist (404)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.wait(1 / per_s):
            with contextlib.suppress(httpx.HTTPError):
                if sent[0] % 2:
                    client.get("/v1/models/no-such-model")
                else:
                    client.post(servers.PREDICT_PATH, content=b"not an image", headers={"content-type": "image/png"})
                sent[0] += 1


@contextlib.contextmanager
def background(base: str, options: Options) -> Iterator[dict[str, list[int]]]:
    stop = threading.Event()
    counts: dict[str, list[int]] = {"generations": [0], "errors": [0]}
    threads = [threading.Thread(target=streams, args=(base, options.stream_tokens, 1000 * i, stop,
                                                      counts["generations"]), daemon=True)
               for i in range(options.streams)]
    if options.errors_per_s > 0:
        threads.append(threading.Thread(target=errors, args=(base, options.errors_per_s, stop, counts["errors"]),
                                        daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=70)


@contextlib.contextmanager
def cpu_usage(server_pid: int) -> Iterator[Phase]:
    """The server's cores and the other processes' over the body, into the yielded Phase's ``cores`` and
    ``others_cores``: the machine's busy time (/proc/stat) less this process tree's (which holds the server,
    wrk and Prometheus)."""
    def busy() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields[:3]) + fields[5] + fields[6]) / proctree.CLOCK_TICKS  # user, nice, system, irq, softirq

    def ours() -> float:  # this tree's processes, and its children that ended and were waited for (wrk's runs)
        times = os.times()
        return sum(proctree.cpu_seconds(proctree.tree(os.getpid())).values()) + times.children_user \
            + times.children_system

    result = Phase("", 0, 0.0, 0.0)
    ours_before, machine_before = ours(), busy()
    with proctree.usage(server_pid) as usage:
        started = time.monotonic()
        yield result
    wall = time.monotonic() - started
    result.cores = usage.cores
    result.others_cores = max(0.0, (busy() - machine_before - (ours() - ours_before)) / wall)


# ---- the figures of each phase, from Prometheus -------------------------------------------------------------

def figure_queries(window: str) -> dict[str, str]:
    """What the README reports for a phase, over ``window`` ending at the phase's end. The dashboard's
    expressions, narrowed to a model where the panel shows several."""
    def quantile(q: float, metric: str, model: str) -> str:
        return f'histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{model="{model}"}}[{window}])))'

    def mean(metric: str, model: str) -> str:
        return (f'sum(rate({metric}_sum{{model="{model}"}}[{window}])) / '
                f'sum(rate({metric}_count{{model="{model}"}}[{window}]))')

    def gauge(expr: str) -> str:  # the gauge's mean over the window, at the scrape resolution
        return f"avg_over_time(({expr})[{window}:{SCRAPE_S}s])"

    return {
        "mnist_rps": f'sum(rate(serve_requests_total{{model="mnist-cnn", status="200"}}[{window}]))',
        "mnist_p50_s": quantile(0.5, "serve_request_duration_seconds", "mnist-cnn"),
        "mnist_p99_s": quantile(0.99, "serve_request_duration_seconds", "mnist-cnn"),
        "mnist_queue_wait_p99_s": quantile(0.99, "serve_queue_wait_seconds", "mnist-cnn"),
        "mnist_mean_batch": mean("serve_batch_size", "mnist-cnn"),
        "mnist_in_flight": gauge('sum(serve_requests_in_flight{model="mnist-cnn"})'),
        "mnist_queue_depth": gauge('sum(serve_queue_depth{model="mnist-cnn"})'),
        "errors_rps": f'sum(rate(serve_requests_total{{status!~"2.."}}[{window}]))',
        "gpt_tokens_per_s": f'sum(rate(serve_generated_tokens_total{{model="shakespeare-gpt"}}[{window}]))',
        "gpt_ttft_p50_s": quantile(0.5, "serve_time_to_first_token_seconds", "shakespeare-gpt"),
        "gpt_ttft_p99_s": quantile(0.99, "serve_time_to_first_token_seconds", "shakespeare-gpt"),
        "gpt_tpot_mean_s": mean("serve_time_per_output_token_seconds", "shakespeare-gpt"),
        "rss_engine_bytes": f'max_over_time(serve_process_resident_memory_bytes{{process="engine"}}[{window}])',
        "rss_frontends_bytes": f'sum(max_over_time(serve_process_resident_memory_bytes{{process=~"frontend-.*"}}'
                               f'[{window}]))',
        "engine_restarts": "sum(serve_engine_restarts_total)",
    }


def instant(base: str, expr: str, at: float) -> float | None:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if value == value else None  # NaN: no observations in the window


def read_figures(base: str, phase: Phase) -> None:
    """The phase's figures over its span, less its first 5 s (the ramp) and rounded down to whole scrapes."""
    window = int(phase.end - phase.start - 5) // SCRAPE_S * SCRAPE_S
    phase.figures = {name: instant(base, expr, phase.end) for name, expr in figure_queries(f"{window}s").items()}


# ---- the screenshot ------------------------------------------------------------------------------------------

def screenshot(page_base: str, prometheus_base: str, start: float, end: float, phases: list[Phase], path: Path,
               width: int) -> str:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    marks = ",".join(f"{int(p.start)}:{p.connections} connections" for p in phases if p.connections)
    url = (f"{page_base}/dashboard.html?prometheus={prometheus_base}&from={int(start)}&to={int(end) + 1}"
           f"&scrape={SCRAPE_S}&marks={marks}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(url)
            page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=60_000)
            state = page.evaluate("document.body.dataset.state")
            statuses = page.eval_on_selector_all(".panel", "panels => panels.map(p => "
                                                 "[p.querySelector('h2').textContent, p.dataset.status])")
            if state != "done" or any(status != "data" for _, status in statuses):
                raise RuntimeError(f"the page did not draw every panel: {state}, {statuses}")
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    return url


# ---- the run -------------------------------------------------------------------------------------------------

def markdown(phases: list[Phase], meta: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f}"

    def num(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.0f}"

    rows = ["| connections | req/s (wrk) | p50 / p99 ms (wrk) | req/s | p50 / p99 ms | queue wait p99 ms | mean batch "
            "| in flight | queue depth | errors/s | tokens/s | TTFT p50 / p99 ms | TPOT ms "
            "| RSS engine / front-ends MiB | cores | others' cores |",
            "|---:" * 16 + "|"]
    for p in phases:
        f = p.figures
        by_wrk = f"{p.wrk['rps']:.0f} | {p.wrk['p50_ms']:.1f} / {p.wrk['p99_ms']:.1f}" if p.wrk else "- | -"
        rows.append(f"| {p.connections or p.name} | {by_wrk} "
                    f"| {num(f['mnist_rps'], 0)} | {ms(f['mnist_p50_s'])} / {ms(f['mnist_p99_s'])} "
                    f"| {ms(f['mnist_queue_wait_p99_s'])} | {num(f['mnist_mean_batch'])} | {num(f['mnist_in_flight'])} "
                    f"| {num(f['mnist_queue_depth'])} | {num(f['errors_rps'])} | {num(f['gpt_tokens_per_s'], 0)} "
                    f"| {ms(f['gpt_ttft_p50_s'])} / {ms(f['gpt_ttft_p99_s'])} | {ms(f['gpt_tpot_mean_s'])} "
                    f"| {mib(f['rss_engine_bytes'])} / {mib(f['rss_frontends_bytes'])} | {p.cores:.2f} "
                    f"| {p.others_cores:.2f} |")
    return (f"# Dashboard under the benchmark's load ({meta['started']})\n\n`{meta['command']}` on "
            f"{meta['machine']['nproc']} CPUs ({meta['machine']['cpu_model']}), commit {meta['git_commit']}; "
            f"server: `{meta['server']}`.\n\n"
            "wrk: mnist-cnn, one raw MNIST PNG per request; the rest from Prometheus over each run, less its first "
            "5 s (mnist-cnn; tokens, TTFT and time per output token: shakespeare-gpt; errors: every model). cores: the "
            "server's processes; others' cores: processes of neither this run nor its server.\n\n"
            + "\n".join(rows) + f"\n\nscreenshot: {meta['screenshot']}\n")


def run(options: Options, command: str) -> str:
    require("wrk", "wrk")
    require("prometheus", "prometheus")
    started = time.strftime("%Y%m%d-%H%M%S")
    workdir = options.out_dir / f"dashboard-{started}.logs"
    workdir.mkdir(parents=True, exist_ok=True)
    png = workdir / "digit.png"
    png.write_bytes(samples.load(1)[0].png)  # the benchmark's digit
    argv = [sys.executable, "-m", "service", "--host", servers.HOST, "--port", "{port}", "--models",
            "mnist-cnn,shakespeare-gpt", "--device", "cpu", "--log-level", "warning"]
    spec = servers.ServerSpec("ours", argv, "/v2/health/ready", has_metrics=True)
    phases: list[Phase] = []
    with servers.started(spec, workdir / "server.log", options.startup_timeout_s) as server, \
            prometheus(server.base_url.removeprefix("http://"), workdir) as prometheus_base, page_server() as page:
        url = server.base_url + servers.PREDICT_PATH
        log(f"server {server.base_url}, prometheus {prometheus_base}, page {page}/dashboard.html")
        if options.warmup_s:
            wrk.run(url, png, max(options.concurrency), options.warmup_s, 1, 10)
        time.sleep(2 * SCRAPE_S)
        start = time.time()
        with background(server.base_url, options) as counts:
            calm = Phase("calm", 0, time.time(), 0.0)
            with cpu_usage(server.pid) as usage:
                time.sleep(options.calm_s)
            calm.end, calm.cores, calm.others_cores = time.time(), usage.cores, usage.others_cores
            phases.append(calm)
            for connections in options.concurrency:
                phase = Phase(f"c{connections}", connections, time.time(), 0.0)
                with cpu_usage(server.pid) as usage:
                    result = wrk.run(url, png, connections, options.duration_s, 1, 10)
                phase.end, phase.cores, phase.others_cores = time.time(), usage.cores, usage.others_cores
                phase.wrk = {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                             "requests": result.requests, "non_2xx": result.non_2xx,
                             "socket_errors": result.socket_errors}
                phases.append(phase)
                log(f"  c={connections:<3} {result.rps:7.1f} req/s  p50 {result.p50_ms:6.1f} ms  "
                    f"p99 {result.p99_ms:6.1f} ms  non-2xx {result.non_2xx}  cores {usage.cores:.2f}  "
                    f"others' cores {usage.others_cores:.2f}")
        time.sleep(options.calm_s)
        end = time.time()
        time.sleep(2 * SCRAPE_S)  # the last scrape of the span
        for phase in phases:
            read_figures(prometheus_base, phase)
        page_url = screenshot(page, prometheus_base, start, end, phases, options.screenshot, options.width)
    meta: dict[str, Any] = {
        "started": started, "command": command, "machine": machine(), "git_commit": git_commit(),
        "server": " ".join(argv).replace(sys.executable, "python"), "scrape_interval_s": SCRAPE_S,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "background": {"generations_finished": counts["generations"][0], "errors_sent": counts["errors"][0]},
        "screenshot": str(options.screenshot.relative_to(servers.REPO_ROOT)
                          if options.screenshot.is_relative_to(servers.REPO_ROOT) else options.screenshot),
        "page": page_url, "span": [start, end],
    }
    text = markdown(phases, meta)
    (options.out_dir / f"dashboard-{started}.json").write_text(
        json.dumps({**meta, "phases": [asdict(p) for p in phases]}, indent=2) + "\n")
    (options.out_dir / f"dashboard-{started}.md").write_text(text)
    log(f"wrote {options.screenshot} ({options.screenshot.stat().st_size // 1024} KiB) and "
        f"{options.out_dir}/dashboard-{started}.{{json,md}}")
    return text


def main() -> None:
    options = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the server and Prometheus are stopped
    print(run(options, " ".join(["python", "-m", "bench.dashboard", *sys.argv[1:]])), end="")


if __name__ == "__main__":
    main()
