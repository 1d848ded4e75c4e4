"""``python -m service``: serve the models under SERVE_WEIGHTS_DIR with uvicorn.

Every flag is a setting (``--port 9000`` is ``SERVE_PORT=9000``); flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from service.logging_setup import configure_logging
from service.main import create_app
from service.settings import Settings


def parse_overrides(argv: list[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    for name, field in Settings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=field.description)
    args = parser.parse_args(argv)
    return {name: value for name, value in vars(args).items() if value is not None}


def main(argv: list[str] | None = None) -> None:
    overrides = parse_overrides(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SystemExit(f"invalid settings:\n{exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        serve_in_processes(settings, overrides)
        return
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=None, access_log=False, timeout_graceful_shutdown=10)


def serve_in_processes(settings: Settings, overrides: dict[str, str]) -> None:
    """uvicorn's worker processes share the listening socket; each builds its app from the environment,
    so the flags go there first, with a fresh directory for what the workers share (readiness, metrics)."""
    os.environ.update({f"SERVE_{name.upper()}": str(value) for name, value in overrides.items()})
    shared = Path(tempfile.mkdtemp(prefix="serve-workers-"))
    os.environ["SERVE_PEERS_DIR"] = str(shared / "ready")
    (shared / "ready").mkdir()
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared / "metrics")
        (shared / "metrics").mkdir()
    try:
        uvicorn.run("service.main:app_from_environment", factory=True, workers=settings.workers,
                    host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None,
                    access_log=False, timeout_graceful_shutdown=10)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


if __name__ == "__main__":
    main()
