"""The samples endpoint: PNG grids and JSON, determinism by seed, labels, bounds."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image


def test_png_grid_is_deterministic_by_seed(client: TestClient) -> None:
    first = client.get("/v1/models/tiny-cgan/samples?n=16&seed=5")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.headers["x-seed"] == "5"
    image = Image.open(io.BytesIO(first.content))
    assert image.size == (4 * 30 + 2, 4 * 30 + 2) and image.mode == "L"
    assert client.get("/v1/models/tiny-cgan/samples?n=16&seed=5").content == first.content
    assert client.get("/v1/models/tiny-cgan/samples?n=16&seed=6").content != first.content


def test_json_samples_decode_to_digits_of_the_requested_label(client: TestClient) -> None:
    body = client.get("/v1/models/tiny-cgan/samples?n=3&seed=1&label=7&format=json").json()
    assert body["seed"] == 1 and [s["label"] for s in body["samples"]] == ["7", "7", "7"]
    for sample in body["samples"]:
        picture = Image.open(io.BytesIO(base64.b64decode(sample["png_b64"])))
        assert picture.size == (28, 28) and np.asarray(picture).dtype == np.uint8
    random_labels = client.get("/v1/models/tiny-cgan/samples?n=20&seed=1&format=json").json()["samples"]
    assert len({s["label"] for s in random_labels}) > 1


def test_unseeded_requests_report_their_seed(client: TestClient) -> None:
    response = client.get("/v1/models/tiny-cgan/samples?n=2")
    seed = int(response.headers["x-seed"])
    assert client.get(f"/v1/models/tiny-cgan/samples?n=2&seed={seed}").content == response.content


@pytest.mark.parametrize("query,status", [("n=0", 422), ("n=65", 422), ("label=10", 400), ("label=-1", 422),
                                          ("format=gif", 422), ("seed=-3", 422), ("colour=red", 422)])
def test_bounds(client: TestClient, query: str, status: int) -> None:
    response = client.get(f"/v1/models/tiny-cgan/samples?{query}")
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_samples_from_a_classifier_is_400_and_metadata_says_conditional(client: TestClient) -> None:
    assert client.get("/v1/models/tiny-cnn/samples").status_code == 400
    detail = client.get("/v1/models/tiny-cgan").json()
    assert detail["conditional"] is True and detail["parameters"]["n"]["maximum"] == 64
