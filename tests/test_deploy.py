"""The deployment files agree with the server's drain: Kubernetes and Compose wait at least as long as a drain
of the committed models can take (SERVE_DRAIN_DELAY_S accepting, the grace period, the 503s of what is left)
before they kill the container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.serving import ABORT_MARGIN_S, drain_deadlines_s, grace_s
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
ENGINE_STOP_S = 2.0  # after its front-ends exit, the engine notices their silence (1 s) and stops


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: str(item.get("value", "")) for item in container.get("env", []) if "value" in item}


def longest_drain_s(env: dict[str, str]) -> float:
    settings = Settings(weights_dir=REPO / "weights", drain_delay_s=float(env.get("SERVE_DRAIN_DELAY_S", 5.0)),
                        drain_grace_s=float(env["SERVE_DRAIN_GRACE_S"]) if env.get("SERVE_DRAIN_GRACE_S") else None)
    return settings.drain_delay_s + grace_s(settings, drain_deadlines_s(settings)) + ABORT_MARGIN_S + ENGINE_STOP_S


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60}
    return float(duration[:-1]) * units[duration[-1]]


def test_kubernetes_waits_for_the_drain() -> None:
    pod = yaml.safe_load((REPO / "deploy/base/deployment.yaml").read_text())["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "preStop" not in container.get("lifecycle", {})  # the server's own delay replaces the sleep
    assert pod["terminationGracePeriodSeconds"] >= longest_drain_s(env_of(container))


def test_kserve_waits_for_the_drain() -> None:
    predictor = yaml.safe_load((REPO / "deploy/kserve/inferenceservice.yaml").read_text())["spec"]["predictor"]
    [container] = predictor["containers"]
    assert predictor["terminationGracePeriodSeconds"] >= longest_drain_s(env_of(container))


@pytest.mark.parametrize("compose", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_waits_for_the_drain(compose: str) -> None:
    for name, service in yaml.safe_load((REPO / compose).read_text())["services"].items():
        if not str(service.get("image", "")).startswith("serve:"):  # monitoring, or an override of a service
            continue
        env = {key: str(value).split(":-")[-1].rstrip("}") for key, value in service.get("environment", {}).items()}
        assert seconds(service["stop_grace_period"]) >= longest_drain_s(env), name
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
