"""Forwards prepared for inference, built at load, checked against eager and timed before they serve.

Every runtime hands its module, a few check inputs of different shapes and one timing input (a full
batch) to ``prepare``. The candidate on the CPU is ``torch.jit.trace`` + ``torch.jit.freeze`` +
``torch.jit.optimize_for_inference`` (which folds batch norm into convolutions and fuses what it can),
in ``channels_last`` memory for convolutional image models. The candidate serves only if

- it can be built at all (an architecture that does not trace serves eager),
- its outputs on every check input are within the tolerance of eager's (the largest difference goes
  into the model's metadata), so a trace that baked in one input's shape is caught here, and
- it is measurably faster than eager on the timing input (10% or more): tracing is chosen per
  model by measurement, not assumed.

``torch.compile`` took ~19 s per model here (cold starts must stay under 30 s with every model), so it
is not a candidate. GPU forms (half precision, CUDA graphs) are not built yet: on a GPU, eager serves.
``SERVE_PREPARE=false`` turns all of this off.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger("service.engine.prepare")
TOLERANCE = 1e-4  # largest |prepared - eager| accepted on the check inputs (probabilities, logits or pixels)
MIN_SPEEDUP = 1.10  # a candidate must beat eager by this much on the timing input (beyond timing noise)

Inputs = tuple[Any, ...]


@dataclass(frozen=True)
class PreparedForward:
    forward: Callable[..., Any]
    kind: str  # "traced" (jit trace, frozen, optimized) | "eager"
    max_diff: float  # largest |candidate - eager| on the check inputs (0 when no candidate was built)
    speedup: float = 1.0  # eager's time / the candidate's on the timing input (1 when none was timed)
    channels_last: bool = False
    note: str = ""  # why eager serves, when a candidate was tried

    def __call__(self, *inputs: Any) -> Any:
        if self.channels_last:
            inputs = (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])
        return self.forward(*inputs)

    @property
    def description(self) -> str:
        if self.kind == "eager":
            return f"eager ({self.note})" if self.note else "eager"
        return f"{self.kind} ({self.speedup:.2f}x eager, max diff {self.max_diff:.1e})"


def eager(module: Callable[..., Any], note: str = "", max_diff: float = 0.0, speedup: float = 1.0) -> PreparedForward:
    return PreparedForward(module, "eager", max_diff, speedup, note=note)


# Prepared forwards by weights (their sha256), batch size and torch version: loading the same version again
# (an unload and a load through the repository API) reuses its traced forward, or its verdict for eager.
# TorchScript keeps every graph it traced, and a frozen one the weights inside it, for the life of the
# process (pytorch/pytorch#35600): tracing a version again would cost its weights once more, every time.
_PREPARED: dict[tuple[str, ...], PreparedForward] = {}


def prepare(name: str, module: nn.Module, checks: Sequence[Inputs], timing: Inputs, device: torch.device,
            dtype: torch.dtype, channels_last: bool = False, tolerance: float = TOLERANCE,
            min_speedup: float = MIN_SPEEDUP, key: str = "") -> PreparedForward:
    """The fastest correct forward of ``module`` (see the module's docstring); ``timing`` is also traced.
    ``key`` names the weights and the inputs' sizes (``Runtime.prepare_key``): with it, a second preparation
    of the same weights reuses the first's traced forward, or its verdict for eager (no trace again)."""
    if device.type != "cpu" or dtype != torch.float32:
        return eager(module)
    cache_key = (key, name, str(device), str(dtype), str(channels_last), torch.__version__)
    if key and (known := _PREPARED.get(cache_key)) is not None:
        log.info("model %s: %s, as when these weights were last prepared", name, known.description)
        # the verdict alone for eager: the old module, with the old copy of the weights, is not kept
        return eager(module, known.note, known.max_diff, known.speedup) if known.kind == "eager" else known
    prepared = _prepare(name, module, checks, timing, channels_last, tolerance, min_speedup)
    if key:
        _PREPARED[cache_key] = prepared if prepared.kind != "eager" else eager(nn.Identity(), prepared.note,
                                                                              prepared.max_diff, prepared.speedup)
    return prepared


def _prepare(name: str, module: nn.Module, checks: Sequence[Inputs], timing: Inputs, channels_last: bool,
             tolerance: float, min_speedup: float) -> PreparedForward:
    try:
        # torch 2.13 marks the TorchScript path deprecated in favour of torch.compile, which compiles for
        # ~19 s per model here: keep it quiet. Trace warnings are the check's job.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            candidate = copy.deepcopy(module).eval()
            if channels_last:
                candidate = candidate.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            example = _channels_last(timing) if channels_last else timing
            # strict=False: lets the tracer record mutable containers (a GPT step's cache: a list per layer)
            # check_trace=False: the checks below compare with eager at other shapes, which says more
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
                candidate, example, strict=False, check_trace=False)))
    except Exception as exc:  # an architecture that does not trace: eager serves it
        log.warning("model %s: no traced forward (%s: %s); serving eager", name, type(exc).__name__, exc)
        return eager(module, f"does not trace: {type(exc).__name__}")
    prepared = PreparedForward(traced, "traced", 0.0, channels_last=channels_last)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            max_diff = max(_check(prepared, module, x) for x in checks)
    except Exception as exc:  # e.g. a shape baked into the trace: another check input breaks it
        log.warning("model %s: the traced forward fails on a check input (%s: %s); serving eager", name,
                    type(exc).__name__, exc)
        return eager(module, f"traced fails on a check input: {type(exc).__name__}")
    if not max_diff <= tolerance:
        log.warning("model %s: the traced forward differs from eager by %.2e (> %.0e); serving eager", name,
                    max_diff, tolerance)
        return eager(module, f"traced differs by {max_diff:.1e}", max_diff)
    speedup = _seconds(module, timing) / _seconds(prepared, timing)
    if speedup < min_speedup:
        log.info("model %s: eager (traced is %.2fx eager, max diff %.1e)", name, speedup, max_diff)
        return eager(module, f"traced checked, max diff {max_diff:.1e}, but only {speedup:.2f}x", max_diff, speedup)
    prepared = PreparedForward(traced, "traced", max_diff, speedup, channels_last=channels_last)
    log.info("model %s: %s", name, prepared.description)
    return prepared


def warm_buckets(forward: Callable[..., Any], make: Callable[[int], Inputs], max_batch_size: int) -> None:
    """Run the power-of-two batch sizes up to ``max_batch_size`` twice each, so the JIT has profiled and
    optimised them before readiness turns true (another size costs ~2 ms the first time)."""
    with torch.no_grad():
        for size in sorted({min(2**power, max_batch_size) for power in range(max_batch_size.bit_length() + 1)}):
            for _ in range(2):
                forward(*make(size))


def _seconds(forward: Callable[..., Any], inputs: Inputs, repeats: int = 5) -> float:
    """The median time of one call (after two untimed calls: the JIT profiles its first runs)."""
    times = []
    with torch.no_grad():
        for index in range(repeats + 2):
            arguments = _clone(inputs)
            started = time.perf_counter()
            forward(*arguments)
            if index >= 2:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def _check(prepared: Callable[..., Any], module: Callable[..., Any], inputs: Inputs) -> float:
    """The largest difference between the two forwards' outputs, and between their inputs after the call
    (a language model's step writes its cache in place)."""
    got_inputs, want_inputs = _clone(inputs), _clone(inputs)
    return _difference((prepared(*got_inputs), got_inputs), (module(*want_inputs), want_inputs))


def _difference(got: Any, want: Any) -> float:
    """The largest absolute difference between two outputs (tensors, or tuples and lists of them)."""
    if isinstance(want, torch.Tensor):
        if want.is_floating_point():
            return float((got.float() - want.float()).abs().max()) if want.numel() else 0.0
        return 0.0 if torch.equal(got, want) else float("inf")  # ids, lengths: exactly equal or wrong
    return max((_difference(g, w) for g, w in zip(got, want, strict=True)), default=0.0)


def _clone(inputs: Any) -> Any:
    """Fresh copies, for forwards that update an input in place (a language model's cache)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.clone()
    if isinstance(inputs, tuple | list):
        return type(inputs)(_clone(x) for x in inputs)
    return inputs


def _channels_last(inputs: Inputs) -> Inputs:
    return (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])


def prepare_image_forward(module: nn.Module, shape: tuple[int, int, int], device: torch.device,
                          dtype: torch.dtype, max_batch_size: int, name: str,
                          tolerance: float = TOLERANCE, min_speedup: float = MIN_SPEEDUP,
                          key: str = "") -> PreparedForward:
    """An image model's forward for [N, *shape] inputs: checked at batch sizes 1, 3 and the largest, timed at
    the largest, in channels_last memory when it is a convolutional model; every bucket warmed."""
    generator = torch.Generator().manual_seed(0)
    checks = [(torch.rand(size, *shape, generator=generator),) for size in sorted({1, 3, max_batch_size})]
    convolutional = any(isinstance(layer, nn.Conv2d | nn.ConvTranspose2d) for layer in module.modules())
    prepared = prepare(name, module, checks, checks[-1], device, dtype, channels_last=convolutional,
                       tolerance=tolerance, min_speedup=min_speedup, key=key)
    if prepared.kind != "eager":
        warm_buckets(prepared, lambda size: (torch.zeros(size, *shape),), max_batch_size)
    return prepared
