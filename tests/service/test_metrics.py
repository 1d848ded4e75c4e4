"""The metrics an SLO is written on, in /metrics: queue wait, requests in flight, load and warm-up time,
engine restarts, a language model's time to first token, time per output token, token counts and running
and waiting generations, and denoising steps; in the one-process server here, and summed over every
process under the supervisor (tests/service/test_processes.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.promtext import value as metric
from tests.service.test_processes import Server


def test_the_slo_metrics_count_what_was_served(client: TestClient, digit_png: bytes) -> None:
    for _ in range(3):
        assert client.post("/v1/models/tiny-cnn/predict", content=digit_png,
                           headers={"content-type": "image/png"}).status_code == 200
    generated = client.post("/v1/models/tiny-gpt/generate", json={"prompt": "hello", "max_tokens": 6, "seed": 1})
    assert generated.status_code == 200 and generated.json()["tokens"] == 6
    assert client.get("/v1/models/tiny-ddpm/samples?n=2&steps=3&seed=0&format=json").status_code == 200
    text = client.get("/metrics").text
    cnn, gpt, ddpm = {"model": "tiny-cnn", "version": "2"}, {"model": "tiny-gpt"}, {"model": "tiny-ddpm"}
    assert metric(text, "serve_queue_wait_seconds_count", **cnn) == 3
    assert 0 < metric(text, "serve_queue_wait_seconds_sum", **cnn) < 5
    assert metric(text, "serve_queue_wait_seconds_count", **gpt) == 1  # until its first step
    assert metric(text, "serve_queue_wait_seconds_count", **ddpm) == 1  # until its first denoising step
    assert metric(text, "serve_requests_in_flight", **cnn) == 0  # all answered
    assert "serve_requests_in_flight{" in text
    assert metric(text, "serve_model_load_seconds", phase="load", **cnn) > 0
    assert metric(text, "serve_model_load_seconds", phase="warmup", **cnn) > 0  # forwards ran
    assert metric(text, "serve_model_load_seconds", phase="prepare", **cnn) < 0.05  # prepare=False: nothing traced
    assert metric(text, "serve_engine_restarts_total") == 0
    assert metric(text, "serve_time_to_first_token_seconds_count", **gpt) == 1
    assert metric(text, "serve_time_per_output_token_seconds_count", **gpt) == 1
    assert metric(text, "serve_generated_tokens_total", **gpt) == 6
    assert metric(text, "serve_prompt_tokens_total", **gpt) == len("hello")  # a character model
    assert metric(text, "serve_generations", state="running", **gpt) == 0
    assert metric(text, "serve_generations", state="waiting", **gpt) == 0
    assert metric(text, "serve_denoising_steps_total", **ddpm) == 3
    # the device scheduler's: each model's time on the device, and its latency objective, met or missed
    for labels in (cnn, gpt, ddpm):
        assert metric(text, "serve_device_seconds_total", **labels) > 0
    assert metric(text, "serve_latency_objective_seconds", **cnn) == 0.1  # the task's default
    assert metric(text, "serve_latency_objective_seconds", **ddpm) == 30.0
    for labels, measured in ((cnn, 3), (gpt, 6), (ddpm, 1)):  # requests; a language model's: tokens
        met, missed = (metric(text, "serve_latency_objective_total", outcome=o, **labels) for o in ("met", "missed"))
        assert met + missed == measured, (labels, met, missed)


def test_in_flight_counts_running_and_waiting_generations(weights_dir) -> None:  # type: ignore[no-untyped-def]
    # One row per decoding batch: the second generation waits while the first runs.
    settings = Settings(weights_dir=weights_dir, device="cpu", torch_threads=1, port=free_port(), prepare=False,
                        max_new_tokens=100_000, max_batch_size=1)
    body = {"prompt": "ab", "max_tokens": 100_000, "stream": True}
    url = "http://{}/v1/models/tiny-gpt/generate"
    with LiveServer(settings) as server, httpx.stream(  # a real server and client, streaming
            "POST", url.format(server.url), json=body, timeout=30) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the response, and the server stops
        for _ in range(3):
            next(lines)  # it is generating
        with ThreadPoolExecutor(1) as pool:  # a second generation: it waits for the only row
            second = pool.submit(httpx.post, url.format(server.url), json={"prompt": "cd", "max_tokens": 5},
                                 timeout=30)
            deadline = time.monotonic() + 10
            while True:  # the gauges are set at each decoding step
                text = httpx.get(f"http://{server.url}/metrics").text
                if metric(text, "serve_generations", model="tiny-gpt", state="waiting") == 1:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.02)
            assert metric(text, "serve_requests_in_flight", model="tiny-gpt") == 2
            assert metric(text, "serve_generations", model="tiny-gpt", state="running") == 1
            response.close()  # the first client leaves: its row goes to the second
            assert second.result().json()["tokens"] == 5


@pytest.mark.system  # real processes: make test-system
def test_the_metrics_are_summed_over_every_process(tmp_path, digit_png: bytes) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_artifact, make_lm_artifact

    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    make_lm_artifact(tmp_path, "tiny-gpt")
    server = Server(tmp_path, "--workers", "2")
    try:
        server.wait_ready()
        for _ in range(8):
            with httpx.Client() as one:  # new connections: both front-ends serve
                assert one.post(f"{server.base}/v1/models/tiny-cnn/predict", content=digit_png,
                                headers={"content-type": "image/png"}).status_code == 200
        assert httpx.post(f"{server.base}/v1/models/tiny-gpt/generate",
                          json={"prompt": "ab", "max_tokens": 4}).status_code == 200
        text = httpx.get(f"{server.base}/metrics").text
    finally:
        server.stop()
    assert metric(text, "serve_queue_wait_seconds_count", model="tiny-cnn") == 8
    assert metric(text, "serve_generated_tokens_total", model="tiny-gpt") == 4
    assert metric(text, "serve_time_to_first_token_seconds_count", model="tiny-gpt") == 1
    assert metric(text, "serve_model_load_seconds", model="tiny-cnn", phase="load") > 0
    assert metric(text, "serve_engine_restarts_total") == 0


def test_a_made_up_model_name_is_no_label(client: TestClient) -> None:
    assert client.get("/v1/models/no-such-model").status_code == 404
    assert client.post("/v1/models/made-up/predict", content=b"x").status_code == 404
    text = client.get("/metrics").text
    assert "no-such-model" not in text and "made-up" not in text
    assert metric(text, "serve_requests_total", model="", status="404") == 2
