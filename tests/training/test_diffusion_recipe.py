"""The mnist-ddpm recipe on a slice of MNIST: a loadable artifact with its judged quality, sample grids,
and resume from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import models
from tests.conftest import requires_data
from training.__main__ import main

pytestmark = requires_data("mnist")


def test_ddpm_recipe_writes_a_judged_artifact_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["mnist-ddpm", "--out", str(tmp_path / "w"), "--checkpoint-dir", str(tmp_path / "ck"), "--limit", "64",
            "--test-limit", "8", "--batch-size", "8", "--threads", "1"]
    main([*args, "--epochs", "3"])
    assert (tmp_path / "ck" / "mnist-ddpm" / "checkpoint.safetensors").is_file()
    main([*args, "--epochs", "5"])
    assert "resumed mnist-ddpm at step 3" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "w" / "mnist-ddpm" / "2" / "manifest.json").read_text())
    assert manifest["trained"]["steps"] == 5 and manifest["architecture"] == "ddpm-unet"
    assert manifest["sampling"] == {"sampler": "ddim", "default_steps": 50, "max_steps": 1000}
    assert manifest["serving"]["max_batch_size"] >= 1 and manifest["conditional"] is False
    metrics = manifest["metrics"]
    # eight samples judged: the share is a count of eight, and the distinct digits are those counted
    assert sum(metrics["digit_counts"]) == 8 and set(metrics["by_steps"]) == {"10", "25"}
    assert (metrics["confident_share"] * 8).is_integer()
    assert metrics["digits_in_first_100"] == sum(1 for count in metrics["digit_counts"] if count)
    assert 0 < metrics["val_loss"] < 2  # the noise-prediction MSE on held-out digits (pure noise gives ~1)
    assert (tmp_path / "ck" / "samples" / "mnist-ddpm" / "final.png").is_file()
    module, _ = models.load(tmp_path / "w" / "mnist-ddpm" / "2")
    assert module.config.timesteps == 1000
