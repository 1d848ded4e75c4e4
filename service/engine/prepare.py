"""Forwards prepared for inference, built at load and checked against eager before they serve.

For a convolutional image model on the CPU: channels_last memory, then ``torch.jit.trace`` +
``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` (which folds batch norm into the
convolutions). The prepared forward is compared with eager on fixed inputs at several batch sizes; if
it cannot be built, or differs by more than the tolerance, eager serves instead, with a warning. The
power-of-two batch sizes up to the model's ``max_batch_size`` are then run twice each, so the JIT has
profiled and optimised them before readiness turns true. GPU forms (half precision, CUDA graphs) are not built yet: on a
GPU, eager serves.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger("service.engine.prepare")
TOLERANCE = 1e-4  # largest |prepared - eager| accepted on the check inputs (probabilities or logits)


@dataclass(frozen=True)
class PreparedForward:
    forward: Callable[[torch.Tensor], torch.Tensor]
    kind: str  # "traced" (jit, frozen, optimized, channels_last) | "eager"
    max_diff: float  # largest |prepared - eager| on the check inputs; 0 for eager
    channels_last: bool = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.forward(batch)

    @property
    def description(self) -> str:
        return self.kind if self.kind == "eager" else f"{self.kind} (max diff {self.max_diff:.1e} from eager)"


def eager(module: nn.Module) -> PreparedForward:
    return PreparedForward(module, "eager", 0.0)


def prepare_image_forward(module: nn.Module, shape: tuple[int, int, int], device: torch.device,
                          dtype: torch.dtype, max_batch_size: int, name: str,
                          tolerance: float = TOLERANCE) -> PreparedForward:
    """The fastest correct forward of an image model for [N, *shape] inputs (see the module's docstring)."""
    if device.type != "cpu" or dtype != torch.float32:
        return eager(module)
    generator = torch.Generator().manual_seed(0)
    checks = [torch.rand(size, *shape, generator=generator) for size in sorted({1, 3, max_batch_size})]
    try:
        # torch 2.13 marks the TorchScript path deprecated in favour of torch.compile, which took ~19 s per
        # model to compile here (cold starts must stay under 30 s with every model): keep it quiet.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            reference = [module(x) for x in checks]
            candidate = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            example = checks[-1].contiguous(memory_format=torch.channels_last)
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(candidate, example)))
            prepared = PreparedForward(traced, "traced", 0.0, channels_last=True)
            max_diff = max(float((prepared(x) - want).abs().max()) for x, want in zip(checks, reference, strict=True))
    except Exception as exc:  # an architecture that does not trace: eager serves it
        log.warning("model %s: no prepared forward (%s: %s); serving eager", name, type(exc).__name__, exc)
        return eager(module)
    if not max_diff <= tolerance:
        log.warning("model %s: the prepared forward differs from eager by %.2e (> %.0e); serving eager", name,
                    max_diff, tolerance)
        return PreparedForward(module, "eager", max_diff)
    prepared = PreparedForward(traced, "traced", max_diff, channels_last=True)
    with torch.no_grad():  # the bucket sizes profiled and optimised before serving (others cost ~2 ms once)
        for size in sorted({min(2**power, max_batch_size) for power in range(max_batch_size.bit_length() + 1)}):
            for _ in range(2):
                prepared(torch.zeros(size, *shape))
    log.info("model %s: %s", name, prepared.description)
    return prepared
