"""The soak's request mix: every committed model, good and bad inputs, each request with the answer it must get.

A probe is one request. Its solo answer (taken alone, before any concurrency) is what every answer to it
during the soak must equal: labels, texts, PNG bytes and error types exactly, floats within ``ABS_TOL``
(plus ``REL_TOL`` of the value): a batch's composition may change float32 rounding in a forward, never more.
Seeded generation is compared exactly: its sampling draws from each request's own generator, and the text was
measured identical alone and under concurrency (200 of 200 seeded generations across both language models
at 12 connections, and every DDPM/GAN sample, byte for byte).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

ABS_TOL, REL_TOL = 1e-4, 1e-6
Reader = Callable[[httpx.Response], Any]


class Mismatch(AssertionError):
    """An answer of the wrong form, or one that differs from its solo answer."""


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


# -- readers: the part of an answer that must equal the solo answer ---------------------------------------

def body(response: httpx.Response) -> Any:
    response.read()
    return response.json()


def predictions(response: httpx.Response) -> dict[str, Any]:
    """Native predictions; "version" is tallied, not compared (a new version serves the same weights)."""
    answer = body(response)
    return {"version": answer["version"], "predictions": answer["predictions"]}


def field_of(name: str) -> Reader:
    return lambda response: body(response)[name]


def error(response: httpx.Response) -> str:
    """The one error shape, ``{"error": "...", "type": "..."}``; its type is compared."""
    answer = body(response)
    if set(answer) != {"error", "type"} or not all(isinstance(answer[key], str) for key in answer):
        raise Mismatch(f"not the error shape: {answer}")
    return str(answer["type"])


def openai_error(response: httpx.Response) -> list[Any]:
    answer = body(response)["error"]
    if not isinstance(answer, dict) or not isinstance(answer.get("message"), str):
        raise Mismatch(f"not OpenAI's error shape: {answer}")
    return [answer["type"], answer["code"]]


def completion(response: httpx.Response) -> dict[str, Any]:
    answer = body(response)  # "id" and "created" differ per request
    return {"choices": [[c["text"], c["finish_reason"]] for c in answer["choices"]], "usage": answer["usage"]}


def embeddings_b64(response: httpx.Response) -> list[list[float]]:
    return [np.frombuffer(base64.b64decode(item["embedding"]), "<f4").tolist() for item in body(response)["data"]]


def png_digest(response: httpx.Response) -> str:
    response.read()
    if response.headers["content-type"] != "image/png":
        raise Mismatch(f"content-type {response.headers['content-type']}")
    return hashlib.sha256(response.content).hexdigest()


def nothing(response: httpx.Response) -> None:
    """Health and metadata: only the status counts (metadata changes with the versions loaded)."""
    response.read()


def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return events
            events.append(json.loads(line[len("data: "):]))
    raise Mismatch(f"the stream ended without data: [DONE] after {len(events)} events")


def generate_stream(response: httpx.Response) -> dict[str, Any]:
    *pieces, last = sse_events(response)
    return {"text": "".join(piece["text"] for piece in pieces), **last}


def completion_stream(response: httpx.Response) -> dict[str, Any]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in sse_events(response):
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice.get("finish_reason"):
                finish[choice["index"]] = choice["finish_reason"]
    return {"texts": texts, "finish": finish}


# -- comparison ------------------------------------------------------------------------------------------

def difference(got: Any, want: Any, where: str = "") -> tuple[str | None, float]:
    """(what differs, or None; the largest float difference seen)."""
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        gap = abs(got - want)
        ok = math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL)
        return (None if ok else f"{where}: {got} != {want}"), gap
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return f"{where}: keys {sorted(got)} != {sorted(want)}", 0.0
        return _worst([difference(got[key], want[key], f"{where}.{key}") for key in want])
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return f"{where}: {len(got)} items != {len(want)}", 0.0
        return _worst([difference(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(got, want, strict=True))])
    return (None if got == want else f"{where}: {str(got)[:80]!r} != {str(want)[:80]!r}"), 0.0


def _worst(parts: list[tuple[str | None, float]]) -> tuple[str | None, float]:
    problems = [problem for problem, _ in parts if problem]
    return (problems[0] if problems else None), max((gap for _, gap in parts), default=0.0)


# -- probes ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Probe:
    label: str  # what the report counts it under
    method: str
    path: str
    request: dict[str, Any] = field(default_factory=dict)  # httpx's keyword arguments
    status: int = 200
    read: Reader = predictions
    timeout: float = 60.0


@dataclass(frozen=True, eq=False)
class Disconnect:
    """A client that leaves early: after ``events`` events of a stream, or at a client timeout."""

    label: str
    method: str
    path: str
    request: dict[str, Any]
    events: int | None = None
    timeout: float = 60.0


def image(path: str, picture: bytes, label: str = "png") -> Probe:
    return Probe(f"POST {path} ({label})", "POST", path, {"content": picture, "headers": {"content-type": "image/png"}})


def multipart(path: str, pictures: list[bytes]) -> Probe:
    files = [("file", (f"{i}.png", picture, "image/png")) for i, picture in enumerate(pictures)]
    return Probe(f"POST {path} (multipart)", "POST", path, {"files": files})


def as_json(path: str, payload: Any, read: Reader = predictions, label: str = "json", status: int = 200) -> Probe:
    return Probe(f"POST {path} ({label})", "POST", path, {"json": payload}, status, read)


def image_probes(digits: list[bytes], clothes: list[bytes], pixels: np.ndarray) -> list[Probe]:
    b64 = [{"b64": base64.b64encode(picture).decode()} for picture in digits[:2]]
    v2_pixels = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 28, 28],
                             "data": (pixels / 255.0).flatten().tolist()}]}
    anomaly = "/v1/models/mnist-autoencoder/predict"
    return [
        *(image("/v1/models/mnist-cnn/predict", picture) for picture in digits),
        multipart("/v1/models/mnist-cnn/predict", digits[:3]),
        as_json("/v1/models/mnist-cnn/predict", {"inputs": b64, "parameters": {"top_k": 5}}),
        as_json("/v1/models/mnist-cnn:predict", {"instances": b64}, field_of("predictions"), "kserve v1"),
        as_json("/v2/models/mnist-cnn/infer", v2_pixels, field_of("outputs"), "v2"),
        *(image("/v1/models/fashion-cnn/predict", picture) for picture in clothes[:2]),
        multipart("/v1/models/fashion-cnn/predict", clothes),
        image(anomaly, digits[0]),
        image(anomaly, clothes[0], "outlier png"),
        as_json(anomaly, {"inputs": b64[:1], "parameters": {"reconstruction": True}}, label="reconstruction"),
    ]


def text_probes(sentences: list[str]) -> list[Probe]:
    pair, long_text = sentences[:2], " ".join(sentences) * 20  # longer than any model's maximum: truncated
    probes = [as_json(f"/v1/models/{name}/predict", {"inputs": pair})
              for name in ("sst2-lstm", "sst2-gru", "sst2-transformer", "sst2-minilm", "minilm")]
    return [
        *probes,
        Probe("POST /v1/models/sst2-gru/predict (text/plain)", "POST", "/v1/models/sst2-gru/predict",
              {"content": sentences[2], "headers": {"content-type": "text/plain"}}),
        as_json("/v1/models/sst2-transformer/predict", {"inputs": [long_text]}, label="truncated"),
        as_json("/v1/models/sst2-lstm:predict", {"instances": sentences[3:5]}, field_of("predictions"), "kserve v1"),
        as_json("/v2/models/sst2-minilm/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                                             "data": sentences[5:7]}]}, field_of("outputs"), "v2"),
        as_json("/v1/embeddings", {"model": "minilm", "input": sentences[7:9], "encoding_format": "float"},
                field_of("data"), "float"),
        as_json("/v1/embeddings", {"model": "minilm", "input": sentences[9], "encoding_format": "base64"},
                embeddings_b64, "base64"),
    ]


def generation_probes() -> list[Probe]:
    probes = []
    for model in ("shakespeare-gpt", "shakespeare-lstm"):
        path = f"/v1/models/{model}/generate"
        sampled = {"prompt": "ROMEO:\n", "max_tokens": 40, "temperature": 0.8, "top_k": 40, "seed": 7}
        probes += [
            as_json(path, sampled, body),
            as_json(path, {"prompt": "KING HENRY:\nWhat", "max_tokens": 30, "temperature": 0, "stop": ["\n\n"]},
                    body, "greedy"),
            as_json(path, {**sampled, "seed": 11, "stream": True}, generate_stream, "sse"),
            as_json("/v1/completions", {"model": model, "prompt": "To be", "max_tokens": 24, "seed": 3}, completion),
            as_json("/v1/completions", {"model": model, "prompt": "JULIET:", "max_tokens": 24, "seed": 5,
                                        "stream": True}, completion_stream, "sse"),
        ]
    probes.append(as_json("/v1/completions", {"model": "shakespeare-gpt", "prompt": ["First", "Second"],
                                              "max_tokens": 16, "seed": 1, "top_p": 0.9}, completion, "2 prompts"))
    return probes


def forecast_probes(series: np.ndarray) -> list[Probe]:
    path = "/v1/models/sunspots-lstm/predict"
    windows = [series[:600].tolist(), series[:1200].tolist()]
    return [as_json(path, {"inputs": windows, "parameters": {"horizon": 12}}),
            as_json(path, {"inputs": [series.tolist()], "parameters": {"horizon": 6}}, label="whole history")]


def sample_probes() -> list[Probe]:
    path = "/v1/models/mnist-cgan/samples"
    return [Probe(f"GET {path} (json)", "GET", path, {"params": {"n": 4, "seed": 3, "label": 3, "format": "json"}},
                  read=body),
            Probe(f"GET {path} (png)", "GET", path, {"params": {"n": 9, "seed": 4}}, read=png_digest)]


def diffusion_probes() -> list[Probe]:
    """Few samples and few steps: the committed DDPM takes about a second for two at ten steps on 2 cores."""
    path = "/v1/models/mnist-ddpm/samples"
    return [Probe(f"GET {path} (json)", "GET", path, {"params": {"n": 2, "seed": 1, "steps": 10, "format": "json"}},
                  read=body),
            Probe(f"GET {path} (png)", "GET", path, {"params": {"n": 2, "seed": 2, "steps": 8}}, read=png_digest)]


def burst_probe(seed: int) -> Probe:
    """One of a burst of DDPM requests past the model's capacity: 200 (checked) or the 503 provoked on purpose."""
    path = "/v1/models/mnist-ddpm/samples"
    return Probe(f"GET {path} (burst)", "GET", path, {"params": {"n": 8, "seed": seed, "steps": 10}},
                 read=png_digest)


def bad_probes(digit: bytes, huge_png: bytes, oversize: bytes) -> list[Probe]:
    """Bad inputs: each a 4xx in the one error shape (OpenAI's on its routes), never a 5xx."""
    def raw(path: str, content: bytes | str, media: str, status: int, label: str) -> Probe:
        return Probe(f"POST {path} ({label})", "POST", path, {"content": content, "headers": {"content-type": media}},
                     status, error)

    cnn = "/v1/models/mnist-cnn/predict"
    return [
        raw(cnn, b"\x89PNG garbage" * 8, "image/png", 400, "garbage png"),
        raw(cnn, b"", "image/png", 400, "empty png"),
        raw(cnn, "<digit/>", "application/xml", 415, "xml"),
        raw(cnn, "a digit", "text/plain", 415, "text to an image model"),
        raw(cnn, huge_png, "image/png", 413, "5000x5000 png"),
        raw(cnn, oversize, "image/png", 413, "body over the limit"),
        raw("/v1/models/no-such-model/predict", digit, "image/png", 404, "unknown model"),
        raw("/v1/models/mnist-cnn/versions/99/predict", digit, "image/png", 404, "unknown version"),
        raw("/v1/models/sst2-gru/predict", '{"inputs": [', "application/json", 400, "broken json"),
        as_json("/v1/models/sst2-gru/predict", {"inputs": []}, error, "no inputs", 422),
        as_json("/v1/models/sunspots-lstm/predict", {"inputs": [["x"]]}, error, "not a series", 400),
        as_json("/v1/models/shakespeare-gpt/generate", {"prompt": "a", "max_tokens": 10**6}, error,
                "max_tokens over the limit", 400),
        Probe("GET /v1/models/mnist-cnn/predict (wrong method)", "GET", cnn, status=405, read=error),
        Probe("GET /v1/models/mnist-cgan/samples (n=0)", "GET", "/v1/models/mnist-cgan/samples",
              {"params": {"n": 0}}, 422, error),
        Probe("GET /v1/models/mnist-cnn/samples (not a generator)", "GET", "/v1/models/mnist-cnn/samples",
              status=400, read=error),
        as_json("/v1/completions", {"model": "no-such-model", "prompt": "a"}, openai_error, "unknown model", 404),
        as_json("/v1/embeddings", {"model": "minilm", "input": [[1, 2]]}, openai_error, "token arrays", 400),
    ]


def health_probes() -> list[Probe]:
    return [Probe(f"GET {path}", "GET", path, read=nothing)
            for path in ("/v2/health/ready", "/v2/health/live", "/v1/models", "/v1/models/mnist-cnn")]


def disconnects() -> list[Disconnect]:
    """Clients that leave: a stream closed after three events, and requests given up at a client timeout."""
    long = {"prompt": "ROMEO:\n", "max_tokens": 400, "temperature": 0.8, "seed": 1}
    return [
        Disconnect("POST /v1/models/shakespeare-gpt/generate (sse, closed)", "POST",
                   "/v1/models/shakespeare-gpt/generate", {"json": {**long, "stream": True}}, events=3),
        Disconnect("POST /v1/completions (sse, closed)", "POST", "/v1/completions",
                   {"json": {"model": "shakespeare-lstm", "prompt": "JULIET:", "max_tokens": 400, "stream": True}},
                   events=3),
        Disconnect("POST /v1/models/shakespeare-lstm/generate (client timeout)", "POST",
                   "/v1/models/shakespeare-lstm/generate", {"json": long}, timeout=0.3),
        Disconnect("POST /v1/models/sst2-minilm/predict (client timeout)", "POST", "/v1/models/sst2-minilm/predict",
                   {"json": {"inputs": ["a long wait " * 40] * 16}}, timeout=0.05),
    ]


def diffusion_disconnect() -> Disconnect:
    path = "/v1/models/mnist-ddpm/samples"
    return Disconnect(f"GET {path} (client timeout)", "GET", path, {"params": {"n": 2, "steps": 100}}, timeout=0.5)
