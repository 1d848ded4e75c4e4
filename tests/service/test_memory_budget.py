"""What a version will hold once loaded, estimated before its load from its safetensors header alone."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from service.engine.registry import stored_bytes, tensor_bytes


def test_an_fp16_file_served_in_float32_counts_double_and_integers_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    weights = {"w": torch.zeros(100, 10, dtype=torch.float16), "steps": torch.zeros(3, dtype=torch.int64)}
    save_file(weights, str(path))
    assert path.stat().st_size < 100 * 10 * 4  # the file holds 2 bytes per weight
    assert stored_bytes(path, 4) == 100 * 10 * 4 + 3 * 8  # float32 weights, int64 as they are
    assert stored_bytes(path, 2) == 100 * 10 * 2 + 3 * 8  # served in float16: as stored
    module = torch.nn.Linear(10, 100)  # loaded the way the engine holds it: float32
    assert tensor_bytes(module) == (100 * 10 + 100) * 4
