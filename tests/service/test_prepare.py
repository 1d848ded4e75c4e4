"""Prepared forwards: traced, frozen and optimised where that is correct and faster, eager where it is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import models
from service.engine.prepare import MIN_SPEEDUP, TOLERANCE, prepare, prepare_image_forward
from tests.conftest import make_artifact, make_lm_artifact


@pytest.mark.parametrize("architecture", ["cnn", "resnet"])
def test_a_prepared_cnn_matches_eager_at_every_batch_size(tmp_path: Path, architecture: str) -> None:
    module, _ = models.load(make_artifact(tmp_path, f"tiny-{architecture}", 1, architecture))
    prepared = prepare_image_forward(module, (1, 28, 28), torch.device("cpu"), torch.float32, 8, "tiny",
                                     min_speedup=0)  # whatever the timing says: the check is under test
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
                                     tolerance=-1.0, min_speedup=0)  # nothing passes: the fallback path
    assert prepared.kind == "eager" and prepared.max_diff >= 0
    assert "serving eager" in caplog.text


def test_a_module_that_does_not_trace_serves_eager(caplog: pytest.LogCaptureFixture) -> None:
    prepared = prepare_image_forward(Untraceable(), (1, 28, 28), torch.device("cpu"), torch.float32, 4, "broken")
    assert prepared.kind == "eager" and "no traced forward" in caplog.text


def test_a_slower_form_is_not_chosen(tmp_path: Path) -> None:
    module, _ = models.load(make_artifact(tmp_path, "tiny-cnn", 1, "cnn"))
    prepared = prepare_image_forward(module, (1, 28, 28), torch.device("cpu"), torch.float32, 8, "tiny",
                                     min_speedup=1e9)  # no candidate can be this much faster
    assert prepared.kind == "eager" and prepared.speedup > 0 and "traced checked" in prepared.description


def test_a_shape_baked_into_a_trace_is_caught() -> None:
    class BakedLength(nn.Module):
        def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return lengths.float() * 0 + int(ids.shape[1])  # a Python int: a constant in the trace

    def inputs(rows: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(rows, tokens, dtype=torch.long), torch.full((rows,), tokens)

    prepared = prepare("baked", BakedLength(), [inputs(1, 6), inputs(3, 19)], inputs(8, 32), torch.device("cpu"),
                       torch.float32, min_speedup=0)
    assert prepared.kind == "eager" and prepared.max_diff > 1e-4


def test_a_traced_language_model_step_writes_the_same_cache(tmp_path: Path) -> None:
    """The GPT's step returns only logits and updates its cache in place: the check compares both."""
    from models.gpt import CachedStep

    gpt, _ = models.load(make_lm_artifact(tmp_path, "tiny-gpt"))
    step = CachedStep(gpt)
    generator = torch.Generator().manual_seed(0)

    def inputs(rows: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        cache = [(torch.randn(k.shape, generator=generator), torch.randn(v.shape, generator=generator))
                 for k, v in gpt.empty_cache(rows)]
        return (torch.randint(0, gpt.config.vocab_size, (rows, 1), generator=generator), cache,
                torch.randint(0, gpt.config.block_size - 1, (rows,), generator=generator))

    prepared = prepare("tiny-gpt", step, [inputs(1), inputs(3)], inputs(4), torch.device("cpu"), torch.float32,
                       min_speedup=0)
    assert prepared.kind == "traced" and prepared.max_diff <= 1e-4
    ids, cache, lengths = inputs(2)
    theirs = [(k.clone(), v.clone()) for k, v in cache]
    with torch.no_grad():
        assert torch.allclose(prepared(ids, cache, lengths), step(ids, theirs, lengths), atol=1e-4)
    for (k, v), (their_k, their_v) in zip(cache, theirs, strict=True):
        assert torch.allclose(k, their_k, atol=1e-4) and torch.allclose(v, their_v, atol=1e-4)


def test_the_metadata_says_which_forward_serves_and_every_model_was_checked(make_client) -> None:  # type: ignore[no-untyped-def]
    prepared: TestClient = make_client(prepare=True)
    names = [model["id"] for model in prepared.get("/v1/models").json()["data"]]
    assert len(names) >= 8
    registry = prepared.app.state.engine.registry
    traced = 0
    for name in names:  # every family traces, passes its equivalence check, and serves the faster form
        detail = prepared.get(f"/v1/models/{name}").json()
        forward = detail["forward"]
        assert "max diff" in forward and "differs" not in forward and "fails" not in forward, (name, forward)
        serving = registry.get(name, detail["version"]).runtime.prepared  # what the forwards really call
        assert serving.description == forward and serving.max_diff <= TOLERANCE
        if serving.kind == "traced":  # timed faster than eager by the margin, and a TorchScript module runs
            assert serving.speedup >= MIN_SPEEDUP and isinstance(serving.forward, torch.jit.ScriptModule), name
            traced += 1
        else:  # traced was checked, timed, and not fast enough: the eager module itself runs
            assert serving.kind == "eager" and serving.speedup < MIN_SPEEDUP, (name, forward)
            assert not isinstance(serving.forward, torch.jit.ScriptModule), name
    assert traced >= 3  # most families gain here (tiny-gpt about 2x, the text encoders 1.4-1.8x)
    plain: TestClient = make_client(prepare=False)
    assert plain.get("/v1/models/tiny-cnn").json()["forward"] == "eager"


def test_the_same_weights_are_traced_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unload and a load of the same version (the repository API) reuse its traced forward, or its verdict
    for eager: TorchScript keeps every traced graph and its frozen weights for the life of the process."""
    caplog.set_level("INFO")
    cpu, f32 = torch.device("cpu"), torch.float32
    first, _ = models.load(make_artifact(tmp_path, "tiny-cnn", 1, "cnn"))
    again, _ = models.load(tmp_path / "tiny-cnn" / "1")
    traced = prepare_image_forward(first, (1, 28, 28), cpu, f32, 8, "tiny", min_speedup=0, key="sha-a/8")
    assert traced.kind == "traced"
    assert prepare_image_forward(again, (1, 28, 28), cpu, f32, 8, "tiny", min_speedup=0, key="sha-a/8") is traced
    assert "as when these weights were last prepared" in caplog.text
    other = prepare_image_forward(again, (1, 28, 28), cpu, f32, 4, "tiny", min_speedup=0, key="sha-a/4")
    assert other is not traced  # another batch size: prepared (and warmed) for it
    slow = prepare_image_forward(first, (1, 28, 28), cpu, f32, 8, "tiny", min_speedup=1e9, key="sha-b/8")
    reused = prepare_image_forward(again, (1, 28, 28), cpu, f32, 8, "tiny", min_speedup=1e9, key="sha-b/8")
    assert slow.kind == reused.kind == "eager" and reused.forward is again  # the new module, not the old one
    assert reused.note == slow.note
