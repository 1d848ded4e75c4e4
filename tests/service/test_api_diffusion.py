"""A diffusion model on the samples endpoint: PNG sizes, determinism by seed, steps, bounds, metadata."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.frontend.main import create_app
from service.settings import Settings
from tests.conftest import make_diffusion_artifact


def test_png_grid_is_deterministic_by_seed_and_steps(client: TestClient) -> None:
    first = client.get("/v1/models/tiny-ddpm/samples?n=9&seed=5")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png", first.text
    assert first.headers["x-seed"] == "5"
    assert Image.open(io.BytesIO(first.content)).size == (3 * 30 + 2, 3 * 30 + 2)
    assert client.get("/v1/models/tiny-ddpm/samples?n=9&seed=5").content == first.content
    assert client.get("/v1/models/tiny-ddpm/samples?n=9&seed=6").content != first.content
    default_steps = client.get("/v1/models/tiny-ddpm").json()["parameters"]["steps"]["default"]
    assert client.get(f"/v1/models/tiny-ddpm/samples?n=9&seed=5&steps={default_steps}").content == first.content
    assert client.get("/v1/models/tiny-ddpm/samples?n=9&seed=5&steps=2").content != first.content


def test_json_samples_are_unlabelled_28x28_pngs(client: TestClient) -> None:
    body = client.get("/v1/models/tiny-ddpm/samples?n=3&seed=1&steps=3&format=json").json()
    assert body["seed"] == 1 and [s["label"] for s in body["samples"]] == [None, None, None]
    pictures = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s["png_b64"])))) for s in body["samples"]]
    assert all(p.shape == (28, 28) and p.dtype == np.uint8 for p in pictures)
    assert not np.array_equal(pictures[0], pictures[1])  # each image has its own noise


def test_metadata_states_the_steps_default_and_bounds(client: TestClient) -> None:
    detail = client.get("/v1/models/tiny-ddpm").json()
    assert detail["conditional"] is False and detail["architecture"] == "ddpm-unet"
    steps = detail["parameters"]["steps"]
    assert (steps["default"], steps["min"], steps["max"]) == (6, 1, 1000)
    assert "steps" not in client.get("/v1/models/tiny-cgan").json()["parameters"]  # a GAN has no steps


@pytest.mark.parametrize("model,query,status", [
    ("tiny-ddpm", "steps=0", 422), ("tiny-ddpm", "steps=1001", 400), ("tiny-ddpm", "steps=x", 422),
    ("tiny-ddpm", "label=3", 400), ("tiny-ddpm", "n=65", 422), ("tiny-cgan", "steps=10", 400)])
def test_bounds(client: TestClient, model: str, query: str, status: int) -> None:
    response = client.get(f"/v1/models/{model}/samples?{query}")
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_one_step_and_the_full_schedule_both_work(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(model_overrides={"tiny-ddpm": {"max_batch_size": 1}})  # one row per forward: fast
    for steps in (1, 1000):
        response = client.get(f"/v1/models/tiny-ddpm/samples?n=1&seed=0&steps={steps}")
        assert response.status_code == 200, response.text


def test_a_deadline_shorter_than_sampling_is_504_and_the_model_stays_ready(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(model_overrides={"tiny-ddpm": {"timeout_ms": 50}})
    response = client.get("/v1/models/tiny-ddpm/samples?n=64&seed=0&steps=1000")
    assert response.status_code == 504, response.text
    assert response.json()["error"]
    assert client.get("/v2/models/tiny-ddpm/ready").status_code == 200


def test_the_manifest_serving_block_sets_the_models_defaults_and_overrides_win(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client()
    batching = client.get("/v1/models/tiny-ddpm").json()["batching"]
    assert (batching["max_batch_size"], batching["timeout_ms"]) == (4, 20_000)  # from its manifest
    assert client.get("/v1/models/tiny-cgan").json()["batching"]["max_batch_size"] == 32  # the global default
    client = make_client(model_overrides={"tiny-ddpm": {"max_batch_size": 2}})
    batching = client.get("/v1/models/tiny-ddpm").json()["batching"]
    assert (batching["max_batch_size"], batching["timeout_ms"]) == (2, 20_000)


def test_a_bad_serving_block_fails_only_its_model(tmp_path: Path, make_client) -> None:  # type: ignore[no-untyped-def]
    make_diffusion_artifact(tmp_path, "odd-ddpm", serving={"max_batch_size": 0, "colour": "red"})
    make_diffusion_artifact(tmp_path, "good-ddpm")
    settings = Settings(weights_dir=tmp_path, device="cpu", torch_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for _ in range(300):
            detail = client.get("/v1/models/odd-ddpm").json()
            if detail["status"].startswith("failed") and client.get("/v1/models/good-ddpm").json()["ready"]:
                break
            time.sleep(0.02)
        assert detail["status"].startswith("failed") and "max_batch_size" in detail["status"]
        assert client.get("/v1/models/good-ddpm/samples?n=1&seed=0").status_code == 200


def test_a_long_sampling_does_not_block_other_models(client: TestClient, digit_png: bytes) -> None:
    """The denoising loop hands the device back after every step, so a classifier's batch runs in between."""
    with ThreadPoolExecutor(1) as pool:
        long_sampling = pool.submit(client.get, "/v1/models/tiny-ddpm/samples?n=8&seed=0&steps=400")
        time.sleep(0.2)  # the sampling is under way
        answered = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
        assert answered.status_code == 200
        assert not long_sampling.done()  # the classifier answered while the sampling was still running
        assert long_sampling.result().status_code == 200
