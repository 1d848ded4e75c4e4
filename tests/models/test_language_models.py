"""Language models: KV-cache decoding equals full recomputation, also for rows of different lengths."""

from __future__ import annotations

import torch

import models


def tiny_gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("gpt", {"vocab_size": 30, "block_size": 32, "dim": 16, "heads": 2, "layers": 2,
                                "dropout": 0.0}).eval()


def test_kv_cache_decoding_equals_recomputation() -> None:
    model = tiny_gpt()
    ids = torch.randint(0, 30, (1, 20))
    with torch.no_grad():
        full, _ = model(ids)
        cache = model.empty_cache(1)
        logits, cache = model(ids[:, :7], cache, torch.tensor([0]))  # prefill through the cache
        steps = [logits]
        for position in range(7, 20):
            logits, cache = model(ids[:, position:position + 1], cache, torch.tensor([position]))
            steps.append(logits)
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)


def test_rows_of_different_lengths_decode_together() -> None:
    model = tiny_gpt()
    a, b = torch.randint(0, 30, (1, 15)), torch.randint(0, 30, (1, 9))
    with torch.no_grad():
        full_a, full_b = model(a)[0], model(b)[0]
        cache = model.empty_cache(2)
        model(a[:, :10], [(k[:1], v[:1]) for k, v in cache], torch.tensor([0]))
        model(b[:, :4], [(k[1:], v[1:]) for k, v in cache], torch.tensor([0]))
        lengths = torch.tensor([10, 4])
        for step in range(5):
            logits, cache = model(torch.stack([a[0, 10 + step], b[0, 4 + step]])[:, None], cache, lengths)
            assert torch.allclose(logits[0, 0], full_a[0, 10 + step], atol=1e-5)
            assert torch.allclose(logits[1, 0], full_b[0, 4 + step], atol=1e-5)
            lengths = lengths + 1


def test_weights_are_tied_and_survive_the_artifact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_gpt()
    assert model.lm_head.weight is model.token_embedding.weight
    manifest = {"name": "g", "version": 1, "task": "text-generation", "architecture": "gpt",
                "config": models.config_to_dict(model.config)}
    loaded, _ = models.load(models.save_artifact(model, manifest, tmp_path / "g" / "1"))
    assert loaded.lm_head.weight.data_ptr() == loaded.token_embedding.weight.data_ptr()
    ids = torch.randint(0, 30, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded(ids)[0])


def test_char_lstm_state_continues_the_sequence() -> None:
    torch.manual_seed(0)
    model = models.build("char-lstm", {"vocab_size": 30, "embed_dim": 8, "hidden": 16, "layers": 2}).eval()
    ids = torch.randint(0, 30, (1, 12))
    with torch.no_grad():
        full, _ = model(ids)
        first, state = model(ids[:, :5])
        rest, _ = model(ids[:, 5:], state)
    assert torch.allclose(full, torch.cat([first, rest], dim=1), atol=1e-5)
