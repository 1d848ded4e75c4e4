"""Open Inference Protocol V2: JSON and binary tensors by hand, and the official tritonclient."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from PIL import Image
from tritonclient.utils import InferenceServerException

from models.imaging import to_uint8
from tests.conftest import LiveServer
from tests.promtext import samples


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def native_probabilities(client: TestClient, batch: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "pixels", "shape": list(batch.shape), "datatype": "FP32",
                        "data": batch.reshape(-1).tolist()}]}
    response = client.post("/v2/models/tiny-cnn/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    return np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(outputs["probabilities"]["shape"])


def test_server_and_model_metadata(client: TestClient) -> None:
    server = client.get("/v2").json()
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get("/v2/models/tiny-cnn").json()
    assert meta["name"] == "tiny-cnn" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert client.get("/v2/models/tiny-cnn/versions/1").json()["name"] == "tiny-cnn"
    assert client.get("/v2/models/tiny-cnn/ready").json()["ready"] is True
    assert client.get("/v2/models/tiny-cnn/versions/1/ready").status_code == 200
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v2/models/tiny-cnn/config").json()["max_batch_size"] == 32


def test_json_infer(client: TestClient) -> None:
    batch = pixels(3)
    body = {"id": "req-1", "inputs": [{"name": "pixels", "shape": [3, 1, 28, 28], "datatype": "FP32",
                                       "data": batch.tolist()}]}
    response = client.post("/v2/models/tiny-cnn/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "tiny-cnn" and answer["model_version"] == "2" and answer["id"] == "req-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    probs = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert outputs["label"]["data"] == [f"class-{i}" for i in probs.argmax(axis=1)]


def test_binary_infer_by_hand(client: TestClient) -> None:
    batch = pixels(2, seed=3)
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [2, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": batch.nbytes}}],
                           "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                       {"name": "label", "parameters": {"binary_data": False}}]})
    response = client.post("/v2/models/tiny-cnn/infer", content=header + batch.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    answer = orjson.loads(response.content[:length])
    outputs = {o["name"]: o for o in answer["outputs"]}
    probs = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, 10)
    assert outputs["probabilities"]["parameters"]["binary_data_size"] == probs.nbytes
    assert np.allclose(probs, native_probabilities(client, batch), atol=1e-6)
    assert outputs["label"]["data"] == [f"class-{i}" for i in probs.argmax(axis=1)]


@pytest.mark.parametrize("body,status", [
    ({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 10}]}, 400),
    ({"inputs": [{"name": "pixels", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0.5] * 2352}]}, 400),
    ({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]}, 400),
    ({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [2.0] * 784}]}, 400),
    ({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP99", "data": [0.5] * 784}]}, 400),
    ({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["a"] * 784}]}, 400),
    ({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}],
      "outputs": [{"name": "logits"}]}, 400),
    ({"inputs": []}, 422),
    ({"inputs": [{"name": "pixels", "shape": [0, 1, 28, 28], "datatype": "FP32", "data": []}]}, 422),
])
def test_infer_errors(client: TestClient, body: dict, status: int) -> None:
    response = client.post("/v2/models/tiny-cnn/infer", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_binary_size_mismatch_is_400(client: TestClient) -> None:
    header = orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 100}}]})
    response = client.post("/v2/models/tiny-cnn/infer", content=header + b"\0" * 100,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "bytes" in response.json()["error"]
    response = client.post("/v2/models/tiny-cnn/infer", content=header,
                           headers={"Inference-Header-Content-Length": str(len(header) + 5)})
    assert response.status_code == 400


def test_tritonclient_with_its_defaults(live_server: LiveServer) -> None:
    triton = httpclient.InferenceServerClient(url=live_server.url)
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny-cnn") and triton.is_model_ready("tiny-cnn", "1")
    meta = triton.get_model_metadata("tiny-cnn")
    assert meta["inputs"][0]["name"] == "pixels" and meta["inputs"][0]["datatype"] == "FP32"
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "label"}
    assert triton.get_server_metadata()["name"] == "serve"

    batch = pixels(4, seed=7)
    infer_input = httpclient.InferInput("pixels", list(batch.shape), "FP32")
    infer_input.set_data_from_numpy(batch)  # binary_data=True: the client's default
    outputs = [httpclient.InferRequestedOutput("probabilities"), httpclient.InferRequestedOutput("label")]
    result = triton.infer("tiny-cnn", [infer_input], outputs=outputs)
    probs = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    assert probs.shape == (4, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [label.decode() for label in labels] == [f"class-{i}" for i in probs.argmax(axis=1)]

    json_input = httpclient.InferInput("pixels", list(batch.shape), "FP32")
    json_input.set_data_from_numpy(batch, binary_data=False)
    json_result = triton.infer("tiny-cnn", [json_input], model_version="2",
                               outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    assert np.allclose(json_result.as_numpy("probabilities"), probs, atol=1e-6)
    everything = triton.infer("tiny-cnn", [infer_input]).as_numpy("probabilities")  # no outputs named
    assert np.allclose(everything, probs, atol=1e-6)

    with pytest.raises(InferenceServerException, match="not served"):
        triton.infer("missing-model", [infer_input])
    triton.close()


def scalar(name: str, value: int) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [1], "INT64")
    tensor.set_data_from_numpy(np.array([value], dtype=np.int64))
    return tensor


def test_tritonclient_draws_from_generators_with_the_pixels_of_the_samples_route(live_server: LiveServer) -> None:
    client = httpclient.InferenceServerClient(live_server.url)
    names = [spec["name"] for spec in client.get_model_metadata("tiny-ddpm")["inputs"]]
    assert names == ["seed", "n", "steps"]
    images = client.infer("tiny-ddpm", [scalar("seed", 3), scalar("n", 2), scalar("steps", 4)]).as_numpy("images")
    assert images.shape == (2, 1, 28, 28) and images.dtype == np.float32 and 0 <= images.min() <= images.max() <= 1
    body = httpx.get(f"http://{live_server.url}/v1/models/tiny-ddpm/samples?n=2&seed=3&steps=4&format=json").json()
    pngs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s["png_b64"])))) for s in body["samples"]]
    assert np.array_equal(to_uint8(images[:, 0]), np.stack(pngs))  # the same seed, the same images
    digits = client.infer("tiny-cgan", [scalar("seed", 1), scalar("n", 3), scalar("label", 7)]).as_numpy("images")
    assert digits.shape == (3, 1, 28, 28)
    for inputs, status in [([scalar("n", 2)], "400"), ([scalar("seed", 1), scalar("n", 65)], "422"),
                           ([scalar("seed", 1), scalar("steps", 2000)], "400"),
                           ([scalar("seed", 1), scalar("label", 3)], "400")]:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("tiny-ddpm", inputs)
        assert raised.value.status() == status, raised.value.message()


def test_priority_and_timeout_as_tritonclient_sends_them(live_server: LiveServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's request parameters: ``priority`` (1 the highest, 0 the default) and ``timeout`` (microseconds):
    the level reaches the model's batcher; an out-of-range level is a 400; a request whose own timeout passed is
    dropped before its forward (504), and counted."""
    from service.engine.batcher import Batcher
    from tests.promtext import value as metric

    levels: list[int] = []
    submit = Batcher.submit

    async def recorded(self: Batcher, *args, **kwargs):  # type: ignore[no-untyped-def]
        levels.append(kwargs.get("priority", 0))
        return await submit(self, *args, **kwargs)

    monkeypatch.setattr(Batcher, "submit", recorded)
    triton = httpclient.InferenceServerClient(url=live_server.url)
    batch = pixels(2, seed=3)
    infer_input = httpclient.InferInput("pixels", list(batch.shape), "FP32")
    infer_input.set_data_from_numpy(batch)
    plain = triton.infer("tiny-cnn", [infer_input]).as_numpy("probabilities")
    urgent = triton.infer("tiny-cnn", [infer_input], priority=1, timeout=5_000_000).as_numpy("probabilities")
    assert np.array_equal(plain, urgent) and levels == [0, 1]
    with pytest.raises(InferenceServerException, match="priority 4 is not one of model tiny-cnn's levels: 1"):
        triton.infer("tiny-cnn", [infer_input], priority=4)  # three levels by default
    counted = {"model": "tiny-cnn", "version": "2", "reason": "deadline"}
    before = sum(samples(httpx.get(f"http://{live_server.url}/metrics").text, "serve_dropped_inputs_total",
                         **counted))
    with pytest.raises(InferenceServerException, match="deadline of 0 ms passed"):
        triton.infer("tiny-cnn", [infer_input], timeout=1)  # 1 microsecond
    after = metric(httpx.get(f"http://{live_server.url}/metrics").text, "serve_dropped_inputs_total", **counted)
    assert after == before + 2  # both inputs, dropped before any forward


@pytest.mark.parametrize(("parameters", "message"), [
    ({"priority": "high"}, "parameters.priority must be a whole number"),
    ({"priority": -1}, "parameters.priority must be a whole number"),
    ({"priority": True}, "parameters.priority must be a whole number"),
    ({"timeout": 0}, "parameters.timeout must be a whole number of microseconds"),
    ({"timeout": 1.5}, "parameters.timeout must be a whole number of microseconds"),
])
def test_bad_priority_or_timeout_parameters_are_400(client: TestClient, parameters: dict, message: str) -> None:
    body = {"parameters": parameters, "inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                                  "data": pixels(1).reshape(-1).tolist()}]}
    response = client.post("/v2/models/tiny-cnn/infer", json=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


@pytest.mark.parametrize(("header", "status"), [("1", 200), ("3", 200), ("0", 200), ("4", 400), ("high", 400),
                                                ("-1", 400), ("99999", 400)])
def test_the_x_priority_header_on_the_native_routes(client: TestClient, digit_png: bytes, header: str,
                                                    status: int) -> None:
    response = client.post("/v1/models/tiny-cnn/predict", content=digit_png,
                           headers={"content-type": "image/png", "x-priority": header})
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["type"] == "invalid_input" and "riority" in response.json()["error"]
    generated = client.post("/v1/models/tiny-gpt/generate", json={"prompt": "ab", "max_tokens": 3},
                            headers={"x-priority": header})
    assert generated.status_code == status, generated.text
