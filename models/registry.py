"""The architecture registry and the one public loader.

Architectures of this repository are registered here; a separately installed package adds its own
through the ``serve.architectures`` entry point group: each entry names an ``Architecture`` (a config
dataclass and the ``nn.Module`` built from it), and its name is what a manifest's ``architecture`` says.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.artifact import ArtifactError, load_tensors, read_manifest, save_artifact
from models.autoencoder import AutoencoderConfig, ConvAutoencoder
from models.char_lstm import CharLSTM, CharLSTMConfig
from models.cnn import CNN, CNNConfig
from models.diffusion import DiffusionConfig, UNet
from models.forecaster import ForecasterConfig, LSTMForecaster
from models.gan import GANConfig, Generator
from models.gpt import GPT, GPTConfig
from models.resnet import ResNet, ResNetConfig
from models.rnn import RNNClassifier, RNNConfig
from models.text import load_tokenizer
from models.transformer import TransformerConfig, TransformerEncoder

__all__ = ["ARCHITECTURES", "Architecture", "ArtifactError", "build", "config_to_dict", "load", "load_tokenizer",
           "register", "save_artifact"]
ENTRY_POINT_GROUP = "serve.architectures"
log = logging.getLogger("models")


@dataclass(frozen=True)
class Architecture:
    config_class: type
    module_class: Callable[[Any], nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "char-lstm": Architecture(CharLSTMConfig, CharLSTM),
    "conv-autoencoder": Architecture(AutoencoderConfig, ConvAutoencoder),
    "dcgan-generator": Architecture(GANConfig, Generator),
    "ddpm-unet": Architecture(DiffusionConfig, UNet),
    "cnn": Architecture(CNNConfig, CNN),
    "gpt": Architecture(GPTConfig, GPT),
    "lstm-forecaster": Architecture(ForecasterConfig, LSTMForecaster),
    "resnet": Architecture(ResNetConfig, ResNet),
    "rnn": Architecture(RNNConfig, RNNClassifier),
    "transformer": Architecture(TransformerConfig, TransformerEncoder),
}


def register(name: str, architecture: Architecture) -> None:
    """Make ``name`` buildable (a manifest's ``architecture``); the names of this repository are taken."""
    if name in ARCHITECTURES and ARCHITECTURES[name] is not architecture:
        raise ValueError(f"architecture {name!r} is registered already")
    ARCHITECTURES[name] = architecture


def load_entry_points() -> list[str]:
    """Register the architectures that installed packages declare under ``serve.architectures``; returns
    their names. A broken entry is logged and skipped: one package does not take the others down."""
    added = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            architecture = entry.load()
            if not isinstance(architecture, Architecture):
                raise TypeError(f"{entry.value} is a {type(architecture).__name__}, not a models.Architecture")
            register(entry.name, architecture)
            added.append(entry.name)
        except Exception as exc:
            log.error("architecture entry point %s (%s) failed: %s", entry.name, entry.value, exc)
    return added


def _config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ArtifactError(f"unknown {config_class.__name__} fields: {sorted(unknown)}")
    # JSON has no tuples; dataclass defaults that are tuples get their lists converted back.
    converted = {
        key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
    }
    return config_class(**converted)


def config_to_dict(config: Any) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()}


def build(architecture: str, config: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised module from an architecture name and its config dict."""
    if architecture not in ARCHITECTURES:
        load_entry_points()
    if architecture not in ARCHITECTURES:
        raise ArtifactError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    entry = ARCHITECTURES[architecture]
    return entry.module_class(_config_from_dict(entry.config_class, config))


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the module described by the artifact at ``path``, verify and load its weights.

    Returns ``(module, manifest)`` with the module on ``device`` in eval mode.
    """
    directory = Path(path)
    manifest = read_manifest(directory)
    module = build(manifest["architecture"], manifest["config"])
    tensors = load_tensors(directory, manifest)
    reference = module.state_dict()
    # fp16-stored weights load into the float32 module: the server picks the serving dtype itself.
    tensors = {key: value.to(reference[key].dtype) if key in reference and value.is_floating_point() else value
               for key, value in tensors.items()}
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    missing = [key for key in missing if key not in tied_names(module)]
    if missing or unexpected:
        raise ArtifactError(f"{directory}: weights do not fit the architecture "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return module.to(device).eval(), manifest


def tied_names(module: nn.Module) -> set[str]:
    """State-dict names that share their tensor with an earlier name (saved once, tied by the module)."""
    first: dict[int, str] = {}
    tied = set()
    for key, value in module.state_dict().items():
        if value.data_ptr() in first:
            tied.add(key)
        else:
            first[value.data_ptr()] = key
    return tied
