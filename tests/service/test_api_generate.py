"""Text generation: determinism, streaming, batched decoding, stop strings, bounds, disconnects, openai."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tests.conftest import LiveServer
from tests.promtext import value as metric

MODELS = ["tiny-gpt", "tiny-char-lstm"]


def generate(client: TestClient, model: str, **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post(f"/v1/models/{model}/generate", json={"prompt": "the ", "max_tokens": 30, **body})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(text: str) -> list[object]:
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_text(client: TestClient, model: str) -> None:
    first = generate(client, model, seed=7)
    assert first["tokens"] == 30 and len(first["text"]) == 30 and first["finish_reason"] == "length"
    assert generate(client, model, seed=7)["text"] == first["text"]
    assert generate(client, model, seed=8)["text"] != first["text"]


@pytest.mark.parametrize("model", MODELS)
def test_stream_sends_the_same_text_token_by_token(client: TestClient, model: str) -> None:
    whole = generate(client, model, seed=3)["text"]
    response = client.post(f"/v1/models/{model}/generate",
                           json={"prompt": "the ", "max_tokens": 30, "seed": 3, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]" and events[-2] == {"finish_reason": "length", "tokens": 30}
    pieces = [event["text"] for event in events[:-2]]  # type: ignore[index]
    assert len(pieces) == 30 and "".join(pieces) == whole


@pytest.mark.parametrize("model", MODELS)
def test_concurrent_generations_equal_their_solo_runs(client: TestClient, model: str) -> None:
    prompts = ["a", "the quick ", "Z", "hello, world. ", "x" * 20, "b"]
    solo = [generate(client, model, prompt=p, temperature=0)["text"] for p in prompts]
    before = client.get("/metrics").text
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: generate(client, model, prompt=p, temperature=0)["text"], prompts))
    assert together == solo
    after = client.get("/metrics").text
    steps, single_row_steps = (
        metric(after, name, model=model, **labels) - metric(before, name, model=model, **labels)
        for name, labels in (("serve_batch_size_count", {}), ("serve_batch_size_bucket", {"le": "1.0"})))
    assert steps > single_row_steps  # some decoding steps ran several generations as one batch


def test_gpt_generates_past_its_context(client: TestClient) -> None:
    answer = generate(client, "tiny-gpt", max_tokens=100, seed=1)  # block_size is 24
    assert answer["tokens"] == 100 and len(answer["text"]) == 100


def test_stop_strings_end_the_text_and_are_not_sent(client: TestClient) -> None:
    base = generate(client, "tiny-char-lstm", seed=5, max_tokens=60)["text"]
    stop = base[10:12]
    answer = generate(client, "tiny-char-lstm", seed=5, max_tokens=60, stop=[stop])
    assert answer["finish_reason"] == "stop" and answer["text"] == base[: base.find(stop)]
    streamed = client.post("/v1/models/tiny-char-lstm/generate",
                           json={"prompt": "the ", "max_tokens": 60, "seed": 5, "stop": stop, "stream": True})
    events = sse_events(streamed.text)
    assert "".join(e["text"] for e in events if isinstance(e, dict) and "text" in e) == answer["text"]


@pytest.mark.parametrize("body,status", [
    ({"prompt": "the", "max_tokens": 10**6}, 400), ({"prompt": "the €"}, 400), ({"prompt": "x", "top_p": 0}, 422),
    ({"prompt": "x", "temperature": -1}, 422), ({"prompt": "x", "stop": ["a"] * 5}, 400), ({"max_tokens": 3}, 422),
    ({"prompt": "a" * 20_000}, 400),
])
def test_bounds(client: TestClient, body: dict, status: int) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/models/tiny-gpt/generate", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_metadata_lists_generation_parameters(client: TestClient) -> None:
    detail = client.get("/v1/models/tiny-gpt").json()
    assert detail["task"] == "text-generation" and detail["context"] == 24
    assert detail["parameters"]["temperature"]["default"] == 1.0 and detail["parameters"]["temperature"]["maximum"] == 5
    assert detail["parameters"]["max_tokens"]["minimum"] == 1


def test_generate_on_a_classifier_is_400(client: TestClient) -> None:
    assert client.post("/v1/models/tiny-cnn/generate", json={"prompt": "x"}).status_code == 400


def test_a_client_that_leaves_stops_its_generation(live_server: LiveServer) -> None:
    max_tokens = live_server.app.state.settings.max_new_tokens  # the longest generation allowed
    body = json.dumps({"prompt": "the ", "max_tokens": max_tokens, "stream": True}).encode()
    request = (f"POST /v1/models/tiny-char-lstm/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    decoder = live_server.app.state.engine.registry.get("tiny-char-lstm", 1).scheduler
    with socket.create_connection(("127.0.0.1", live_server.port)) as sock:
        sock.sendall(request)
        received = b""
        while b"data:" not in received:  # the headers come first, then the first tokens
            chunk = sock.recv(4096)
            assert chunk, "connection closed before any token"
            received += chunk
        [running] = decoder._active  # the engine's record of this generation, in the decoding batch
    deadline = time.monotonic() + 30
    while decoder._active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert decoder._active == []
    # It left because its client did, not because it ran to the end: the engine was told, and stopped early.
    assert running.cancelled and running.generated < max_tokens // 2, (running.cancelled, running.generated)
    assert httpx.post(f"http://{live_server.url}/v1/models/tiny-char-lstm/generate",
                      json={"prompt": "a", "max_tokens": 3}).json()["tokens"] == 3


def test_openai_completions(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"http://{live_server.url}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model="tiny-gpt", prompt="the ", max_tokens=12, seed=4)
    assert completion.object == "text_completion" and completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text) == 12
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens == 4
    chunks = list(client.completions.create(model="tiny-gpt", prompt="the ", max_tokens=12, seed=4, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == completion.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 16
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-gpt", prompt="x", max_tokens=3, n=2)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def _running(client: TestClient, model: str) -> tuple[int, int, int]:
    """(generations decoding, generations waiting in the engine, places held at the front-end) for ``model``."""
    scheduler = client.app.state.engine.registry.get(model, 1).scheduler  # type: ignore[attr-defined]
    admission = client.app.state.catalog.get(model).admission  # type: ignore[attr-defined]
    return len(scheduler._active), scheduler.depth, admission.in_flight


def _settles(client: TestClient, model: str, within_s: float) -> tuple[int, int, int]:
    deadline = time.monotonic() + within_s
    while _running(client, model) != (0, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _running(client, model)


@pytest.mark.parametrize("prompts,status", [
    (["a", "b", "c", "d"], 503),  # a fourth place is one more than the model takes (queue full)
    (["a", "b", "x" * 20_000], 400),  # the last prompt exceeds max_prompt_chars
    (["a", "b", "the €"], 400),  # the last prompt has a character the model does not know
])
def test_completions_a_prompt_that_cannot_start_leaves_nothing_running(
        make_client: Callable[..., TestClient], prompts: list[str], status: int) -> None:
    client = make_client(max_batch_size=2, max_queue=1, max_new_tokens=100_000)  # room for 3 generations
    response = client.post("/v1/completions", json={"model": "tiny-gpt", "prompt": prompts, "max_tokens": 100_000})
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    # no generation of the request goes on decoding to its 100000 tokens, and its places are free again
    assert _settles(client, "tiny-gpt", within_s=2.0) == (0, 0, 0)
    assert client.post("/v1/completions", json={"model": "tiny-gpt", "prompt": ["a", "b", "c"],
                                                "max_tokens": 2}).status_code == 200


def test_completions_a_prompt_that_fails_cancels_the_others(make_client: Callable[..., TestClient]) -> None:
    # One generation decodes at a time: "a" runs, "b" waits in the engine until the request's deadline
    # passes (504). "a", asked for 100000 tokens, must then be dropped, not decoded to the end.
    client = make_client(max_batch_size=1, timeout_ms=500, max_new_tokens=100_000)
    started = time.monotonic()
    response = client.post("/v1/completions", json={"model": "tiny-gpt", "prompt": ["a", "b"], "max_tokens": 100_000})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout"
    assert time.monotonic() - started < 5  # answered at the failure, not after "a"'s 100000 tokens
    assert _settles(client, "tiny-gpt", within_s=2.0) == (0, 0, 0)
