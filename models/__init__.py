"""Pure model definitions, one architecture family per file, and the registry that builds and loads them.

Importing this package costs nothing: ``models.load``, ``models.ARCHITECTURES`` and the rest come from
``models.registry`` on first use, so that the server's HTTP front-ends can read manifests and use
``models.imaging`` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ARCHITECTURES", "Architecture", "ArtifactError", "build", "config_to_dict", "load", "load_tokenizer",
           "register", "save_artifact"]


def __getattr__(name: str) -> Any:
    registry = importlib.import_module("models.registry")
    try:
        return getattr(registry, name)
    except AttributeError:
        raise AttributeError(f"module 'models' has no attribute {name!r}") from None
