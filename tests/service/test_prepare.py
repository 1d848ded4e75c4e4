"""Prepared forwards: traced, frozen and optimised where that is correct, eager where it is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import models
from service.engine.prepare import prepare_image_forward
from tests.conftest import make_artifact


@pytest.mark.parametrize("architecture", ["cnn", "resnet"])
def test_a_prepared_cnn_matches_eager_at_every_batch_size(tmp_path: Path, architecture: str) -> None:
    module, _ = models.load(make_artifact(tmp_path, f"tiny-{architecture}", 1, architecture))
    prepared = prepare_image_forward(module, (1, 28, 28), torch.device("cpu"), torch.float32, 8, "tiny")
    assert prepared.kind == "traced" and prepared.channels_last
    assert 0 <= prepared.max_diff <= 1e-4
    with torch.no_grad():
        for size in (1, 5, 8, 11):  # 11: beyond the warmed sizes still works
            x = torch.rand(size, 1, 28, 28)
            assert torch.allclose(prepared(x), module(x), atol=1e-4)


class DataDependent(nn.Module):
    """Control flow on values: tracing would bake one branch in, so the check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 28, 28] -> [N, 2]
        pooled = x.mean(dim=(1, 2, 3))
        if float(pooled.sum()) > 100:
            return torch.stack([pooled, -pooled], dim=1)
        return torch.stack([-pooled, pooled], dim=1)


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[len(str(x.shape))]], dtype=torch.float32).expand(x.shape[0], 1) + object()  # type: ignore[operator]


def test_a_form_that_diverges_from_eager_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    prepared = prepare_image_forward(DataDependent(), (1, 28, 28), torch.device("cpu"), torch.float32, 64, "odd",
                                     tolerance=-1.0)  # nothing passes: the fallback path
    assert prepared.kind == "eager" and prepared.max_diff >= 0
    assert "serving eager" in caplog.text


def test_a_module_that_does_not_trace_serves_eager(caplog: pytest.LogCaptureFixture) -> None:
    prepared = prepare_image_forward(Untraceable(), (1, 28, 28), torch.device("cpu"), torch.float32, 4, "broken")
    assert prepared.kind == "eager" and "no prepared forward" in caplog.text


def test_the_metadata_says_which_forward_serves(make_client) -> None:  # type: ignore[no-untyped-def]
    prepared: TestClient = make_client()
    assert prepared.get("/v1/models/tiny-cnn").json()["forward"].startswith("traced (max diff")
    assert prepared.get("/v1/models/tiny-gpt").json()["forward"] == "eager"  # no prepared form yet
    plain: TestClient = make_client(prepare=False)
    assert plain.get("/v1/models/tiny-cnn").json()["forward"] == "eager"
