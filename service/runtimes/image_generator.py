"""Runtimes for image generators: (n, seed, label, steps) -> n images, the same bytes for the same seed.

A GAN draws in one forward: each request's noise comes from its own seeded generator and runs as its
own forward inside the batch. A diffusion model denoises in many steps, which the denoising loop
(service/denoiser.py) batches across requests; its runtime pads every forward to the same number of
rows, so that neither a request's noise nor its arithmetic depends on what else was batched with it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from models.imaging import grid, png_bytes
from service.errors import ServeError
from service.runtimes import v2
from service.runtimes.base import DecodeLimits, Runtime, TensorSpec
from service.schemas import SampleParameters

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SampleRequest:
    n: int
    seed: int
    label: int | None
    steps: int | None = None  # diffusion models: DDIM steps (None: the model's default)


@dataclass(frozen=True)
class Samples:
    seed: int
    images: np.ndarray  # [n, H, W] in [0, 1]
    labels: list[int | None]  # None: an unconditional model


@dataclass(frozen=True)
class StepBounds:
    default: int
    min: int
    max: int


class _ImageOutputs(Runtime):
    """What every generator shares: its labels, and its answers as a PNG grid or JSON."""

    task = "image-generation"
    latency_objective_ms = 250.0
    parameters = SampleParameters
    payload_type = SampleRequest
    result_type = Samples
    steps: StepBounds | None = None

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        self.conditional = bool(manifest.get("conditional", False))
        self.classes = int(manifest["config"].get("num_classes", 0))
        # V2 infer: "seed" and "n" (how many images), and "label" for conditional models; "steps" is added
        # by diffusion runtimes. Each is one INT64; all but "seed" may be left out.
        self.inputs = [TensorSpec("seed", "INT64", [1]), TensorSpec("n", "INT64", [1])]
        if self.conditional:
            self.inputs.append(TensorSpec("label", "INT64", [1]))
        self.outputs = [TensorSpec("images", "FP32", [-1, 1, 28, 28])]

    def attach(self, module: Any, device: torch.device, dtype: torch.dtype) -> None:
        import torch

        super().attach(module, device, torch.float32)  # exact bytes per seed: no half precision

    def sample_request(self, params: SampleParameters, seed: int) -> SampleRequest:
        """Check the parameters against this generator (400 when out of its bounds)."""
        if params.label is not None and (not self.conditional or params.label >= self.classes):
            allowed = f"0 to {self.classes - 1}" if self.conditional else "none: the model is unconditional"
            raise ServeError(400, f"label {params.label} is out of range; labels: {allowed}", "invalid_input")
        bounds = self.steps
        if params.steps is not None and (bounds is None or not bounds.min <= params.steps <= bounds.max):
            allowed = f"{bounds.min} to {bounds.max}" if bounds else "none: the model draws in one forward"
            raise ServeError(400, f"steps {params.steps} is out of range; steps: {allowed}", "invalid_input")
        return SampleRequest(params.n, seed, params.label, params.steps)

    def units(self, raw: SampleRequest) -> int:
        return raw.n

    def decode(self, raw: SampleRequest, index: int, params: Any) -> SampleRequest:
        return raw  # checked by sample_request

    def v2_items(self, tensors: dict[str, np.ndarray], parameters: dict[str, Any],
                 max_inputs: int) -> tuple[list[Any], Any]:
        """Scalar INT64 inputs ("seed" required, "n", "label", "steps") -> one sampling request."""
        v2.check_names(tensors, [spec.name for spec in self.inputs], str(self.manifest.get("name")), required="seed")
        params = v2.validate(SampleParameters, {"n": 1, **v2.scalars(tensors)}, where="input")
        return [self.sample_request(params, params.seed)], None

    def v2_outputs(self, results: list[Samples]) -> dict[str, np.ndarray]:
        [samples] = results
        return {"images": samples.images[:, None].astype(np.float32)}

    def label_name(self, label: int) -> str:
        return self.labels[label] if self.labels else str(label)

    def png_grid(self, samples: Samples) -> bytes:
        return png_bytes(grid(samples.images))

    def as_json(self, samples: Samples) -> dict[str, Any]:
        return {"seed": samples.seed, "samples": [
            {"label": self.label_name(label) if label is not None else None,
             "png_b64": base64.b64encode(png_bytes(image)).decode()}
            for image, label in zip(samples.images, samples.labels, strict=True)]}


class ImageGeneratorRuntime(_ImageOutputs):
    """A GAN generator: noise (and a label) -> images in one forward per request."""


    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        self.latent = int(manifest["config"]["latent"])

    def prepare_forward(self, max_batch_size: int) -> None:
        """Checked on noise and labels for 1, 3 and 16 images, timed on 16 (the size a page of samples asks)."""
        import torch

        from service.engine.prepare import prepare

        generator = torch.Generator().manual_seed(0)

        def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, max(1, self.classes), (n,), generator=generator)
            return torch.randn(n, self.latent, generator=generator).to(self.device), labels.to(self.device)

        self.prepared = prepare(str(self.manifest.get("name")), self.module, [inputs(1), inputs(3), inputs(16)],
                                inputs(16), self.device, self.dtype, key=self.prepare_key(max_batch_size))
        self.forward_kind = self.prepared.description

    def forward(self, payloads: list[SampleRequest]) -> Sequence[Samples]:
        import torch

        with torch.inference_mode():
            return [self._draw(request) for request in payloads]

    def _draw(self, request: SampleRequest) -> Samples:
        import torch

        rng = torch.Generator().manual_seed(request.seed)
        noise = torch.randn(request.n, self.latent, generator=rng)
        if request.label is not None:
            labels = torch.full((request.n,), request.label, dtype=torch.long)
        else:
            labels = torch.randint(0, max(1, self.classes), (request.n,), generator=rng)
        images = self.prepared(noise.to(self.device), labels.to(self.device))  # [n, 1, 28, 28]
        return Samples(request.seed, images[:, 0].float().cpu().numpy(), list(labels.tolist()))

    def warmup(self, max_batch_size: int) -> None:
        self.forward([SampleRequest(16, 0, None)])


class DiffusionRuntime(_ImageOutputs):
    """A denoising diffusion model (unconditional): noise -> images in ``steps`` DDIM updates.

    The denoising loop owns the schedule of each request; this runtime draws the noise, runs one update
    for any rows at any timesteps, and turns the result into pixels. Every forward has exactly
    ``rows_per_forward`` rows (padded with zeros): the same shapes run the same kernels, so a row's
    arithmetic does not depend on how many other rows share its step.
    """

    scheduler = "denoising"
    latency_objective_ms = 30_000.0  # 50 updates of up to 64 rows, on a CPU

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        sampling = manifest.get("sampling", {})
        self.timesteps = int(manifest["config"].get("timesteps", 1000))
        self.step_bounds = StepBounds(int(sampling.get("default_steps", 50)), 1,
                                      int(sampling.get("max_steps", self.timesteps)))
        self.steps = self.step_bounds
        self.rows_per_forward = 16  # set by the registry from the model's max_batch_size
        self.inputs.append(TensorSpec("steps", "INT64", [1]))

    def schedule(self, request: SampleRequest) -> list[int]:
        """The request's timesteps, descending; the last update goes from the last one to the clean image."""
        from models.diffusion import ddim_timesteps

        return ddim_timesteps(self.timesteps, request.steps or self.step_bounds.default)

    def noise(self, request: SampleRequest) -> torch.Tensor:
        import torch

        generator = torch.Generator().manual_seed(request.seed)
        return torch.randn(request.n, 1, 28, 28, generator=generator).to(self.device)  # [n, 1, 28, 28]

    def prepare_forward(self, max_batch_size: int) -> None:
        """The denoiser, checked on noisy images at timesteps across the schedule and timed, at the one shape
        every update runs (``rows_per_forward`` rows)."""
        import torch

        from service.engine.prepare import prepare

        self.rows_per_forward = max_batch_size
        generator = torch.Generator().manual_seed(0)

        def inputs() -> tuple[torch.Tensor, torch.Tensor]:
            t = torch.randint(0, self.timesteps, (max_batch_size,), generator=generator)
            return torch.randn(max_batch_size, 1, 28, 28, generator=generator).to(self.device), t.to(self.device)

        self.prepared = prepare(str(self.manifest.get("name")), self.module, [inputs(), inputs()], inputs(),
                                self.device, self.dtype, key=self.prepare_key(max_batch_size))
        self.forward_kind = self.prepared.description

    def step(self, x: torch.Tensor, t: list[int], t_next: list[int]) -> torch.Tensor:
        """One DDIM update of every row of x [R, 1, 28, 28] from t[r] to t_next[r] (-1: the clean image)."""
        import torch

        from models.diffusion import ddim_step

        rows, chunk = len(x), self.rows_per_forward
        padded = -(-rows // chunk) * chunk
        with torch.inference_mode():
            x = torch.cat([x, x.new_zeros(padded - rows, *x.shape[1:])])
            t_all = torch.tensor(t + [0] * (padded - rows), device=self.device)
            t_next_all = torch.tensor(t_next + [-1] * (padded - rows), device=self.device)
            parts = [ddim_step(self.module, x[i:i + chunk], t_all[i:i + chunk], t_next_all[i:i + chunk],
                               self.prepared)
                     for i in range(0, padded, chunk)]
            return torch.cat(parts)[:rows]

    @staticmethod
    def pixels(x: torch.Tensor) -> np.ndarray:
        """Denoised rows [n, 1, 28, 28] in [-1, 1] -> [n, 28, 28] in [0, 1]."""
        return ((x[:, 0].clamp(-1, 1) + 1) / 2).float().cpu().numpy()

    def forward(self, payloads: list[SampleRequest]) -> Sequence[Samples]:
        """Sample each request start to finish on its own (warm-up and tests; serving uses the loop)."""
        results = []
        for request in payloads:
            x, schedule = self.noise(request), self.schedule(request)
            for t, t_next in zip(schedule, [*schedule[1:], -1], strict=True):
                x = self.step(x, [t] * len(x), [t_next] * len(x))
            results.append(Samples(request.seed, self.pixels(x), [None] * request.n))
        return results

    def warmup(self, max_batch_size: int) -> None:
        self.rows_per_forward = max_batch_size
        self.forward([SampleRequest(1, 0, None, steps=2)])
