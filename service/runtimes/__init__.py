"""One runtime per task kind; the registry picks one by the manifest's ``task``."""

from __future__ import annotations

from service.runtimes.base import DecodeLimits, Runtime, TensorSpec, resolve_dtype
from service.runtimes.forecaster import ForecasterRuntime
from service.runtimes.image_classifier import AnomalyRuntime, ImageClassifierRuntime
from service.runtimes.image_generator import ImageGeneratorRuntime
from service.runtimes.language_model import LanguageModelRuntime
from service.runtimes.text import TextClassifierRuntime, TextEmbedderRuntime

RUNTIMES: dict[str, type] = {
    runtime.task: runtime
    for runtime in (ImageClassifierRuntime, AnomalyRuntime, TextClassifierRuntime, TextEmbedderRuntime,
                    ForecasterRuntime, LanguageModelRuntime, ImageGeneratorRuntime)
}

__all__ = ["RUNTIMES", "DecodeLimits", "ImageClassifierRuntime", "Runtime", "TensorSpec", "resolve_dtype"]
