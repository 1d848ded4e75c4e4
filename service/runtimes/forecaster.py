"""Runtime for forecasters: a history (any length from the model's minimum; its last window is used)
-> the next ``horizon`` values. Horizons beyond one forward are rolled out by feeding forecasts back."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import InputError
from service.runtimes import v2
from service.runtimes.base import DecodeLimits, Runtime, TensorSpec
from service.schemas import ForecastParameters

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SeriesItem:
    history: np.ndarray  # float32 [T], at most the model's window
    horizon: int


class ForecasterRuntime(Runtime):
    task = "forecasting"
    body = "series"
    parameters = ForecastParameters
    payload_type = SeriesItem
    result_type = np.ndarray  # [horizon]

    def __init__(self, manifest: dict[str, Any], limits: DecodeLimits, tokenizer: Any = None) -> None:
        super().__init__(manifest, limits, tokenizer)
        config = manifest["config"]
        self.step_horizon = int(config["horizon"])
        self.window = int(config["window"])
        self.min_history = int(config["min_history"])
        self.max_horizon = int(manifest.get("preprocessing", {}).get("max_horizon", self.step_horizon))
        self.inputs = [TensorSpec("series", "FP32", [-1, -1])]
        self.outputs = [TensorSpec("forecast", "FP32", [-1, -1])]

    def check_horizon(self, horizon: int) -> int:
        if not 1 <= horizon <= self.max_horizon:
            raise InputError(None, f"horizon must be between 1 and {self.max_horizon}, got {horizon}")
        return horizon

    def prepare(self, params: ForecastParameters) -> ForecastParameters:
        return params.model_copy(update={"horizon": self.check_horizon(params.horizon or self.step_horizon)})

    def decode(self, raw: Any, index: int, params: ForecastParameters) -> SeriesItem:
        return self.decode_series(raw, index, params.horizon or self.step_horizon)

    def v2_items(self, tensors: dict[str, np.ndarray], parameters: dict[str, Any],
                 max_inputs: int) -> tuple[list[Any], Any]:
        series = tensors.get("series")
        if set(tensors) != {"series"} or series is None or series.ndim != 2 or series.dtype.kind not in "fiu":
            raise v2.ServeError(400, f"model {self.manifest.get('name')} takes one numeric input 'series' of shape "
                                f"[-1, -1]; got {sorted(tensors)}", "invalid_input")
        v2.check_batch(len(series), max_inputs)
        params = self.prepare(v2.validate(ForecastParameters, {"horizon": parameters.get("horizon")}))
        return [row.astype(np.float64).tolist() for row in series], params

    def v2_outputs(self, results: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"forecast": np.stack(results).astype(np.float32)}

    def decode_series(self, raw: Any, index: int, horizon: int) -> SeriesItem:
        if not isinstance(raw, list | tuple | np.ndarray) or any(
                isinstance(v, bool) or not isinstance(v, int | float | np.floating | np.integer) for v in raw):
            raise InputError(index, "a series is a list of numbers")
        values = np.asarray(raw, dtype=np.float64)
        if values.ndim != 1 or len(values) < self.min_history:
            raise InputError(index, f"a series needs at least {self.min_history} values, got {len(values)}")
        if not np.isfinite(values).all() or np.abs(values).max() > 1e12:
            raise InputError(index, "series values must be finite numbers")
        return SeriesItem(values[-self.window:].astype(np.float32), self.check_horizon(horizon))

    def attach(self, module: Any, device: torch.device, dtype: torch.dtype) -> None:
        import torch

        super().attach(module, device, torch.float32)  # recurrences over raw values stay in float32

    def prepare_forward(self, max_batch_size: int) -> None:
        """Checked on series of the training span's scale at three shapes, timed on a full batch of windows."""
        import torch

        from service.engine.prepare import prepare

        generator = torch.Generator().manual_seed(0)
        config = self.manifest["config"]

        def inputs(rows: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
            lengths = torch.randint(min(self.min_history, steps), steps + 1, (rows,), generator=generator)
            lengths[0] = steps  # a batch is as long as its longest history
            history = config["mean"] + config["std"] * torch.randn(rows, steps, generator=generator)
            history[torch.arange(steps)[None, :] >= lengths[:, None]] = 0
            return history.to(self.device), lengths.to(self.device)

        checks = [inputs(1, self.min_history), inputs(3, self.min_history + 17), inputs(max_batch_size, self.window)]
        self.prepared = prepare(str(self.manifest.get("name")), self.module, checks,
                                inputs(max_batch_size, self.window), self.device, self.dtype,
                                key=self.prepare_key(max_batch_size))
        self.forward_kind = self.prepared.description

    def forward(self, payloads: list[SeriesItem]) -> Sequence[np.ndarray]:
        import torch

        with torch.inference_mode():
            return self._roll_out(payloads)

    def _roll_out(self, payloads: list[SeriesItem]) -> list[np.ndarray]:
        import torch

        histories = [item.history for item in payloads]
        produced: list[list[np.ndarray]] = [[] for _ in payloads]
        rounds = math.ceil(max(item.horizon for item in payloads) / self.step_horizon)
        for _ in range(rounds):
            lengths = torch.tensor([len(h) for h in histories])
            batch = torch.zeros(len(histories), int(lengths.max()))
            for row, history in enumerate(histories):
                batch[row, : len(history)] = torch.from_numpy(history)
            step = self.prepared(batch.to(self.device), lengths.to(self.device)).float().cpu().numpy()
            for row, values in enumerate(step):
                produced[row].append(values)
                histories[row] = np.concatenate([histories[row], values])[-self.window:]
        return [np.concatenate(parts)[: item.horizon] for parts, item in zip(produced, payloads, strict=True)]

    def warmup(self, max_batch_size: int) -> None:
        item = SeriesItem(np.zeros(self.window, dtype=np.float32), self.step_horizon)
        self.forward([item] * max_batch_size)

    def encode(self, forecast: np.ndarray, params: Any = None) -> dict[str, Any]:
        return {"forecast": [float(v) for v in forecast]}
