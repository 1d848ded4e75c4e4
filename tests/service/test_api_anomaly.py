"""The anomaly detector: score = reconstruction error, flagged above the manifest's threshold."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

import models
from tests.conftest import png_bytes
from training.evaluation import auroc


def expected_score(weights_dir, pixels: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    module, _ = models.load(weights_dir / "tiny-autoencoder" / "1")
    with torch.no_grad():
        x = torch.from_numpy(pixels[None, None])
        return float(module.score(x, module(x))[0])


def test_score_threshold_and_reconstruction(client: TestClient, weights_dir) -> None:  # type: ignore[no-untyped-def]
    image = np.zeros((28, 28), np.uint8)
    image[5:23, 12:16] = 255
    response = client.post("/v1/models/tiny-autoencoder/predict?reconstruction=true", content=png_bytes(image),
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    item = response.json()["predictions"][0]
    assert item["threshold"] == 0.05
    assert abs(item["anomaly_score"] - expected_score(weights_dir, image.astype(np.float32) / 255)) < 1e-6
    assert item["is_anomaly"] == (item["anomaly_score"] > 0.05)
    reconstruction = Image.open(io.BytesIO(base64.b64decode(item["reconstruction_png_b64"])))
    assert reconstruction.size == (28, 28) and reconstruction.mode == "L"
    plain = client.post("/v1/models/tiny-autoencoder/predict", content=png_bytes(image),
                        headers={"content-type": "image/png"}).json()["predictions"][0]
    assert "reconstruction_png_b64" not in plain and plain["anomaly_score"] == item["anomaly_score"]


def test_threshold_decides(make_client, weights_dir) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_autoencoder_artifact

    image = np.full((28, 28), 255, np.uint8)
    score = expected_score(weights_dir, np.ones((28, 28), np.float32))
    for threshold, flagged in [(score / 2, True), (score * 2, False)]:
        make_autoencoder_artifact(weights_dir, "tiny-autoencoder", threshold=threshold)
        client = make_client()
        item = client.post("/v1/models/tiny-autoencoder/predict?invert=false", content=png_bytes(image),
                           headers={"content-type": "image/png"}).json()["predictions"][0]
        assert item["is_anomaly"] is flagged


def test_v2_outputs(client: TestClient) -> None:
    pixels = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    body = {"inputs": [{"name": "pixels", "shape": [2, 1, 28, 28], "datatype": "FP32",
                        "data": pixels.ravel().tolist()}]}
    outputs = {o["name"]: o for o in client.post("/v2/models/tiny-autoencoder/infer", json=body).json()["outputs"]}
    assert outputs["anomaly_score"]["shape"] == [2] and outputs["is_anomaly"]["datatype"] == "BOOL"
    assert outputs["reconstruction"]["shape"] == [2, 1, 28, 28]


def test_auroc() -> None:
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.random(2000), rng.random(2000)) - 0.5) < 0.03
