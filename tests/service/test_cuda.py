"""The CUDA path: the same routes on a GPU. These run wherever torch sees CUDA and skip cleanly elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import UNAVAILABLE_IN_CI

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=f"{UNAVAILABLE_IN_CI}no CUDA device here")


def test_an_image_classifier_on_the_gpu_agrees_with_the_cpu(make_client: Callable[..., TestClient],
                                                           digit_png: bytes) -> None:
    gpu, cpu = make_client(device="cuda", prepare=True), make_client(device="cpu")
    detail = gpu.get("/v1/models/tiny-cnn").json()
    assert detail["device"].startswith("cuda") and detail["dtype"] == "float16"  # auto: half precision on a GPU
    on_gpu = gpu.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
    on_cpu = cpu.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
    assert on_gpu.status_code == on_cpu.status_code == 200
    gpu_scores = [item["score"] for item in on_gpu.json()["predictions"][0]["top_k"]]
    cpu_scores = [item["score"] for item in on_cpu.json()["predictions"][0]["top_k"]]
    assert np.allclose(gpu_scores, cpu_scores, atol=1e-2)  # float16 against float32


def test_generation_and_batches_run_on_the_gpu(make_client: Callable[..., TestClient]) -> None:
    gpu = make_client(device="cuda")
    response = gpu.post("/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 40, "seed": 1})
    assert response.status_code == 200 and response.json()["tokens"] == 40  # past the context of 24
    files = [("file", (f"{i}.png", np.zeros(1).tobytes(), "image/png")) for i in range(2)]
    assert gpu.post("/v1/models/tiny-cnn/predict", files=files).status_code == 400  # bad inputs stay 4xx


def test_device_memory_is_in_the_metrics(make_client: Callable[..., TestClient]) -> None:
    from tests.promtext import value as metric

    gpu = make_client(device="cuda")
    text = gpu.get("/metrics").text  # recorded with every engine status (the heartbeat readiness waited on)
    allocated = metric(text, "serve_device_memory_bytes", kind="allocated")
    assert allocated > 0 and metric(text, "serve_device_memory_bytes", kind="reserved") >= allocated
