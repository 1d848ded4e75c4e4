"""The batched sampler: greedy limits, per-row determinism, and the distribution it draws from."""

from __future__ import annotations

import torch

from service.runtimes.language_model import Sampling, sample


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_limits_that_mean_greedy() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1).tolist()
    for setting in (Sampling(temperature=0.0), Sampling(top_k=1), Sampling(top_p=1e-6)):
        assert sample(logits, [setting] * 4, generators(1, 2, 3, 4)) == best


def test_a_row_does_not_depend_on_its_neighbours() -> None:
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    alone = [sample(logits[1:2], [Sampling(0.8, 10, 0.9)], generators(7))[0] for _ in range(1)]
    together = sample(logits, [Sampling(1.0), Sampling(0.8, 10, 0.9), Sampling(0.0)], generators(3, 7, 9))
    assert together[1] == alone[0]


def test_draws_follow_the_softmax_and_respect_top_k() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sample(logits, [Sampling()], [generator])[0]] += 1
    assert torch.allclose(counts / 4000, torch.softmax(logits[0], -1), atol=0.03)
    top2 = {sample(logits, [Sampling(top_k=2)], [generator])[0] for _ in range(300)}
    assert top2 == {0, 1}
