"""Quotas per API key (SERVE_KEY_QUOTAS): requests per second and requests at once, counted by the engine
for the whole server; over a limit the answer is 429 with Retry-After in the one error shape. Keys without
a quota, and servers without quotas, are not limited."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.conftest import make_artifact
from tests.service.test_processes import Server


def predict(client, png: bytes, key: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/models/tiny-cnn/predict", content=png,
                       headers={"content-type": "image/png", "authorization": f"Bearer {key}"})


def test_requests_per_second_per_key(make_client, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=["key-one", "key-two"], key_quotas={"key-one": {"requests_per_s": 2, "burst": 2}})
    statuses = [predict(client, digit_png, "key-one").status_code for _ in range(5)]
    assert statuses[:2] == [200, 200] and statuses.count(429) >= 2
    refused = predict(client, digit_png, "key-one")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["type"] == "rate_limited" and "2 requests per second" in refused.json()["error"]
    assert [predict(client, digit_png, "key-two").status_code for _ in range(5)] == [200] * 5  # no quota of its own
    time.sleep(0.6)  # two per second: a token is back
    assert predict(client, digit_png, "key-one").status_code == 200


def test_requests_at_once_per_key_including_streams(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=["key-one", "key-two"], key_quotas={"*": {"concurrent": 1}}, max_new_tokens=100_000)
    started, release = threading.Event(), threading.Event()

    def long_stream() -> None:
        with client.stream("POST", "/v1/models/tiny-gpt/generate", headers={"x-api-key": "key-one"},
                           json={"prompt": "ab", "max_tokens": 100_000, "stream": True}) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                started.set()
                if release.is_set():
                    break

    streaming = threading.Thread(target=long_stream)
    streaming.start()
    try:
        assert started.wait(10)
        second = client.post("/v1/models/tiny-gpt/generate", headers={"x-api-key": "key-one"},
                             json={"prompt": "ab", "max_tokens": 2})
        assert second.status_code == 429 and second.json()["type"] == "rate_limited"
        completions = client.post("/v1/completions", headers={"authorization": "Bearer key-one"},
                                  json={"model": "tiny-gpt", "prompt": "ab", "max_tokens": 2})
        assert completions.status_code == 429  # OpenAI's shape on its routes
        assert completions.json()["error"]["type"] == "rate_limit_error"
        other = client.post("/v1/models/tiny-gpt/generate", headers={"x-api-key": "key-two"},
                            json={"prompt": "ab", "max_tokens": 2})
        assert other.status_code == 200  # "*" gives every key its own count
    finally:
        release.set()
        streaming.join(timeout=30)
    deadline = time.monotonic() + 5
    while True:  # the stream's place is given back once the engine has dropped it
        again = client.post("/v1/models/tiny-gpt/generate", headers={"x-api-key": "key-one"},
                            json={"prompt": "ab", "max_tokens": 2})
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again.status_code == 200


def test_quotas_must_name_configured_keys_and_never_echo_them(weights_dir: Path) -> None:
    with pytest.raises(ValidationError, match="set api_keys too"):
        Settings(weights_dir=weights_dir, key_quotas={"*": {"concurrent": 1}})
    with pytest.raises(ValidationError) as raised:
        Settings(weights_dir=weights_dir, api_keys=["secret-one"], key_quotas={"secret-two": {"concurrent": 1}})
    assert "secret-two" not in str(raised.value.errors(include_input=False))
    with pytest.raises(ValidationError, match="requests_per_s"):
        Settings(weights_dir=weights_dir, api_keys=["k"], key_quotas={"k": {"requests_per_s": 0}})


@pytest.mark.system  # real processes: make test-system
def test_the_limit_holds_for_the_whole_server_across_front_ends(tmp_path: Path, digit_png: bytes) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    server = Server(tmp_path, "--workers", "2", "--api-keys", "k1", "--key-quotas",
                    '{"k1": {"requests_per_s": 1, "burst": 5}}')
    try:
        server.wait_ready()
        statuses = []
        for _ in range(16):  # a new connection each: the kernel spreads them over both front-ends
            with httpx.Client(headers={"authorization": "Bearer k1"}) as one:
                statuses.append(one.post(f"{server.base}/v1/models/tiny-cnn/predict", content=digit_png,
                                         headers={"content-type": "image/png"}).status_code)
        served_by = httpx.get(f"{server.base}/metrics", headers={"authorization": "Bearer k1"}).text
    finally:
        server.stop()
    assert set(statuses) == {200, 429}
    assert 5 <= statuses.count(200) <= 7  # the burst of 5, plus at most what a second or two refills
    assert 'serve_frontend_requests_total{frontend="0"}' in served_by
    assert 'serve_frontend_requests_total{frontend="1"}' in served_by
