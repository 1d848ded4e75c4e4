"""What every baseline shares: loading the weights, decoding a PNG with Pillow, encoding the answer.

The preprocessing matches the project's (grayscale, 28x28, [0, 1], inverted when the border is light)
and the answer has the project's shape, so the servers differ only in how they schedule the work.
"""

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import models

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "mnist-cnn" / "1"
PREDICT_PATH = "/v1/models/mnist-cnn/predict"
TOP_K = 3


def parse_args(description: str, batching: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--torch-threads", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="server processes (LitServe: workers per device)")
    if batching:
        parser.add_argument("--max-batch-size", type=int, required=True)
        parser.add_argument("--max-delay-ms", type=float, required=True)
    return parser.parse_args()


def load(weights: Path, torch_threads: int) -> tuple[nn.Module, list[str]]:
    torch.set_num_threads(torch_threads)
    module, manifest = models.load(str(weights), device="cpu")
    return module.eval(), list(manifest["labels"])


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> float32 [1, 28, 28] in [0, 1], light ink on a dark background."""
    gray = Image.open(io.BytesIO(data)).convert("L")
    if gray.size != (28, 28):
        gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 0.5:
        pixels = 1.0 - pixels
    return pixels[None]


@torch.inference_mode()
def probabilities(module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """float [N, 1, 28, 28] -> class probabilities [N, C]."""
    return torch.softmax(module(torch.from_numpy(batch)), dim=-1).numpy()


def encode(probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    order = np.argsort(-probs)[:TOP_K]
    best = int(order[0])
    return {"label": labels[best], "index": best, "score": float(probs[best]),
            "top_k": [{"label": labels[i], "index": int(i), "score": float(probs[i])} for i in order]}
