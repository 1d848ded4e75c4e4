"""The training CLI on small slices of the real data: output, reproducibility, resume, torchrun/DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from tests.conftest import requires_data
from training.__main__ import main
from training.data import load_image_split
from training.image_classifier import RECIPES, augment

MNIST = requires_data("mnist", "fashion-mnist")
REPO = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "1", "--limit", "256", "--test-limit", "200", "--batch-size", "64", "--threads", "1"]


@MNIST
def test_cli_writes_a_loadable_versioned_artifact(tmp_path: Path) -> None:
    main(["mnist-cnn", "--out", str(tmp_path), *SMALL])
    main(["mnist-cnn", "--out", str(tmp_path), *SMALL])
    first, second = (json.loads((tmp_path / "mnist-cnn" / v / "manifest.json").read_text()) for v in "12")
    assert (first["version"], second["version"]) == (1, 2)
    assert first["task"] == "image-classification" and first["labels"] == [str(d) for d in range(10)]
    assert first["dataset"]["test_size"] == 200 and first["trained"]["seed"] == 0
    assert first["metrics"] == second["metrics"]  # seeded: the same run gives the same result
    module, manifest = models.load(tmp_path / "mnist-cnn" / "1")
    assert manifest["sha256"] == first["sha256"]
    test = load_image_split("mnist", "test")  # the recorded accuracy is the written model's on held-out data
    pixels = torch.tensor(test.images[:200]).float().div(255).unsqueeze(1)
    with torch.no_grad():
        predicted = module(pixels).argmax(-1).numpy()
    assert first["metrics"]["test_accuracy"] == round(float((predicted == test.labels[:200]).mean()), 4)
    assert first["metrics"]["test_accuracy"] > 0.15  # above chance (0.1, sd 0.02 on 200) after one pass of 256


@MNIST
def test_resume_from_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fashion-cnn", "--out", str(tmp_path / "w"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--limit", "128", "--test-limit", "100", "--batch-size", "64", "--threads", "1"]
    main([*args, "--epochs", "1"])
    assert (tmp_path / "ck" / "fashion-cnn" / "checkpoint.safetensors").is_file()
    main([*args, "--epochs", "2"])
    assert "resumed fashion-cnn after epoch 1" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "w" / "fashion-cnn" / "2" / "manifest.json").read_text())
    assert manifest["trained"]["epochs"] == 2


def test_augment_keeps_shape_and_range() -> None:
    pixels = torch.rand(8, 1, 28, 28)
    out = augment(pixels, RECIPES["fashion-cnn"], torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape and out.min() >= 0 and out.max() <= 1


@MNIST
def test_torchrun_ddp_with_two_gloo_processes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "training", "mnist-cnn",
         "--out", str(tmp_path), "--device", "cpu", *SMALL],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "mnist-cnn" / "1" / "manifest.json").read_text())
    assert manifest["trained"]["world_size"] == 2
    assert not (tmp_path / "mnist-cnn" / "2").exists()  # only rank 0 writes
