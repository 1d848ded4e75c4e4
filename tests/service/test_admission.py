"""Admission before work: a full model refuses before reading or decoding a body, a request takes its
inputs' places before they are decoded, and decoding cost is judged by what an input decodes to."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.errors import ServeError
from service.frontend.admission import Admission, share
from service.frontend.predict import INLINE_DECODE_UNITS, decoded_size
from service.runtimes.image_generator import SampleRequest
from service.serving import ServingConfig


def fill(client: TestClient, name: str) -> Admission:
    served = client.app.state.catalog.get(name)  # type: ignore[attr-defined]
    served.admission.in_flight = served.admission.limit
    return served.admission


def test_a_full_model_refuses_without_decoding_anything(client: TestClient) -> None:
    admission = fill(client, "tiny-cnn")
    garbage = b"\x89PNG but not an image at all" * 10
    for path, body in [("/v1/models/tiny-cnn/predict", garbage), ("/v1/models/tiny-cnn:predict", garbage),
                       ("/v2/models/tiny-cnn/infer", garbage)]:
        response = client.post(path, content=body, headers={"content-type": "image/png"})
        assert response.status_code == 503, (path, response.text)  # not the 400 that decoding would give
        assert response.json()["type"] == "queue_full" and response.headers["retry-after"] == "1"
    assert client.get("/v2/health/ready").status_code == 200  # full is not unready
    counted = [line for line in client.get("/metrics").text.splitlines() if line.startswith(
        'serve_requests_total{model="tiny-cnn",route="refused before routing",status="503"}')]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 3  # refusals are counted
    admission.in_flight = 0
    assert client.post("/v1/models/tiny-cnn/predict", content=garbage,
                       headers={"content-type": "image/png"}).status_code == 400


def test_a_request_takes_its_inputs_places_or_none(client: TestClient, digit_png: bytes) -> None:
    admission = fill(client, "tiny-cnn")
    admission.in_flight -= 2  # room for two inputs
    files = [("file", (f"{i}.png", digit_png, "image/png")) for i in range(3)]
    assert client.post("/v1/models/tiny-cnn/predict", files=files).status_code == 503
    assert admission.in_flight == admission.limit - 2  # the refused request took nothing
    assert client.post("/v1/models/tiny-cnn/predict", files=files[:2]).status_code == 200
    assert admission.in_flight == admission.limit - 2  # and the places are given back after the answer


def test_a_full_generator_and_language_model_refuse_too(client: TestClient) -> None:
    fill(client, "tiny-gpt")
    assert client.post("/v1/models/tiny-gpt/generate", json={"prompt": "a", "max_tokens": 2}).status_code == 503
    fill(client, "tiny-cgan")
    assert client.get("/v1/models/tiny-cgan/samples?n=1&seed=0").status_code == 503


def test_the_shares_of_the_front_ends_add_up_to_the_capacity() -> None:
    config = ServingConfig(max_batch_size=32, max_delay_s=0.002, max_queue=8, timeout_s=10)
    assert config.capacity == 40
    for frontends in (1, 2, 3, 7):
        assert sum(share(config.capacity, i, frontends) for i in range(frontends)) == 40
    assert [Admission(config, i, 2).limit for i in range(2)] == [20, 20]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_decoding_cost_is_judged_by_pixels_not_bytes() -> None:
    small_file_large_image = png(4000, 4000)  # a few KB that decode to 16 megapixels
    assert len(small_file_large_image) < 64 * 1024
    assert decoded_size(small_file_large_image) == 16_000_000 > INLINE_DECODE_UNITS  # goes to a thread
    assert decoded_size(png(28, 28)) == 784  # decodes inline
    assert decoded_size("a sentence") == 10
    assert decoded_size(np.zeros((1, 28, 28), np.float32)) == 784
    assert decoded_size([1.0] * 120) == 120  # a series
    assert decoded_size(SampleRequest(n=64, seed=0, label=None)) == 0  # nothing to decode: no thread hop
    assert decoded_size(b"not an image") == len(b"not an image")
    jpeg = io.BytesIO()
    Image.new("L", (300, 200)).save(jpeg, format="JPEG")
    assert decoded_size(jpeg.getvalue()) == 60_000  # other formats: from the header, through Pillow
    assert decoded_size(small_file_large_image[:20]) == 20  # a PNG cut inside its header: its decoder says so


def test_admission_counts_places_and_refuses_in_the_one_error_shape() -> None:
    config = ServingConfig(max_batch_size=2, max_delay_s=0.002, max_queue=1, timeout_s=10)  # capacity 3
    admission = Admission(config, name="m")
    assert admission.limit == 3 and admission.in_flight == 0 and not admission.full
    assert orjson.loads(admission.refusal) == {"error": "model m is at capacity (3 inputs in flight here); "
                                                        "retry later", "type": "queue_full"}
    admission.check("m")  # room: nothing raised
    first = admission.take("m", 2)
    assert admission.in_flight == 2 and not admission.full
    with pytest.raises(ServeError) as refused:
        admission.take("m", 2)  # 2 + 2 > 3: all or nothing
    error = refused.value
    assert (error.status, error.type, error.headers) == (503, "queue_full", {"Retry-After": "1"})
    assert str(error.message) == "model m is at capacity (3 inputs in flight here); retry later"
    assert admission.in_flight == 2
    with admission.take("m", 1):  # exactly the last place
        assert admission.full
        with pytest.raises(ServeError, match="model m is at capacity"):
            admission.check("m")
    first.release()
    first.release()  # idempotent: given back once
    assert admission.in_flight == 0


def test_each_front_end_gets_at_least_one_place() -> None:
    assert [share(3, i, 5) for i in range(5)] == [1, 1, 1, 1, 1]
    assert [share(10, i, 4) for i in range(4)] == [3, 3, 2, 2]


def test_a_refusal_can_be_answered_later_and_an_admitted_request_is_not(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    """SERVE_REFUSAL_DELAY_MS: a closed-loop client refused under a flood comes back that much later."""
    import time

    client = make_client(refusal_delay_ms=150)
    started = time.perf_counter()
    assert client.post("/v1/models/tiny-cnn/predict", content=digit_png,
                       headers={"content-type": "image/png"}).status_code == 200
    admitted = time.perf_counter() - started
    admission = fill(client, "tiny-cnn")
    started = time.perf_counter()
    refused = client.post("/v1/models/tiny-cnn/predict", content=digit_png, headers={"content-type": "image/png"})
    assert refused.status_code == 503 and refused.json()["type"] == "queue_full"
    assert time.perf_counter() - started >= 0.15 > admitted
    admission.in_flight = 0
