"""The watchdog: a forward that hangs (on purpose here) counts as a dead engine. In ``python -m service`` the
engine exits, the requests waiting on it get 503s at once rather than at their deadlines, and the supervisor
starts a new engine that serves again; in the development server every model is marked dead."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import models
from tests.service.test_processes import Server

HANGING_PACKAGE = '''
"""An image classifier whose forward hangs on one input: pixels that are all 0.25."""
import time
from dataclasses import dataclass

import torch
from torch import nn

from models.registry import Architecture


@dataclass
class HangingConfig:
    num_classes: int = 3


class Hanging(nn.Module):
    def __init__(self, config: HangingConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(784, config.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> logits [N, C]
        if bool((pixels == 0.25).all()):
            time.sleep(3600)  # a kernel that never returns
        return self.linear(pixels.flatten(1))


ARCHITECTURE = Architecture(HangingConfig, Hanging)
'''
HANG = [0.25] * 784


def infer(base: str, pixels: list[float], timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/v2/models/hanging/infer", timeout=timeout, json={"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels}]})


@pytest.fixture
def hanging_install(tmp_path: Path) -> tuple[Path, Path]:
    """The package installed on a path of its own, and an artifact of its architecture."""
    site = tmp_path / "site"
    (site / "hanging_models").mkdir(parents=True)
    (site / "hanging_models" / "__init__.py").write_text(textwrap.dedent(HANGING_PACKAGE))
    dist = site / "hanging_models-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hanging-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[serve.architectures]\nhanging = hanging_models:ARCHITECTURE\n")
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(HANGING_PACKAGE), "hanging", "exec"), namespace)  # the same module, here
    torch.manual_seed(0)
    module = namespace["Hanging"](namespace["HangingConfig"]())  # type: ignore[operator]
    manifest = {"name": "hanging", "version": 1, "task": "image-classification", "architecture": "hanging",
                "config": {"num_classes": 3}, "labels": ["a", "b", "c"], "preprocessing": {"shape": [1, 28, 28]},
                "metrics": {}}
    weights = tmp_path / "weights"
    models.save_artifact(module.eval(), manifest, weights / "hanging" / "1")
    return site, weights


@pytest.mark.system  # real processes: make test-system
def test_a_hung_forward_restarts_the_engine_and_fails_its_requests_fast(hanging_install: tuple[Path, Path]) -> None:
    site, weights = hanging_install
    server = Server(weights, "--workers", "2", "--watchdog-floor-s", "1", "--timeout-ms", "30000",
                    env={"PYTHONPATH": str(site)})
    try:
        server.wait_ready()
        fine = np.random.default_rng(0).random(784).tolist()
        assert infer(server.base, fine).status_code == 200
        outcomes: dict[str, tuple[int, float]] = {}

        def timed(name: str, pixels: list[float]) -> None:
            started = time.monotonic()
            status = infer(server.base, pixels).status_code
            outcomes[name] = (status, time.monotonic() - started)

        hung = threading.Thread(target=timed, args=("hung", HANG))
        hung.start()
        time.sleep(0.3)  # the forward is hanging: this one waits behind it
        timed("waiting", fine)
        hung.join(timeout=30)
        recovered_after = server.wait_ready(timeout=60)
        assert infer(server.base, fine).status_code == 200
    finally:
        server.stop()
    assert outcomes["hung"][0] == 503 and outcomes["waiting"][0] == 503
    assert outcomes["hung"][1] < 10 and outcomes["waiting"][1] < 10  # their deadline was 30 s
    print(f"\nwatchdog: the hung request answered 503 after {outcomes['hung'][1]:.1f} s (limit 1 s), "
          f"the one behind it after {outcomes['waiting'][1]:.1f} s; ready again {recovered_after:.1f} s later")


def test_in_the_development_server_a_hang_fails_every_model(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(models=["tiny-cnn", "tiny-gpt"], watchdog_floor_s=0.5)
    release = threading.Event()

    def hanging_forward(payloads: list[object]) -> list[object]:
        release.wait(30)
        return []

    client.app.state.engine.registry.get("tiny-cnn", 2).scheduler._run_batch = hanging_forward
    try:
        started = time.monotonic()
        response = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
        took = time.monotonic() - started
        assert response.status_code == 503 and "hung" in response.json()["error"]
        assert took < 5
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and "hung" in ready.json()["error"]
        # the other model shares the hung thread: it fails too, at once, instead of queueing behind it
        other = client.post("/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 2})
        assert other.status_code == 503, other.text
        assert client.get("/v2/models/tiny-gpt/ready").status_code != 200
    finally:
        release.set()
