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
    """Sixty draws of one row, alone and in two different batches (other rows, other settings, other
    positions), with generators of the same seed: the same sixty tokens each time."""
    logits = torch.randn(60, 3, 40, generator=torch.Generator().manual_seed(1))
    setting = Sampling(0.8, 10, 0.9)
    alone, first, second = generators(7), generators(3, 7, 9), generators(7, 5)
    for step in logits:
        solo = sample(step[1:2], [setting], alone)[0]
        assert sample(step, [Sampling(1.0), setting, Sampling(0.0)], first)[1] == solo
        assert sample(step.flip(0)[1:], [setting, Sampling(1.5, 3)], second)[0] == solo
    assert len({int(t) for t in sample(logits[:, 1], [setting] * 60, generators(*range(60)))}) > 1  # not greedy


def test_draws_follow_the_softmax_and_respect_top_k() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sample(logits, [Sampling()], [generator])[0]] += 1
    assert torch.allclose(counts / 4000, torch.softmax(logits[0], -1), atol=0.03)
    top2 = {sample(logits, [Sampling(top_k=2)], [generator])[0] for _ in range(300)}
    assert top2 == {0, 1}
