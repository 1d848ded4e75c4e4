"""One runtime per task kind; the registry picks one by the manifest's ``task``."""

from __future__ import annotations

from typing import Any

from service.runtimes.base import DecodeLimits, Runtime, TensorSpec, resolve_dtype
from service.runtimes.forecaster import ForecasterRuntime
from service.runtimes.image_classifier import AnomalyRuntime, ImageClassifierRuntime
from service.runtimes.image_generator import DiffusionRuntime, ImageGeneratorRuntime
from service.runtimes.language_model import LanguageModelRuntime
from service.runtimes.text import TextClassifierRuntime, TextEmbedderRuntime

RUNTIMES: dict[str, type] = {
    runtime.task: runtime
    for runtime in (ImageClassifierRuntime, AnomalyRuntime, TextClassifierRuntime, TextEmbedderRuntime,
                    ForecasterRuntime, LanguageModelRuntime, ImageGeneratorRuntime)
}
# Where one task has several ways to run, the architecture decides.
ARCHITECTURE_RUNTIMES: dict[str, type] = {"ddpm-unet": DiffusionRuntime}


def runtime_class(manifest: dict[str, Any]) -> type | None:
    return ARCHITECTURE_RUNTIMES.get(manifest.get("architecture", "")) or RUNTIMES.get(manifest.get("task", ""))


__all__ = ["RUNTIMES", "DecodeLimits", "DiffusionRuntime", "ImageClassifierRuntime", "Runtime", "TensorSpec",
           "resolve_dtype", "runtime_class"]
