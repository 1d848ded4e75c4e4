"""Settings: a misspelt SERVE_* variable is named at start-up, with the setting it was likely meant to be."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.settings import Settings, unknown_settings
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
