"""Settings: a misspelt SERVE_* variable is named at start-up, with the setting it was likely meant to be."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.settings import Settings, VersionPolicy, unknown_settings
from tests.conftest import REPO_ROOT, free_port, make_artifact


def test_unknown_variables_are_named_with_the_closest_setting() -> None:
    environ = {"SERVE_MAX_BATCH_SIZ": "8", "serve_workes": "2", "SERVE_TIMEOUT": "500", "SERVE_ZZZ": "1",
               "SERVE_PORT": "9000", "SERVE_DATA_DIR": "/data", "PATH": "/bin", "XSERVE_PORTT": "1"}
    assert unknown_settings(environ) == [
        "SERVE_MAX_BATCH_SIZ is not a setting and is ignored; did you mean SERVE_MAX_BATCH_SIZE?",
        "SERVE_TIMEOUT is not a setting and is ignored; did you mean SERVE_TIMEOUT_MS?",
        "SERVE_ZZZ is not a setting and is ignored; python -m service --help lists the settings",
        "serve_workes is not a setting and is ignored; did you mean SERVE_WORKERS?",
    ]


def test_every_setting_and_the_supervisors_variables_are_known() -> None:
    environ = {f"SERVE_{name.upper()}": "x" for name in Settings.model_fields}
    assert {"SERVE_ENGINE_ADDRESS", "SERVE_FRONTEND_INDEX", "SERVE_WORKERS"} <= environ.keys()
    assert unknown_settings(environ) == []


def test_python_m_service_warns_of_a_misspelt_variable(tmp_path: Path) -> None:
    make_artifact(tmp_path, "tiny-cnn", 1, "cnn")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
    env |= {"SERVE_MAX_BATCH_SIZ": "8", "SERVE_WEIGHTS_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--in-process", "true", "--port", str(free_port()), "--device", "cpu",
         "--log-level", "warning", "--prepare", "false"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        assert process.stderr is not None
        stderr, deadline = b"", time.monotonic() + 30
        while b"SERVE_MAX_BATCH_SIZ" not in stderr and time.monotonic() < deadline:
            if select.select([process.stderr], [], [], 0.1)[0]:
                chunk = os.read(process.stderr.fileno(), 65536)
                if not chunk:
                    break  # the process ended
                stderr += chunk
        lines = stderr.decode().splitlines()
        assert any("WARNING" in line and "SERVE_MAX_BATCH_SIZ is not a setting and is ignored; "
                   "did you mean SERVE_MAX_BATCH_SIZE?" in line for line in lines), stderr.decode()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


# -- validation: every rule refuses what it should and keeps what it should --------------------------------------
def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(weights_dir=tmp_path, **values)


def test_comma_lists_are_split_and_trimmed(tmp_path: Path) -> None:
    parsed = settings(tmp_path, models=" mnist-cnn, sst2-gru ,,", api_keys="a,b", admin_keys=["x, y"])
    assert parsed.models == ["mnist-cnn", "sst2-gru"] and parsed.api_keys == ["a", "b"]
    assert parsed.admin_keys == ["x, y"]  # a list is taken as it is
    assert settings(tmp_path, models="").models == []


def test_json_objects_from_flags_and_their_errors(tmp_path: Path) -> None:
    parsed = settings(tmp_path, model_overrides='{"m": {"max_batch_size": 4, "version_policy": {"latest": 2}}}')
    assert parsed.model_overrides["m"].max_batch_size == 4
    assert parsed.model_overrides["m"].version_policy == VersionPolicy(latest=2)
    with pytest.raises(ValidationError, match="not valid JSON"):
        settings(tmp_path, model_overrides="{m: 4}")
    with pytest.raises(ValidationError, match="max_batch_size"):
        settings(tmp_path, model_overrides={"m": {"max_batch_size": 0}})
    with pytest.raises(ValidationError, match="extra"):
        settings(tmp_path, model_overrides={"m": {"max_batch": 4}})


@pytest.mark.parametrize("given, kept", [("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"), ("cuda:1", "cuda:1")])
def test_devices_accepted(tmp_path: Path, given: str, kept: str) -> None:
    assert settings(tmp_path, device=given).device == kept


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda1", "mps", ""])
def test_devices_refused(tmp_path: Path, device: str) -> None:
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda or cuda:N"):
        settings(tmp_path, device=device)


def test_log_level_in_any_case_and_bounds(tmp_path: Path) -> None:
    assert settings(tmp_path, log_level="WARNING").log_level == "warning"
    for field, bad in [("port", -1), ("port", 65536), ("max_batch_size", 0), ("max_batch_size", 4097),
                       ("timeout_ms", 0), ("max_body_bytes", 1023), ("workers", 65), ("nice", 20)]:
        with pytest.raises(ValidationError, match=field):
            settings(tmp_path, **{field: bad})
    assert settings(tmp_path, port=65535, max_batch_size=4096, nice=19).port == 65535


def test_quotas_must_name_keys_that_exist_and_do_not_echo_them(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set api_keys too"):
        settings(tmp_path, key_quotas={"*": {"concurrent": 2}})
    with pytest.raises(ValidationError, match="names 1 key") as refused:
        settings(tmp_path, api_keys="a", key_quotas={"a": {"concurrent": 1}, "secret-b": {"concurrent": 1}})
    assert "secret-b" not in str(refused.value)
    parsed = settings(tmp_path, api_keys="a", key_quotas={"a": {"concurrent": 1}, "*": {"requests_per_s": 2.5}})
    assert parsed.key_quotas["*"].burst_size == 2.5 and parsed.key_quotas["a"].burst_size == 1.0


def test_a_missing_weights_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a directory"):
        Settings(weights_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("cores, workers", [(1, 2), (4, 2), (6, 3), (16, 8), (64, 8)])
def test_workers_default_to_half_the_cores_between_two_and_eight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 cores: int, workers: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert settings(tmp_path).workers == workers
    assert settings(tmp_path, workers=5).workers == 5


@pytest.mark.parametrize("cores, threads", [(None, 1), (1, 1), (2, 1), (6, 3), (8, 4), (32, 4)])
def test_torch_threads_default_to_half_the_cores_at_most_four(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              cores: int | None, threads: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert settings(tmp_path).resolved_torch_threads() == threads
    assert type(settings(tmp_path).resolved_torch_threads()) is int  # torch.set_num_threads takes an int
    assert settings(tmp_path, torch_threads=7).resolved_torch_threads() == 7


def test_version_policies_select_what_they_say() -> None:
    found = [3, 1, 4, 2]
    assert VersionPolicy(latest=2).select(found) == [3, 4]
    assert VersionPolicy(latest=9).select(found) == [1, 2, 3, 4]
    assert VersionPolicy(specific=[2, 7]).select(found) == [2]
    assert VersionPolicy(all=True).select(found) == VersionPolicy().select(found) == [1, 2, 3, 4]
    for bad in ({"latest": 1, "all": True}, {"latest": 1, "specific": [1]}, {"latest": 0}, {"specific": []},
                {"newest": 1}):
        with pytest.raises(ValidationError):
            VersionPolicy(**bad)  # type: ignore[arg-type]


def test_a_latency_objective_comes_from_the_operator_the_manifest_or_the_task(tmp_path: Path) -> None:
    from service.serving import serving_config

    classifier = {"task": "image-classification", "architecture": "cnn"}
    diffusion = {"task": "image-generation", "architecture": "ddpm-unet"}
    plain = Settings(weights_dir=tmp_path)
    assert serving_config(plain, "a", classifier).latency_objective_s == 0.1  # the task's default
    assert serving_config(plain, "a", diffusion).latency_objective_s == 30.0
    own = {**classifier, "serving": {"latency_objective_ms": 40, "priority_levels": 5, "default_priority": 3}}
    config = serving_config(plain, "a", own)
    assert (config.latency_objective_s, config.priority_levels, config.default_priority) == (0.04, 5, 3)
    operator = Settings(weights_dir=tmp_path, latency_objective_ms=70,
                        model_overrides={"a": {"latency_objective_ms": 25}})
    assert serving_config(operator, "a", own).latency_objective_s == 0.025  # the per-model override wins
    assert serving_config(operator, "b", classifier).latency_objective_s == 0.07  # then SERVE_LATENCY_OBJECTIVE_MS
    with pytest.raises(ValidationError, match="default_priority 4"):
        Settings(weights_dir=tmp_path, priority_levels=3, default_priority=4)
