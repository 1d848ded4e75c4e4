"""``python -m bench.priority``: request priority under saturation, as Triton's clients send it.

One ``python -m service`` serves mnist-cnn. Two wrk runs at once post the same Open Inference Protocol V2 binary
request (one real MNIST digit, FP32): ``--default-connections`` (64) at the default priority and
``--priority-connections`` (8) with ``parameters: {"priority": 1}``. It prints each group's requests/s, p50 and
p99, and the ratio of the priority group's p99 to the default group's, per round and as median (min-max).
Issue 21's target: that ratio at most 0.3. Results go to ``bench/results/priority-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from bench import samples, servers, wrk
from bench.servers import HOST, REPO_ROOT, ServerSpec

SCRIPT = Path(__file__).with_name("post_body.lua")


def v2_binary(pixels: np.ndarray, parameters: dict[str, Any]) -> tuple[bytes, int]:
    """A V2 binary infer request of one [1, 1, 28, 28] FP32 tensor: the body and its JSON header's length."""
    raw = pixels.astype(np.float32).tobytes()
    header = orjson.dumps({"parameters": parameters, "inputs": [{
        "name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}]})
    return header + raw, len(header)


def start(url: str, body: Path, header_length: int, connections: int, seconds: int) -> subprocess.Popen[str]:
    argv = [wrk.require_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout=10s", "--latency",
            "-s", str(SCRIPT), url]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": "application/octet-stream",
           "BENCH_HEADER_LENGTH": str(header_length)}
    return subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


ENGINE_FIGURES = ("serve_queue_wait_seconds", "serve_batch_size", "serve_inference_duration_seconds")


def engine_sums(base: str) -> dict[str, float]:
    """mnist-cnn's sums and counts of the engine's histograms: where the time went, apart from HTTP."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {f"{figure}{part}": servers.metric(text, f"{figure}{part}", model="mnist-cnn")
            for figure in ENGINE_FIGURES for part in ("_sum", "_count")}


def one_round(base: str, bodies: dict[str, tuple[Path, int]], args: argparse.Namespace) -> dict[str, Any]:
    url = f"{base}/v2/models/mnist-cnn/infer"
    before = engine_sums(base)
    runs = {group: start(url, path, length, connections, args.seconds)
            for group, (path, length), connections in zip(bodies, bodies.values(),
                                                           (args.default_connections, args.priority_connections),
                                                           strict=True)}
    result: dict[str, Any] = {}
    for group, proc in runs.items():
        out, err = proc.communicate(timeout=args.seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed: {err or out}")
        parsed = wrk.parse(out)
        if parsed.non_2xx or parsed.socket_errors:
            raise RuntimeError(f"{group}: {parsed.non_2xx} non-2xx, {parsed.socket_errors} socket errors")
        result[group] = {"rps": round(parsed.rps, 1), "p50_ms": parsed.p50_ms, "p99_ms": parsed.p99_ms}
    result["p99_ratio"] = round(result["priority 1"]["p99_ms"] / result["default"]["p99_ms"], 3)
    after = engine_sums(base)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    for figure, name, scale in (("serve_queue_wait_seconds", "engine_queue_wait_mean_ms", 1000),
                                ("serve_inference_duration_seconds", "forward_mean_ms", 1000),
                                ("serve_batch_size", "batch_mean", 1)):
        if delta.get(f"{figure}_count"):
            result[name] = round(delta[f"{figure}_sum"] / delta[f"{figure}_count"] * scale, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--default-connections", type=int, default=64)
    parser.add_argument("--priority-connections", type=int, default=8)
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout to run (a baseline's worktree)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"priority-{time.strftime('%Y%m%d-%H%M%S')}"
    digit = samples.load(1)[0]
    pixels = np.asarray(Image.open(io.BytesIO(digit.png)), dtype=np.float32).reshape(1, 1, 28, 28) / 255
    spec = ServerSpec("ours", [sys.executable, "-m", "service", "--host", HOST, "--port", "{port}", "--weights-dir",
                               str(REPO_ROOT / "weights"), "--models", "mnist-cnn", "--log-level", "warning"],
                      "/v2/health/ready")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, servers.started(spec, args.out / f"{stamp}.log", 120,
                                                               cwd=args.repo) as server:
        bodies: dict[str, tuple[Path, int]] = {}
        for group, parameters in (("default", {}), ("priority 1", {"priority": 1})):
            body, length = v2_binary(pixels, parameters)
            path = Path(tmp) / f"{group}.bin"
            path.write_bytes(body)
            bodies[group] = (path, length)
        one_round(server.base_url, bodies, argparse.Namespace(**{**vars(args), "seconds": 3}))  # warm-up
        for _ in range(args.rounds):
            rounds.append(one_round(server.base_url, bodies, args))
            print(json.dumps(rounds[-1]), flush=True)
    ratios = [r["p99_ratio"] for r in rounds]
    print(f"p99 priority 1 / default: median {np.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          "target <= 0.3")
    (args.out / f"{stamp}.json").write_text(json.dumps({"repo": str(args.repo), "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
