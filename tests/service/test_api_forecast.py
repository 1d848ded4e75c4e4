"""The forecaster: scaling inside the module, history handling, horizons, and every API."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import models

SERIES = [50 + 30 * math.sin(i / 5) for i in range(40)]


def forecast(client: TestClient, series: list, **parameters: object) -> dict:  # type: ignore[type-arg]
    return client.post("/v1/models/tiny-forecaster/predict", json={"inputs": series, "parameters": parameters}).json()


def test_scaling_round_trip() -> None:
    """f_{mean,std}(mean + std * x) == mean + std * f_{0,1}(x): the service feeds raw values, gets raw values."""
    torch.manual_seed(0)
    plain = models.build("lstm-forecaster", {"hidden": 8, "layers": 1, "horizon": 3, "mean": 0.0, "std": 1.0})
    scaled = models.build("lstm-forecaster", {"hidden": 8, "layers": 1, "horizon": 3, "mean": 120.0, "std": 35.0})
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 30)
    lengths = torch.tensor([30, 20])
    with torch.no_grad():
        assert torch.allclose(scaled(120 + 35 * x, lengths), 120 + 35 * plain(x, lengths), atol=1e-3)


def test_forecast_items_and_horizons(client: TestClient) -> None:
    body = forecast(client, [SERIES, SERIES[:10]])
    assert body["model"] == "tiny-forecaster" and len(body["predictions"]) == 2
    assert all(len(item["forecast"]) == 4 for item in body["predictions"])  # the model's step by default
    long = forecast(client, [SERIES], horizon=10)["predictions"][0]["forecast"]
    assert len(long) == 10 and long[:4] == pytest.approx(forecast(client, [SERIES])["predictions"][0]["forecast"])


def test_a_long_series_uses_its_last_window(client: TestClient) -> None:
    window = client.get("/v1/models/tiny-forecaster").json()
    assert window["parameters"]["horizon"]["description"]
    full = forecast(client, [SERIES])["predictions"][0]["forecast"]
    last = forecast(client, [SERIES[-16:]])["predictions"][0]["forecast"]
    assert full == pytest.approx(last, abs=1e-5)


def test_batched_equals_alone(client: TestClient) -> None:
    together = forecast(client, [SERIES, SERIES[5:30], SERIES[:8]])["predictions"]
    for series, item in zip([SERIES, SERIES[5:30], SERIES[:8]], together, strict=True):
        assert item["forecast"] == pytest.approx(forecast(client, [series])["predictions"][0]["forecast"], abs=1e-5)


@pytest.mark.parametrize("series,status", [
    ([[1, 2, 3]], 400), ([["a"] * 10], 400), ([[True] * 10], 400), ([[float("inf")] + [1.0] * 10], 400),
    ([5], 400), ([], 422),
])
def test_bad_series(client: TestClient, series: list, status: int) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/models/tiny-forecaster/predict",
                           content=json.dumps({"inputs": series}, allow_nan=True),
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_horizon_bounds(client: TestClient) -> None:
    for horizon, status in [(0, 422), (11, 400), ("x", 422)]:
        response = client.post("/v1/models/tiny-forecaster/predict",
                               json={"inputs": [SERIES], "parameters": {"horizon": horizon}})
        assert response.status_code == status, response.text


def test_kserve_and_v2(client: TestClient) -> None:
    v1 = client.post("/v1/models/tiny-forecaster:predict", json={"instances": [SERIES]}).json()
    expected = np.array(v1["predictions"][0]["forecast"])
    body = {"inputs": [{"name": "series", "shape": [2, 40], "datatype": "FP32", "data": SERIES * 2}],
            "parameters": {"horizon": 4}}
    response = client.post("/v2/models/tiny-forecaster/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "forecast" and output["shape"] == [2, 4]
    assert np.allclose(np.array(output["data"]).reshape(2, 4), expected, atol=1e-4)
