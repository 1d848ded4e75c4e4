"""The native and KServe V1 APIs on tiny random-init artifacts."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import png_bytes


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def assert_error(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "type"} and isinstance(body["error"], str) and body["error"]
    return body


def assert_classification(item: dict, top_k: int = 3) -> None:
    assert set(item) == {"label", "index", "score", "top_k"}
    assert item["label"] == f"class-{item['index']}"
    assert 0.0 <= item["score"] <= 1.0
    assert len(item["top_k"]) == top_k
    scores = [entry["score"] for entry in item["top_k"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == item["score"]


def test_health_and_listing(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    by_id = {entry["id"]: entry for entry in listing["data"]}
    assert set(by_id) == {"tiny-cnn", "tiny-resnet", "tiny-lstm", "tiny-gru", "tiny-transformer", "tiny-embedder",
                          "tiny-forecaster", "tiny-gpt", "tiny-char-lstm", "tiny-autoencoder", "tiny-cgan",
                          "tiny-ddpm"}
    assert by_id["tiny-cnn"]["versions"] == [1, 2] and by_id["tiny-cnn"]["version"] == 2
    assert all(entry["object"] == "model" and entry["ready"] for entry in by_id.values())


def test_model_metadata(client: TestClient) -> None:
    detail = client.get("/v1/models/tiny-cnn").json()
    assert detail["name"] == "tiny-cnn" and detail["version"] == 2 and detail["ready"]
    assert detail["task"] == "image-classification"
    assert detail["labels"] == [f"class-{i}" for i in range(10)]
    assert detail["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"] for o in detail["outputs"]} == {"probabilities", "label"}
    assert detail["batching"]["max_batch_size"] == 32
    assert detail["metrics"] == {"test_accuracy": 0.1}
    assert client.get("/v1/models/tiny-cnn/versions/1").json()["version"] == 1


@pytest.mark.parametrize("fmt,media", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                       ("BMP", "image/bmp")])
def test_raw_image_bodies_of_every_format(client: TestClient, fmt: str, media: str) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 28), dtype=np.uint8), "L")
    response = client.post("/v1/models/tiny-cnn/predict", content=encode(image, fmt),
                           headers={"content-type": media})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-cnn" and body["version"] == 2
    assert len(body["predictions"]) == 1
    assert_classification(body["predictions"][0])


def test_any_size_and_mode_is_converted(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    images = [
        Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(rng.integers(0, 255, (50, 60, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").convert("P"),
        Image.fromarray(rng.integers(0, 2, (40, 40), dtype=np.uint8) * 255, "L").convert("1"),
    ]
    for image in images:
        response = client.post("/v1/models/tiny-cnn/predict", content=encode(image, "PNG"),
                               headers={"content-type": "image/png"})
        assert response.status_code == 200, (image.mode, response.text)


def test_same_pixels_give_the_same_answer_in_every_encoding(client: TestClient, digit_png: bytes) -> None:
    raw = client.post("/v1/models/tiny-cnn/predict?top_k=10", content=digit_png,
                      headers={"content-type": "image/png"}).json()["predictions"][0]
    multipart = client.post("/v1/models/tiny-cnn/predict", files=[("file", ("d.png", digit_png, "image/png"))],
                            data={"top_k": "10"}).json()["predictions"][0]
    as_json = client.post("/v1/models/tiny-cnn/predict", json={
        "inputs": [{"b64": base64.b64encode(digit_png).decode()}], "parameters": {"top_k": 10}}).json()
    assert raw == multipart == as_json["predictions"][0]
    assert len(raw["top_k"]) == 10


def test_several_inputs_answer_in_order(client: TestClient) -> None:
    blank = png_bytes(np.zeros((28, 28), np.uint8))
    bar = png_bytes(np.pad(np.full((20, 4), 255, np.uint8), ((4, 4), (12, 12))))
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate([blank, bar, blank])]
    many = client.post("/v1/models/tiny-cnn/predict", files=files).json()["predictions"]
    singles = [client.post("/v1/models/tiny-cnn/predict", content=data, headers={"content-type": "image/png"}).json()
               ["predictions"][0] for data in (blank, bar, blank)]
    assert len(many) == 3
    for got, want in zip(many, singles, strict=True):
        assert got["index"] == want["index"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_version_routes_use_that_version(client: TestClient, digit_png: bytes) -> None:
    scores = {}
    for version in (1, 2):
        body = client.post(f"/v1/models/tiny-cnn/versions/{version}/predict?top_k=10", content=digit_png,
                           headers={"content-type": "image/png"}).json()
        assert body["version"] == version
        scores[version] = [entry["score"] for entry in body["predictions"][0]["top_k"]]
    assert scores[1] != scores[2]  # different random inits: different weights really served


def test_kserve_v1_predict(client: TestClient, digit_png: bytes) -> None:
    b64 = base64.b64encode(digit_png).decode()
    response = client.post("/v1/models/tiny-resnet:predict", json={"instances": [{"b64": b64}, {"b64": b64}]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and predictions[0] == predictions[1]
    assert_classification(predictions[0])
    assert_error(client.post("/v1/models/tiny-resnet:predict", json={"instances": []}), 422)


def test_unknown_model_version_and_route_are_404_in_the_error_shape(client: TestClient, digit_png: bytes) -> None:
    assert assert_error(client.post("/v1/models/nope/predict", content=digit_png,
                                    headers={"content-type": "image/png"}), 404)["type"] == "model_not_found"
    assert assert_error(client.get("/v1/models/tiny-cnn/versions/9"), 404)["type"] == "version_not_found"
    assert_error(client.get("/v1/models/tiny-cnn/versions/x"), 404)
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.delete("/v1/models/tiny-cnn/predict"), 405)


def test_bad_inputs_are_4xx_naming_the_input(client: TestClient, digit_png: bytes) -> None:
    good = base64.b64encode(digit_png).decode()
    body = assert_error(client.post("/v1/models/tiny-cnn/predict", json={
        "inputs": [{"b64": good}, {"b64": base64.b64encode(b"not an image").decode()}]}), 400)
    assert "inputs[1]" in body["error"]
    assert "inputs[0]" in assert_error(client.post("/v1/models/tiny-cnn/predict", json={
        "inputs": [{"b64": "%%%"}]}), 400)["error"]
    assert "inputs[0]" in assert_error(client.post("/v1/models/tiny-cnn/predict", json={"inputs": [42]}), 400)["error"]
    truncated = digit_png[: len(digit_png) // 2]
    assert_error(client.post("/v1/models/tiny-cnn/predict", content=truncated, headers={"content-type": "image/png"}),
                 400)
    assert_error(client.post("/v1/models/tiny-cnn/predict", content=b"", headers={"content-type": "image/png"}), 400)
    assert_error(client.post("/v1/models/tiny-cnn/predict", json={"inputs": []}), 422)
    assert_error(client.post("/v1/models/tiny-cnn/predict", json={"instances": [1]}), 422)
    assert_error(client.post("/v1/models/tiny-cnn/predict", content=b"{not json",
                             headers={"content-type": "application/json"}), 400)
    assert_error(client.post("/v1/models/tiny-cnn/predict", content=b"hello", headers={"content-type": "text/csv"}),
                 415)
    assert_error(client.post("/v1/models/tiny-cnn/predict", json={"inputs": [{"b64": good}],
                                                                  "parameters": {"top_k": 0}}), 422)
    assert_error(client.post("/v1/models/tiny-cnn/predict", json={"inputs": [{"b64": good}],
                                                                  "parameters": {"colour": 1}}), 422)
    gif = encode(Image.new("L", (28, 28)), "ICO")
    assert_error(client.post("/v1/models/tiny-cnn/predict", content=gif, headers={"content-type": "image/png"}), 415)


def test_limits_are_413(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_body_bytes=4096, max_image_pixels=100 * 100, max_inputs_per_request=2)
    big = encode(Image.new("L", (101, 100)), "PNG")
    body = assert_error(client.post("/v1/models/tiny-cnn/predict", content=big,
                                    headers={"content-type": "image/png"}), 413)
    assert "101x100" in body["error"]
    noise = np.random.default_rng(0).integers(0, 255, (80, 80), dtype=np.uint8)
    assert_error(client.post("/v1/models/tiny-cnn/predict", content=png_bytes(noise),
                             headers={"content-type": "image/png"}), 413)
    files = [("file", (f"{i}.png", digit_png, "image/png")) for i in range(3)]
    assert_error(client.post("/v1/models/tiny-cnn/predict", files=files), 413)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1000

    assert_error(client.post("/v1/models/tiny-cnn/predict", content=chunks(),
                             headers={"content-type": "image/png"}), 413)


def test_one_bad_input_never_fails_another_request(client: TestClient, digit_png: bytes) -> None:
    def good() -> int:
        return client.post("/v1/models/tiny-cnn/predict", content=digit_png,
                           headers={"content-type": "image/png"}).status_code

    def bad() -> int:
        return client.post("/v1/models/tiny-cnn/predict", content=b"\x89PNG broken",
                           headers={"content-type": "image/png"}).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(good if i % 2 else bad) for i in range(40)]
        statuses = [future.result() for future in futures]
    assert statuses == [200 if i % 2 else 400 for i in range(40)]


def test_deadline_passed_is_504(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(timeout_ms=0.001)
    assert assert_error(client.post("/v1/models/tiny-cnn/predict", content=digit_png,
                                    headers={"content-type": "image/png"}), 504)["type"] == "deadline_exceeded"


def test_full_queue_is_503_with_retry_after(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_queue=1, max_batch_size=1)  # two inputs at once: one waiting, one running
    files = [("file", (f"{i}.png", digit_png, "image/png")) for i in range(3)]
    response = client.post("/v1/models/tiny-cnn/predict", files=files)
    assert assert_error(response, 503)["type"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1


def test_per_model_overrides(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(model_overrides={"tiny-cnn": {"max_batch_size": 7}})
    assert client.get("/v1/models/tiny-cnn").json()["batching"]["max_batch_size"] == 7
    assert client.get("/v1/models/tiny-resnet").json()["batching"]["max_batch_size"] == 32


def test_api_keys(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=["s3cret"])
    assert client.get("/v2/health/ready").status_code == 200  # probes stay open
    response = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
    assert assert_error(response, 401)["type"] == "unauthorized"
    assert_error(client.get("/v1/models", headers={"authorization": "Bearer wrong"}), 401)
    assert client.get("/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/v1/models/tiny-cnn/predict", content=digit_png,
                       headers={"content-type": "image/png", "x-api-key": "s3cret"}).status_code == 200


def test_models_filter(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(models=["tiny-resnet"])
    assert [entry["id"] for entry in client.get("/v1/models").json()["data"]] == ["tiny-resnet"]


def test_dark_ink_on_light_paper_is_inverted(client: TestClient) -> None:
    light = np.zeros((28, 28), np.uint8)
    light[6:22, 12:16] = 255
    dark = 255 - light
    answers = [client.post("/v1/models/tiny-cnn/predict?top_k=10", content=png_bytes(image),
                           headers={"content-type": "image/png"}).json()["predictions"][0] for image in (light, dark)]
    assert answers[0] == answers[1]
    kept = client.post("/v1/models/tiny-cnn/predict?top_k=10&invert=false", content=png_bytes(dark),
                       headers={"content-type": "image/png"}).json()["predictions"][0]
    assert kept != answers[0]


def test_every_setting_is_a_flag_including_the_json_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from service.__main__ import parse_overrides
    from service.settings import Settings

    flags = parse_overrides(["--weights-dir", str(tmp_path), "--workers", "2", "--models", "a,b",
                             "--model-overrides", '{"a": {"max_batch_size": 3, "timeout_ms": 500}}'])
    settings = Settings(**flags)  # type: ignore[arg-type]
    assert settings.workers == 2 and settings.models == ["a", "b"]
    assert settings.model_overrides["a"].max_batch_size == 3 and settings.model_overrides["a"].timeout_ms == 500
    for bad in ('{"a": {"max_batch_sise": 3}}', "{not json"):
        with pytest.raises(ValueError):
            Settings(**parse_overrides(["--weights-dir", str(tmp_path), "--model-overrides", bad]))  # type: ignore[arg-type]


def test_the_predict_route_served_without_routing_answers_and_counts_as_the_route(
        client: TestClient, digit_png: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """service/frontend/direct.py serves these paths before FastAPI routes them: same answers, same metrics."""
    from service.frontend import middleware

    served_directly: list[str] = []
    route_directly = middleware.serve_direct

    async def counted(served, scope, receive, send, kind="native") -> None:  # type: ignore[no-untyped-def]
        served_directly.append(scope["path"])
        await route_directly(served, scope, receive, send, kind)

    monkeypatch.setattr(middleware, "serve_direct", counted)
    headers = {"content-type": "image/png"}
    latest = client.post("/v1/models/tiny-cnn/predict?top_k=2", content=digit_png, headers=headers)
    pinned = client.post("/v1/models/tiny-cnn/versions/1/predict", content=digit_png, headers=headers)
    assert latest.status_code == pinned.status_code == 200
    assert len(latest.json()["predictions"][0]["top_k"]) == 2 and pinned.json()["version"] == 1
    assert assert_error(client.post("/v1/models/nope/predict", content=digit_png, headers=headers), 404)
    assert assert_error(client.post("/v1/models/tiny-cnn/versions/9/predict", content=digit_png, headers=headers), 404)
    assert assert_error(client.post("/v1/models/tiny-cnn/predict", content=b"<svg/>",
                                    headers={"content-type": "image/svg+xml"}), 415)
    assert assert_error(client.post("/v1/models/tiny-cnn/predict", content=b"\x89PNG broken", headers=headers), 400)
    metrics = client.get("/metrics").text
    assert 'route="/v1/models/{name}/predict",status="200"' in metrics
    assert 'route="/v1/models/{name}/versions/{version}/predict",status="200"' in metrics
    assert 'route="/v1/models/{name}/predict",status="415"' in metrics
    # the served ones went the direct way; unknown models and versions are left to the router's 404
    assert served_directly == ["/v1/models/tiny-cnn/predict", "/v1/models/tiny-cnn/versions/1/predict",
                               "/v1/models/tiny-cnn/predict", "/v1/models/tiny-cnn/predict"]
    # V2 infer, the same way
    pixels = [0.5] * 784
    body = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": pixels}]}
    assert client.post("/v2/models/tiny-cnn/infer", json=body).json()["model_version"] == "2"
    assert client.post("/v2/models/tiny-cnn/versions/1/infer", json=body).json()["model_version"] == "1"
    assert assert_error(client.post("/v2/models/tiny-cnn/infer", json={"inputs": []}), 422)
    assert assert_error(client.post("/v2/models/nope/infer", json=body), 404)
    metrics = client.get("/metrics").text
    assert 'route="/v2/models/{name}/infer",status="200"' in metrics
    assert 'route="/v2/models/{name}/versions/{version}/infer",status="200"' in metrics
    assert served_directly[4:] == ["/v2/models/tiny-cnn/infer", "/v2/models/tiny-cnn/versions/1/infer",
                                   "/v2/models/tiny-cnn/infer"]
