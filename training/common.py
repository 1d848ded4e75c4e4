"""What every recipe shares: devices, seeds, torchrun/DDP, versioned output, checkpoints."""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import distributed as dist
from torch import nn

import models
from models.device import resolve_device

REPO_ROOT = Path(__file__).resolve().parent.parent


def start_run(args: Any) -> tuple[torch.device, DistContext, str | None]:
    """Device (this process's GPU under torchrun), process group, seeds, and the commit of the code."""
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"--device: {exc}") from None
    ctx = init_distributed(device)
    seed_everything(args.seed)
    return local_device(device, ctx), ctx, git_commit()  # the commit at the start: the code that trains


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands under torchrun; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    if device.type == "cuda" and ctx.enabled:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap_ddp(module: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    if not ctx.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
        dist.destroy_process_group()


def git_commit() -> str | None:
    """The commit the code was run from, with ``-dirty`` when the tree had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "models", "training"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10).stdout
        return head + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def next_version_dir(weights_root: Path, name: str) -> tuple[int, Path]:
    """Versions are integers; a new training run writes the next one."""
    model_dir = weights_root / name
    existing = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    version = max(existing, default=0) + 1
    return version, model_dir / str(version)


class Checkpoint:
    """Per-epoch training state for resume, as safetensors + JSON (no pickle).

    Holds the model's and the optimizer's tensors; scalars (epoch, best metric, optimizer
    hyper-parameters, scheduler state) go in a JSON file beside them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tensors_path = directory / "checkpoint.safetensors"
        self.state_path = directory / "checkpoint.json"

    def exists(self) -> bool:
        return self.tensors_path.is_file() and self.state_path.is_file()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tied = models.tied_names(model)  # a tied weight is stored once; load_state_dict re-ties it
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
        opt_state = optimizer.state_dict()
        for index, per_param in opt_state["state"].items():
            for key, value in per_param.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
        meta = {**state, "param_groups": opt_state["param_groups"]}
        tmp = self.tensors_path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self.tensors_path)  # atomic: a crash mid-save keeps the previous checkpoint
        self.state_path.write_text(json.dumps(meta))

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        tensors = load_file(str(self.tensors_path))
        meta = json.loads(self.state_path.read_text())
        missing, unexpected = model.load_state_dict(
            {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
        if unexpected or set(missing) - models.tied_names(model):
            raise ValueError(f"{self.tensors_path} does not fit the model ({missing[:3]}, {unexpected[:3]})")
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": meta.pop("param_groups")})
        return meta


def latest_version_dir(weights_root: Path, name: str) -> Path:
    versions = [p for p in (weights_root / name).glob("*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise SystemExit(f"{weights_root / name} holds no version; train or import {name} first")
    return max(versions, key=lambda p: int(p.name))
