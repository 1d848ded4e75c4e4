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


def test_the_tokenizer_is_read_from_where_the_manifest_says_and_hash_checked(tmp_path: Path) -> None:
    from models.artifact import read_tokenizer_json
    from tests.conftest import make_text_artifact

    path = make_text_artifact(tmp_path, "tiny-lstm")
    manifest = json.loads((path / "manifest.json").read_text())
    text = (path / "tokenizer.json").read_text()
    assert read_tokenizer_json(path, manifest) == text
    assert read_tokenizer_json(path, {**manifest, "tokenizer": None}) is None  # a model without one
    (path / "tokenizer.json").rename(path / "words.json")  # the manifest names its file
    renamed = {**manifest, "tokenizer": {**manifest["tokenizer"], "file": "words.json"}}
    assert read_tokenizer_json(path, renamed) == text
    unnamed = {**manifest, "tokenizer": {k: v for k, v in manifest["tokenizer"].items() if k != "file"}}
    with pytest.raises(ArtifactError, match=r"tokenizer\.json does not exist"):  # the default name, now gone
        read_tokenizer_json(path, unnamed)
    (path / "tokenizer.json").write_text(text + " ")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json does not match the sha256 in the manifest"):
        read_tokenizer_json(path, unnamed)
    with pytest.raises(ArtifactError, match="does not match"):
        read_tokenizer_json(path, {**renamed, "tokenizer": {"file": "words.json"}})  # no hash recorded


def test_read_manifest_says_what_is_wrong(tmp_path: Path) -> None:
    from models.artifact import read_manifest

    path = make_artifact(tmp_path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        read_manifest(path)
    (path / "manifest.json").write_text(json.dumps({"name": "m", "task": "t"}))
    with pytest.raises(ArtifactError, match="lacks version, architecture, config, sha256"):
        read_manifest(path)
    (path / "model.safetensors").unlink()
    (path / "manifest.json").write_text(json.dumps({"name": "m", "version": 1, "task": "t", "architecture": "cnn",
                                                    "config": {}, "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match=r"model\.safetensors does not exist"):
        models.load(path)


def test_tied_weights_are_stored_once_and_files_are_readable_by_others(tmp_path: Path) -> None:
    from tests.conftest import make_lm_artifact

    path = make_lm_artifact(tmp_path, "tiny-gpt")
    module, _ = models.load(path)
    stored = json.loads((path / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (path / "model.safetensors").read_bytes()[:8], "little")])
    assert "lm_head.weight" not in stored and "token_embedding.weight" in stored  # one copy of the tied table
    assert module.lm_head.weight is module.token_embedding.weight  # type: ignore[union-attr]
    assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_weights_can_be_stored_in_half_precision(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = models.build("cnn", TINY_CONFIGS["cnn"]).eval()
    manifest = json.loads((make_artifact(tmp_path / "a") / "manifest.json").read_text())
    path = models.save_artifact(module, {k: v for k, v in manifest.items() if k != "sha256"}, tmp_path / "half",
                                dtype=torch.float16)
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    assert any(not t.is_floating_point() for t in tensors.values())  # batch-norm counts keep their integer type


def test_a_save_records_the_tokenizer_beside_what_the_manifest_said(tmp_path: Path) -> None:
    from tests.conftest import make_text_artifact

    path = make_text_artifact(tmp_path, "tiny-gru")  # its manifest says {"kind": "word-level"}
    entry = json.loads((path / "manifest.json").read_text())["tokenizer"]
    assert entry == {"kind": "word-level", "file": "tokenizer.json",
                     "sha256": models.artifact.sha256_of(path / "tokenizer.json")}


def test_saving_into_an_existing_directory_replaces_the_artifact(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)  # made by a training run before its first save
    first = make_artifact(tmp_path, "m", 1, seed=0)
    make_artifact(tmp_path, "m", 1, seed=1)
    _, manifest = models.load(first)
    assert manifest["sha256"] == models.artifact.sha256_of(first / "model.safetensors")


def test_a_hash_mismatch_names_both_hashes(tmp_path: Path) -> None:
    path = make_artifact(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "sha256": "ab" * 32}))
    actual = models.artifact.sha256_of(path / "model.safetensors")
    with pytest.raises(ArtifactError) as refused:
        models.load(path)
    weights = path / "model.safetensors"
    assert str(refused.value) == f"{weights} has sha256 {actual[:12]}…, the manifest says {'ab' * 6}…"
