"""Recipe: ``sunspots-lstm``, an LSTM forecaster on the monthly sunspot numbers.

The last 10% of the series is held out. Training windows end before it; the held-out figure is
the mean absolute error of rolling 12-month forecasts from every month of the held-out span (with
the whole history before that month as input), against the naive last-value forecast.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

import models
from training import common
from training.data import load_series

NAME = "sunspots-lstm"
HOLDOUT_FRACTION = 0.1
HORIZON = 12
WINDOW = 132


def rolling_origins(holdout_start: int, total: int, horizon: int) -> range:
    """Forecast origins: each month of the held-out span that still has ``horizon`` months after it."""
    return range(holdout_start, total - horizon + 1)


def windows(values: np.ndarray, end: int, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """All (history of ``window``, next ``horizon``) pairs whose targets end before ``end``."""
    starts = np.arange(0, end - window - horizon + 1)
    history = np.stack([values[s:s + window] for s in starts])
    target = np.stack([values[s + window:s + window + horizon] for s in starts])
    return history.astype(np.float32), target.astype(np.float32)


@torch.no_grad()
def forecast_origins(module: torch.nn.Module, values: np.ndarray, origins: range, window: int) -> np.ndarray:
    module.eval()
    history = torch.tensor(np.stack([values[o - window:o] for o in origins]), dtype=torch.float32)
    return module(history, torch.full((len(origins),), window)).numpy()  # [origins, horizon]


def holdout_errors(module: torch.nn.Module, values: np.ndarray, holdout_start: int, window: int) -> tuple[float, float]:
    """(model MAE, naive last-value MAE) over rolling forecasts from the held-out span."""
    origins = rolling_origins(holdout_start, len(values), HORIZON)
    predicted = forecast_origins(module, values, origins, window)
    actual = np.stack([values[o:o + HORIZON] for o in origins])
    naive = np.repeat(values[[o - 1 for o in origins]][:, None], HORIZON, axis=1)
    return float(np.abs(predicted - actual).mean()), float(np.abs(naive - actual).mean())


def train(_name: str, args: Any) -> Path | None:
    device, ctx, commit = common.start_run(args)
    if ctx.enabled:
        raise SystemExit(f"{NAME} is small enough for one process; run it without torchrun")
    series = load_series("monthly-sunspots")
    values = series.values
    holdout_start = int(len(values) * (1 - HOLDOUT_FRACTION))
    validation_start = int(holdout_start * 0.9)  # model selection on the last tenth of the training span
    train_values = values[:validation_start]
    config = {"horizon": HORIZON, "window": WINDOW, "mean": float(train_values.mean()),
              "std": float(train_values.std())}
    module = models.build("lstm-forecaster", config).to(device)
    history, target = windows(values, validation_start, WINDOW, HORIZON)
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=1e-4)
    epochs = args.epochs or 60
    rng = np.random.default_rng(args.seed)
    best_mae, best_state, started = float("inf"), None, time.time()
    std = config["std"]
    for _ in tqdm(range(epochs), desc=NAME):
        module.train()
        for batch in np.array_split(rng.permutation(len(history)), max(1, len(history) // 64)):
            # Variable history lengths teach the model to forecast from short series too.
            length = int(rng.integers(24, WINDOW + 1))
            x = torch.from_numpy(history[batch, -length:]).to(device)
            y = torch.from_numpy(target[batch]).to(device)
            loss = F.l1_loss(module(x, torch.full((len(batch),), length)) / std, y / std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        validation_mae, _ = holdout_errors(module.cpu(), values[:holdout_start], validation_start, WINDOW)
        module.to(device)
        if validation_mae < best_mae:
            best_mae, best_state = validation_mae, copy.deepcopy(module.state_dict())
    assert best_state is not None
    module.load_state_dict(best_state)
    mae, naive_mae = holdout_errors(module.cpu(), values, holdout_start, WINDOW)
    print(f"{NAME}: held-out MAE {mae:.2f}, naive {naive_mae:.2f} ({(1 - mae / naive_mae) * 100:.1f}% better)")
    version, out_dir = common.next_version_dir(Path(args.out), NAME)
    manifest = {
        "name": NAME, "version": version, "task": "forecasting", "architecture": "lstm-forecaster",
        "config": models.config_to_dict(module.config), "labels": None,  # type: ignore[arg-type]
        "preprocessing": {"input": "series", "scaling": "standardise with the training span's mean and std "
                          "(inside the module)", "min_history": 24, "window": WINDOW, "max_horizon": HORIZON * 10},
        "dataset": {"name": "monthly-sunspots", "points": len(values), "holdout_start": holdout_start,
                    "holdout_start_time": series.times[holdout_start], "validation_start": validation_start,
                    "evaluation": f"rolling {HORIZON}-month forecasts from each held-out month"},
        "metrics": {"mae": round(mae, 3), "naive_mae": round(naive_mae, 3),
                    "validation_mae": round(best_mae, 3)},
        "trained": {"epochs": epochs, "seconds": round(time.time() - started, 1), "device": str(device),
                    "git_commit": commit, "seed": args.seed, "torch": torch.__version__},
    }
    models.save_artifact(module, manifest, out_dir)
    print(f"wrote {out_dir}")
    return out_dir
