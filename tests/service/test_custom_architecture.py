"""A user's own ``nn.Module`` of a known task kind, served without editing this repository: a separately
installed package declares it under the ``serve.architectures`` entry point group, and its artifact is
safetensors + manifest like ours."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import models
from service.frontend.main import create_app
from service.settings import Settings
from tests.conftest import wait_ready

PACKAGE = '''
"""A tiny image classifier that is not part of the server's code."""
from dataclasses import dataclass

import torch
from torch import nn

from models.registry import Architecture


@dataclass
class TinyMLPConfig:
    hidden: int = 16
    num_classes: int = 3


class TinyMLP(nn.Module):
    def __init__(self, config: TinyMLPConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, config.hidden), nn.ReLU(),
                                    nn.Linear(config.hidden, config.num_classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> logits [N, C]
        return self.layers(pixels)


ARCHITECTURE = Architecture(TinyMLPConfig, TinyMLP)
'''


@pytest.fixture
def installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``pip install``'s result for a package ``my_models``: its code and a dist-info with the entry point."""
    site = tmp_path / "site"
    (site / "my_models").mkdir(parents=True)
    (site / "my_models" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    dist = site / "my_models-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-models\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[serve.architectures]\ntiny-mlp = my_models:ARCHITECTURE\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    models.ARCHITECTURES.pop("tiny-mlp", None)
    sys.modules.pop("my_models", None)


def test_an_installed_architecture_is_served_from_its_artifact(tmp_path: Path, installed_package: Path) -> None:
    assert "tiny-mlp" not in models.ARCHITECTURES
    torch.manual_seed(0)
    module = models.build("tiny-mlp", {"hidden": 16, "num_classes": 3})  # found through the entry point
    manifest = {"name": "my-mlp", "version": 1, "task": "image-classification", "architecture": "tiny-mlp",
                "config": {"hidden": 16, "num_classes": 3}, "labels": ["cat", "dog", "emu"],
                "preprocessing": {"shape": [1, 28, 28]}, "metrics": {}}
    weights = tmp_path / "weights"
    models.save_artifact(module.eval(), manifest, weights / "my-mlp" / "1")
    pixels = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.softmax(module(torch.from_numpy(pixels)), dim=-1).numpy()
    settings = Settings(weights_dir=weights, device="cpu", torch_threads=1)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post("/v2/models/my-mlp/infer", json={"inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [2, 1, 28, 28], "data": pixels.ravel().tolist()}]})
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output for output in response.json()["outputs"]}
        assert np.allclose(np.reshape(outputs["probabilities"]["data"], (2, 3)), expected, atol=1e-6)
        assert outputs["label"]["data"] == [["cat", "dog", "emu"][i] for i in expected.argmax(axis=1)]
        assert client.get("/v1/models/my-mlp").json()["architecture"] == "tiny-mlp"


def test_a_broken_entry_point_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[serve.architectures]\nbroken = no_such_module:THING\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "broken" not in models.registry.load_entry_points()
    with pytest.raises(models.ArtifactError, match="unknown architecture 'broken'"):
        models.build("broken", {})
