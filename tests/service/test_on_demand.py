"""Models loaded on demand within a memory budget (SERVE_MODEL_CONTROL=on_demand, SERVE_MEMORY_BUDGET_MB), in
real processes: the front-ends route a request for an unloaded model to the engine, which loads it while the
request waits; the least recently used idle versions make room; one with requests in flight never does."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from service.engine.registry import stored_bytes
from tests.conftest import make_artifact, make_lm_artifact
from tests.promtext import samples
from tests.promtext import value as metric
from tests.service.test_processes import Server

pytestmark = pytest.mark.system  # real processes: make test-system
PNG = {"content-type": "image/png"}
ADMIN = {"authorization": "Bearer admin"}
CLASSIFIERS = ["cnn-a", "cnn-b", "cnn-c", "cnn-d"]


def weights_bytes(path: Path) -> int:
    """What the engine counts a version as holding (float32 on the CPU), from its safetensors header."""
    return sum(stored_bytes(file, 4) for file in path.glob("*.safetensors"))


def resident(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {name: sum(samples(text, "serve_model_resident_bytes", model=name))
            for name in [*CLASSIFIERS, "tiny-gpt"]}


def test_a_client_cycling_through_more_models_than_fit_gets_only_200s(tmp_path: Path, digit_png: bytes) -> None:
    sizes = [weights_bytes(make_artifact(tmp_path, name, 1, "cnn", seed=i)) for i, name in enumerate(CLASSIFIERS)]
    gpt = weights_bytes(make_lm_artifact(tmp_path, "tiny-gpt"))
    budget = max(sizes) * 2.5 + gpt  # two classifiers and the language model at once, not three classifiers
    server = Server(tmp_path, "--model-control", "on_demand", "--memory-budget-mb", f"{budget / 2**20:.6f}",
                    "--admin-keys", "admin", "--max-new-tokens", "100000")
    try:
        server.wait_ready()
        index = httpx.post(f"{server.base}/v2/repository/index", headers=ADMIN, timeout=5).json()
        assert {entry["state"] for entry in index} == {"UNAVAILABLE"} and all(
            "its first request loads it" in entry["reason"] for entry in index)
        # a generation streams on tiny-gpt the whole time (far longer than the cycle): it is never evicted
        pieces: list[float] = []  # when each event arrived
        cycle_done = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", f"{server.base}/v1/models/tiny-gpt/generate", timeout=120, json={
                    "prompt": "ab", "max_tokens": 100_000, "seed": 1, "stream": True}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        pieces.append(time.monotonic())
                    if cycle_done.is_set():
                        return  # the client leaves: its generation is cancelled

        running = threading.Thread(target=stream)
        running.start()
        started = time.monotonic()
        while not pieces:  # tiny-gpt loaded on demand, and generating
            assert time.monotonic() - started < 60, "the generation did not start"
            time.sleep(0.01)
        statuses, peaks = [], []
        for name in CLASSIFIERS * 3:
            answer = httpx.post(f"{server.base}/v1/models/{name}/predict", content=digit_png, headers=PNG, timeout=30)
            statuses.append(answer.status_code)
            peaks.append(sum(resident(server.base).values()))
        cycle_ended = time.monotonic()
        time.sleep(0.2)
        cycle_done.set()
        running.join(timeout=30)
        text = httpx.get(f"{server.base}/metrics", timeout=5).text
        index = httpx.post(f"{server.base}/v2/repository/index", headers=ADMIN, timeout=5).json()
    finally:
        server.stop()
    assert statuses == [200] * 12
    assert pieces[-1] > cycle_ended  # it was generating the whole time
    assert max(peaks) <= budget, (peaks, budget)  # what the engine holds, measured by the engine
    evicted = {name: sum(samples(text, "serve_model_evictions_total", model=name)) for name in CLASSIFIERS}
    assert sum(evicted.values()) >= 8  # each round of four evicts at least two (only two fit beside tiny-gpt)
    assert sum(samples(text, "serve_model_evictions_total", model="tiny-gpt")) == 0
    assert metric(text, "serve_model_loads_total", model="cnn-a", why="on_demand") >= 3
    loaded = {entry["name"]: entry for entry in index if entry["state"] == "READY"}
    assert "tiny-gpt" in loaded and all(entry["resident_bytes"] > 0 for entry in loaded.values())
    assert "cnn-d" in loaded  # the last one asked for


def test_a_model_larger_than_the_whole_budget_is_507_and_the_others_serve(tmp_path: Path, digit_png: bytes) -> None:
    make_artifact(tmp_path, "cnn-a", 1, "cnn")
    make_lm_artifact(tmp_path, "tiny-gpt")
    small, large = weights_bytes(tmp_path / "cnn-a" / "1"), weights_bytes(tmp_path / "tiny-gpt" / "1")
    budget = (small + large) / 2  # the classifier fits; the language model alone is over
    assert small < budget < large
    server = Server(tmp_path, "--model-control", "on_demand", "--memory-budget-mb", f"{budget / 2**20:.6f}")
    try:
        server.wait_ready()
        refused = httpx.post(f"{server.base}/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 3},
                             timeout=30)
        served = httpx.post(f"{server.base}/v1/models/cnn-a/predict", content=digit_png, headers=PNG, timeout=30)
    finally:
        server.stop()
    assert refused.status_code == 507, refused.text
    assert refused.json()["type"] == "over_memory_budget" and "memory budget" in refused.json()["error"]
    assert served.status_code == 200
