"""What the front-ends and the engine agree on about each model version: where it is, its runtime class,
and its serving settings (per-model override, else the manifest's ``serving`` block, else ``SERVE_*``).
Reading manifests needs no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.runtimes import runtime_class
from service.settings import BatchingOverride, Settings, VersionPolicy


def discover(weights_dir: Path, names: list[str]) -> list[tuple[str, int, Path]]:
    """(name, version, path) of every artifact under ``weights_dir``; ``names`` filters (empty = all)."""
    found = []
    for manifest_path in sorted(weights_dir.glob("*/*/manifest.json")):
        version_dir = manifest_path.parent
        name, version = version_dir.parent.name, version_dir.name
        if version.isdigit() and (not names or name in names):
            found.append((name, int(version), version_dir))
    missing = set(names) - {name for name, _, _ in found}
    if missing:
        raise RuntimeError(f"SERVE_MODELS names {sorted(missing)}, which {weights_dir} does not hold")
    return found


@dataclass(frozen=True)
class ServingConfig:
    max_batch_size: int
    max_delay_s: float
    max_queue: int  # inputs waiting (images, for a generator; generations, for a language model)
    timeout_s: float
    latency_objective_s: float = 0.1
    priority_levels: int = 3
    default_priority: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.default_priority <= self.priority_levels:
            raise ValueError(f"default_priority {self.default_priority} is not one of the "
                             f"{self.priority_levels} priority levels")

    @property
    def capacity(self) -> int:
        """Inputs the model takes at once: ``max_queue`` waiting beyond the batch it is running. The front-ends
        admit up to this many (their shares add up to it); the engine's schedulers hold the same bound, which
        admission keeps them from reaching, so no input is refused after it was read and decoded."""
        return self.max_queue + self.max_batch_size

    @property
    def as_dict(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "max_delay_ms": self.max_delay_s * 1000,
                "max_queue": self.max_queue, "capacity": self.capacity, "timeout_ms": self.timeout_s * 1000,
                "latency_objective_ms": self.latency_objective_s * 1000, "priority_levels": self.priority_levels,
                "default_priority": self.default_priority}


def serving_config(settings: Settings, name: str, manifest: dict[str, Any]) -> ServingConfig:
    """The operator's per-model override (``SERVE_MODEL_OVERRIDES``) wins over the model's own defaults
    (its manifest's ``serving``), which win over the global ``SERVE_*`` values."""
    defaults = BatchingOverride.model_validate(manifest.get("serving") or {})

    def pick(field: str) -> Any:
        for source in (settings.model_overrides.get(name), defaults):
            value = getattr(source, field, None) if source else None
            if value is not None:
                return value
        return getattr(settings, field)

    runtime = runtime_class(manifest)
    objective_ms = pick("latency_objective_ms") or getattr(runtime, "latency_objective_ms", 100.0)
    return ServingConfig(max_batch_size=int(pick("max_batch_size")), max_delay_s=float(pick("max_delay_ms")) / 1000,
                         max_queue=int(pick("max_queue")), timeout_s=float(pick("timeout_ms")) / 1000,
                         latency_objective_s=float(objective_ms) / 1000, priority_levels=int(pick("priority_levels")),
                         default_priority=int(pick("default_priority")))


def version_policy(settings: Settings, name: str, manifest: dict[str, Any]) -> VersionPolicy:
    """The operator's (``SERVE_MODEL_OVERRIDES``), else the model's newest manifest's, else all versions."""
    override = settings.model_overrides.get(name)
    if override is not None and override.version_policy is not None:
        return override.version_policy
    return BatchingOverride.model_validate(manifest.get("serving") or {}).version_policy or VersionPolicy()


def build_runtime(manifest: dict[str, Any], path: Path, settings: Settings) -> Any:
    """The runtime of a manifest's task, its front-end half ready (the engine attaches the module)."""
    from models.text import load_tokenizer
    from service.runtimes import DecodeLimits

    runtime = runtime_class(manifest)
    if runtime is None:
        raise RuntimeError(f"no runtime for task {manifest.get('task')!r}")
    return runtime(manifest, DecodeLimits(settings.max_image_pixels), tokenizer=load_tokenizer(path, manifest))


ABORT_MARGIN_S = 5.0  # at the end of a drain, how long the 503s of what is left may take to be written


def grace_s(settings: Settings, deadlines_s: list[float]) -> float:
    """How long a drain lets the work in flight finish: ``SERVE_DRAIN_GRACE_S``, or the longest model deadline
    plus 5 s (shared by the front-ends, the engine and the supervisor, so they agree)."""
    if settings.drain_grace_s is not None:
        return settings.drain_grace_s
    return max(deadlines_s, default=settings.timeout_ms / 1000) + 5.0


def drain_deadlines_s(settings: Settings) -> list[float]:
    """Every served model's deadline, from the manifests (for the supervisor, which loads no model)."""
    from models.artifact import read_manifest

    deadlines = []
    for name, _, path in discover(settings.weights_dir, settings.models):
        try:
            deadlines.append(serving_config(settings, name, read_manifest(path)).timeout_s)
        except Exception:  # an unreadable manifest: the engine reports it; its deadline is the default
            deadlines.append(settings.timeout_ms / 1000)
    return deadlines
