"""The in-process limit: how many images per second mnist-cnn's forward alone does, eager and prepared
(as the engine prepares it), at the server's batch size and torch threads. The service's req/s at a
concurrency, divided by it, says how much of the model's own speed the HTTP path keeps."""

from __future__ import annotations

import time
from pathlib import Path

import torch

import models
from service.engine.prepare import prepare_image_forward


def images_per_second(forward: object, batch: torch.Tensor, seconds: float) -> float:
    with torch.no_grad():
        for _ in range(5):
            forward(batch)  # type: ignore[operator]
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            forward(batch)  # type: ignore[operator]
            done += len(batch)
    return done / (time.perf_counter() - started)


def measure(weights: Path, torch_threads: int, batch_size: int, seconds: float = 3.0) -> dict[str, float | str]:
    """img/s of the eager and the prepared forward on [batch_size, 1, 28, 28]."""
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        module, _ = models.load(weights)
        prepared = prepare_image_forward(module, (1, 28, 28), torch.device("cpu"), torch.float32, batch_size,
                                         "limit")
        batch = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        return {"batch_size": batch_size, "eager_img_s": images_per_second(module, batch, seconds),
                "prepared_img_s": images_per_second(prepared, batch, seconds), "prepared_kind": prepared.kind}
    finally:
        torch.set_num_threads(threads)
