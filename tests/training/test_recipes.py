"""The language-model, forecaster, autoencoder and GAN recipes on tiny runs of the real data: each writes a
loadable artifact whose recorded held-out figure is measured again here, from the written weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import models
from tests.conftest import requires_data
from training.__main__ import main
from training.data import load_image_split, load_series, load_shakespeare

TINY = ["--threads", "1"]


def written(root: Path, name: str) -> tuple[torch.nn.Module, dict]:  # type: ignore[type-arg]
    path = root / name / "1"
    module, manifest = models.load(path)
    assert json.loads((path / "manifest.json").read_text())["sha256"] == manifest["sha256"]
    return module, manifest


@requires_data("tinyshakespeare")
@pytest.mark.parametrize("name", ["shakespeare-lstm", "shakespeare-gpt"])
def test_language_model_recipe_records_its_held_out_loss(tmp_path: Path, name: str) -> None:
    limit, steps = 3000, 8  # --epochs counts steps for these recipes
    main([name, "--out", str(tmp_path), "--epochs", str(steps), "--limit", str(limit), *TINY])
    module, manifest = written(tmp_path, name)
    corpus = load_shakespeare()
    assert manifest["vocab"] == sorted(set(corpus)) and manifest["trained"]["steps"] == steps
    start = manifest["dataset"]["holdout_start"]
    assert start == int(len(corpus) * 0.9)
    context = manifest["trained"]["context"]
    index = {char: i for i, char in enumerate(manifest["vocab"])}
    held_out = torch.tensor([index[c] for c in corpus[start:start + max(limit // 9, context + 2)]])
    windows = (len(held_out) - 1) // context
    inputs, targets = held_out[: windows * context].view(windows, context), held_out[1: windows * context + 1]
    with torch.no_grad():
        loss = F.cross_entropy(module(inputs)[0].flatten(0, 1), targets).item()
    assert manifest["metrics"]["val_loss"] == pytest.approx(loss, abs=1e-4)
    assert loss < np.log(len(manifest["vocab"]))  # better than a uniform guess after a few steps


@requires_data("timeseries")
def test_forecaster_recipe_records_its_held_out_errors(tmp_path: Path) -> None:
    main(["sunspots-lstm", "--out", str(tmp_path), "--epochs", "2", *TINY])
    module, manifest = written(tmp_path, "sunspots-lstm")
    values = load_series("monthly-sunspots").values
    start, horizon, window = manifest["dataset"]["holdout_start"], 12, manifest["preprocessing"]["window"]
    assert start == int(len(values) * 0.9)  # the last tenth is held out
    origins = range(start, len(values) - horizon + 1)  # every held-out month with a year after it
    history = torch.tensor(np.stack([values[o - window:o] for o in origins]), dtype=torch.float32)
    with torch.no_grad():
        predicted = module(history, torch.full((len(origins),), window)).numpy()
    actual = np.stack([values[o:o + horizon] for o in origins])
    last = np.repeat(values[[o - 1 for o in origins]][:, None], horizon, axis=1)
    assert manifest["metrics"]["mae"] == pytest.approx(np.abs(predicted - actual).mean(), abs=1e-3)
    assert manifest["metrics"]["naive_mae"] == pytest.approx(np.abs(last - actual).mean(), abs=1e-3)


@requires_data("mnist", "fashion-mnist")
def test_autoencoder_recipe_records_its_auroc_and_threshold(tmp_path: Path) -> None:
    main(["mnist-autoencoder", "--out", str(tmp_path), "--epochs", "1", "--limit", "512", "--test-limit", "200",
          "--checkpoint-dir", str(tmp_path / "ck"), *TINY])
    module, manifest = written(tmp_path, "mnist-autoencoder")

    def errors(dataset: str) -> np.ndarray:  # mean squared reconstruction error per image
        pixels = torch.tensor(load_image_split(dataset, "test").images[:200]).float().div(255).unsqueeze(1)
        with torch.no_grad():
            return ((module(pixels) - pixels) ** 2).mean(dim=(1, 2, 3)).numpy()

    normal, odd = errors("mnist"), errors("fashion-mnist")
    # AUROC by its definition: the share of (normal, anomaly) pairs where the anomaly scores higher
    pairs = (odd[None, :] > normal[:, None]).mean() + 0.5 * (odd[None, :] == normal[:, None]).mean()
    metrics = manifest["metrics"]
    assert metrics["auroc"] == pytest.approx(pairs, abs=1e-3)
    threshold = manifest["threshold"]
    assert metrics["normal_flagged"] == pytest.approx((normal > threshold).mean(), abs=1e-3)
    assert metrics["anomalies_flagged"] == pytest.approx((odd > threshold).mean(), abs=1e-3)


@requires_data("mnist")
def test_gan_recipe_records_the_agreement_of_its_samples(tmp_path: Path) -> None:
    from training.evaluation import judge
    from training.gan import samples_per_digit

    main(["mnist-cgan", "--out", str(tmp_path), "--epochs", "1", "--limit", "256",
          "--checkpoint-dir", str(tmp_path / "ck"), *TINY])
    generator, manifest = written(tmp_path, "mnist-cgan")
    assert manifest["conditional"] is True and manifest["labels"] == [str(d) for d in range(10)]
    with torch.no_grad():
        images, wanted = samples_per_digit(generator, 100, seed=12345)  # the recipe's evaluation set
    predicted, confidence = judge(images, tmp_path)  # by the committed mnist-cnn
    assert manifest["metrics"]["label_agreement"] == pytest.approx((predicted == wanted.numpy()).mean(), abs=1e-4)
    assert manifest["metrics"]["mean_confidence"] == pytest.approx(confidence.mean(), abs=1e-4)
