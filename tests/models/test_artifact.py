"""Artifacts: safetensors + manifest, hash-checked, rebuilt from architecture + config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from models.artifact import ArtifactError
from tests.conftest import TINY_CONFIGS, make_artifact


@pytest.mark.parametrize("architecture", sorted(TINY_CONFIGS))
def test_round_trip_gives_identical_outputs(tmp_path: Path, architecture: str) -> None:
    path = make_artifact(tmp_path, "m", 1, architecture)
    torch.manual_seed(0)
    original = models.build(architecture, TINY_CONFIGS[architecture]).eval()
    loaded, manifest = models.load(path)
    assert manifest["architecture"] == architecture and not loaded.training
    pixels = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(original(pixels), loaded(pixels))
    assert_safetensors_of(path / "model.safetensors", original.state_dict())


def assert_safetensors_of(file: Path, state: dict[str, torch.Tensor]) -> None:
    """The file is safetensors (an 8-byte header length, a JSON header, raw tensor bytes), not torch.save's
    zip or a pickle, and holds exactly the module's tensors."""
    data = file.read_bytes()
    assert data[:2] != b"PK" and data[0] != 0x80  # torch.save writes a zip; a bare pickle starts with PROTO
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    header.pop("__metadata__", None)
    assert set(header) == set(state)
    for name, entry in header.items():
        assert entry["shape"] == list(state[name].shape), name
    end = max(entry["data_offsets"][1] for entry in header.values())
    assert len(data) == 8 + header_length + end  # nothing but the tensors after the header


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    path = make_artifact(tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        models.load(path)


def test_manifest_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        models.load(tmp_path / "nothing")
    path = make_artifact(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "architecture": "vgg"}))
    with pytest.raises(ArtifactError, match="unknown architecture"):
        models.load(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "config": {"depth": 3}}))
    with pytest.raises(ArtifactError, match="unknown CNNConfig fields"):
        models.load(path)
    del manifest["sha256"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="lacks sha256"):
        models.load(path)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = make_artifact(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["config"]["hidden"] = 32
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((ArtifactError, RuntimeError)):
        models.load(path)


@pytest.mark.parametrize("architecture", sorted(TINY_CONFIGS))
def test_modules_map_pixels_to_logits(architecture: str) -> None:
    module = models.build(architecture, TINY_CONFIGS[architecture]).eval()
    with torch.no_grad():
        logits = module(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
