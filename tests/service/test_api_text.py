"""Text classification and embeddings over every API, with the official openai and tritonclient clients."""

from __future__ import annotations

import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient

from tests.conftest import LiveServer


def test_native_text_classification(client: TestClient) -> None:
    response = client.post("/v1/models/tiny-lstm/predict", json={"inputs": ["not bad at all", "a waste of time"],
                                                                 "parameters": {"top_k": 2}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-lstm" and len(body["predictions"]) == 2
    for item in body["predictions"]:
        assert item["label"] in ("negative", "positive") and len(item["top_k"]) == 2
        assert item["truncated"] is False
        assert sum(entry["score"] for entry in item["top_k"]) == pytest.approx(1.0, abs=1e-5)
    plain = client.post("/v1/models/tiny-lstm/predict?top_k=2", content=b"not bad at all",
                        headers={"content-type": "text/plain"}).json()["predictions"][0]
    expected = body["predictions"][0]  # alone rather than in a batch of two: the same answer up to rounding
    exact = ("label", "index", "truncated")
    assert {k: plain[k] for k in exact} == {k: expected[k] for k in exact}
    assert plain["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert [e["score"] for e in plain["top_k"]] == pytest.approx([e["score"] for e in expected["top_k"]], abs=1e-6)


def test_truncation_is_said_in_the_item(client: TestClient) -> None:
    item = client.post("/v1/models/tiny-transformer/predict", json={"inputs": ["dull " * 100]}).json()
    assert item["predictions"][0]["truncated"] is True
    assert client.get("/v1/models/tiny-transformer").json()["max_tokens"] == 12


def test_text_errors_name_the_input(client: TestClient) -> None:
    response = client.post("/v1/models/tiny-gru/predict", json={"inputs": ["fine", ""]})
    assert response.status_code == 400 and "inputs[1]" in response.json()["error"]
    response = client.post("/v1/models/tiny-gru/predict", json={"inputs": ["fine", 42]})
    assert response.status_code == 400 and "inputs[1]" in response.json()["error"]
    assert client.post("/v1/models/tiny-gru/predict", json={"inputs": []}).status_code == 422
    assert client.post("/v1/models/tiny-gru/predict", content=b"\xff", headers={"content-type": "text/plain"}
                       ).status_code == 400
    assert client.post("/v1/models/tiny-gru/predict", content=b"x", headers={"content-type": "image/png"}
                       ).status_code == 415


def test_kserve_v1_text(client: TestClient) -> None:
    response = client.post("/v1/models/tiny-gru:predict", json={"instances": ["dull", "i loved it"]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2


def test_native_embeddings(client: TestClient) -> None:
    items = client.post("/v1/models/tiny-embedder/predict", json={"inputs": ["dull", "i loved it"]}).json()
    vectors = np.array([item["embedding"] for item in items["predictions"]])
    assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_openai_route_errors_use_openai_shape(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = client.post("/v1/embeddings", json={"model": "tiny-lstm", "input": "x"})
    assert response.status_code == 400 and "embedder" in response.json()["error"]["message"]
    response = client.post("/v1/embeddings", json={"model": "tiny-embedder", "input": [[1, 2, 3]]})
    assert response.status_code == 400
    response = client.post("/v1/embeddings", json={"model": "tiny-embedder"})
    assert response.status_code == 422 and response.json()["error"]["message"]


def test_official_clients(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"http://{live_server.url}/v1", api_key="unused", max_retries=0)
    texts = ["not bad at all", "a waste of time", "dull"]
    default = client.embeddings.create(model="tiny-embedder", input=texts)  # base64 on the wire by default
    as_float = client.embeddings.create(model="tiny-embedder", input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    assert np.allclose([d.embedding for d in default.data], [d.embedding for d in as_float.data], atol=1e-6)
    assert len(default.data[0].embedding) == 16 and default.usage.prompt_tokens == 9
    single = client.embeddings.create(model="tiny-embedder", input="dull", encoding_format="float")
    assert np.allclose(single.data[0].embedding, as_float.data[2].embedding, atol=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="missing", input="x")

    triton = httpclient.InferenceServerClient(url=live_server.url)
    meta = triton.get_model_metadata("tiny-transformer")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    text = httpclient.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = triton.infer("tiny-transformer", [text])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 2)
    assert [label.decode() for label in result.as_numpy("label")] == [
        ["negative", "positive"][i] for i in probabilities.argmax(1)]
    embedded = triton.infer("tiny-embedder", [text]).as_numpy("embedding")
    assert np.allclose(embedded, [d.embedding for d in as_float.data], atol=1e-5)
    triton.close()
