"""Save and load model artifacts: ``model.safetensors`` + ``manifest.json``, sha256-verified.

An artifact directory is ``weights/<name>/<version>/``. The manifest carries everything needed to
rebuild the module (architecture + config) and to serve it (task, labels, preprocessing), plus how
it was trained and what it scored on held-out data. Tensors are never pickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are touched: reading a manifest needs no torch
    import torch

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"  # text models only
REQUIRED_KEYS = ("name", "version", "task", "architecture", "config", "sha256")


class ArtifactError(ValueError):
    """The artifact on disk is missing, malformed or does not match its recorded hash."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifact(module: torch.nn.Module, manifest: dict[str, Any], directory: Path,
                  tokenizer_json: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write the module's tensors (cast to ``dtype`` if given), the tokenizer if any, and the manifest
    with both hashes into ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is not None:
        tokenizer_path = directory / TOKENIZER_FILE
        tokenizer_path.write_text(tokenizer_json)
        manifest = {**manifest, "tokenizer": {**manifest.get("tokenizer", {}), "file": TOKENIZER_FILE,
                                              "sha256": sha256_of(tokenizer_path)}}
    weights_path = directory / WEIGHTS_FILE
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in module.state_dict().items():
        if value.data_ptr() in seen:  # a tied weight (e.g. GPT's output layer): stored once, re-tied by the module
            continue
        seen.add(value.data_ptr())
        state[key] = value.detach().contiguous().cpu()
    if dtype is not None:
        state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
    save_file(state, str(weights_path))
    weights_path.chmod(0o644)  # safetensors writes 0600; a server running as another user must read it
    full_manifest = {**manifest, "sha256": sha256_of(weights_path)}
    (directory / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2, sort_keys=False) + "\n")
    return directory


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return manifest


def load_tensors(directory: Path, manifest: dict[str, Any], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load the tensors after checking them against the manifest's sha256."""
    from safetensors.torch import load_file

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path} does not exist")
    actual = sha256_of(weights_path)
    if actual != manifest["sha256"]:
        raise ArtifactError(
            f"{weights_path} has sha256 {actual[:12]}…, the manifest says {manifest['sha256'][:12]}…"
        )
    return load_file(str(weights_path), device=device)


def read_tokenizer_json(directory: Path, manifest: dict[str, Any]) -> str | None:
    """The tokenizer's JSON, hash-checked, or None for models without one."""
    entry = manifest.get("tokenizer")
    if not entry:
        return None
    path = directory / entry.get("file", TOKENIZER_FILE)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    if sha256_of(path) != entry.get("sha256"):
        raise ArtifactError(f"{path} does not match the sha256 in the manifest")
    return path.read_text()
