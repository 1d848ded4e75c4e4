"""Server settings, from ``SERVE_*`` environment variables, read once at start-up."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class VersionPolicy(BaseModel):
    """Which versions of a model are served, like a Triton model's: the ``latest`` N, ``all``, or ``specific``
    ones. One field set; none set means all."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    all: bool | None = None
    specific: list[int] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if sum(kind is not None for kind in (self.latest, self.all, self.specific)) > 1:
            raise ValueError("a version policy is one of latest, all or specific")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, of those found."""
        found = sorted(versions)
        if self.latest is not None:
            return found[-self.latest:]
        if self.specific is not None:
            return [version for version in found if version in self.specific]
        return found


class BatchingOverride(BaseModel):
    """Per-model serving settings (batching, deadline, version policy); unset fields fall back to the global
    ``SERVE_*`` values."""

    model_config = ConfigDict(extra="forbid")

    version_policy: VersionPolicy | None = None

    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    max_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    max_queue: int | None = Field(default=None, ge=1)
    timeout_ms: float | None = Field(default=None, gt=0)
    latency_objective_ms: float | None = Field(default=None, gt=0)
    priority_levels: int | None = Field(default=None, ge=1, le=16)
    default_priority: int | None = Field(default=None, ge=1, le=16)


class KeyQuota(BaseModel):
    """One API key's limits (``SERVE_KEY_QUOTAS``); unset = no limit of that kind."""

    model_config = ConfigDict(extra="forbid")

    requests_per_s: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1, description="requests at once above the rate; default: one "
                              "second's worth")
    concurrent: int | None = Field(default=None, ge=1)

    @property
    def burst_size(self) -> float:
        return float(self.burst or max(1.0, self.requests_per_s or 1.0))


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    weights_dir: Path = REPO_ROOT / "weights"
    models: Annotated[list[str], NoDecode] = Field(default_factory=list, description="empty = all")
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    workers: int = Field(default=0, ge=0, le=64, description="HTTP front-end processes sharing the port; they all "
                         "feed the one engine process, which holds every model once; 0 = half the cores, at "
                         "least 2, at most 8")
    nice: int = Field(default=10, ge=0, le=19, description="the nice value of every thread but the engine's inference "
                      "threads (the front-ends, the engine's event loop): under load the forwards get the cores first")
    in_process: bool = Field(default=False, description="run the engine inside the one HTTP process (development)")
    engine_address: str | None = Field(default=None, description="internal: the engine's ZeroMQ address, set by "
                                       "python -m service for its front-ends; unset = start an engine in-process")
    frontend_index: int = Field(default=0, ge=0, description="internal: this front-end's number, set by the supervisor")
    engine_restarts: int = Field(default=0, ge=0, description="internal: engines started before this one, set by "
                                 "the supervisor")
    prepare: bool = Field(default=True, description="build prepared forwards at load (traced, frozen, "
                          "checked against eager); false: eager")
    torch_threads: int = Field(default=0, ge=0, description="the engine's; 0 = half the cores, at most 4")
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    max_queue: int = Field(default=512, ge=1, description="inputs waiting per model version")
    timeout_ms: float = Field(default=10_000, gt=0, description="per request, counted from arrival")
    latency_objective_ms: float | None = Field(default=None, gt=0, description="every model's latency objective "
                                               "(the device scheduler's deadlines, and the objective metrics); "
                                               "default: the model's manifest, else its task's")
    device_lanes: int = Field(default=2, ge=1, le=2, description="calls a device runs at once: 2, a second thread "
                              "for other models' short calls while a long one runs (README: One device, many "
                              "models); 1, one call at a time")
    priority_levels: int = Field(default=3, ge=1, le=16, description="request priority levels per model (1 is "
                                 "the highest)")
    default_priority: int = Field(default=2, ge=1, le=16, description="the level of a request that names none")
    refusal_delay_ms: float = Field(default=0.0, ge=0, le=1000, description="a request refused because its model "
                                    "is full is answered (503) this long after it came")
    max_inputs_per_request: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_new_tokens: int = Field(default=2048, ge=1, description="the most tokens one generation may ask for")
    max_prompt_chars: int = Field(default=16_384, ge=1)
    max_image_pixels: int = Field(default=16_000_000, ge=784)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="empty = open")
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="for the model repository routes (/v2/repository/...); empty = 403")
    model_control: Literal["none", "explicit", "poll", "on_demand"] = Field(
        default="none", description="none: load every model at start, no load/unload; explicit: load what "
        "SERVE_MODELS names (nothing if empty), then load and unload on request; poll: like none, and rescan "
        "the weights directory every poll_s seconds for new and removed versions; on_demand: like explicit, "
        "and a model is loaded by its first request (which waits for it), within memory_budget_mb")
    memory_budget_mb: float | None = Field(
        default=None, gt=0, description="the memory the engine may hold for model weights (on the device where "
        "it is one): a load that would exceed it first evicts the least recently used idle versions; unset = "
        "no limit. With a budget, forwards serve eager on the CPU: a traced forward keeps a frozen copy of the "
        "weights for the life of the process, which no eviction could give back")
    poll_s: float = Field(default=10.0, gt=0, le=86_400)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = Field(default=False, description="one structured log line per request: method, route, "
                             "model, version, status, inputs, queue wait, forward time, total time, bytes in and out")
    drain_delay_s: float = Field(default=5.0, ge=0, le=600, description="on SIGTERM: readiness turns false at "
                                 "once and requests are still accepted this long, while load balancers notice; "
                                 "SIGINT skips it")
    drain_grace_s: float | None = Field(default=None, gt=0, le=3600, description="then the work in flight, streams "
                                        "included, gets this long to finish before what is left is failed with "
                                        "503; unset = the longest model deadline + 5 s")
    watchdog_floor_s: float = Field(default=10.0, ge=0, description="a forward or loop step that runs past this "
                                    "and past watchdog_multiple times its moving average counts as a hung engine, "
                                    "which is restarted; 0 = no watchdog")
    watchdog_multiple: float = Field(default=20.0, ge=1)
    key_quotas: dict[str, KeyQuota] = Field(default_factory=dict, description='JSON, per API key ("*": every '
                                            'key without its own), e.g. {"*": {"requests_per_s": 20, '
                                            '"concurrent": 4}}')
    model_overrides: dict[str, BatchingOverride] = Field(
        default_factory=dict, description='JSON, e.g. {"mnist-cnn": {"max_batch_size": 64}}')

    @field_validator("models", "api_keys", "admin_keys", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("model_overrides", "key_quotas", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """A flag's value is a string (the environment's is decoded by pydantic-settings already)."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _quotas_name_keys(self) -> Settings:
        if self.key_quotas and not self.api_keys:
            raise ValueError("key_quotas limit API keys: set api_keys too")
        unknown = [key for key in self.key_quotas if key != "*" and key not in self.api_keys]
        if unknown:
            raise ValueError(f"key_quotas names {len(unknown)} key(s) that api_keys does not hold")  # not the keys
        return self

    @model_validator(mode="after")
    def _default_priority_is_a_level(self) -> Settings:
        if self.default_priority > self.priority_levels:
            raise ValueError(f"default_priority {self.default_priority} is not one of the {self.priority_levels} "
                             "priority_levels")
        return self

    @model_validator(mode="after")
    def _weights_exist(self) -> Settings:
        if not self.weights_dir.is_dir():
            raise ValueError(f"weights_dir {self.weights_dir} is not a directory")
        return self

    @model_validator(mode="after")
    def _resolve_workers(self) -> Settings:
        """Half the cores for front-ends (the other half is the engine's torch threads), and at least two.
        Measured on 2 cores (mnist-cnn, wrk): at 64 connections one front-end served 1593 req/s, two 1495,
        three 1457; but under a flood of 200 connections on a full queue, one front-end let 460 predictions/s
        through and two 640: one event loop answering every refusal starves the admitted requests."""
        if self.workers == 0:  # the cores this process may use (a container's cpuset), at most 8 front-ends
            self.workers = max(2, min(8, len(os.sched_getaffinity(0)) // 2))
        return self

    def resolved_torch_threads(self) -> int:
        """Half the cores, at most 4: the front-ends' event loops and image decoding need the rest.
        Measured with wrk on 2 cores (mnist-cnn, 16 connections): 1 thread served ~5x the requests of 2."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, min(4, (os.cpu_count() or 2) // 2))


# SERVE_* variables that are read elsewhere, not settings: the training data's root (training/data.py) and
# docker compose's own (the published port, the build network).
NOT_SETTINGS = frozenset({"SERVE_DATA_DIR", "SERVE_PUBLISHED_PORT", "SERVE_BUILD_NETWORK"})


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``SERVE_*`` variable that names no setting, with the setting it was likely meant
    to be: pydantic-settings ignores such a variable, so a misspelt one would silently leave its setting
    at the default. Names are matched as pydantic-settings matches them, without regard to case."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    fields = sorted(name.upper() for name in Settings.model_fields)
    warnings = []
    for variable in sorted(environ):
        name = variable.upper()
        if name.startswith(prefix) and name[len(prefix):] not in fields and name not in NOT_SETTINGS:
            close = difflib.get_close_matches(name[len(prefix):], fields, n=1)  # the prefix would match them all
            hint = f"did you mean {prefix}{close[0]}?" if close else "python -m service --help lists the settings"
            warnings.append(f"{variable} is not a setting and is ignored; {hint}")
    return warnings
