"""Smoke tests on the committed weights (fast), and the full test sets through the HTTP API (slow)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.frontend.main import create_app
from service.settings import Settings
from tests.conftest import REPO_ROOT, requires_data, wait_ready
from training.common import latest_version_dir
from training.data import load_image_split, load_series, load_shakespeare, load_sst2
from training.evaluation import auroc

WEIGHTS = REPO_ROOT / "weights"
TARGETS = {"mnist-cnn": ("mnist", 0.993), "fashion-cnn": ("fashion-mnist", 0.930)}
TEXT_TARGETS = {"sst2-lstm": 0.82, "sst2-gru": 0.82, "sst2-transformer": 0.80, "sst2-minilm": 0.89}
FORECASTER = "sunspots-lstm"
LM_TARGETS = {"shakespeare-gpt": 1.60, "shakespeare-lstm": 1.70}
ANOMALY = "mnist-autoencoder"
GENERATOR = "mnist-cgan"
DIFFUSION = "mnist-ddpm"
IMAGES = requires_data("mnist", "fashion-mnist")
SST2 = requires_data("sst2")
SERIES = requires_data("timeseries")
SHAKESPEARE = requires_data("tinyshakespeare")


def latest_manifest(name: str) -> dict:
    versions = sorted((WEIGHTS / name).iterdir(), key=lambda p: int(p.name))
    return json.loads((versions[-1] / "manifest.json").read_text())


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served() -> Iterator[TestClient]:
    served_models = [*TARGETS, *TEXT_TARGETS, FORECASTER, *LM_TARGETS, ANOMALY, GENERATOR, DIFFUSION]
    # These tests judge accuracy, not speed: deadlines long enough for a slow CPU (a 250-sentence MiniLM request
    # took over 10 s on a 2-core AVX2 machine, and 50 DDPM samples at 50 steps close to the model's 60 s).
    settings = Settings(weights_dir=WEIGHTS, device="cpu", models=served_models, max_inputs_per_request=256,
                        timeout_ms=600_000, model_overrides={DIFFUSION: {"timeout_ms": 600_000}})
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=60)
        yield client


def accuracy_through_api(client: TestClient, name: str, images: np.ndarray, labels: np.ndarray,
                         batch: int = 250) -> float:
    correct = 0
    for start in range(0, len(images), batch):
        files = [("file", (f"{i}.png", png(image), "image/png"))
                 for i, image in enumerate(images[start:start + batch])]
        response = client.post(f"/v1/models/{name}/predict", files=files)
        assert response.status_code == 200, response.text
        predicted = [item["index"] for item in response.json()["predictions"]]
        correct += int((np.array(predicted) == labels[start:start + batch]).sum())
    return correct / len(images)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_committed_weights_meet_their_target_in_the_manifest(name: str) -> None:
    manifest = latest_manifest(name)
    dataset, target = TARGETS[name]
    assert manifest["metrics"]["test_accuracy"] >= target
    assert manifest["dataset"]["name"] == dataset and manifest["dataset"]["test_size"] == 10_000


@IMAGES
def test_a_real_mnist_digit_is_read_correctly(served: TestClient) -> None:
    split = load_image_split("mnist", "test")
    response = served.post("/v1/models/mnist-cnn/predict", content=png(split.images[0]),
                           headers={"content-type": "image/png"})
    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    assert prediction["label"] == str(split.labels[0]) == "7" and prediction["score"] > 0.9


@pytest.mark.parametrize("name", sorted(TARGETS))
@IMAGES
def test_first_500_test_images_through_the_api(served: TestClient, name: str) -> None:
    split = load_image_split(TARGETS[name][0], "test")
    assert accuracy_through_api(served, name, split.images[:500], split.labels[:500]) >= 0.97 - (
        0.05 if name == "fashion-cnn" else 0)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(TARGETS))
@IMAGES
def test_full_test_set_accuracy_through_the_api(served: TestClient, name: str) -> None:
    dataset, target = TARGETS[name]
    split = load_image_split(dataset, "test")
    accuracy = accuracy_through_api(served, name, split.images, split.labels)
    print(f"{name}: {accuracy:.4f} on the full {dataset} test set through the API")
    assert accuracy >= target
    assert accuracy == pytest.approx(latest_manifest(name)["metrics"]["test_accuracy"], abs=0.0005)


def test_weights_are_safetensors_only() -> None:
    files = [p for p in Path(WEIGHTS).rglob("*") if p.is_file()]
    assert files and {p.name for p in files} <= {"model.safetensors", "manifest.json", "tokenizer.json"}
    assert sum(p.stat().st_size for p in files) < 150 * 2**20  # the whole tree stays under 150 MB


def dev_accuracy_through_api(client: TestClient, name: str, limit: int | None = None) -> float:
    dev = load_sst2("dev")
    texts, labels = dev.texts[:limit], dev.labels[:limit]
    predicted = []
    for start in range(0, len(texts), 200):
        response = client.post(f"/v1/models/{name}/predict", json={"inputs": texts[start:start + 200]})
        assert response.status_code == 200, response.text
        predicted += [item["index"] for item in response.json()["predictions"]]
    return float((np.array(predicted) == labels).mean())


@pytest.mark.parametrize("name", sorted(TEXT_TARGETS))
def test_text_models_meet_their_dev_target_in_the_manifest(name: str) -> None:
    metrics = latest_manifest(name)["metrics"]
    assert metrics["dev_accuracy"] >= TEXT_TARGETS[name] and 0.5 < metrics["test_accuracy"] <= 1.0


@pytest.mark.parametrize("name", sorted(TEXT_TARGETS))
@SST2
def test_first_200_dev_sentences_through_the_api(served: TestClient, name: str) -> None:
    assert dev_accuracy_through_api(served, name, limit=200) >= TEXT_TARGETS[name] - 0.07


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(TEXT_TARGETS))
@SST2
def test_full_dev_set_accuracy_through_the_api(served: TestClient, name: str) -> None:
    accuracy = dev_accuracy_through_api(served, name)
    print(f"{name}: {accuracy:.4f} on the SST-2 dev set through the API")
    assert accuracy >= TEXT_TARGETS[name]
    assert accuracy == pytest.approx(latest_manifest(name)["metrics"]["dev_accuracy"], abs=0.0012)


@SERIES
def test_forecaster_beats_the_naive_forecast_on_held_out_data_through_the_api(served: TestClient) -> None:
    """Rolling 12-month forecasts from every held-out month, each from the whole history before it."""
    manifest = latest_manifest(FORECASTER)
    values = load_series("monthly-sunspots").values
    start = manifest["dataset"]["holdout_start"]
    origins = list(range(start, len(values) - 12 + 1))
    predicted = []
    for chunk in range(0, len(origins), 64):
        inputs = [values[:origin].tolist() for origin in origins[chunk:chunk + 64]]
        response = served.post(f"/v1/models/{FORECASTER}/predict", json={"inputs": inputs,
                                                                          "parameters": {"horizon": 12}})
        assert response.status_code == 200, response.text
        predicted += [item["forecast"] for item in response.json()["predictions"]]
    actual = np.stack([values[o:o + 12] for o in origins])
    naive = np.repeat(values[[o - 1 for o in origins]][:, None], 12, axis=1)
    mae, naive_mae = np.abs(np.array(predicted) - actual).mean(), np.abs(naive - actual).mean()
    print(f"{FORECASTER}: held-out MAE {mae:.3f} through the API, naive {naive_mae:.3f}")
    assert mae <= 0.9 * naive_mae
    assert mae == pytest.approx(manifest["metrics"]["mae"], abs=0.01)
    assert naive_mae == pytest.approx(manifest["metrics"]["naive_mae"], abs=0.01)


@pytest.mark.parametrize("name", sorted(LM_TARGETS))
def test_language_models_meet_their_held_out_loss_in_the_manifest(name: str) -> None:
    manifest = latest_manifest(name)
    assert manifest["metrics"]["val_loss"] <= LM_TARGETS[name]
    assert manifest["dataset"]["holdout_start"] == int(manifest["dataset"]["characters"] * 0.9)


@pytest.mark.slow
@SHAKESPEARE
@pytest.mark.parametrize("name", sorted(LM_TARGETS))
def test_language_models_held_out_loss_measured_again(name: str) -> None:
    """The committed weights' loss on the held-out tenth of the corpus, in nats per character, computed here
    (non-overlapping windows of the training context, every next character scored) as the manifest records."""
    import torch
    from torch.nn import functional as F

    import models

    module, manifest = models.load(latest_version_dir(WEIGHTS, name))
    corpus = load_shakespeare()
    assert len(corpus) == manifest["dataset"]["characters"]
    index = {char: i for i, char in enumerate(manifest["vocab"])}
    held_out = torch.tensor([index[char] for char in corpus[manifest["dataset"]["holdout_start"]:]])
    context = manifest["trained"]["context"]
    windows = (len(held_out) - 1) // context
    inputs = held_out[: windows * context].view(windows, context)
    targets = held_out[1: windows * context + 1].view(windows, context)
    total = 0.0
    with torch.no_grad():
        for start in range(0, windows, 128):
            logits = module(inputs[start:start + 128])[0]
            total += F.cross_entropy(logits.flatten(0, 1), targets[start:start + 128].flatten(), reduction="sum").item()
    loss = total / targets.numel()
    print(f"{name}: held-out loss {loss:.4f} nats/char (manifest {manifest['metrics']['val_loss']})")
    assert loss == pytest.approx(manifest["metrics"]["val_loss"], abs=2e-3) and loss <= LM_TARGETS[name]


@pytest.mark.parametrize("name", sorted(LM_TARGETS))
@SHAKESPEARE
def test_generated_text_is_made_of_shakespeares_words(served: TestClient, name: str) -> None:
    """Plausible text: most generated words are words of the corpus, and it has Shakespeare's layout."""
    corpus = load_shakespeare()
    known = set(corpus.split())
    response = served.post(f"/v1/models/{name}/generate",
                           json={"prompt": "ROMEO:\n", "max_tokens": 400, "temperature": 0.8, "seed": 0})
    assert response.status_code == 200, response.text
    text = response.json()["text"]
    words = text.split()
    print(f"{name}:\nROMEO:\n{text}")
    assert len(words) >= 40
    assert sum(word in known for word in words) / len(words) >= 0.75
    assert ":\n" in text  # a new speaker's name followed by a line break, as in the corpus


def anomaly_scores(client: TestClient, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, flags = [], []
    for start in range(0, len(images), 250):
        files = [("file", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images[start:start + 250])]
        response = client.post(f"/v1/models/{ANOMALY}/predict", files=files)
        assert response.status_code == 200, response.text
        for item in response.json()["predictions"]:
            scores.append(item["anomaly_score"])
            flags.append(item["is_anomaly"])
    return np.array(scores), np.array(flags)


@pytest.mark.parametrize("limit", [pytest.param(500, id="500"), pytest.param(None, id="full", marks=pytest.mark.slow)])
@IMAGES
def test_anomaly_targets_through_the_api(served: TestClient, limit: int | None) -> None:
    """MNIST test digits (normal) against Fashion-MNIST test images: AUROC >= 0.98, <= 5% / >= 90% flagged."""
    normal, normal_flags = anomaly_scores(served, load_image_split("mnist", "test").images[:limit])
    odd, odd_flags = anomaly_scores(served, load_image_split("fashion-mnist", "test").images[:limit])
    area = auroc(normal, odd)
    print(f"{ANOMALY}: AUROC {area:.4f}, normal flagged {normal_flags.mean():.4f}, "
          f"anomalies flagged {odd_flags.mean():.4f} ({len(normal)} + {len(odd)} images through the API)")
    assert area >= 0.98 and normal_flags.mean() <= 0.05 and odd_flags.mean() >= 0.90
    if limit is None:
        assert area == pytest.approx(latest_manifest(ANOMALY)["metrics"]["auroc"], abs=0.0005)


def judged_samples(served: TestClient, generator: str, query: str) -> list[dict]:
    """Samples from ``generator`` (JSON, one PNG each), then the service's own mnist-cnn's predictions of them."""
    response = served.get(f"/v1/models/{generator}/samples?{query}&format=json")
    assert response.status_code == 200, response.text
    pictures = [base64.b64decode(sample["png_b64"]) for sample in response.json()["samples"]]
    files = [("file", (f"{i}.png", picture, "image/png")) for i, picture in enumerate(pictures)]
    judged = served.post("/v1/models/mnist-cnn/predict", files=files)
    assert judged.status_code == 200, judged.text
    return list(judged.json()["predictions"])


def test_generated_digits_are_the_requested_ones_judged_by_mnist_cnn_through_the_api(served: TestClient) -> None:
    """50 samples of each digit from the samples endpoint, classified by the service's own mnist-cnn."""
    agree = total = 0
    for digit in range(10):
        judged = judged_samples(served, GENERATOR, f"n=50&seed={digit}&label={digit}")
        agree += sum(item["label"] == str(digit) for item in judged)
        total += len(judged)
    print(f"{GENERATOR}: {agree}/{total} samples classified as the requested digit by mnist-cnn")
    assert agree / total >= 0.90
    grid = served.get(f"/v1/models/{GENERATOR}/samples?n=16&seed=3")
    assert grid.headers["content-type"] == "image/png" and grid.content == served.get(
        f"/v1/models/{GENERATOR}/samples?n=16&seed=3").content


def test_diffusion_model_meets_its_targets_in_the_manifest() -> None:
    metrics = latest_manifest(DIFFUSION)["metrics"]
    assert metrics["confident_share"] >= 0.70 and metrics["digits_in_first_100"] >= 8


def test_diffusion_samples_are_deterministic_pngs(served: TestClient) -> None:
    first = served.get(f"/v1/models/{DIFFUSION}/samples?n=16&seed=3&steps=10")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png", first.text
    assert Image.open(io.BytesIO(first.content)).size == (122, 122)
    assert served.get(f"/v1/models/{DIFFUSION}/samples?n=16&seed=3&steps=10").content == first.content


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_diffusion_samples_are_confidently_digits_judged_by_mnist_cnn_through_the_api(served: TestClient) -> None:
    """300 samples at the default steps (6 requests of 50), classified by the service's own mnist-cnn:
    at least 70% with a confidence of 0.9 or more, and at least 8 of the 10 digits among the first 100."""
    labels, scores = [], []
    for seed in range(6):
        judged = judged_samples(served, DIFFUSION, f"n=50&seed={seed}")
        labels += [item["label"] for item in judged]
        scores += [item["score"] for item in judged]
    confident = float(np.mean(np.array(scores) >= 0.9))
    digits = len(set(labels[:100]))
    print(f"{DIFFUSION}: {confident:.3f} of {len(scores)} samples confident (>= 0.9); {digits} digits in the first 100")
    assert confident >= 0.70 and digits >= 8
